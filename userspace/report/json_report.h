// SPDX-License-Identifier: Apache-2.0
// Render a leak report as versioned JSON for tools (docs/json-format.md, docs/leaks.schema.json).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// Version 2 adds each site's leak verdict, growth and time series, and ranks `leaks` by verdict
// then growth. Version 1 (--json-version 1) has the same fields without those, ranked by
// outstanding bytes, for readers written against it.
inline constexpr int kLeaksSchemaVersion = 2;
inline constexpr const char* kLeaksSchemaV1 = "memtrail.leaks/1";
inline constexpr const char* kLeaksSchemaV2 = "memtrail.leaks/2";

nlohmann::ordered_json to_json(const model::Report& report, double interval_s,
                               int version = kLeaksSchemaVersion);

// The JSON as text, indented, with a final newline. Bytes that are not UTF-8 (a file name, or a
// string read from a target's memory) become U+FFFD: a report is never lost to one of them
// (nlohmann's default throws).
std::string json_text(const nlohmann::ordered_json& json);

// Writes the JSON to `path` with write_output_file (common/output_file.h): atomically, so that
// a reader never sees a half-written report. Throws memtrail::Error when it cannot be written.
void write_json_file(const nlohmann::ordered_json& json, const std::string& path);

}  // namespace memtrail::report
