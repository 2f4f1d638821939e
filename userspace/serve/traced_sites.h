// SPDX-License-Identifier: Apache-2.0
// The sites of continuously traced targets (--trace) as Prometheus metrics.
#pragma once

#include <string>
#include <vector>

#include "model/report.h"
#include "serve/metrics_text.h"

namespace memtrail::serve {

// A site's id that stays the same across runs, pids and address-space layouts: a hash of each
// frame's module file name and offset in it (or, for a frame without a module, its function
// name), 16 hex digits.
std::string stable_site_id(const model::LeakSite& site);

// The innermost frame's function (the allocator's caller), else module+0xoffset.
std::string innermost_function(const model::LeakSite& site);

// One --trace target's latest report.
struct TracedTarget {
  std::string selector;  // "pid:42", "comm:nginx", ...
  bool running = false;  // its session is tracing (false: starting, or failed: see error)
  std::string error;
  model::Report report;  // sites ranked (leaks first), at most --max-sites of them
};

// memtrail_site_* for every target's reported sites, and the sites folded (past --max-sites)
// and the tracer's losses per target.
void render_traced_sites(const std::vector<TracedTarget>& targets, MetricsText& out);

}  // namespace memtrail::serve
