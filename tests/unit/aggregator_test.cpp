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

TEST(Aggregator, SumsPerSiteAndRanksByOutstandingBytes) {
  auto snapshot = snapshot_at(100 * kSecond);
  snapshot.allocations = {
      {1, 0x1000, 100, 90 * kSecond, 7, kMalloc}, {1, 0x2000, 100, 80 * kSecond, 7, kMalloc},
      {1, 0x3000, 500, 95 * kSecond, 8, kCalloc}, {2, 0x1000, 50, 99 * kSecond, 7, kMalloc},
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

TEST(Aggregator, AllocationNewerThanSnapshotClockCountsAsAgeZero) {
  auto snapshot = snapshot_at(10 * kSecond);
  snapshot.allocations = {{1, 0x1000, 100, 11 * kSecond, 1, kMalloc}};
  EXPECT_EQ(aggregate(snapshot, 0).sites.size(), 1u);
  EXPECT_TRUE(aggregate(snapshot, 1).sites.empty());
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
