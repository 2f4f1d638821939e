// SPDX-License-Identifier: Apache-2.0
// The Prometheus text exposition format (version 0.0.4), written family by family.
#include "serve/metrics_text.h"

#include <cmath>
#include <cstdio>

namespace memtrail::serve {

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string format_sample_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  if (value == std::floor(value) && std::fabs(value) <= 9007199254740992.0) {
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.17g", value);
  }
  return buffer;
}

void MetricsText::family(std::string_view name, std::string_view type, std::string_view help) {
  text_ += "# HELP ";
  text_ += name;
  text_ += ' ';
  for (char c : help) {
    if (c == '\\') {
      text_ += "\\\\";
    } else if (c == '\n') {
      text_ += "\\n";
    } else {
      text_ += c;
    }
  }
  text_ += "\n# TYPE ";
  text_ += name;
  text_ += ' ';
  text_ += type;
  text_ += '\n';
}

void MetricsText::sample(std::string_view name, const Labels& labels, double value) {
  text_ += name;
  bool first = true;
  for (const auto& [key, label_value] : labels) {
    if (label_value.empty()) continue;
    text_ += first ? '{' : ',';
    first = false;
    text_ += key;
    text_ += "=\"";
    text_ += escape_label_value(label_value);
    text_ += '"';
  }
  if (!first) text_ += '}';
  text_ += ' ';
  text_ += format_sample_value(value);
  text_ += '\n';
}

}  // namespace memtrail::serve
