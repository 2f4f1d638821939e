// SPDX-License-Identifier: Apache-2.0
// Group a snapshot's outstanding allocations by site and rank the sites.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "aggregator/growth.h"
#include "model/snapshot.h"

namespace memtrail::aggregator {

// Outstanding memory of one site (one call stack in one process) at snapshot time.
struct SiteSummary {
  uint32_t pid = 0;
  int32_t site_id = 0;
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t total_allocated_bytes = 0;  // since attach, from the kernel's running totals
  uint64_t total_allocations = 0;
  uint64_t oldest_timestamp_ns = 0;
  // Outstanding blocks by age: bucket i holds ages in [2^(i-1), 2^i) seconds (bucket 0: under
  // 1 s), the last one everything older.
  static constexpr size_t kAgeBuckets = 24;
  std::array<uint32_t, kAgeBuckets> age_histogram{};
  uint64_t caller_address = 0;  // first frame when the stack could not be captured
  model::AllocationKind kind = model::AllocationKind::kMalloc;  // function of the site's blocks
  uint64_t mismatched_frees = 0;  // its blocks released by the wrong function
  std::optional<GrowthAssessment> growth;  // set by assess_sites() when there is a history
};

struct Totals {
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
};

struct Aggregate {
  std::vector<SiteSummary> sites;  // every site with visible outstanding memory, ranked
  Totals totals;                   // all outstanding memory, whatever its age
};

// Sums outstanding allocations per (pid, site) as they arrive (see aggregate() below), then
// ranks the sites.
class Accumulator final : public model::AllocationSink {
 public:
  Accumulator(uint64_t min_age_ns, uint64_t sample_rate)
      : min_age_ns_(min_age_ns), sample_rate_(sample_rate) {}
  void begin(uint64_t taken_at_ns) override { taken_at_ns_ = taken_at_ns; }
  void add(const model::OutstandingAllocation& allocation) override;
  // Adds the kernel's running totals of the sites and ranks them.
  Aggregate finish(const std::vector<model::SiteTotals>& site_totals) &&;

 private:
  struct Sums {  // estimates (exact integers without sampling), rounded once at the end
    double bytes = 0, allocations = 0;
  };
  uint64_t min_age_ns_, sample_rate_, taken_at_ns_ = 0;
  Sums total_;
  std::unordered_map<uint64_t, SiteSummary> by_site_;
  std::unordered_map<uint64_t, Sums> site_sums_;
};

// Sums outstanding allocations per (pid, site). Allocations younger than `min_age_ns` at the
// snapshot's time are left out of the sites (not of the totals). Sites are ranked by
// outstanding bytes, then allocation count, then pid and site id so that ties are stable.
// With `sample_rate` > 0 the allocations are byte samples, and bytes and counts are the
// unbiased estimates they stand for (rounded to whole numbers).
Aggregate aggregate(const model::Snapshot& snapshot, uint64_t min_age_ns,
                    uint64_t sample_rate = 0);

}  // namespace memtrail::aggregator
