// SPDX-License-Identifier: Apache-2.0
// Compare two saved reports: which sites grew between them (memtrail diff).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "model/report.h"

namespace memtrail::report {

// One site in either report. Sites match by command name and stack (module file name and
// offset of each frame), so that two runs of the same program, with other pids and addresses,
// line up; sites of several processes of one command are summed.
struct SiteChange {
  std::string comm;
  const model::LeakSite* example = nullptr;  // the site's stack and verdict, from `after` if there
  uint64_t bytes_before = 0, bytes_after = 0;
  uint64_t allocations_before = 0, allocations_after = 0;
  bool in_before = false, in_after = false;
  // A side's figures include Python objects seen part of the time, scaled (LeakSite::estimated).
  bool estimated_before = false, estimated_after = false;
  // A side's bytes include Python objects of a type sized by estimate (PythonType::sizing).
  bool sized_by_estimate_before = false, sized_by_estimate_after = false;
  int64_t delta_bytes() const {
    return static_cast<int64_t>(bytes_after) - static_cast<int64_t>(bytes_before);
  }
};

// Every site, ranked by growth in outstanding bytes (most grown first, most shrunk last).
std::vector<SiteChange> diff_reports(const model::Report& before, const model::Report& after);

void render_diff_text(const std::vector<SiteChange>& changes, const model::Report& before,
                      const model::Report& after, size_t top, std::ostream& out);

}  // namespace memtrail::report
