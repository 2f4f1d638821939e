// SPDX-License-Identifier: Apache-2.0
// `memtrail paging`'s verdicts, culprits and victims for the always-on tier, from the same
// scans (procfs and cgroupfs only: no BPF), as Prometheus metrics.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>

#include "aggregator/paging_analysis.h"
#include "model/paging.h"
#include "model/paging_report.h"
#include "serve/metrics_text.h"

namespace memtrail::serve {

// Feeds aggregator::PagingAnalyzer one sample per scan. The analyzer keeps every process it
// has seen, so it is started afresh every `window` samples (the last report stays until the
// new one has an interval): an agent that runs for months keeps bounded state.
class PagingWatch {
 public:
  PagingWatch(size_t window, size_t top) : window_(window), top_(top) {}

  void add(const model::PagingSample& sample);
  // memtrail_paging_verdict for the host (always) and for memory cgroups under pressure or
  // thrashing now; memtrail_process_paging_role for culprits and victims (at most `top`).
  void render(MetricsText& out) const;

 private:
  size_t window_, top_;
  std::unique_ptr<aggregator::PagingAnalyzer> analyzer_;
  size_t samples_ = 0;
  std::optional<model::PagingReport> report_;
};

}  // namespace memtrail::serve
