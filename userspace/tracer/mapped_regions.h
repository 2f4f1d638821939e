// SPDX-License-Identifier: Apache-2.0
// Memory that traced processes map with system calls (mmap, mremap, brk), rebuilt from the BPF
// region events. Kept here rather than in a BPF map: munmap may release any part of a mapping,
// mremap moves and resizes one, and a mapping cut in two is still one allocation to report.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>
#include <vector>

#include "model/snapshot.h"

struct memtrail_region_event;  // bpf/alloc_events.h

namespace memtrail::tracer {

class MappedRegions {
 public:
  // `max_mappings`: mappings held at once, over all processes; one more is a drop.
  explicit MappedRegions(uint64_t max_mappings, uint64_t page_size = 4096)
      : max_mappings_(max_mappings), page_size_(page_size) {}

  // Applies one event; events of one process must come in the order the kernel sent them.
  // Returns true for MEMTRAIL_REGION_EXEC (the process's regions are gone: the caller may want
  // to drop the rest of its state too).
  bool apply(const memtrail_region_event& event);

  // Every mapping still (partly) mapped, as one allocation (of kind kMmap or kBrk): its first
  // address, the bytes of it still mapped, the time and site of the call that mapped it.
  void for_each(const std::function<void(const model::OutstandingAllocation&)>& visit) const;

  // The process exited: everything about it goes. Returns the mappings dropped.
  uint64_t forget_process(uint32_t pid);

  // Bytes the program break moved since memtrail attached, whoever moved it (the allocator's
  // heap included).
  int64_t break_growth(uint32_t pid) const;

  // Mappings not recorded because max_mappings were held, per process.
  const std::unordered_map<uint32_t, uint64_t>& drops() const { return drops_; }

  size_t mappings() const { return mappings_.size(); }
  // Mappings recorded, and mappings released whole, since the start.
  uint64_t mapped_total() const { return mapped_total_; }
  uint64_t released_total() const { return released_total_; }

 private:
  struct Mapping {
    uint32_t pid = 0;
    int32_t site_id = 0;
    model::AllocationKind kind = model::AllocationKind::kMmap;
    uint64_t address = 0;       // where it was first mapped
    uint64_t timestamp_ns = 0;  // when
    uint64_t mapped_bytes = 0;  // what is left of it
    uint32_t held = 0;          // pieces away in an mremap in progress
  };
  struct Piece {
    uint64_t end = 0;
    uint64_t mapping = 0;  // key in mappings_
  };
  // A piece taken out by an mremap until its outcome is known: offset from the old address.
  struct HeldPiece {
    uint64_t offset = 0, length = 0, mapping = 0;
  };
  struct Process {
    std::map<uint64_t, Piece> pieces;  // by start address; never overlapping
    int64_t break_growth = 0;
    // mremap in progress by thread id: the old address and what was taken out of it.
    struct Remap {
      uint64_t old_address = 0, old_length = 0;
      std::vector<HeldPiece> pieces;
    };
    std::unordered_map<uint32_t, Remap> remaps;
  };

  uint64_t page_round(uint64_t length) const {
    return (length + page_size_ - 1) / page_size_ * page_size_;
  }
  void map(Process& process, uint32_t pid, uint64_t start, uint64_t length, int32_t site_id,
           model::AllocationKind kind, uint64_t timestamp_ns);
  // Removes [start, end); with `taken`, the removed pieces go there (held), else their
  // mappings shrink and go when nothing is left of them.
  void unmap(Process& process, uint64_t start, uint64_t end, std::vector<HeldPiece>* taken);
  void insert_piece(Process& process, uint64_t start, uint64_t end, uint64_t mapping);
  void release(uint64_t mapping, uint64_t bytes, bool held);
  void finish_remap(Process& process, const memtrail_region_event& event);

  uint64_t max_mappings_, page_size_;
  uint64_t next_mapping_ = 1;
  uint64_t mapped_total_ = 0, released_total_ = 0;
  std::unordered_map<uint32_t, Process> processes_;
  std::unordered_map<uint64_t, Mapping> mappings_;
  std::unordered_map<uint32_t, uint64_t> drops_;
};

}  // namespace memtrail::tracer
