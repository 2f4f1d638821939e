// SPDX-License-Identifier: Apache-2.0
// Placement in the outstanding-allocations table (bpf/alloc_events.h), simulated with the
// kernel side's policy: the first candidate bucket while it is not busy, else the emptier of
// the two (the first on a tie), else a drop.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "alloc_events.h"

namespace {

class TableModel {
 public:
  explicit TableModel(uint32_t max_outstanding)
      : buckets_(memtrail_alloc_buckets_for(max_outstanding)), fill_(buckets_, 0) {}
  // Returns false for a drop.
  // Returns the bucket taken, or -1 for a drop.
  int64_t insert(uint32_t tgid, uint64_t address) {
    uint32_t first = memtrail_bucket_of(tgid, address, 0, buckets_);
    uint32_t second = memtrail_bucket_of(tgid, address, 1, buckets_);
    EXPECT_LT(first, buckets_);
    EXPECT_LT(second, buckets_);
    uint32_t chosen = first;
    if (fill_[first] >= MEMTRAIL_FIRST_BUCKET_LIMIT && fill_[second] < fill_[first]) {
      chosen = second;
    }
    if (fill_[chosen] == MEMTRAIL_BUCKET_SLOTS) return -1;
    ++fill_[chosen];
    return chosen;
  }
  void remove(uint32_t bucket) { --fill_[bucket]; }
  uint32_t buckets() const { return buckets_; }

 private:
  uint32_t buckets_;
  std::vector<uint32_t> fill_;
};

TEST(AllocTable, HasTwoSlotsForEachPromisedAllocation) {
  for (uint32_t max : {1024u, 1001u, 1u << 20, 3'000'001u}) {
    uint64_t slots = uint64_t{memtrail_alloc_buckets_for(max)} * MEMTRAIL_BUCKET_SLOTS;
    EXPECT_GE(slots, uint64_t{max} * 2) << max;
    EXPECT_LT(slots, uint64_t{max} * 2 + MEMTRAIL_BUCKET_SLOTS) << max;
  }
}

TEST(AllocTable, CandidatesDependOnProcessAndAddress) {
  uint32_t buckets = memtrail_alloc_buckets_for(1u << 20);
  uint64_t address = 0x7f0000123010;
  EXPECT_NE(memtrail_bucket_of(42, address, 0, buckets),
            memtrail_bucket_of(42, address, 1, buckets));
  EXPECT_NE(memtrail_bucket_of(42, address, 0, buckets),
            memtrail_bucket_of(43, address, 0, buckets));
  EXPECT_NE(memtrail_bucket_of(42, address, 0, buckets),
            memtrail_bucket_of(42, address + (1u << 20), 0, buckets));
  EXPECT_NE(memtrail_bucket_of(42, address, 1, buckets),
            memtrail_bucket_of(42, address + 16, 1, buckets));
}

// The first candidates of the blocks of one 4 KiB page lie in one run of 64 buckets (16 KiB
// of table), 64 bytes of blocks a bucket, and the next page's in the next run: blocks allocated
// and freed near in time, mostly near in memory, share the table's pages in the TLB.
TEST(AllocTable, NeighbouringBlocksHaveNeighbouringFirstBuckets) {
  uint32_t buckets = memtrail_alloc_buckets_for(1u << 20);
  uint64_t page = 0x7f0000123000;
  uint32_t run = memtrail_bucket_of(42, page, 0, buckets) / 64;
  for (uint64_t offset = 0; offset < 4096; offset += 16) {
    uint32_t bucket = memtrail_bucket_of(42, page + offset, 0, buckets);
    EXPECT_EQ(bucket / 64, run) << offset;
    EXPECT_EQ(bucket % 64, offset / 64) << offset;
  }
  EXPECT_EQ(memtrail_bucket_of(42, page + 4096, 0, buckets) / 64, run + 1);
}

// glibc's thread arenas sit at 64 MiB-aligned addresses and fill alike: dense runs of 32-byte
// chunks at the same offsets. Aligned strides must not pile them onto the same buckets.
TEST(AllocTable, DenseArenasAtAlignedStridesDoNotDrop) {
  TableModel table(1u << 20);
  uint64_t drops = 0;
  for (uint64_t arena = 0; arena < 16; ++arena) {
    uint64_t base = 0x7f0000000000 + arena * (64ull << 20) + 0x8b0;
    for (uint64_t chunk = 0; chunk < 20'000; ++chunk) {
      drops += table.insert(1234, base + chunk * 32) < 0;
    }
  }
  EXPECT_EQ(drops, 0u);
}

// Up to what --max-allocations promises, random blocks of random processes find room.
TEST(AllocTable, RandomBlocksFitUpToTheLimit) {
  const uint32_t max = 1u << 16;
  TableModel table(max);
  std::mt19937_64 random(7);
  uint64_t drops = 0;
  for (uint32_t i = 0; i < max; ++i) {
    uint32_t tgid = 1000 + static_cast<uint32_t>(random() % 50);
    drops += table.insert(tgid, (0x550000000000 + (random() % (1ull << 32))) & ~15ull) < 0;
  }
  EXPECT_LE(drops, max / 10'000) << "drops: " << drops;  // under 0.01 %
}

// The densest glibc heap (every chunk 32 bytes), up to the limit.
TEST(AllocTable, ADenseHeapFitsUpToTheLimit) {
  const uint32_t max = 1u << 18;
  TableModel table(max);
  uint64_t drops = 0;
  for (uint64_t chunk = 0; chunk < max; ++chunk) {
    drops += table.insert(99, 0x5555'5555'9010 + chunk * 32) < 0;
  }
  EXPECT_LE(drops, max / 10'000) << "drops: " << drops;
}

// jemalloc's and mimalloc's smallest classes: a heap of 16-byte blocks, 8 to a first bucket's
// 128 bytes, up to the limit: the two of each 8 beyond the first bucket's limit find room in
// their second.
TEST(AllocTable, ADenseHeapOf16ByteBlocksFitsUpToTheLimit) {
  const uint32_t max = 1u << 18;
  TableModel table(max);
  uint64_t drops = 0;
  for (uint64_t block = 0; block < max; ++block) {
    drops += table.insert(99, 0x7f12'3400'0000 + block * 16) < 0;
  }
  EXPECT_LE(drops, max / 10'000) << "drops: " << drops;
}

// A program at its limit for long: frees of random blocks and new allocations, in steady
// state. Deletions unbalance buckets over time; the table must still not drop.
TEST(AllocTable, SteadyChurnAtTheLimitDoesNotDrop) {
  const uint32_t max = 1u << 17;
  TableModel table(max);
  std::mt19937_64 random(11);
  std::vector<std::pair<uint64_t, int64_t>> live;
  uint64_t drops = 0;
  auto allocate = [&] {
    uint64_t address = (random() % (1ull << 40)) & ~15ull;
    int64_t bucket = table.insert(7, address);
    if (bucket < 0) ++drops;
    return bucket;
  };
  while (live.size() < max) live.emplace_back(0, allocate());
  for (uint32_t step = 0; step < 4 * max; ++step) {
    auto& victim = live[random() % live.size()];
    if (victim.second >= 0) table.remove(static_cast<uint32_t>(victim.second));
    victim.second = allocate();
  }
  EXPECT_LE(drops, max / 100'000) << "drops: " << drops;
}

}  // namespace
