// SPDX-License-Identifier: Apache-2.0
// Group a snapshot's outstanding allocations by site and rank the sites.
#include "aggregator/aggregator.h"

#include <algorithm>
#include <unordered_map>

namespace memtrail::aggregator {
namespace {

uint64_t site_key(uint32_t pid, int32_t site_id) {
  return (static_cast<uint64_t>(pid) << 32) | static_cast<uint32_t>(site_id);
}

}  // namespace

Aggregate aggregate(const model::Snapshot& snapshot, uint64_t min_age_ns) {
  Aggregate result;
  std::unordered_map<uint64_t, SiteSummary> by_site;
  for (const auto& allocation : snapshot.allocations) {
    result.totals.outstanding_bytes += allocation.size;
    ++result.totals.outstanding_allocations;
    // A block recorded after the snapshot's clock reading has age 0, never negative.
    uint64_t age = snapshot.taken_at_ns > allocation.timestamp_ns
                       ? snapshot.taken_at_ns - allocation.timestamp_ns
                       : 0;
    if (age < min_age_ns) continue;
    SiteSummary& site = by_site[site_key(allocation.pid, allocation.site_id)];
    if (site.outstanding_allocations == 0) {
      site.pid = allocation.pid;
      site.site_id = allocation.site_id;
      site.oldest_timestamp_ns = allocation.timestamp_ns;
      site.kind = allocation.kind;
    }
    site.outstanding_bytes += allocation.size;
    ++site.outstanding_allocations;
    site.oldest_timestamp_ns = std::min(site.oldest_timestamp_ns, allocation.timestamp_ns);
  }
  for (const auto& totals : snapshot.sites) {
    auto it = by_site.find(site_key(totals.pid, totals.site_id));
    if (it == by_site.end()) continue;
    it->second.total_allocated_bytes = totals.total_bytes;
    it->second.total_allocations = totals.total_allocations;
    it->second.caller_address = totals.caller_address;
  }
  result.sites.reserve(by_site.size());
  for (auto& [key, site] : by_site) result.sites.push_back(site);
  std::sort(result.sites.begin(), result.sites.end(), [](const auto& a, const auto& b) {
    if (a.outstanding_bytes != b.outstanding_bytes) return a.outstanding_bytes > b.outstanding_bytes;
    if (a.outstanding_allocations != b.outstanding_allocations) {
      return a.outstanding_allocations > b.outstanding_allocations;
    }
    if (a.pid != b.pid) return a.pid < b.pid;
    return a.site_id < b.site_id;
  });
  return result;
}

}  // namespace memtrail::aggregator
