// SPDX-License-Identifier: Apache-2.0
// Read a saved JSON report (memtrail.leaks/1 or /2) back into the report model, so that it can
// be rendered in another format (memtrail report) or compared (memtrail diff) offline.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// Throws memtrail::Error saying what is wrong, worded to follow "FILE is ": "not a
// memtrail.leaks report: ...", "a memtrail.leaks/9 report; ...", or "not a valid memtrail.leaks
// report: leaks[3]: ..." for a missing or mistyped field, or a number out of its range (a
// count of 1e308 is refused, not rendered as some other number).
model::Report from_json(const nlohmann::json& json);

// Reads and parses `path`. Throws memtrail::Error, one line naming the file (a directory, not
// JSON, or what from_json says).
model::Report read_json_file(const std::string& path);

}  // namespace memtrail::report
