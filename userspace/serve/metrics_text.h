// SPDX-License-Identifier: Apache-2.0
// The Prometheus text exposition format (version 0.0.4), written family by family.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memtrail::serve {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Appends families to a text: each family's HELP and TYPE line once, then its samples. Label
// values and help text are escaped as the format asks (backslash, double quote, newline);
// labels with an empty value are left out (Prometheus treats them as absent).
class MetricsText {
 public:
  // `type`: "gauge" or "counter" (whose name must end in _total).
  void family(std::string_view name, std::string_view type, std::string_view help);
  // A sample of the family last begun, under `name` (the family's name).
  void sample(std::string_view name, const Labels& labels, double value);
  // A whole family: one sample per row, labelled and valued by the two functions (a row whose
  // value is std::nullopt has no sample: a limit that is not set, say).
  template <typename Rows, typename LabelsOf, typename ValueOf>
  void family_of(std::string_view name, std::string_view type, std::string_view help,
                 const Rows& rows, LabelsOf labels_of, ValueOf value_of) {
    family(name, type, help);
    for (const auto& row : rows) {
      std::optional<double> value = value_of(row);
      if (value) sample(name, labels_of(row), *value);
    }
  }
  const std::string& text() const { return text_; }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

// A label value as the format writes it: \\, \" and \n escaped.
std::string escape_label_value(std::string_view value);

// A sample value: whole numbers without a fraction or exponent up to 2^53, others with 17
// significant digits, NaN and +Inf/-Inf spelled as Prometheus reads them.
std::string format_sample_value(double value);

}  // namespace memtrail::serve
