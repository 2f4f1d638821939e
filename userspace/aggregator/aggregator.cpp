// SPDX-License-Identifier: Apache-2.0
// Group a snapshot's outstanding allocations by site and rank the sites.
#include "aggregator/aggregator.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <utility>

#include "aggregator/object_windows.h"
#include "aggregator/sampling.h"

namespace memtrail::aggregator {
namespace {

uint64_t site_key(uint32_t pid, int32_t site_id) {
  return (static_cast<uint64_t>(pid) << 32) | static_cast<uint32_t>(site_id);
}

}  // namespace

bool Accumulator::object_creation_site(uint32_t pid, uint64_t caller_address) const {
  if (!object_creation_sites_) return false;
  auto sites = object_creation_sites_->find(pid);
  return sites != object_creation_sites_->end() && sites->second.count(caller_address) != 0;
}

double Accumulator::scaled(uint32_t pid, double observed) const {
  auto share = object_shares_.find(pid);
  return share == object_shares_.end() ? observed : scale_to_whole(observed, share->second);
}

void Accumulator::begin(uint64_t taken_at_ns, const std::vector<model::SiteTotals>& sites) {
  taken_at_ns_ = taken_at_ns;
  for (const auto& site : sites) {
    if (site.read_at_ns != 0) totals_read_at_[site_key(site.pid, site.site_id)] = site.read_at_ns;
  }
}

void Accumulator::add(const model::OutstandingAllocation& allocation) {
  // Allocated after the snapshot's time: the next snapshot counts it (see the class).
  if (taken_at_ns_ != 0 && allocation.timestamp_ns > taken_at_ns_) return;
  // Mapped regions and Python objects are recorded whole, never sampled.
  bool sampled = sample_rate_ != 0 && !model::is_region(allocation.kind) &&
                 allocation.kind != model::AllocationKind::kPythonObject;
  double bytes = sampled ? estimated_bytes(allocation.size, sample_rate_)
                         : static_cast<double>(allocation.size);
  double allocations = sampled ? estimated_allocations(allocation.size, sample_rate_) : 1.0;
  bool estimated = false;
  if (allocation.kind == model::AllocationKind::kPythonObject && !object_shares_.empty()) {
    auto share = object_shares_.find(allocation.pid);
    if (share != object_shares_.end()) {
      bytes = scale_to_whole(bytes, share->second);
      allocations = scale_to_whole(allocations, share->second);
      estimated = true;
    }
  }
  total_.bytes += bytes;
  total_.allocations += allocations;
  total_estimated_ = total_estimated_ || estimated;
  uint64_t key = site_key(allocation.pid, allocation.site_id);
  Blocks& blocks = site_blocks_[key];
  auto read_at = totals_read_at_.find(key);
  if (read_at != totals_read_at_.end() && allocation.timestamp_ns > read_at->second) {
    blocks.later_allocations += allocations;
    blocks.later_bytes += bytes;
  } else {
    blocks.counted += allocations;
  }
  // A snapshot without a time (taken_at_ns 0) has ages of 0, never negative.
  uint64_t age =
      taken_at_ns_ > allocation.timestamp_ns ? taken_at_ns_ - allocation.timestamp_ns : 0;
  if (age < min_age_ns_) return;
  SiteSummary& site = by_site_[key];
  Sums& sums = site_sums_[key];
  if (sums.allocations == 0) {
    site.pid = allocation.pid;
    site.site_id = allocation.site_id;
    site.oldest_timestamp_ns = allocation.timestamp_ns;
    site.kind = allocation.kind;
    site.estimated = estimated;
  }
  sums.bytes += bytes;
  sums.allocations += allocations;
  site.oldest_timestamp_ns = std::min(site.oldest_timestamp_ns, allocation.timestamp_ns);
  uint64_t age_s = age / 1'000'000'000ull;
  size_t bucket = age_s == 0 ? 0
                             : std::min<size_t>(SiteSummary::kAgeBuckets - 1,
                                                64 - static_cast<size_t>(__builtin_clzll(age_s)));
  ++site.age_histogram[bucket];
  if (allocation.kind == model::AllocationKind::kPythonObject) {
    auto& of_type = site_types_[key][allocation.python_type];
    of_type.first += allocations;
    of_type.second += bytes;
  }
}

Aggregate Accumulator::finish(const std::vector<model::SiteTotals>& site_totals) && {
  Aggregate result;
  result.totals.outstanding_bytes = static_cast<uint64_t>(std::llround(total_.bytes));
  result.totals.outstanding_allocations = static_cast<uint64_t>(std::llround(total_.allocations));
  result.totals.estimated = total_estimated_;
  for (auto& [key, site] : by_site_) {
    site.outstanding_bytes = static_cast<uint64_t>(std::llround(site_sums_[key].bytes));
    site.outstanding_allocations =
        std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(site_sums_[key].allocations)));
    auto types = site_types_.find(key);
    if (types == site_types_.end()) continue;
    for (const auto& [type, sums] : types->second) {
      site.python_types.push_back({type, static_cast<uint64_t>(std::llround(sums.first)),
                                   static_cast<uint64_t>(std::llround(sums.second))});
    }
    std::sort(site.python_types.begin(), site.python_types.end(), [](const auto& a, const auto& b) {
      if (a.bytes != b.bytes) return a.bytes > b.bytes;
      if (a.objects != b.objects) return a.objects > b.objects;
      return a.type < b.type;
    });
  }
  for (const auto& totals : site_totals) {
    uint64_t key = site_key(totals.pid, totals.site_id);
    auto it = by_site_.find(key);
    if (it == by_site_.end()) {
      // No block in the table: everything its totals count was freed (a block younger than
      // --min-age is in site_blocks_, and one allocated after the totals were read is not
      // counted in them).
      if (totals.total_allocations == 0 || site_blocks_.count(key) != 0) continue;
      SiteSummary freed;
      freed.pid = totals.pid;
      freed.site_id = totals.site_id;
      freed.total_allocated_bytes = totals.total_bytes;
      freed.total_allocations = totals.total_allocations;
      freed.caller_address = totals.caller_address;
      freed.mismatched_frees = totals.mismatched_frees;
      // Known from its blocks, all gone; a site of Python objects from where it starts: the
      // objects seen there (and their bytes) stand for more, as its live objects would.
      freed.kind = model::AllocationKind::kUnknown;
      if (object_creation_site(totals.pid, totals.caller_address)) {
        freed.kind = model::AllocationKind::kPythonObject;
        freed.estimated = object_shares_.count(totals.pid) != 0;
        freed.total_allocated_bytes = static_cast<uint64_t>(
            std::llround(scaled(totals.pid, static_cast<double>(totals.total_bytes))));
        freed.total_allocations = static_cast<uint64_t>(
            std::llround(scaled(totals.pid, static_cast<double>(totals.total_allocations))));
      }
      freed.freed_allocations = freed.total_allocations;
      result.freed_sites.push_back(freed);
      continue;
    }
    const Blocks& blocks = site_blocks_[it->first];
    auto counted = static_cast<uint64_t>(std::llround(blocks.counted));
    // The kernel counted the objects it saw (and userspace their bytes); the blocks were
    // scaled: so are the totals.
    uint64_t total_allocations = totals.total_allocations;
    uint64_t total_bytes = totals.total_bytes;
    if (it->second.estimated) {
      total_allocations = static_cast<uint64_t>(
          std::llround(scaled(totals.pid, static_cast<double>(total_allocations))));
      total_bytes =
          static_cast<uint64_t>(std::llround(scaled(totals.pid, static_cast<double>(total_bytes))));
    }
    // With sampling, both sides are estimates: the difference is clamped at 0.
    it->second.freed_allocations = total_allocations > counted ? total_allocations - counted : 0;
    it->second.total_allocated_bytes =
        total_bytes + static_cast<uint64_t>(std::llround(blocks.later_bytes));
    it->second.total_allocations = it->second.freed_allocations + counted +
                                   static_cast<uint64_t>(std::llround(blocks.later_allocations));
    it->second.caller_address = totals.caller_address;
    it->second.mismatched_frees = totals.mismatched_frees;
  }
  result.sites.reserve(by_site_.size());
  for (auto& [key, site] : by_site_) result.sites.push_back(site);
  std::sort(result.sites.begin(), result.sites.end(), [](const auto& a, const auto& b) {
    if (a.outstanding_bytes != b.outstanding_bytes)
      return a.outstanding_bytes > b.outstanding_bytes;
    if (a.outstanding_allocations != b.outstanding_allocations) {
      return a.outstanding_allocations > b.outstanding_allocations;
    }
    if (a.pid != b.pid) return a.pid < b.pid;
    return a.site_id < b.site_id;
  });
  std::sort(result.freed_sites.begin(), result.freed_sites.end(), [](const auto& a, const auto& b) {
    if (a.total_allocated_bytes != b.total_allocated_bytes) {
      return a.total_allocated_bytes > b.total_allocated_bytes;
    }
    if (a.total_allocations != b.total_allocations) {
      return a.total_allocations > b.total_allocations;
    }
    if (a.pid != b.pid) return a.pid < b.pid;
    return a.site_id < b.site_id;
  });
  return result;
}

Aggregate aggregate(const model::Snapshot& snapshot, uint64_t min_age_ns, uint64_t sample_rate) {
  Accumulator accumulator(min_age_ns, sample_rate);
  accumulator.begin(snapshot.taken_at_ns, snapshot.sites);
  for (const auto& allocation : snapshot.allocations) accumulator.add(allocation);
  return std::move(accumulator).finish(snapshot.sites);
}

}  // namespace memtrail::aggregator
