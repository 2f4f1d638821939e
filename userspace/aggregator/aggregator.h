// SPDX-License-Identifier: Apache-2.0
// Group a snapshot's outstanding allocations by site and rank the sites.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "aggregator/growth.h"
#include "model/snapshot.h"

namespace memtrail::aggregator {

// A site's Python objects of one type (its PyTypeObject's address in the process).
struct PythonTypeSum {
  uint64_t type = 0;
  uint64_t objects = 0, bytes = 0;
};

// Outstanding memory of one site (one call stack in one process) at snapshot time.
struct SiteSummary {
  uint32_t pid = 0;
  int32_t site_id = 0;
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t total_allocated_bytes = 0;  // since attach, from the kernel's running totals
  uint64_t total_allocations = 0;
  // Of those, freed by the snapshot's time: total_allocations less every block of the site
  // still in the table, whatever its age (--min-age hides young blocks from outstanding_*, it
  // does not free them). Never more than the frees that really happened (see Accumulator).
  uint64_t freed_allocations = 0;
  uint64_t oldest_timestamp_ns = 0;
  // Outstanding blocks by age: bucket i holds ages in [2^(i-1), 2^i) seconds (bucket 0: under
  // 1 s), the last one everything older.
  static constexpr size_t kAgeBuckets = 24;
  std::array<uint32_t, kAgeBuckets> age_histogram{};
  uint64_t caller_address = 0;  // first frame when the stack could not be captured
  model::AllocationKind kind = model::AllocationKind::kMalloc;  // function of the site's blocks
  // Its figures are estimates: Python objects seen in part of the time (--python-objects on),
  // scaled by the share seen (Accumulator::set_object_shares).
  bool estimated = false;
  uint64_t mismatched_frees = 0;           // its blocks released by the wrong function
  std::optional<GrowthAssessment> growth;  // set by assess_sites() when there is a history
  // Its Python objects by type (kind kPythonObject), most bytes first; empty for other kinds.
  std::vector<PythonTypeSum> python_types;
};

struct Totals {
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  // They include Python objects scaled by the share seen (SiteSummary::estimated): estimates.
  bool estimated = false;
};

struct Aggregate {
  std::vector<SiteSummary> sites;  // every site with visible outstanding memory, ranked
  Totals totals;                   // all outstanding memory, whatever its age
  // Every site that allocated and freed it all by the snapshot's time (no block of it in the
  // table, whatever its age): outstanding 0, freed = total. Most bytes allocated first. The
  // kernel keeps one per stack, so the stack map's size bounds them.
  std::vector<SiteSummary> freed_sites;
};

// Sums outstanding allocations per (pid, site) as they arrive (see aggregate() below), then
// ranks the sites.
//
// Counts stay consistent although the BPF programs run on while the maps are read: the tracer
// reads the kernel's running totals first, each site's at its time (SiteTotals::read_at_ns),
// then takes the snapshot's time T, then reads the table. The accumulator leaves out every
// block allocated after T (counted by the next snapshot); of a site's blocks, those allocated
// after its totals were read are added to its totals (the kernel counts a call before it
// stamps the block). So for every site, total = freed + outstanding (all ages), and a site
// whose blocks are never freed shows 0 freed. The one approximation left while processes
// run: a block freed after T but before the table read reached it counts as freed already
// (it was, milliseconds later). Once the probes are detached (the final report) every count
// is exact.
class Accumulator final : public model::AllocationSink {
 public:
  Accumulator(uint64_t min_age_ns, uint64_t sample_rate)
      : min_age_ns_(min_age_ns), sample_rate_(sample_rate) {}
  // --python-objects on: the share of each process's Python objects that the probes saw. Each
  // object of such a process then stands for 1 / share objects (its bytes likewise), and its
  // site's figures, totals included, are estimates (SiteSummary::estimated). Before begin().
  void set_object_shares(std::unordered_map<uint32_t, double> shares) {
    object_shares_ = std::move(shares);
  }
  // Where each process's Python objects are created: the addresses of the creation sites
  // probed, each an object site's first frame. A site that freed every block is known for one
  // by it (its kind is known from blocks otherwise), and is scaled as above. `sites` must
  // outlive finish(). Before begin().
  void set_object_creation_sites(
      const std::unordered_map<uint32_t, std::unordered_set<uint64_t>>* sites) {
    object_creation_sites_ = sites;
  }
  void begin(uint64_t taken_at_ns, const std::vector<model::SiteTotals>& sites) override;
  void add(const model::OutstandingAllocation& allocation) override;
  // Adds the kernel's running totals of the sites and ranks them.
  Aggregate finish(const std::vector<model::SiteTotals>& site_totals) &&;

 private:
  struct Sums {  // estimates (exact integers without sampling), rounded once at the end
    double bytes = 0, allocations = 0;
  };
  uint64_t min_age_ns_, sample_rate_, taken_at_ns_ = 0;
  std::unordered_map<uint32_t, double> object_shares_;
  const std::unordered_map<uint32_t, std::unordered_set<uint64_t>>* object_creation_sites_ =
      nullptr;
  bool object_creation_site(uint32_t pid, uint64_t caller_address) const;
  // `observed` scaled up by the share of `pid`'s objects seen; as is without one.
  double scaled(uint32_t pid, double observed) const;
  Sums total_;
  bool total_estimated_ = false;  // total_ includes scaled Python objects
  std::unordered_map<uint64_t, SiteSummary> by_site_;
  std::unordered_map<uint64_t, Sums> site_sums_;
  struct Blocks {        // of one site, every age
    double counted = 0;  // allocated by the time its totals were read: counted in them
    double later_allocations = 0, later_bytes = 0;  // allocated after: not counted yet
  };
  std::unordered_map<uint64_t, uint64_t> totals_read_at_;  // by site; absent: taken_at_ns_
  std::unordered_map<uint64_t, Blocks> site_blocks_;
  // Python objects by site, then type: (objects, bytes), scaled as the site's (duty cycle).
  std::unordered_map<uint64_t, std::unordered_map<uint64_t, std::pair<double, double>>> site_types_;
};

// Sums outstanding allocations per (pid, site). Allocations younger than `min_age_ns` at the
// snapshot's time are left out of the sites (not of the totals). Sites are ranked by
// outstanding bytes, then allocation count, then pid and site id so that ties are stable.
// With `sample_rate` > 0 the allocations are byte samples, and bytes and counts are the
// unbiased estimates they stand for (rounded to whole numbers).
Aggregate aggregate(const model::Snapshot& snapshot, uint64_t min_age_ns, uint64_t sample_rate = 0);

}  // namespace memtrail::aggregator
