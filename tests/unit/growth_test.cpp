// SPDX-License-Identifier: Apache-2.0
// Leak verdicts on synthetic series: what each shape of memory over time must be called.
#include "aggregator/growth.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "aggregator/aggregator.h"

namespace memtrail::aggregator {
namespace {

constexpr double kInterval = 5;

// `count` points, one per interval, of bytes(t).
template <typename Bytes>
std::vector<GrowthPoint> series_of(int count, Bytes bytes) {
  std::vector<GrowthPoint> series;
  for (int i = 0; i < count; ++i) {
    double t = (i + 1) * kInterval;
    series.push_back({t, bytes(t), bytes(t) / 100});
  }
  return series;
}

// Blocks of every age up to the oldest: the median is half of it.
SiteNow never_freed(double oldest_age_s, uint64_t outstanding) {
  return {oldest_age_s, oldest_age_s / 2, outstanding, outstanding};
}

// Types' growth: least-squares slopes of objects and bytes per interval; a type gone from a
// site counts 0 from then on.
TEST(Growth, PythonTypesGrowByTheirObjectsAndBytesOverTheRun) {
  PythonTypeHistory history;
  PythonTypeKey site{1, 7, "Record"}, process{1, std::nullopt, "Record"};
  for (int i = 0; i < 4; ++i) {
    PythonTypeTotals totals;
    totals[site] = {static_cast<uint64_t>(100 * i), static_cast<uint64_t>(5600 * i)};
    totals[process] = totals[site];
    if (i < 2) totals[{1, 8, "dict"}] = {10, 640};
    history.record(kInterval * (i + 1), totals);
  }
  auto growth = history.growth(site);
  ASSERT_TRUE(growth);
  EXPECT_EQ(growth->points, 4u);
  EXPECT_NEAR(growth->objects_per_s, 100 / kInterval, 1e-9);
  EXPECT_NEAR(growth->bytes_per_s, 5600 / kInterval, 1e-9);
  auto gone = history.growth({1, 8, "dict"});
  ASSERT_TRUE(gone);
  EXPECT_LT(gone->objects_per_s, 0);  // 10, 10, 0, 0
  EXPECT_FALSE(history.growth({2, 7, "Record"}));
  history.forget_process(1);
  EXPECT_FALSE(history.growth(process));
}

TEST(Growth, SteadyLinearGrowthThatKeepsItsOldBlocksIsALeak) {
  auto series = series_of(12, [](double t) { return 1000 * t; });
  auto result = assess_growth(series, never_freed(60, 600), kInterval);
  EXPECT_EQ(result.verdict, Verdict::kLeak) << result.reason;
  EXPECT_NEAR(result.growth_bytes_per_s, 1000, 1e-6);
  EXPECT_NEAR(result.r_squared, 1, 1e-9);
  EXPECT_DOUBLE_EQ(result.grew_share, 1);
  EXPECT_FALSE(result.freed_any);
  EXPECT_EQ(result.reason,
            "+58.6 KiB/min for 55.0s, R² 1.00, oldest 1m00s, median age 30.0s, 0 of 600 freed");
  EXPECT_DOUBLE_EQ(result.median_age_s, 30);
}

TEST(Growth, NoisyGrowthIsStillALeakWhenTheTrendIsClear) {
  int i = 0;
  auto series = series_of(20, [&](double t) { return 500 * t + ((i++ % 3) - 1) * 300.0; });
  auto result = assess_growth(series, never_freed(100, 1000), kInterval);
  EXPECT_EQ(result.verdict, Verdict::kLeak) << result.reason;
  EXPECT_GT(result.r_squared, 0.9);
}

TEST(Growth, ACacheThatFillsThenStaysFlatIsSteady) {
  // An LRU cache: grows for a third of the run, then replaces entries at a constant size.
  auto series = series_of(18, [](double t) { return std::min(t, 30.0) * 2000; });
  SiteNow now{40, 20.0, 300, 900, 600};  // entries are evicted (freed), the survivors are old
  auto result = assess_growth(series, now, kInterval);
  EXPECT_EQ(result.verdict, Verdict::kSteady) << result.reason;
  EXPECT_NE(result.reason.find("flat at"), std::string::npos) << result.reason;
}

TEST(Growth, AStartUpPoolIsSteadyNeverALeak) {
  auto series = series_of(10, [](double) { return 1048576.0; });
  auto result = assess_growth(series, never_freed(50, 16), kInterval);
  EXPECT_EQ(result.verdict, Verdict::kSteady) << result.reason;
  EXPECT_DOUBLE_EQ(result.growth_bytes_per_s, 0);
}

TEST(Growth, ASawtoothOfBlocksFreedInBatchesIsTransient) {
  // Fills for 4 intervals, then everything is freed: the oldest block is never old.
  auto series = series_of(16, [](double t) { return std::fmod(t, 20.0) * 1000; });
  SiteNow now{12, 6.0, 15, 4000, 3985};
  auto result = assess_growth(series, now, kInterval);
  EXPECT_EQ(result.verdict, Verdict::kTransient) << result.reason;
}

TEST(Growth, ABurstThatIsGoneAgainIsNotALeak) {
  auto series = series_of(12, [](double t) { return t > 20 && t < 35 ? 5e6 : 1000.0; });
  SiteNow now{58, 29.0, 1, 5001, 5000};
  auto result = assess_growth(series, now, kInterval);
  EXPECT_NE(result.verdict, Verdict::kLeak) << result.reason;
  EXPECT_NE(result.verdict, Verdict::kSuspect) << result.reason;
}

TEST(Growth, GrowthInFitsAndStartsIsSuspect) {
  // Grows in two steps with long flat stretches: more memory at the end, but not steadily.
  auto series = series_of(16, [](double t) { return t < 25 ? 1000.0 : t < 70 ? 5000.0 : 9000.0; });
  auto result = assess_growth(series, never_freed(80, 90), kInterval);
  EXPECT_EQ(result.verdict, Verdict::kSuspect) << result.reason;
}

TEST(Growth, TooLittleHistorySaysSoInsteadOfGuessing) {
  auto series = series_of(3, [](double t) { return 1000 * t; });
  auto result = assess_growth(series, never_freed(15, 30), kInterval);
  EXPECT_EQ(result.verdict, Verdict::kTooShort);
  EXPECT_NE(result.reason.find("too little history"), std::string::npos) << result.reason;
  EXPECT_STREQ(verdict_name(result.verdict), "too_short");
}

// A 4-second run with -i 1: readings at about 1, 2 and 3 s, late by a few ms each, and the
// final one at 4 s. The rule (4 points over 3 intervals) must hold whatever the jitter.
TEST(Growth, FourReadingsOneIntervalApartGetAVerdictDespiteJitter) {
  std::vector<GrowthPoint> series{{1.043, 1000, 10},
                                  {2.012, 2000, 20},
                                  {3.027, 3000, 30},
                                  {3.981, 4000, 40}};  // span 2.938 s: less than 3 intervals
  auto result = assess_growth(series, never_freed(3.5, 40), 1.0);
  EXPECT_NE(result.verdict, Verdict::kTooShort) << result.reason;
  EXPECT_EQ(result.verdict, Verdict::kLeak) << result.reason;
  std::vector<ProcessMemoryPoint> memory{
      {1.043, 1e6, 0}, {2.012, 2e6, 0}, {3.027, 3e6, 0}, {3.981, 4e6, 0}};
  EXPECT_TRUE(assess_process_memory(memory, 1.0).assessed);
  // Three readings, or four within two intervals, are still too little.
  series.pop_back();
  EXPECT_EQ(assess_growth(series, never_freed(3.5, 30), 1.0).verdict, Verdict::kTooShort);
  std::vector<GrowthPoint> close{{1, 1, 1}, {1.5, 2, 2}, {2, 3, 3}, {2.4, 4, 4}};
  EXPECT_EQ(assess_growth(close, never_freed(3.5, 4), 1.0).verdict, Verdict::kTooShort);
}

// "Freed" is the aggregator's count of real frees, not total less the listed blocks (which
// --min-age and the read's timing make fewer than the blocks not freed).
TEST(Growth, FreedIsTheCountOfRealFrees) {
  auto series = series_of(12, [](double t) { return 1000 * t; });
  SiteNow now{60, 30, 500, 600, 0};  // 100 blocks too young to list, none freed
  auto result = assess_growth(series, now, kInterval);
  EXPECT_EQ(result.verdict, Verdict::kLeak) << result.reason;
  EXPECT_FALSE(result.freed_any);
  EXPECT_NE(result.reason.find("0 of 600 freed"), std::string::npos) << result.reason;
}

TEST(Growth, HistoryRecordsZeroesForSitesThatEmptiedAndStaysBounded) {
  GrowthHistory history(8);
  Aggregate with_site;
  SiteSummary site;
  site.pid = 7;
  site.site_id = 3;
  site.outstanding_bytes = 100;
  site.outstanding_allocations = 1;
  with_site.sites.push_back(site);
  for (int i = 0; i < 20; ++i) history.record(i, i % 2 ? Aggregate{} : with_site);
  const auto* series = history.series(7, 3);
  ASSERT_NE(series, nullptr);
  EXPECT_LE(series->size(), 8u);
  EXPECT_DOUBLE_EQ(series->front().t_s, 0);  // the whole span is kept
  EXPECT_DOUBLE_EQ(series->back().t_s, 19);
  EXPECT_DOUBLE_EQ(series->back().bytes, 0);
  EXPECT_EQ(history.series(7, 4), nullptr);
}

TEST(Growth, SitesBeyondTheLimitAreCountedNotFollowed) {
  GrowthHistory history(8, 1);
  Aggregate aggregate;
  SiteSummary first, second;
  first.pid = second.pid = 1;
  first.site_id = 1;
  second.site_id = 2;
  aggregate.sites = {first, second};
  history.record(1, aggregate);
  history.record(2, aggregate);
  EXPECT_NE(history.series(1, 1), nullptr);
  EXPECT_EQ(history.series(1, 2), nullptr);
  EXPECT_EQ(history.sites_not_followed(), 2u);
}

TEST(Growth, AssessSitesRanksLeaksFirstThenByGrowth) {
  GrowthHistory history;
  for (int i = 1; i <= 10; ++i) {
    Aggregate aggregate;
    SiteSummary flat, slow, fast;
    flat.pid = slow.pid = fast.pid = 1;
    flat.site_id = 1;
    flat.outstanding_bytes = 1'000'000;  // the biggest, but flat
    slow.site_id = 2;
    slow.outstanding_bytes = 100 * i;
    fast.site_id = 3;
    fast.outstanding_bytes = 1000 * i;
    for (auto* s : {&flat, &slow, &fast}) s->outstanding_allocations = s->total_allocations = 1;
    aggregate.sites = {flat, slow, fast};
    history.record(i * kInterval, aggregate);
    if (i == 10) {
      for (auto& s : aggregate.sites) s.oldest_timestamp_ns = 0;
      assess_sites(aggregate, history, kInterval, 60'000'000'000ull);
      ASSERT_EQ(aggregate.sites.size(), 3u);
      EXPECT_EQ(aggregate.sites[0].site_id, 3);
      EXPECT_EQ(aggregate.sites[1].site_id, 2);
      EXPECT_EQ(aggregate.sites[2].site_id, 1);
      EXPECT_EQ(aggregate.sites[0].growth->verdict, Verdict::kLeak);
      EXPECT_EQ(aggregate.sites[2].growth->verdict, Verdict::kSteady);
    }
  }
}

TEST(Growth, TheMedianAgeComesFromTheAgeHistogram) {
  std::array<uint32_t, SiteSummary::kAgeBuckets> histogram{};
  EXPECT_DOUBLE_EQ(median_age_s(histogram), 0);
  histogram[0] = 10;  // under a second
  EXPECT_DOUBLE_EQ(median_age_s(histogram), 0.5);
  histogram[5] = 30;  // 16 to 32 s: the median bucket now
  EXPECT_NEAR(median_age_s(histogram), 16 * std::sqrt(2.0), 1e-9);
}

std::vector<ProcessMemoryPoint> process_series(double rss_per_s, double traced_per_s) {
  std::vector<ProcessMemoryPoint> series;
  for (int i = 1; i <= 10; ++i) {
    double t = i * kInterval;
    series.push_back({t, 20e6 + rss_per_s * t, 1e6 + traced_per_s * t});
  }
  return series;
}

TEST(ProcessMemory, GrowthTheTracedAllocationsDoNotExplainIsFlagged) {
  // 40 kB/s of private memory, 1 kB/s traced: something else grows (direct mmap, say).
  auto result = assess_process_memory(process_series(40'000, 1'000), kInterval);
  EXPECT_TRUE(result.assessed);
  EXPECT_NEAR(result.rss_bytes_per_s, 40'000, 1e-6);
  EXPECT_NEAR(result.traced_bytes_per_s, 1'000, 1e-6);
  EXPECT_TRUE(result.untraced_growth);
  EXPECT_NE(result.reason.find("growth outside the traced allocators"), std::string::npos);
}

TEST(ProcessMemory, GrowthThatTheTracedHeapExplainsIsNotFlagged) {
  auto result = assess_process_memory(process_series(40'000, 36'000), kInterval);
  EXPECT_TRUE(result.assessed);
  EXPECT_FALSE(result.untraced_growth) << result.reason;
  // Small growth (under 1 MiB over the run) is never flagged.
  EXPECT_FALSE(assess_process_memory(process_series(1'000, 0), kInterval).untraced_growth);
}

TEST(ProcessMemory, TooShortASeriesIsNotAssessed) {
  auto series = process_series(40'000, 0);
  series.resize(2);
  EXPECT_FALSE(assess_process_memory(series, kInterval).assessed);
}

TEST(MemoryCoverage, TheShareIsTracedGrowthOverRssAnonGrowthFittedOverTheRun) {
  // 40 kB/s of RssAnon, 36 kB/s traced, over 9 intervals of 5 s: 1.8 MB against 1.62 MB.
  auto coverage = assess_coverage(process_series(40'000, 36'000), kInterval);
  ASSERT_TRUE(coverage.assessed) << coverage.reason;
  EXPECT_DOUBLE_EQ(coverage.span_s, 45);
  EXPECT_NEAR(coverage.rss_growth_bytes, 1.8e6, 1e-3);
  EXPECT_NEAR(coverage.traced_growth_bytes, 1.62e6, 1e-3);
  EXPECT_NEAR(coverage.share, 0.9, 1e-9);
  EXPECT_TRUE(coverage.reason.empty());
  // Traced bytes that shrink explain none of it; more traced than resident is said as such.
  EXPECT_EQ(assess_coverage(process_series(40'000, -1'000), kInterval).share, 0);
  EXPECT_NEAR(assess_coverage(process_series(40'000, 60'000), kInterval).share, 1.5, 1e-9);
}

TEST(MemoryCoverage, NoShareIsSaidWithoutGrowthOrHistory) {
  // 5 kB/s over 45 s: 225 kB, under 256 KiB.
  auto flat = assess_coverage(process_series(5'000, 5'000), kInterval);
  EXPECT_FALSE(flat.assessed);
  EXPECT_EQ(
      flat.reason,
      "RssAnon grew by only 219.7 KiB over 45.0s (less than 256.0 KiB): no growth to explain");
  auto shrinking = assess_coverage(process_series(-40'000, 0), kInterval);
  EXPECT_FALSE(shrinking.assessed);
  EXPECT_EQ(shrinking.reason.rfind("RssAnon shrank by 1.7 MiB over 45.0s", 0), 0u)
      << shrinking.reason;
  auto series = process_series(40'000, 36'000);
  series.resize(3);
  auto short_run = assess_coverage(series, kInterval);
  EXPECT_FALSE(short_run.assessed);
  EXPECT_EQ(short_run.reason,
            "too short a history: 3 readings over 10.0s (4 over 3 intervals needed)");
  EXPECT_FALSE(assess_coverage({}, kInterval).assessed);
}

}  // namespace
}  // namespace memtrail::aggregator
