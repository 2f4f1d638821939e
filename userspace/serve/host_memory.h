// SPDX-License-Identifier: Apache-2.0
// The always-on tier: every process's and memory cgroup's private memory over a sliding
// window, with memtrail's growth verdict, as Prometheus metrics with bounded cardinality.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "aggregator/growth.h"
#include "model/paging.h"
#include "serve/metrics_text.h"
#include "serve/pod_identity.h"

namespace memtrail::serve {

struct HostMemoryConfig {
  double interval_s = 10;      // between scans: sets how much history a verdict needs
  size_t window_points = 60;   // the verdict looks at the last N scans (10 minutes by default)
  size_t max_processes = 200;  // processes with series of their own; growing ones always
  size_t max_cgroups = 200;    // memory cgroups with series of their own; growing ones always
};

// A process as the last scan saw it.
struct ProcessView {
  uint32_t pid = 0;
  std::string comm, cgroup;
  std::optional<PodIdentity> pod;
};

// Fed one scan at a time (from sampler::ProcessScanner and read_cgroup_sample); not
// thread-safe: the agent holds a lock around it. Private memory is RssAnon + VmSwap: anonymous
// memory swapped out is still held. A process's or cgroup's series go when it is gone, so
// exited processes' series are dropped at the next scan and their state with them.
class HostMemory {
 public:
  explicit HostMemory(HostMemoryConfig config) : config_(config) {}

  // One scan at `t_s` (seconds since the agent started): every process, and the memory
  // cgroups holding them (those with no sample get no usage or limit series).
  void update(double t_s, const std::vector<model::ProcessSample>& processes,
              const std::vector<model::CgroupSample>& cgroups);

  // The families of the always-on tier (memtrail_process_*, memtrail_cgroup_*, folding).
  void render(MetricsText& out) const;

  std::optional<ProcessView> process(uint32_t pid) const;
  // Live processes named `comm`, and those in memory cgroup `cgroup` or below it, pid order.
  std::vector<uint32_t> pids_with_comm(const std::string& comm) const;
  std::vector<uint32_t> pids_in_cgroup(const std::string& cgroup) const;
  size_t processes() const { return processes_.size(); }
  size_t cgroups() const { return cgroups_.size(); }

 private:
  struct Series {
    std::vector<aggregator::GrowthPoint> points;  // the last window_points, oldest first
    aggregator::GrowthAssessment growth;
  };
  struct Process {
    uint64_t start_time_ticks = 0;
    std::string comm, cgroup;
    std::optional<PodIdentity> pod;
    uint64_t anon_bytes = 0, swap_bytes = 0;
    Series series;
  };
  struct Cgroup {
    std::optional<PodIdentity> pod;
    std::optional<model::CgroupSample> sample;
    uint64_t anon_bytes = 0, swap_bytes = 0, processes = 0;
    Series series;
  };
  void record(Series& series, double t_s, uint64_t bytes) const;

  HostMemoryConfig config_;
  std::unordered_map<uint32_t, Process> processes_;
  std::map<std::string, Cgroup> cgroups_;
};

// Whether a verdict keeps a series out of folding: its memory grows.
bool is_growing(aggregator::Verdict verdict);

// The verdicts a process or cgroup can get, each exported as a 0/1 series.
inline constexpr aggregator::Verdict kMemoryVerdicts[] = {
    aggregator::Verdict::kLeak, aggregator::Verdict::kSuspect, aggregator::Verdict::kSteady,
    aggregator::Verdict::kTooShort};

}  // namespace memtrail::serve
