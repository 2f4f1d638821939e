// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the duty cycle's windows, the share of objects seen, and the scaling.
#include "aggregator/object_windows.h"

#include <gtest/gtest.h>

#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "aggregator/aggregator.h"
#include "common/error.h"

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

// A run that launches a command opens its first window one period late (the command's
// start-up left out): detached until then, then the same windows shifted.
TEST(DutyCycle, AFirstWindowOpenedLateShiftsEveryWindow) {
  DutyCycle cycle{0.25, 1.0, 1.0};
  EXPECT_FALSE(cycle.attached_at(0));
  EXPECT_FALSE(cycle.attached_at(0.2));
  EXPECT_FALSE(cycle.attached_at(0.99));
  EXPECT_TRUE(cycle.attached_at(1.0));
  EXPECT_TRUE(cycle.attached_at(1.2));
  EXPECT_FALSE(cycle.attached_at(1.25));
  EXPECT_TRUE(cycle.attached_at(7.1));
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(0), 1.0);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(0.5), 1.0);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(1.0), 1.25);
  EXPECT_DOUBLE_EQ(cycle.next_switch_s(1.3), 2.0);
  DutyCycle half_period_late{0.25, 1.0, 0.5};  // the windows keep their phase from the first
  EXPECT_TRUE(half_period_late.attached_at(2.6));
  EXPECT_FALSE(half_period_late.attached_at(3.1));
  EXPECT_DOUBLE_EQ(half_period_late.next_switch_s(2.6), 2.75);
}

TEST(DutyCycle, ExactIsAlwaysAttachedAndNeverSwitches) {
  DutyCycle exact{1.0, 1.0};
  EXPECT_TRUE(exact.exact());
  EXPECT_TRUE(exact.attached_at(0.5));
  EXPECT_TRUE(exact.attached_at(123.9));
  EXPECT_TRUE(std::isinf(exact.next_switch_s(3)));
}

// Without allocations counted, the share seen is the time inside attached windows over the
// time since the probes were placed: 2 s of 8 here.
TEST(ObservedShare, TimeInsideAttachedWindowsOverAllSinceThePlacement) {
  ObservedShare share;
  share.add_process(7, {10.0}, /*attached=*/true);  // placed at 10 s
  share.switched(7, false, {11.0});                 // 1 s attached
  share.switched(7, true, {14.0});                  // 3 s detached
  share.switched(7, false, {15.0});                 // 1 s attached
  share.switched(8, true, {99.0});                  // an unknown pid: ignored
  auto seen = share.share(7, WorkReading{18.0});    // 3 s detached, still
  ASSERT_TRUE(seen);
  EXPECT_DOUBLE_EQ(seen->fraction, 2.0 / 8.0);
  EXPECT_EQ(seen->basis, ShareBasis::kTime);
  EXPECT_STREQ(share_basis_name(seen->basis), "time");
  // An open attached window counts up to the reading.
  share.switched(7, true, {18.0});
  EXPECT_DOUBLE_EQ(*share.fraction(7, WorkReading{20.0}), 4.0 / 10.0);
  // Without a reading (it exited), the last one stands: the switch at 18 s.
  EXPECT_DOUBLE_EQ(*share.fraction(7, std::nullopt), 2.0 / 8.0);
  auto sums = share.sums(7, WorkReading{20.0});
  EXPECT_DOUBLE_EQ(sums.observed, 4.0);
  EXPECT_DOUBLE_EQ(sums.total, 10.0);
  EXPECT_FALSE(share.fraction(8, WorkReading{1.0}));
  share.forget(7);
  EXPECT_FALSE(share.knows(7));
}

TEST(ObservedShare, ProbesPlacedWhileDetachedCountFromTheNextWindow) {
  ObservedShare share;
  share.add_process(3, {0.0}, /*attached=*/false);
  EXPECT_DOUBLE_EQ(*share.fraction(3, WorkReading{0.0}), 1.0);  // no time yet: nothing missed
  share.switched(3, true, {0.5});
  share.switched(3, false, {1.0});
  EXPECT_DOUBLE_EQ(*share.fraction(3, WorkReading{2.0}), 0.25);
  // A reading that goes back (it cannot) is clamped to the last one, never a negative window:
  // this window opens at 1.0 s, not 0.7.
  share.switched(3, true, {0.7});
  share.switched(3, false, {2.5});
  EXPECT_DOUBLE_EQ(*share.fraction(3, WorkReading{2.5}), (0.5 + 1.5) / 2.5);
}

// A busy process, as bench/python_objects.py measured one: attached 10 % of each second it
// slows 60x, so its windows hold 10 % of the time but few of its allocations (and objects).
// The share is of allocations: 200 of 19,000 here, where the time says 3 s of 30.
TEST(ObservedShare, AllocationsInsideAttachedWindowsOverAllSinceThePlacement) {
  ObservedShare share;
  share.add_process(5, {0.0, 1000}, /*attached=*/true);  // 1,000 before the placement
  double clock = 0;
  uint64_t allocations = 1000;
  for (int second = 0; second < 30; ++second) {
    allocations += 20;  // 0.1 s attached
    clock += 0.1;
    share.switched(5, false, {clock, allocations});
    allocations += 600;  // 0.9 s detached: 60x the pace
    clock += 0.9;
    share.switched(5, true, {clock, allocations});
  }
  // The window open at the reading counts up to it: 10 more allocations in it.
  auto seen = share.share(5, WorkReading{clock + 0.05, allocations + 10});
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->basis, ShareBasis::kAllocations);
  EXPECT_STREQ(share_basis_name(seen->basis), "allocations");
  EXPECT_DOUBLE_EQ(seen->fraction, (30.0 * 20 + 10) / (30.0 * 620 + 10));
  auto sums = share.sums(5, WorkReading{clock + 0.05, allocations + 10});
  EXPECT_DOUBLE_EQ(sums.observed, 610);
  EXPECT_DOUBLE_EQ(sums.total, 18610);
  // Exited: its last reading stands (the window opened at the last switch holds nothing).
  EXPECT_DOUBLE_EQ(*share.fraction(5, std::nullopt), 600.0 / 18600.0);
  // A reading without the count (it could not be read) leaves the count as it was, and the
  // time goes on.
  share.switched(5, false, {clock + 0.1, std::nullopt});
  EXPECT_DOUBLE_EQ(*share.fraction(5, WorkReading{clock + 0.1, allocations}), 600.0 / 18600.0);
}

// Fewer than kMinAllocationsSeen allocations inside the windows measure nothing to within
// +-10 %: a process that allocates little (a loop of small objects, all pymalloc's) gets the
// share of time. Past the threshold, allocations are the basis.
TEST(ObservedShare, TooFewAllocationsSeenFallBackToTheTime) {
  ObservedShare share;
  share.add_process(9, {0.0, 0}, /*attached=*/true);
  share.switched(9, false, {0.25, 99});  // 99 allocations in the first window
  share.switched(9, true, {1.0, 5000});
  auto seen = share.share(9, WorkReading{1.0, 5000});
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->basis, ShareBasis::kTime);
  EXPECT_DOUBLE_EQ(seen->fraction, 0.25);
  auto sums = share.sums(9, WorkReading{1.0, 5000});
  EXPECT_EQ(sums.basis, ShareBasis::kTime);
  EXPECT_DOUBLE_EQ(sums.total, 1.0);
  // One more inside the open window: 100 seen.
  seen = share.share(9, WorkReading{1.1, 5001});
  EXPECT_EQ(seen->basis, ShareBasis::kAllocations);
  EXPECT_DOUBLE_EQ(seen->fraction, 100.0 / 5001.0);
  // None counted at all (the count could not be set up): time, whatever the switches carry.
  share.add_process(10, {0.0}, /*attached=*/false);
  share.switched(10, true, {0.5, 1000});
  share.switched(10, false, {1.0, 2000});
  seen = share.share(10, WorkReading{2.0, 3000});
  EXPECT_EQ(seen->basis, ShareBasis::kTime);
  EXPECT_DOUBLE_EQ(seen->fraction, 0.25);
}

// The ring holds what every CPU can create in a window and its close's delay, at the stated
// maximum rate, as a power of two within the bounds: the default 10 % of a second on 2 CPUs
// is 2 x 0.2 s x 500,000 = 200,000 objects, 262,144 entries, where 65,536 held a third of
// it; 90 % of it, 1,000,000, 1,048,576 entries. Exact mode reads no ring.
TEST(NewObjectRing, HoldsWhatEveryCpuCanCreateInAWindowBounded) {
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{0.1, 1.0}, 2), 262'144u);
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{0.9, 1.0}, 2), 1'048'576u);
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{0.1, 1.0}, 1), 131'072u);
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{0.001, 1.0}, 0), 65'536u);  // 0 CPUs: as 1
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{0.9, 1.0}, 256), NewObjectRing::kMaxRingEntries);
  EXPECT_EQ(NewObjectRing::entries_for(DutyCycle{1.0, 1.0}, 2), 1u);
  for (uint32_t cpus : {1u, 3u, 7u, 64u}) {
    for (double share : {0.01, 0.1, 0.33, 0.5, 0.99}) {
      uint32_t entries = NewObjectRing::entries_for(DutyCycle{share, 1.0}, cpus);
      EXPECT_EQ(entries & (entries - 1), 0u) << entries;
      EXPECT_GE(entries, NewObjectRing::kMinRingEntries);
      EXPECT_LE(entries, NewObjectRing::kMaxRingEntries);
      double most =
          cpus * (share + NewObjectRing::kCloseDelayS) * NewObjectRing::kMaxCreationsPerCpuS;
      if (entries < NewObjectRing::kMaxRingEntries) {
        EXPECT_GE(entries, most) << cpus << " " << share;
      }
    }
  }
}

// MEMTRAIL_PYTHON_LOG_ENTRIES overrides the size: a power of two from 16 to 2^24, else one
// error line saying what is wrong and what to do.
TEST(NewObjectRing, TheOverrideIsAPowerOfTwoInRangeOrAnError) {
  EXPECT_FALSE(NewObjectRing::override_from(nullptr).has_value());
  EXPECT_FALSE(NewObjectRing::override_from("").has_value());
  EXPECT_EQ(NewObjectRing::override_from("16"), 16u);
  EXPECT_EQ(NewObjectRing::override_from("65536"), 65'536u);
  EXPECT_EQ(NewObjectRing::override_from("16777216"), 1u << 24);
  for (const char* bad :
       {"8", "1000", "33554432", "-64", "+64", " 64", "64k", "abc", "99999999999999999999999"}) {
    try {
      NewObjectRing::override_from(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("MEMTRAIL_PYTHON_LOG_ENTRIES="), std::string::npos);
      EXPECT_FALSE(error.hint().empty());
    }
  }
}

TEST(ScaleToWhole, DividesByTheShareAndSeesNothingOfNothing) {
  EXPECT_DOUBLE_EQ(scale_to_whole(50, 0.25), 200);
  EXPECT_DOUBLE_EQ(scale_to_whole(50, 1.0), 50);
  EXPECT_DOUBLE_EQ(scale_to_whole(0, 0.0), 0);
  EXPECT_DOUBLE_EQ(scale_to_whole(3, 0.0), 0);
}

// Python objects of a process seen a quarter of its time stand for 4 each, bytes and totals
// alike, and their sites say they are estimates; its malloc'd blocks, and another process's
// objects, stay counts. A site that freed all its objects is known for one by where it starts
// (a creation site's address) and scaled the same; another freed site's kind stays unknown.
TEST(Aggregator, ObjectsOfADutyCycledProcessAreScaledAndMarkedEstimated) {
  constexpr uint64_t kSecond = 1'000'000'000ull;
  constexpr auto kObject = model::AllocationKind::kPythonObject;
  model::Snapshot snapshot;
  snapshot.taken_at_ns = 100 * kSecond;
  snapshot.allocations = {{1, 0x1000, 56, 90 * kSecond, 5, kObject},
                          {1, 0x2000, 56, 91 * kSecond, 5, kObject},
                          {1, 0x3000, 4000, 92 * kSecond, 6, model::AllocationKind::kMalloc},
                          {2, 0x1000, 48, 93 * kSecond, 5, kObject}};
  // Site 5 of pid 1: 10 objects seen created (560 bytes), 2 alive. Site 7: 12 seen (600
  // bytes), all freed; site 8, a block freed.
  snapshot.sites = {{1, 5, 560, 10, 0xaaa},
                    {1, 6, 4000, 1, 0xbbb},
                    {2, 5, 0, 1, 0xccc},
                    {1, 7, 600, 12, 0xaaa},
                    {1, 8, 64, 1, 0xddd}};
  Accumulator accumulator(0, 0);
  accumulator.set_object_shares({{1, 0.25}});
  std::unordered_map<uint32_t, std::unordered_set<uint64_t>> creation_sites{{1, {0xaaa}}};
  accumulator.set_object_creation_sites(&creation_sites);
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
  EXPECT_EQ(objects->total_allocated_bytes, 2240u);
  EXPECT_FALSE(blocks->estimated);
  EXPECT_EQ(blocks->outstanding_bytes, 4000u);
  EXPECT_FALSE(other->estimated);
  EXPECT_EQ(other->outstanding_allocations, 1u);
  EXPECT_EQ(result.totals.outstanding_bytes, 448u + 4000u + 48u);
  // The totals hold the scaled objects: an estimate, said so.
  EXPECT_TRUE(result.totals.estimated);
  ASSERT_EQ(result.freed_sites.size(), 2u);
  const SiteSummary& freed_objects = result.freed_sites[0];  // the most bytes first
  EXPECT_EQ(freed_objects.site_id, 7);
  EXPECT_EQ(freed_objects.kind, kObject);
  EXPECT_TRUE(freed_objects.estimated);
  EXPECT_EQ(freed_objects.total_allocations, 48u);
  EXPECT_EQ(freed_objects.freed_allocations, 48u);
  EXPECT_EQ(freed_objects.total_allocated_bytes, 2400u);
  const SiteSummary& freed_block = result.freed_sites[1];
  EXPECT_EQ(freed_block.site_id, 8);
  EXPECT_EQ(freed_block.kind, model::AllocationKind::kUnknown);
  EXPECT_FALSE(freed_block.estimated);
  EXPECT_EQ(freed_block.total_allocations, 1u);
  EXPECT_EQ(freed_block.total_allocated_bytes, 64u);

  // Without a share (exact, or no duty-cycled process), the totals are counts.
  Accumulator exact(0, 0);
  exact.begin(snapshot.taken_at_ns, snapshot.sites);
  for (const auto& allocation : snapshot.allocations) exact.add(allocation);
  Aggregate counted = std::move(exact).finish(snapshot.sites);
  EXPECT_FALSE(counted.totals.estimated);
  EXPECT_EQ(counted.totals.outstanding_bytes, 56u + 56u + 4000u + 48u);
}

}  // namespace
}  // namespace memtrail::aggregator
