// SPDX-License-Identifier: Apache-2.0
// From paging samples to a diagnosis: per-interval verdicts for the host and each memory
// cgroup, and processes ranked as culprits (their footprint grows while memory is short) or
// victims (they stall on faults and reclaim while not growing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/paging.h"
#include "model/paging_report.h"

namespace memtrail::aggregator {

// Defaults from thrashing measured on this project's test machine (docs/paging-format.md): idle
// hosts stay far below them; an anonymous thrash in a 256 MiB cgroup reached PSI full 22-56 %
// with a turnover of 0.4-1.5/s, a file thrash in 64 MiB PSI full 9-15 % with a turnover of
// 20-28/s.
struct PagingThresholds {
  double pressure_some_pct = 5;    // PSI some at or above: memory pressure
  double reclaim_stall = 0.05;     // or processes stalled this many s/s reclaiming
  double thrashing_full_pct = 10;  // PSI full at or above (or some at thrashing_some_pct) ...
  double thrashing_some_pct = 20;
  // ... while memory is re-read fast: refaults and swap-ins of at least this share of the
  // scope's memory per second, or of active pages (restores) at this share, or at least this
  // many bytes per second (a host's RAM is too large a yardstick for a thrash that fills it).
  double thrashing_turnover = 0.2;
  double thrashing_restore_turnover = 0.05;
  double thrashing_refault_bytes_per_s = 64.0 * (1 << 20);
  int thrashing_intervals = 2;  // for this many intervals in a row
  // Culprit: the footprint grew in at least this many intervals, by at least the larger of
  // these in total, net and without its largest step (a process that allocates once at start,
  // or whose footprint wobbles while it is swapped, is not growing).
  int culprit_growth_intervals = 3;
  uint64_t culprit_min_growth_bytes = 16ull << 20;
  double culprit_min_growth_share = 0.02;  // of the scope's memory
  // Victim: stalled at least this share of the time it was watched.
  double victim_stall_share = 0.05;
  double victim_major_faults_per_s = 50;  // or faulted this often without timed stalls
};

class PagingAnalyzer {
 public:
  explicit PagingAnalyzer(PagingThresholds thresholds = {}, size_t max_points = 240)
      : thresholds_(thresholds), max_points_(max_points) {}

  // Adds the next sample. The first one is the baseline: intervals start with the second.
  // `closes_interval` false: a last sample taken soon after the previous one, at the end of
  // the run, too short for stall shares and rates: it brings the processes' counters up to
  // date (the events since the last interval) without making an interval of its own.
  void add(const model::PagingSample& sample, bool closes_interval = true);

  // Whether the latest interval showed pressure anywhere (host or a cgroup): time for the deep
  // hooks.
  bool under_pressure() const { return under_pressure_; }
  size_t intervals() const { return host_.size(); }

  // The report so far: every interval, the top `top` processes. `cgroup_filter` (a cgroup
  // path, as in CgroupSample::path) keeps that cgroup and its descendants and their processes.
  model::PagingReport report(size_t top, const std::string& cgroup_filter = {}) const;

 private:
  struct FootprintPoint {
    double t_s;
    uint64_t bytes;
  };
  // One process over the run. Counters from /proc are cumulative over its life: `first` holds
  // them when memtrail first saw it (zero if it started after memtrail did).
  struct ProcessHistory {
    uint32_t pid = 0;
    std::string comm, cgroup;
    bool exited = false;
    bool in_proc = false;  // seen in /proc at least once (else a BPF-only, short-lived one)
    double first_t = 0, last_t = 0;
    model::ProcessSample first, last;
    model::TaskPagingStats bpf;  // latest; cumulative since the process's first event
    std::vector<FootprintPoint> footprint;
    int growth_intervals = 0;   // intervals in which the footprint grew by a step
    uint64_t growth_bytes = 0;  // the sum of those steps
    uint64_t largest_step = 0;  // the largest of them: one allocation at start-up is no trend
    double growth_time_s = 0;   // the length of those intervals
    uint64_t min_footprint = UINT64_MAX;
    bool grew_last = false;  // in the latest interval: the growth rate still applies
  };
  struct CgroupHistory {
    model::CgroupReport report;
    int thrashing_run = 0;  // consecutive thrashing-like intervals
  };

  model::ScopeInterval host_interval(const model::PagingSample& now, double duration_s);
  model::ScopeInterval cgroup_interval(const model::CgroupSample& now,
                                       const model::CgroupSample& before,
                                       const model::PagingSample& sample, double duration_s);
  template <typename Accept>
  void add_reclaim_stall(model::ScopeInterval& interval, const model::PagingSample& sample,
                         Accept counts) const;
  // `at_limit`: the scope is a cgroup with a limit of its own (said in the reason).
  void judge(model::ScopeInterval& interval, int& thrashing_run, bool at_limit) const;
  void track_processes(const model::PagingSample& sample);
  model::ProcessReport assess(const ProcessHistory& history,
                              const model::PagingReport& report) const;

  PagingThresholds thresholds_;
  size_t max_points_;
  bool have_baseline_ = false;
  bool under_pressure_ = false;
  model::PagingSample previous_;  // without its processes and tasks (kept per process below)
  std::unordered_map<uint64_t, model::TaskPagingStats> previous_tasks_;  // by tgid
  std::vector<model::ScopeInterval> host_;
  int host_thrashing_run_ = 0;
  std::map<std::string, CgroupHistory> cgroups_;
  std::unordered_map<uint64_t, std::string> cgroup_paths_;             // kernfs id -> path
  std::map<std::pair<uint32_t, uint64_t>, ProcessHistory> processes_;  // (pid, start time)
  std::unordered_map<uint32_t, uint64_t> live_start_;  // pid -> start time, last sample
  std::vector<model::OomKill> oom_kills_;
  model::PagingTracerCounters counters_;
  double start_t_ = 0, last_t_ = 0;
  int64_t start_unix_ms_ = 0;
  double deep_s_ = 0;
};

}  // namespace memtrail::aggregator
