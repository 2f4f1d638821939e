// SPDX-License-Identifier: Apache-2.0
// The paging report model: verdicts for the host and each memory cgroup per interval, and
// processes ranked as culprits and victims with their evidence. What the renderers print.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/paging.h"

namespace memtrail::model {

// Ordered: a worse verdict compares greater.
enum class PagingVerdict { kOk = 0, kPressure = 1, kThrashing = 2 };
const char* paging_verdict_name(PagingVerdict verdict);  // "ok", "pressure", "thrashing"

// One interval of the host or of one memory cgroup: rates per second over the interval.
struct ScopeInterval {
  double t_s = 0;  // end of the interval, seconds since memtrail started
  double duration_s = 0;
  int64_t unix_ms = 0;
  PagingVerdict verdict = PagingVerdict::kOk;
  // What thrashes: "anon/swap", "file/page cache", "zswap", both kinds joined by " + " (the
  // larger first) when the smaller is at least a tenth of the larger, or "".
  std::string kind;
  // Host only: the pressure is that of memory cgroups at their own limits; the host does no
  // global reclaim, so processes outside those cgroups are not its victims.
  bool memcg_limited = false;
  std::string reason;                                // the numbers that decided the verdict
  std::optional<double> psi_some_pct, psi_full_pct;  // share of the interval stalled
  double major_faults_per_s = 0, minor_faults_per_s = 0;
  std::optional<double> swapin_pages_per_s, swapout_pages_per_s;
  double zswapin_pages_per_s = 0;
  double refault_anon_per_s = 0, refault_file_per_s = 0;
  double restore_per_s = 0;  // refaults of pages that were active: the workingset does not fit
  // Memory re-read per second, as a multiple of the scope's memory (its limit, or RAM).
  double turnover_per_s = 0;
  // Seconds per second that the scope's processes stalled reclaiming (summed over threads).
  double direct_reclaim_stall = 0, memcg_reclaim_stall = 0;
  double kswapd_scan_pages_per_s = 0, direct_scan_pages_per_s = 0;  // host only
  uint64_t memory_bytes = 0;                                        // the limit, or RAM
  uint64_t usage_bytes = 0;      // in use (cgroup usage; host: RAM - available)
  uint64_t available_bytes = 0;  // host MemAvailable; cgroup: limit - usage
  uint64_t swap_used_bytes = 0, swap_total_bytes = 0;  // swap_total: host only
  uint64_t oom_kills = 0;                              // in this interval
};

struct CgroupReport {
  std::string path;
  uint64_t id = 0;
  int version = 2;
  std::optional<uint64_t> limit_bytes;
  PagingVerdict verdict = PagingVerdict::kOk;  // the worst of its intervals
  std::string reason;                          // of the first interval with that verdict
  std::vector<ScopeInterval> intervals;
};

enum class ProcessRole { kNone = 0, kCulprit = 1, kVictim = 2 };
const char* process_role_name(ProcessRole role);  // "none", "culprit", "victim"

struct ProcessReport {
  uint32_t pid = 0;
  std::string comm;
  std::string cgroup;
  ProcessRole role = ProcessRole::kNone;
  bool exited = false;
  // Over the run (since memtrail started, or since the process started if later).
  uint64_t major_faults = 0, minor_faults = 0;
  uint64_t swapins = 0;                         // pages (deep mode)
  uint64_t refault_anon = 0, refault_file = 0;  // pages (deep mode)
  double reclaim_stall_s = 0;                   // direct + memcg reclaim, summed over threads
  double fault_wait_s = 0;  // major faults' own wait (deep mode), summed over threads
  uint64_t timed_major_faults = 0;
  double stall_share = 0;  // (reclaim + fault wait) / time observed
  double major_faults_per_s = 0, minor_faults_per_s = 0;
  double observed_s = 0;
  // Memory now, and its footprint (anonymous + shmem + swap: what reclaim cannot drop).
  uint64_t rss_bytes = 0, swap_bytes = 0;
  uint64_t footprint_bytes = 0;
  int64_t footprint_growth_bytes = 0;       // last - first seen
  double footprint_growth_bytes_per_s = 0;  // over the intervals it grew in
  double scope_share = 0;  // footprint / the memory of its scope (cgroup limit, or RAM)
  std::vector<std::string> evidence;
  std::string next_command;  // for culprits: memtrail leaks -p PID
};

// How the run was configured, recorded with its report.
struct PagingRunOptions {  // defaults: the command line's
  double interval_s = 2;
  std::string deep = "auto";  // "auto", "always", "never"
  uint32_t top = 10;
  uint32_t max_processes = 32768;
};

struct PagingReport {
  std::string host_name, kernel;  // hostname, uname -r
  PagingRunOptions options;
  int64_t started_unix_ms = 0;
  double duration_s = 0;
  double interval_s = 0;
  PagingVerdict verdict = PagingVerdict::kOk;  // worst over the run, host or any cgroup
  std::string verdict_scope;                   // "host" or the cgroup's path
  std::string verdict_reason;
  std::vector<ScopeInterval> host;
  std::vector<CgroupReport> cgroups;
  std::vector<ProcessReport> processes;  // culprits, then victims, then the rest; top N
  size_t processes_omitted = 0;          // beyond top N
  std::vector<OomKill> oom_kills;
  PagingTracerCounters counters;
  double deep_s = 0;                 // time the deep hooks were attached
  std::vector<std::string> sources;  // where each signal came from, and what was unavailable
  std::string cgroup_filter;         // --cgroup, if given
};

}  // namespace memtrail::model
