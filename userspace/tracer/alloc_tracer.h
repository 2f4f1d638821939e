// SPDX-License-Identifier: Apache-2.0
// Loads the allocator BPF programs, attaches them to target processes, reads their maps.
#pragma once

#include <cstdint>
#include <vector>

#include "model/snapshot.h"
#include "target/allocator.h"
#include "tracer/libbpf_raii.h"

namespace memtrail::tracer {

struct TracerConfig {
  uint32_t max_outstanding_allocations = 1u << 20;  // the table has two slots for each
  uint32_t max_fallback_sites = 1u << 16;           // sites whose stack could not be stored
  uint32_t max_stacks = 1u << 14;                   // distinct (pid, call stack) pairs: sites
  uint64_t sample_rate = 0;                         // --sample-rate bytes; 0: every allocation
  bool probe_floor = false;  // benchmarks: programs return at once (cost of the traps alone)
  bool verbose = false;      // libbpf debug output on stderr
};


class AllocTracer {
 public:
  // Opens and loads the BPF object (verifier included). Throws memtrail::Error.
  explicit AllocTracer(const TracerConfig& config);
  ~AllocTracer();
  AllocTracer(const AllocTracer&) = delete;
  AllocTracer& operator=(const AllocTracer&) = delete;

  // Attaches every probe of `module` for process `pid` only; other processes mapping the same
  // file pay nothing. All or nothing: on failure the probes attached so far are removed and
  // memtrail::Error is thrown.
  void attach(uint32_t pid, const target::AllocatorModule& module);

  // Reads the maps. Entries that change while being read are skipped and counted. With a
  // sink, the outstanding allocations go to it as they are read, not into the snapshot.
  model::Snapshot snapshot(model::AllocationSink* sink = nullptr) const;

  // Bytes of kernel memory in the BPF maps, as the kernel charges them (fdinfo memlock).
  uint64_t map_memory_bytes() const;

  const TracerConfig& config() const { return config_; }

 private:
  TracerConfig config_;
  AllocSkeleton skeleton_;
  MappedMap allocs_view_;    // the outstanding-allocations table, read in place
  std::vector<Link> links_;  // declared last: destroyed first
};

}  // namespace memtrail::tracer
