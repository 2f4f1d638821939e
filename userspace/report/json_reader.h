// SPDX-License-Identifier: Apache-2.0
// Read a saved JSON report (memtrail.leaks/1 or /2) back into the report model, so that it can
// be rendered in another format (memtrail report) or compared (memtrail diff) offline.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// Throws memtrail::Error saying what is wrong: not a memtrail report, an unknown version, a
// missing or mistyped field.
model::Report from_json(const nlohmann::json& json);

// Reads and parses `path`. Throws memtrail::Error naming the file.
model::Report read_json_file(const std::string& path);

}  // namespace memtrail::report
