// SPDX-License-Identifier: Apache-2.0
// Loads the paging BPF programs, attaches the always-on tier, switches the deep tier on and off,
// and reads the per-process counters.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/paging.h"
#include "tracer/libbpf_raii.h"

struct paging_bpf;
extern "C" void memtrail_paging_bpf_destroy(paging_bpf* skeleton);  // paging_tracer.cpp

namespace memtrail::tracer {

struct PagingSkeletonDeleter {
  void operator()(paging_bpf* skeleton) const { memtrail_paging_bpf_destroy(skeleton); }
};
using PagingSkeleton = std::unique_ptr<paging_bpf, PagingSkeletonDeleter>;

struct PagingTracerConfig {
  uint32_t max_processes = 32768;  // processes with counters at once (--max-processes)
  bool verbose = false;
};

class PagingTracer {
 public:
  // Opens, loads and attaches the always-on programs: major faults (a perf event per CPU),
  // reclaim stalls, swap-outs, OOM victims, exits. Throws memtrail::Error.
  explicit PagingTracer(const PagingTracerConfig& config);
  ~PagingTracer();
  PagingTracer(const PagingTracer&) = delete;
  PagingTracer& operator=(const PagingTracer&) = delete;

  // Attaches (true) or detaches (false) the deep programs, which run on every page fault:
  // fault timing, swap-ins and refaults per process. Throws memtrail::Error on failure to attach.
  void set_deep(bool on);
  bool deep() const { return !deep_links_.empty(); }
  // Deep signals this kernel lacks (e.g. "memcg stat tracepoints (kernel < 6.13)"); empty if all.
  const std::vector<std::string>& deep_unavailable() const { return deep_unavailable_; }

  // Reads the counters into `sample` (tasks, memcgs, oom_kills, counters). Exited processes
  // are reported this once and then removed from the map; OOM victims are read once.
  // `start_ns`: CLOCK_MONOTONIC of memtrail's start, for the victims' times.
  void read(model::PagingSample& sample, uint64_t start_ns);

  uint64_t map_memory_bytes() const;

 private:
  PagingSkeleton skeleton_;
  std::vector<std::string> deep_unavailable_;
  std::vector<Link> links_;       // tier 1
  std::vector<Link> deep_links_;  // tier 2, while attached
};

}  // namespace memtrail::tracer
