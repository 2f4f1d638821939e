// SPDX-License-Identifier: Apache-2.0
// Plain data read from the BPF maps at one instant: what the tracer hands to the aggregator.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/python.h"

namespace memtrail::model {

// The allocator function that returned a block; reports name it (inspect::kind_name). Besides
// the standard functions, the extension functions of jemalloc (mallocx, ...), tcmalloc,
// mimalloc and --allocator's custom functions get a kind of their own when first probed,
// numbered from kFirstNamed (the BPF programs handle them as malloc: released by free, never
// mismatched).
enum class AllocationKind : uint8_t {
  kMalloc,
  kCalloc,
  kRealloc,
  kReallocArray,
  kPosixMemalign,
  kAlignedAlloc,
  kMemalign,
  kValloc,
  kPvalloc,
  kNew,       // C++ operator new (all its variants)
  kNewArray,  // C++ operator new[]
  // Memory mapped by system calls outside every traced allocator call: regions, not blocks.
  kMmap,  // anonymous private mmap, grown or moved by mremap
  kBrk,   // the program break moved by brk/sbrk
  // A CPython object, charged to the stack that created it (its size as sys.getsizeof counts
  // it); pymalloc's memory, so never a malloc'd block too.
  kPythonObject,
  kUnknown,  // a code the tracer does not know
  kFirstNamed = 16,
  kLastNamed = 255,
};

// Regions are recorded whole, never sampled.
constexpr bool is_region(AllocationKind kind) {
  return kind == AllocationKind::kMmap || kind == AllocationKind::kBrk;
}

// One allocation that was outstanding when the snapshot was taken.
struct OutstandingAllocation {
  uint32_t pid = 0;
  uint64_t address = 0;
  uint64_t size = 0;
  uint64_t timestamp_ns = 0;  // CLOCK_MONOTONIC at allocation
  int32_t site_id = 0;        // >= 0: stack id; < 0: stack capture failed, caller only
  AllocationKind kind = AllocationKind::kMalloc;
  uint64_t python_type = 0;  // kPythonObject: its PyTypeObject's address in the process
};

// Running totals of one allocation site (one call stack in one process), kept by the kernel.
struct SiteTotals {
  uint32_t pid = 0;
  int32_t site_id = 0;
  uint64_t total_bytes = 0;
  uint64_t total_allocations = 0;
  uint64_t caller_address = 0;    // the return address in the function that called the allocator
  uint64_t mismatched_frees = 0;  // blocks released by the wrong function (new/free, ...)
  // CLOCK_MONOTONIC just after these totals were read: they count every block allocated by
  // then (0: at the snapshot's time).
  uint64_t read_at_ns = 0;
};

// Counters of everything the tracer did or could not do, summed over CPUs.
struct TracerCounters {
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t unmatched_frees = 0;
  uint64_t drops = 0;
  uint64_t failed_calls = 0;
  uint64_t stack_failures = 0;
  uint64_t site_drops = 0;
  uint64_t stale_replaced = 0;
  uint64_t missed_entries = 0;
  uint64_t unsampled = 0;               // successful allocations passed over by --sample-rate
  uint64_t mismatched_frees = 0;        // blocks released by the wrong function (new/free, ...)
  uint64_t snapshot_read_errors = 0;    // map entries that vanished or failed while being read
  uint64_t region_events_lost = 0;      // mmap/munmap/mremap/brk events: ring buffer full
  uint64_t python_types_lost = 0;       // Python objects not counted: the type map was full
  uint64_t python_objects = 0;          // CPython objects recorded at their creation
  uint64_t python_objects_untyped = 0;  // created without a readable type: not recorded
  // CPython walks' native frames below their innermost eval loop (nested eval loops only):
  // walked frame by frame, or taken from a segment memo (bpf/alloc/stack_walk.bpf.h).
  uint64_t python_segments_walked = 0;
  uint64_t python_segments_reused = 0;
  uint64_t python_objects_dead = 0;  // found dead by the liveness reads, and removed
  // Of those, found replaced: a different object of the same type at the address, which its
  // content told (created while the object probes were detached).
  uint64_t python_objects_replaced = 0;
  // Live now, and perhaps not the object recorded: nothing could prove that the object was not
  // replaced by another of its type while the probes were detached (lists, class instances,
  // sets, dicts changed meanwhile). 0 when the probes are attached all the time.
  uint64_t python_objects_at_risk = 0;
  // The liveness reads at the close of each attached window: how many, the objects they read,
  // and those that read the whole table (more new objects than the ring holds).
  uint64_t python_sweeps = 0, python_sweep_objects = 0, python_sweeps_whole = 0;
  double python_sweep_seconds = 0;  // the time they took
  // Live objects no content identifies that the window closes do not read: beyond the watch
  // list's bound (AllocTracer::kept_watching), at its latest rebuild.
  uint64_t python_unwatched = 0;
  uint64_t python_objects_large = 0;  // alive but over 512 bytes: malloc'd, counted as blocks
  // Blocks recorded at the allocator's usable size, not the size asked: a return site where
  // no register held it (glibc's single-threaded malloc path).
  uint64_t usable_size_allocations = 0;
};

// What memtrail could not track in one process (the tracer reads it per process).
struct ProcessLosses {
  uint64_t drops = 0;               // allocations not recorded: the table was full
  uint64_t stack_failures = 0;      // stacks not stored: the stack map was full
  uint64_t site_drops = 0;          // per-site totals lost
  uint64_t missed_entries = 0;      // returns without their entry (calls in flight at attach)
  uint64_t unmatched_frees = 0;     // frees of blocks allocated before attach
  uint64_t region_events_lost = 0;  // mmap/munmap/mremap/brk calls not followed
  bool any() const {
    return drops || stack_failures || site_drops || missed_entries || unmatched_frees ||
           region_events_lost;
  }
};

// Receives outstanding allocations one by one as the tracer reads them, so that millions of
// them need not be held in memory at once (the aggregator is one).
class AllocationSink {
 public:
  virtual ~AllocationSink() = default;
  // Before the first add: the snapshot's time, and the sites' running totals, read before the
  // blocks (a block allocated after its site's totals were read is not counted in them).
  virtual void begin(uint64_t taken_at_ns, const std::vector<SiteTotals>& sites) = 0;
  virtual void add(const OutstandingAllocation& allocation) = 0;
};

struct Snapshot {
  uint64_t taken_at_ns = 0;  // CLOCK_MONOTONIC, comparable with timestamp_ns
  // Empty when the allocations went to an AllocationSink instead.
  std::vector<OutstandingAllocation> allocations;
  std::vector<SiteTotals> sites;
  // User-space return addresses, innermost first, for each stack id referenced above. The
  // first frame is the caller of the allocator.
  struct Stack {
    std::vector<uint64_t> addresses;
    bool truncated = false;  // the walk stopped before the outermost frame
    // Why, when truncated: "depth", "no_cfi", "unsupported_cfi", "rbp_unknown", "unreadable",
    // "bad_frame_pointer", "unknown_code", "loop" (the tracer names the walker's reasons).
    std::string truncation_reason;
    bool used_tables = false;  // at least one frame was unwound with a CFI table
    // Python frames of a CPython process (--python-frames), innermost first.
    std::vector<PythonFrame> python_frames;
    bool python_truncated = false;   // more Python frames than the walker records
    bool python_unreadable = false;  // a frame could not be read: the walk stopped there
    bool python_no_thread = false;   // no thread state of the allocating thread was found
  };
  std::unordered_map<int32_t, Stack> stacks;
  TracerCounters counters;
  // CPython objects by type (--python-types): the kernel's running counts.
  struct PythonTypeCounts {
    uint32_t pid = 0;
    uint64_t type = 0;  // the PyTypeObject's address in the process
    uint64_t made = 0, freed = 0, items_made = 0, items_freed = 0;
  };
  std::vector<PythonTypeCounts> python_types;
  std::unordered_map<uint32_t, ProcessLosses> losses;  // by pid; processes that lost nothing absent
};

}  // namespace memtrail::model
