// SPDX-License-Identifier: Apache-2.0
// Render a paging report: a screen per interval and a final summary for people, JSON for tools.
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>

#include "model/paging_report.h"

namespace memtrail::report {

// The live screen: the latest interval of the host and of each cgroup, then the processes.
void render_paging_interval(const model::PagingReport& report, std::ostream& out);

// The final report: the verdict over the run and why, each scope's worst moment, culprits
// and victims with their evidence, OOM kills, sources and anything not recorded.
void render_paging_summary(const model::PagingReport& report, std::ostream& out);

// memtrail.paging/1 (docs/paging-format.md, docs/paging.schema.json).
nlohmann::ordered_json paging_json(const model::PagingReport& report);

}  // namespace memtrail::report
