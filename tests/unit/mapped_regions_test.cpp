// SPDX-License-Identifier: Apache-2.0
// The regions rebuilt from mmap/munmap/mremap/brk events: what is left of each mapping after
// any sequence of calls, as the kernel would have it.
#include "tracer/mapped_regions.h"

#include <gtest/gtest.h>

#include <map>

#include "alloc_events.h"

namespace memtrail::tracer {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint32_t kPid = 42;

memtrail_region_event event(uint8_t type, uint64_t address, uint64_t length, int32_t site = 0,
                            uint32_t tid = kPid, uint8_t flags = 0) {
  memtrail_region_event e{};
  e.timestamp_ns = 1000;
  e.address = address;
  e.length = length;
  e.tgid = kPid;
  e.tid = tid;
  e.site_id = site;
  e.type = type;
  e.flags = flags;
  return e;
}

memtrail_region_event mapped(uint64_t address, uint64_t pages, int32_t site) {
  return event(MEMTRAIL_REGION_MAP, address, pages * kPage, site);
}

memtrail_region_event unmapped(uint64_t address, uint64_t pages) {
  return event(MEMTRAIL_REGION_UNMAP, address, pages * kPage);
}

// Outstanding allocations by their first address: (bytes, site, kind).
struct Left {
  uint64_t bytes;
  int32_t site;
  model::AllocationKind kind;
  bool operator==(const Left&) const = default;
};
std::map<uint64_t, Left> left(const MappedRegions& regions) {
  std::map<uint64_t, Left> out;
  regions.for_each([&](const model::OutstandingAllocation& a) {
    EXPECT_EQ(a.pid, kPid);
    EXPECT_EQ(a.timestamp_ns, 1000u);
    out[a.address] = {a.size, a.site_id, a.kind};
  });
  return out;
}

constexpr uint64_t A = 0x10000000, B = 0x20000000;
constexpr auto kMmap = model::AllocationKind::kMmap;
constexpr auto kBrk = model::AllocationKind::kBrk;

TEST(MappedRegions, AMappingIsOneAllocationUntilAllOfItIsUnmapped) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 8, 7));
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {8 * kPage, 7, kMmap}}}));
  regions.apply(unmapped(A + 2 * kPage, 2));  // a hole in the middle: still one mapping
  regions.apply(unmapped(A + 7 * kPage, 1));  // the last page
  regions.apply(unmapped(A, 1));              // the first page
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {4 * kPage, 7, kMmap}}}));
  // Unmapping across the hole and past the end releases the rest in one call.
  regions.apply(unmapped(A, 16));
  EXPECT_TRUE(left(regions).empty());
  EXPECT_EQ(regions.mapped_total(), 1u);
  EXPECT_EQ(regions.released_total(), 1u);
}

TEST(MappedRegions, OneMunmapAcrossNeighboursTrimsEachAndLengthsRoundUpToPages) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 4, 1));
  regions.apply(event(MEMTRAIL_REGION_MAP, A + 4 * kPage, 3 * kPage - 100, 2));  // 3 pages
  regions.apply(event(MEMTRAIL_REGION_UNMAP, A + 3 * kPage, 1));          // rounds to one page each
  regions.apply(event(MEMTRAIL_REGION_UNMAP, A + 4 * kPage, kPage + 1));  // two pages
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {3 * kPage, 1, kMmap}},
                                                     {A + 4 * kPage, {kPage, 2, kMmap}}}));
  regions.apply(unmapped(B, 10));  // nothing of ours there: no change
  EXPECT_EQ(left(regions).size(), 2u);
}

TEST(MappedRegions, AFixedMappingReplacesWhatWasThere) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 4, 1));
  regions.apply(mapped(A + kPage, 2, 2));  // MAP_FIXED over the middle
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {2 * kPage, 1, kMmap}},
                                                     {A + kPage, {2 * kPage, 2, kMmap}}}));
}

TEST(MappedRegions, MremapMovesGrowsAndShrinksAMappingKeepingItsSite) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 2, 5));
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, A, 2 * kPage, 0, 11));
  EXPECT_TRUE(left(regions).empty());  // in flight
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, B, 6 * kPage, 0, 11));
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {6 * kPage, 5, kMmap}}}))
      << "reported at the address it was first mapped at";
  // Shrunk in place to 1 page: the rest is released.
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, B, 6 * kPage, 0, 11));
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, B, kPage, 0, 11));
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {kPage, 5, kMmap}}}));
  regions.apply(unmapped(B, 1));
  EXPECT_TRUE(left(regions).empty());
}

TEST(MappedRegions, AFailedMremapLeavesTheMappingWhereItWas) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 3, 5));
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, A, 3 * kPage, 0, 11));
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, 0, 9 * kPage, 0, 11));
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A, {3 * kPage, 5, kMmap}}}));
  regions.apply(unmapped(A, 3));
  EXPECT_TRUE(left(regions).empty());
}

TEST(MappedRegions, MremapDontunmapKeepsBothRanges) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 2, 5));
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, A, 2 * kPage, 0, 11));
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, B, 2 * kPage, 0, 11, MEMTRAIL_REGION_KEEP_OLD));
  EXPECT_EQ(left(regions),
            (std::map<uint64_t, Left>{{A, {2 * kPage, 5, kMmap}}, {B, {2 * kPage, 5, kMmap}}}));
}

TEST(MappedRegions, RemapsOfTwoThreadsDoNotMix) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 1, 1));
  regions.apply(mapped(B, 1, 2));
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, A, kPage, 0, 100));
  regions.apply(event(MEMTRAIL_REGION_REMAP_BEGIN, B, kPage, 0, 200));
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, B + 8 * kPage, 2 * kPage, 0, 200));
  regions.apply(event(MEMTRAIL_REGION_REMAP_END, A + 8 * kPage, 3 * kPage, 0, 100));
  EXPECT_EQ(left(regions),
            (std::map<uint64_t, Left>{{A, {3 * kPage, 1, kMmap}}, {B, {2 * kPage, 2, kMmap}}}));
}

TEST(MappedRegions, TheBreakMovedOutsideTheAllocatorIsARegionAndAllMovesAreSummed) {
  MappedRegions regions(100);
  // malloc's own heap: counted in the break's growth only.
  regions.apply(
      event(MEMTRAIL_REGION_BRK, A, A + 32 * kPage, 0, kPid, MEMTRAIL_REGION_IN_ALLOCATOR));
  EXPECT_TRUE(left(regions).empty());
  regions.apply(event(MEMTRAIL_REGION_BRK, A + 32 * kPage, A + 40 * kPage, 9));  // sbrk(+8 pages)
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A + 32 * kPage, {8 * kPage, 9, kBrk}}}));
  regions.apply(event(MEMTRAIL_REGION_BRK, A + 40 * kPage, A + 37 * kPage, 0));  // sbrk(-3 pages)
  EXPECT_EQ(left(regions), (std::map<uint64_t, Left>{{A + 32 * kPage, {5 * kPage, 9, kBrk}}}));
  EXPECT_EQ(regions.break_growth(kPid), static_cast<int64_t>(37 * kPage));
}

TEST(MappedRegions, ExecAndExitForgetTheProcess) {
  MappedRegions regions(100);
  regions.apply(mapped(A, 1, 1));
  regions.apply(event(MEMTRAIL_REGION_BRK, B, B + kPage, 2));
  EXPECT_TRUE(regions.apply(event(MEMTRAIL_REGION_EXEC, 0, 0)));
  EXPECT_TRUE(left(regions).empty());
  EXPECT_EQ(regions.break_growth(kPid), 0);
  regions.apply(mapped(A, 1, 1));
  regions.forget_process(kPid);
  EXPECT_TRUE(left(regions).empty());
}

TEST(MappedRegions, MappingsBeyondTheLimitAreCountedAsDrops) {
  MappedRegions regions(2);
  regions.apply(mapped(A, 1, 1));
  regions.apply(mapped(A + kPage, 1, 1));
  regions.apply(mapped(A + 2 * kPage, 1, 1));
  EXPECT_EQ(left(regions).size(), 2u);
  EXPECT_EQ(regions.drops().at(kPid), 1u);
  regions.apply(unmapped(A, 1));
  regions.apply(mapped(A + 2 * kPage, 1, 1));  // room again
  EXPECT_EQ(left(regions).size(), 2u);
}

}  // namespace
}  // namespace memtrail::tracer
