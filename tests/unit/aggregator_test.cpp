// SPDX-License-Identifier: Apache-2.0
// The aggregator groups outstanding allocations by (pid, site), ranks them and applies --min-age.
#include "aggregator/aggregator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "aggregator/sampling.h"

namespace memtrail::aggregator {
namespace {

constexpr uint64_t kSecond = 1'000'000'000ull;
constexpr auto kMalloc = model::AllocationKind::kMalloc;
constexpr auto kCalloc = model::AllocationKind::kCalloc;

model::Snapshot snapshot_at(uint64_t now_ns) {
  model::Snapshot snapshot;
  snapshot.taken_at_ns = now_ns;
  return snapshot;
}

// Python objects: each site's by type (the type in place of nothing: their sizes are read),
// never scaled as samples, however --sample-rate is set.
TEST(Aggregator, SumsEachSitesPythonObjectsByTypeAndNeverScalesThem) {
  constexpr auto kObject = model::AllocationKind::kPythonObject;
  constexpr uint64_t kDict = 0x7000, kStr = 0x8000;
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {
      {1, 0x1000, 64, 90 * kSecond, 7, kObject, kDict},
      {1, 0x2000, 184, 90 * kSecond, 7, kObject, kDict},
      {1, 0x3000, 110, 90 * kSecond, 7, kObject, kStr},
      {1, 0x4000, 100, 99 * kSecond, 7, kObject, kStr},  // younger than --min-age
      {1, 0x5000, 4096, 90 * kSecond, 8, kMalloc},
  };
  snapshot.sites = {{1, 7, 0, 5, 0xaaa}, {1, 8, 4096, 1, 0xbbb}};
  Aggregate result = aggregate(snapshot, 5 * kSecond, /*sample_rate=*/1 << 20);
  ASSERT_EQ(result.sites.size(), 2u);
  const auto& objects = result.sites[1].site_id == 7 ? result.sites[1] : result.sites[0];
  EXPECT_EQ(objects.outstanding_bytes, 64u + 184 + 110);
  EXPECT_EQ(objects.outstanding_allocations, 3u);
  ASSERT_EQ(objects.python_types.size(), 2u);
  EXPECT_EQ(objects.python_types[0].type, kDict);  // most bytes first
  EXPECT_EQ(objects.python_types[0].objects, 2u);
  EXPECT_EQ(objects.python_types[0].bytes, 248u);
  EXPECT_EQ(objects.python_types[1].type, kStr);
  EXPECT_EQ(objects.python_types[1].objects, 1u);
  EXPECT_EQ(objects.python_types[1].bytes, 110u);
  EXPECT_TRUE(
      (result.sites[0].site_id == 8 ? result.sites[0] : result.sites[1]).python_types.empty());
  // By name, per site and per process; two types of one name add up. A type sized by estimate
  // marks its sums, and a name it shares with an exactly sized one: the sum holds an estimate.
  auto totals = python_type_totals(
      result,
      [](uint32_t, uint64_t type) {
        return type == kDict ? std::string("dict") : std::string("str");
      },
      [](uint32_t, uint64_t type) { return type != kStr; });
  EXPECT_EQ(totals.size(), 4u);
  EXPECT_EQ((totals[{1, 7, "dict"}].objects), 2u);
  EXPECT_FALSE((totals[{1, 7, "dict"}].sized_by_estimate));
  EXPECT_FALSE((totals[{1, std::nullopt, "dict"}].sized_by_estimate));
  EXPECT_EQ((totals[{1, std::nullopt, "str"}].bytes), 110u);
  EXPECT_TRUE((totals[{1, std::nullopt, "str"}].sized_by_estimate));
  EXPECT_TRUE((totals[{1, 7, "str"}].sized_by_estimate));
  auto one_name = python_type_totals(
      result, [](uint32_t, uint64_t) { return std::string("x"); },
      [](uint32_t, uint64_t type) { return type != kStr; });
  EXPECT_EQ((one_name[{1, std::nullopt, "x"}].objects), 3u);
  EXPECT_TRUE((one_name[{1, std::nullopt, "x"}].sized_by_estimate));
  auto all_exact = python_type_totals(
      result, [](uint32_t, uint64_t) { return std::string("x"); },
      [](uint32_t, uint64_t) { return true; });
  EXPECT_FALSE((all_exact[{1, std::nullopt, "x"}].sized_by_estimate));
}

TEST(Aggregator, SumsPerSiteAndRanksByOutstandingBytes) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {
      {1, 0x1000, 100, 90 * kSecond, 7, kMalloc},
      {1, 0x2000, 100, 80 * kSecond, 7, kMalloc},
      {1, 0x3000, 500, 95 * kSecond, 8, kCalloc},
      {2, 0x1000, 50, 99 * kSecond, 7, kMalloc},
  };
  snapshot.sites = {{1, 7, 1000, 10, 0xaaa}, {1, 8, 500, 1, 0xbbb}, {2, 7, 50, 1, 0xccc}};
  Aggregate result = aggregate(snapshot, 0);

  ASSERT_EQ(result.sites.size(), 3u);
  EXPECT_EQ(result.sites[0].site_id, 8);
  EXPECT_EQ(result.sites[0].outstanding_bytes, 500u);
  EXPECT_EQ(result.sites[0].kind, kCalloc);
  EXPECT_EQ(result.sites[1].pid, 1u);
  EXPECT_EQ(result.sites[1].site_id, 7);
  EXPECT_EQ(result.sites[1].outstanding_bytes, 200u);
  EXPECT_EQ(result.sites[1].outstanding_allocations, 2u);
  EXPECT_EQ(result.sites[1].oldest_timestamp_ns, 80 * kSecond);
  EXPECT_EQ(result.sites[1].total_allocated_bytes, 1000u);
  EXPECT_EQ(result.sites[1].total_allocations, 10u);
  EXPECT_EQ(result.sites[1].caller_address, 0xaaau);
  // Same stack id in another process is another site.
  EXPECT_EQ(result.sites[2].pid, 2u);
  EXPECT_EQ(result.sites[2].outstanding_bytes, 50u);
  EXPECT_EQ(result.totals.outstanding_bytes, 750u);
  EXPECT_EQ(result.totals.outstanding_allocations, 4u);
}

TEST(Aggregator, MinAgeHidesYoungAllocationsButKeepsThemInTotals) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {{1, 0x1000, 100, 99 * kSecond, 1, kMalloc},   // 1 s old
                          {1, 0x2000, 300, 95 * kSecond, 1, kMalloc},   // 5 s old
                          {1, 0x3000, 700, 99 * kSecond, 2, kMalloc}};  // 1 s old
  Aggregate result = aggregate(snapshot, 2 * kSecond);
  ASSERT_EQ(result.sites.size(), 1u);
  EXPECT_EQ(result.sites[0].site_id, 1);
  EXPECT_EQ(result.sites[0].outstanding_bytes, 300u);
  EXPECT_EQ(result.sites[0].outstanding_allocations, 1u);
  EXPECT_EQ(result.totals.outstanding_bytes, 1100u);
}

// The tracer reads the site totals at the snapshot's time, then the table: a block allocated
// after that time is not in the totals yet, so it waits for the next snapshot (it used to be
// counted with age 0, and made its site's totals disagree with its blocks).
TEST(Aggregator, AllocationAfterTheSnapshotTimeWaitsForTheNextSnapshot) {
  auto snapshot = snapshot_at(10 * kSecond);
  snapshot.allocations = {{1, 0x1000, 100, 11 * kSecond, 1, kMalloc},
                          {1, 0x2000, 100, 9 * kSecond, 1, kMalloc}};
  snapshot.sites = {{1, 1, 100, 1, 0xaaa}};
  Aggregate result = aggregate(snapshot, 0);
  ASSERT_EQ(result.sites.size(), 1u);
  EXPECT_EQ(result.sites[0].outstanding_allocations, 1u);
  EXPECT_EQ(result.sites[0].total_allocations, 1u);
  EXPECT_EQ(result.sites[0].freed_allocations, 0u);
  EXPECT_EQ(result.totals.outstanding_allocations, 1u);
}

// Blocks allocated after their site's totals were read (but before the snapshot's time) are
// not in those totals yet: they are added, never taken for frees.
TEST(Aggregator, BlocksAllocatedAfterTheirSiteTotalsAreAddedToThem) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {{1, 0x1000, 10, 90 * kSecond, 1, kMalloc},
                          {1, 0x2000, 30, 97 * kSecond, 1, kMalloc},
                          {1, 0x3000, 10, 91 * kSecond, 2, kMalloc}};
  model::SiteTotals never{1, 1, 10, 1, 0xaaa};
  never.read_at_ns = 95 * kSecond;
  model::SiteTotals freeing{1, 2, 40, 4, 0xbbb};
  freeing.read_at_ns = 95 * kSecond;
  snapshot.sites = {never, freeing};
  Aggregate result = aggregate(snapshot, 0);
  ASSERT_EQ(result.sites.size(), 2u);
  EXPECT_EQ(result.sites[0].site_id, 1);
  EXPECT_EQ(result.sites[0].outstanding_allocations, 2u);
  EXPECT_EQ(result.sites[0].total_allocations, 2u);
  EXPECT_EQ(result.sites[0].total_allocated_bytes, 40u);
  EXPECT_EQ(result.sites[0].freed_allocations, 0u);
  EXPECT_EQ(result.sites[1].total_allocations, 4u);
  EXPECT_EQ(result.sites[1].freed_allocations, 3u);
}

// A site that never frees shows 0 freed, even with blocks that --min-age hides (they are
// outstanding, only too young to list) and blocks allocated while the table was read.
TEST(Aggregator, FreedCountsOnlyRealFrees) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {{1, 0x1000, 10, 50 * kSecond, 1, kMalloc},
                          {1, 0x2000, 10, 60 * kSecond, 1, kMalloc},
                          {1, 0x3000, 10, 99 * kSecond, 1, kMalloc},   // young
                          {1, 0x4000, 10, 101 * kSecond, 1, kMalloc},  // after the totals
                          {1, 0x5000, 10, 40 * kSecond, 2, kMalloc}};
  // Site 1: 3 calls by the snapshot's time, none freed; site 2: 5 calls, 4 freed.
  snapshot.sites = {{1, 1, 30, 3, 0xaaa}, {1, 2, 50, 5, 0xbbb}};
  Aggregate result = aggregate(snapshot, 2 * kSecond);
  ASSERT_EQ(result.sites.size(), 2u);
  const auto& never = result.sites[0].site_id == 1 ? result.sites[0] : result.sites[1];
  const auto& freeing = result.sites[0].site_id == 2 ? result.sites[0] : result.sites[1];
  EXPECT_EQ(never.outstanding_allocations, 2u);  // the young one is hidden, not freed
  EXPECT_EQ(never.total_allocations, 3u);
  EXPECT_EQ(never.freed_allocations, 0u);
  EXPECT_EQ(freeing.freed_allocations, 4u);
  EXPECT_EQ(result.totals.outstanding_allocations, 4u);
}

// A site whose blocks were all freed has no block in the table: it is kept apart with its
// totals, the most bytes first. A site with a block too young to show is not one of them.
TEST(Aggregator, SitesThatFreedEverythingAreKeptApartWithTheirTotals) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {{1, 0x1000, 10, 50 * kSecond, 1, kMalloc},
                          {1, 0x2000, 10, 99 * kSecond, 4, kMalloc}};  // young: hidden
  snapshot.sites = {{1, 1, 30, 3, 0xaaa},
                    {1, 2, 500, 50, 0xbbb},
                    {2, 3, 9000, 3, 0xccc, 2},
                    {1, 4, 10, 1, 0xddd},
                    {1, 5, 0, 0, 0xeee}};  // nothing allocated yet: not a site
  Aggregate result = aggregate(snapshot, 2 * kSecond);
  ASSERT_EQ(result.sites.size(), 1u);
  ASSERT_EQ(result.freed_sites.size(), 2u);
  EXPECT_EQ(result.freed_sites[0].pid, 2u);
  EXPECT_EQ(result.freed_sites[0].site_id, 3);
  EXPECT_EQ(result.freed_sites[0].total_allocated_bytes, 9000u);
  EXPECT_EQ(result.freed_sites[0].total_allocations, 3u);
  EXPECT_EQ(result.freed_sites[0].freed_allocations, 3u);
  EXPECT_EQ(result.freed_sites[0].outstanding_bytes, 0u);
  EXPECT_EQ(result.freed_sites[0].mismatched_frees, 2u);
  EXPECT_EQ(result.freed_sites[0].caller_address, 0xcccu);
  EXPECT_EQ(result.freed_sites[1].site_id, 2);
  EXPECT_EQ(result.freed_sites[1].total_allocated_bytes, 500u);
}

TEST(Aggregator, TiesAreBrokenByCountThenPidThenSite) {
  auto snapshot = snapshot_at(10 * kSecond);
  snapshot.allocations = {{2, 0x1, 100, 0, 5, kMalloc},
                          {1, 0x2, 100, 0, 9, kMalloc},
                          {1, 0x3, 100, 0, 3, kMalloc},
                          {3, 0x4, 50, 0, 1, kMalloc},
                          {3, 0x5, 50, 0, 1, kMalloc}};
  auto sites = aggregate(snapshot, 0).sites;
  ASSERT_EQ(sites.size(), 4u);
  EXPECT_EQ(sites[0].pid, 3u);  // 100 bytes in 2 allocations beats 100 bytes in 1
  EXPECT_EQ(sites[1].pid, 1u);
  EXPECT_EQ(sites[1].site_id, 3);
  EXPECT_EQ(sites[2].site_id, 9);
  EXPECT_EQ(sites[3].pid, 2u);
}

TEST(Aggregator, FallbackSitesWithNegativeIdsAreKeptApart) {
  auto snapshot = snapshot_at(10 * kSecond);
  snapshot.allocations = {{1, 0x1, 10, 0, -5, kMalloc}, {1, 0x2, 20, 0, 5, kMalloc}};
  auto sites = aggregate(snapshot, 0).sites;
  ASSERT_EQ(sites.size(), 2u);
  EXPECT_EQ(sites[0].site_id, 5);
  EXPECT_EQ(sites[1].site_id, -5);
}

TEST(Aggregator, EmptySnapshot) {
  auto result = aggregate(snapshot_at(1), 0);
  EXPECT_TRUE(result.sites.empty());
  EXPECT_EQ(result.totals.outstanding_bytes, 0u);
}

TEST(Sampling, ProbabilityAndEstimatesFollowTheByteSamplingLaw) {
  EXPECT_DOUBLE_EQ(sampling_probability(100, 0), 1.0);
  EXPECT_DOUBLE_EQ(estimated_bytes(100, 0), 100.0);
  EXPECT_DOUBLE_EQ(estimated_allocations(100, 0), 1.0);
  EXPECT_NEAR(sampling_probability(4096, 4096), 1 - std::exp(-1.0), 1e-12);
  EXPECT_NEAR(estimated_bytes(4096, 4096), 4096 / (1 - std::exp(-1.0)), 1e-6);
  // A tiny block stands for about `rate` bytes; a huge one for itself.
  EXPECT_NEAR(estimated_bytes(1, 1 << 20), 1 << 20, 1.0);
  EXPECT_NEAR(estimated_bytes(100 << 20, 1 << 20), 100 << 20, 1.0);
  EXPECT_DOUBLE_EQ(estimated_bytes(0, 4096), 0.0);
}

// Simulates the BPF side's sampler with its own tables: the estimate of the total must land
// near the truth (unbiased), which a wrong weight or distance table would miss by far.
TEST(Sampling, TablesGiveUnbiasedEstimates) {
  // The sizes the tracer asks for: its BPF program's (bpf/alloc_events.h).
  constexpr size_t kQuantiles = 1024, kWeights = 1025;
  constexpr uint32_t kWeightSteps = 128;
  auto quantiles = exponential_quantiles(kQuantiles);
  auto weights = sample_weight_table(kWeights, kWeightSteps);
  ASSERT_EQ(quantiles.size(), kQuantiles);
  ASSERT_EQ(weights.size(), kWeights);
  EXPECT_EQ(weights[0], 65536u);
  const uint64_t rate = 4096;
  std::mt19937 random(42);
  std::uniform_int_distribution<uint64_t> sizes(16, 528);
  int64_t countdown = static_cast<int64_t>(rate * quantiles[random() % quantiles.size()] >> 16) + 1;
  double true_bytes = 0, estimated = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    uint64_t size = sizes(random);
    true_bytes += static_cast<double>(size);
    countdown -= static_cast<int64_t>(size);
    if (countdown > 0) continue;
    countdown = static_cast<int64_t>(rate * quantiles[random() % quantiles.size()] >> 16) + 1;
    // The kernel's interpolation in the weight table.
    uint64_t position = size * kWeightSteps;
    uint64_t index = position / rate, remainder = position - index * rate;
    ASSERT_LT(index, weights.size() - 1);
    double kernel_estimate = static_cast<double>(
        (rate * weights[index] + (weights[index + 1] - weights[index]) * remainder) >> 16);
    EXPECT_NEAR(kernel_estimate, estimated_bytes(size, rate), estimated_bytes(size, rate) * 0.002);
    estimated += estimated_bytes(size, rate);
  }
  EXPECT_NEAR(estimated / true_bytes, 1.0, 0.02);
}

TEST(Aggregator, SampledAllocationsAreWeightedIntoEstimates) {
  auto snapshot = snapshot_at(10 * kSecond);
  snapshot.allocations = {{1, 0x1, 4096, 0, 1, kMalloc}, {1, 0x2, 4096, 0, 1, kMalloc}};
  auto result = aggregate(snapshot, 0, 4096);
  ASSERT_EQ(result.sites.size(), 1u);
  double each = 4096 / (1 - std::exp(-1.0));
  EXPECT_EQ(result.sites[0].outstanding_bytes, static_cast<uint64_t>(std::llround(2 * each)));
  EXPECT_EQ(result.sites[0].outstanding_allocations, 3u);  // 2 / 0.632 = 3.16
  EXPECT_EQ(result.totals.outstanding_bytes, static_cast<uint64_t>(std::llround(2 * each)));
}

}  // namespace
}  // namespace memtrail::aggregator
