// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the duty cycle's windows, the share of objects seen, and the scaling.
#include "aggregator/object_windows.h"

#include <gtest/gtest.h>

#include <cmath>

#include "aggregator/aggregator.h"

namespace memtrail::aggregator {
namespace {

TEST(DutyCycle, AttachedAtTheStartOfEachPeriodForItsShare) {
  DutyCycle cycle{0.25, 1.0};
  EXPECT_FALSE(cycle.exact());
  EXPECT_TRUE(cycle.attached_at(0));
  EXPECT_TRUE(cycle.attached_at(0.2));
  EXPECT_FALSE(cycle.attached_at(0.25));
  EXPECT_FALSE(cycle.attached_at(0.99));
  EXPECT_TRUE(cycle.attached_at(7.1));
  EXPECT_FALSE(cycle.attached_at(7.6));
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(0), 0.25);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(0.3), 1.0);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(3.1), 3.25);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(3.25), 4.0);  // at the switch: the next one
}

TEST(DutyCycle, ExactIsAlwaysAttachedAndNeverSwitches) {
  DutyCycle exact{1.0, 1.0};
  EXPECT_TRUE(exact.exact());
  EXPECT_TRUE(exact.attached_at(0.5));
  EXPECT_TRUE(exact.attached_at(123.9));
  EXPECT_TRUE(std::isinf(exact.next_switch_s(3)));
}

// The share seen is the time inside attached windows over the time since the probes were
// placed: 2 s of 8 here.
TEST(ObservedShare, UserCpuTimeInsideAttachedWindowsOverAllSinceThePlacement) {
  ObservedShare share;
  share.add_process(7, 10.0, /*attached=*/true);  // placed at 10 s
  share.switched(7, false, 11.0);                 // 1 s attached
  share.switched(7, true, 14.0);                  // 3 s detached
  share.switched(7, false, 15.0);                 // 1 s attached
  share.switched(8, true, 99.0);                  // an unknown pid: ignored
  auto seen = share.fraction(7, 18.0);            // 3 s detached, still
  ASSERT_TRUE(seen);
  EXPECT_DOUBLE_EQ(*seen, 2.0 / 8.0);
  // An open attached window counts up to the reading.
  share.switched(7, true, 18.0);
  EXPECT_DOUBLE_EQ(*share.fraction(7, 20.0), 4.0 / 10.0);
  // Without a reading (it exited), the last one stands: the switch at 18 s.
  EXPECT_DOUBLE_EQ(*share.fraction(7, std::nullopt), 2.0 / 8.0);
  auto sums = share.sums(7, 20.0);
  EXPECT_DOUBLE_EQ(sums.observed_s, 4.0);
  EXPECT_DOUBLE_EQ(sums.total_s, 10.0);
  EXPECT_FALSE(share.fraction(8, 1.0));
  share.forget(7);
  EXPECT_FALSE(share.knows(7));
}

TEST(ObservedShare, ProbesPlacedWhileDetachedCountFromTheNextWindow) {
  ObservedShare share;
  share.add_process(3, 0.0, /*attached=*/false);
  EXPECT_DOUBLE_EQ(*share.fraction(3, 0.0), 1.0);  // no CPU time yet: nothing missed
  share.switched(3, true, 0.5);
  share.switched(3, false, 1.0);
  EXPECT_DOUBLE_EQ(*share.fraction(3, 2.0), 0.25);
  // A reading that goes back (it cannot) is clamped to the last one, never a negative window:
  // this window opens at 1.0 s, not 0.7.
  share.switched(3, true, 0.7);
  share.switched(3, false, 2.5);
  EXPECT_DOUBLE_EQ(*share.fraction(3, 2.5), (0.5 + 1.5) / 2.5);
}

TEST(ScaleToWhole, DividesByTheShareAndSeesNothingOfNothing) {
  EXPECT_DOUBLE_EQ(scale_to_whole(50, 0.25), 200);
  EXPECT_DOUBLE_EQ(scale_to_whole(50, 1.0), 50);
  EXPECT_DOUBLE_EQ(scale_to_whole(0, 0.0), 0);
  EXPECT_DOUBLE_EQ(scale_to_whole(3, 0.0), 0);
}

// Python objects of a process seen a quarter of its time stand for 4 each, bytes and totals
// alike, and their sites say they are estimates; its malloc'd blocks, and another process's
// objects, stay counts.
TEST(Aggregator, ObjectsOfADutyCycledProcessAreScaledAndMarkedEstimated) {
  constexpr uint64_t kSecond = 1'000'000'000ull;
  constexpr auto kObject = model::AllocationKind::kPythonObject;
  model::Snapshot snapshot;
  snapshot.taken_at_ns = 100 * kSecond;
  snapshot.allocations = {{1, 0x1000, 56, 90 * kSecond, 5, kObject},
                          {1, 0x2000, 56, 91 * kSecond, 5, kObject},
                          {1, 0x3000, 4000, 92 * kSecond, 6, model::AllocationKind::kMalloc},
                          {2, 0x1000, 48, 93 * kSecond, 5, kObject}};
  // Site 5 of pid 1: 10 objects seen created, 2 alive.
  snapshot.sites = {{1, 5, 0, 10, 0xaaa}, {1, 6, 4000, 1, 0xbbb}, {2, 5, 0, 1, 0xccc}};
  Accumulator accumulator(0, 0);
  accumulator.set_object_shares({{1, 0.25}});
  accumulator.begin(snapshot.taken_at_ns, snapshot.sites);
  for (const auto& allocation : snapshot.allocations) accumulator.add(allocation);
  Aggregate result = std::move(accumulator).finish(snapshot.sites);
  ASSERT_EQ(result.sites.size(), 3u);
  const SiteSummary* objects = nullptr;
  const SiteSummary* blocks = nullptr;
  const SiteSummary* other = nullptr;
  for (const auto& site : result.sites) {
    if (site.pid == 1 && site.site_id == 5) objects = &site;
    if (site.pid == 1 && site.site_id == 6) blocks = &site;
    if (site.pid == 2) other = &site;
  }
  ASSERT_TRUE(objects && blocks && other);
  EXPECT_TRUE(objects->estimated);
  EXPECT_EQ(objects->outstanding_allocations, 8u);
  EXPECT_EQ(objects->outstanding_bytes, 448u);
  EXPECT_EQ(objects->total_allocations, 40u);
  EXPECT_EQ(objects->freed_allocations, 32u);
  EXPECT_FALSE(blocks->estimated);
  EXPECT_EQ(blocks->outstanding_bytes, 4000u);
  EXPECT_FALSE(other->estimated);
  EXPECT_EQ(other->outstanding_allocations, 1u);
  EXPECT_EQ(result.totals.outstanding_bytes, 448u + 4000u + 48u);
}

}  // namespace
}  // namespace memtrail::aggregator
