// SPDX-License-Identifier: Apache-2.0
// What `memtrail paging` samples each interval: cumulative counters of the host, of memory
// cgroups and of processes (from procfs and cgroupfs), and of processes as seen by BPF.
// Plain data; deltas, rates, verdicts and roles are computed from two samples by the analysis.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace memtrail::model {

// One PSI resource file (/proc/pressure/memory, <cgroup v2>/memory.pressure).
struct PressureStall {
  bool available = false;                         // the file exists and parsed
  double some_avg10 = 0, full_avg10 = 0;          // percent, as the kernel prints them
  uint64_t some_total_us = 0, full_total_us = 0;  // cumulative stall time
};

// The host at one instant: /proc/pressure/memory, /proc/vmstat, /proc/meminfo, zswap.
// Counters are cumulative since boot (pages or events); sizes are bytes now.
struct HostSample {
  PressureStall psi;
  uint64_t pgfault = 0, pgmajfault = 0;
  uint64_t pswpin = 0, pswpout = 0;  // pages swapped in / out
  uint64_t zswpin = 0, zswpout = 0;  // pages loaded from / stored to zswap
  uint64_t workingset_refault_anon = 0, workingset_refault_file = 0;
  uint64_t workingset_activate_anon = 0, workingset_activate_file = 0;
  uint64_t workingset_restore_anon = 0, workingset_restore_file = 0;
  uint64_t pgscan_kswapd = 0, pgscan_direct = 0;
  uint64_t pgsteal_kswapd = 0, pgsteal_direct = 0;
  uint64_t allocstall = 0;  // sum of allocstall_* (direct reclaim entries)
  uint64_t oom_kill = 0;
  uint64_t mem_total_bytes = 0, mem_available_bytes = 0;
  uint64_t swap_total_bytes = 0, swap_free_bytes = 0;
  uint64_t zswap_pool_bytes = 0, zswapped_bytes = 0;  // meminfo Zswap / Zswapped
  bool zswap_enabled = false;                         // /sys/module/zswap/parameters/enabled
};

// One memory cgroup at one instant, v1 or v2. Counters a version lacks stay unset.
struct CgroupSample {
  // Path relative to the memory hierarchy's root ("/" for the root itself), as in
  // /proc/PID/cgroup: "/system.slice/db.service".
  std::string path;
  uint64_t id = 0;  // inode of the cgroup directory = kernfs id, which BPF sees for its memcg
  int version = 2;  // 1: /sys/fs/cgroup/memory (v1 controller); 2: unified hierarchy
  std::optional<uint64_t> limit_bytes;  // none: unlimited (v1 huge value, v2 "max")
  uint64_t usage_bytes = 0;             // v1 memory.usage_in_bytes, v2 memory.current
  uint64_t swap_bytes = 0;              // v1 memory.stat swap (total_swap), v2 memory.swap.current
  PressureStall psi;  // v2 memory.pressure; for v1, the same path under the unified mount
  // memory.stat, hierarchical totals where v1 offers them (total_*).
  uint64_t pgfault = 0, pgmajfault = 0;
  uint64_t workingset_refault_anon = 0, workingset_refault_file = 0;
  uint64_t workingset_restore_anon = 0, workingset_restore_file = 0;
  std::optional<uint64_t> pswpin, pswpout, zswpin;  // v2 only (v1: from BPF in deep mode)
  std::optional<uint64_t> pgscan;                   // v2 only
  uint64_t oom_kill = 0;            // v1 memory.oom_control oom_kill, v2 memory.events oom_kill
  std::optional<uint64_t> failcnt;  // v1 memory.failcnt: times usage hit the limit
};

// A process at one instant, from /proc/PID/{stat,status,cgroup}.
struct ProcessSample {
  uint32_t pid = 0;
  uint64_t start_time_ticks = 0;  // /proc/PID/stat field 22: tells a reused pid apart
  std::string comm;
  std::string cgroup;  // its memory cgroup's path (v1 memory controller line, else v2 "0::")
  uint64_t minor_faults = 0, major_faults = 0;  // stat fields 10 and 12, all threads, dead ones too
  uint64_t rss_anon_bytes = 0, rss_file_bytes = 0, rss_shmem_bytes = 0;
  uint64_t swap_bytes = 0;  // VmSwap
};

// A process as BPF saw it: cumulative since memtrail attached (or since the process started).
struct TaskPagingStats {
  uint32_t tgid = 0;
  std::string comm;
  uint64_t memcg_id = 0;  // kernfs id of its memory cgroup at its last counted event
  bool exited = false;
  uint64_t major_faults = 0;         // perf software event PAGE_FAULTS_MAJ
  uint64_t timed_major_faults = 0;   // major faults whose wait was timed (deep mode)
  uint64_t major_fault_wait_ns = 0;  // their wait, less reclaim done inside them
  uint64_t direct_reclaim_ns = 0, memcg_reclaim_ns = 0;  // time stalled reclaiming
  uint64_t reclaim_passes = 0, pages_reclaimed = 0;
  uint64_t swapout_pages = 0;  // anon pages this task wrote to swap as a reclaimer
  // Deep mode (memcg tracepoints), attributed to the faulting task:
  uint64_t swapin_pages = 0, zswapin_pages = 0;
  uint64_t refault_anon = 0, refault_file = 0;
  uint64_t restore_anon = 0, restore_file = 0;
};

// A memory cgroup's swap-ins as BPF counted them (deep mode), for cgroup v1, whose memory.stat
// has none. Cumulative since deep mode was first attached.
struct MemcgPagingStats {
  uint64_t id = 0;  // kernfs id (= CgroupSample::id)
  uint64_t swapin_pages = 0, zswapin_pages = 0;
};

struct OomKill {
  uint32_t pid = 0;
  std::string comm;
  uint64_t memcg_id = 0;
  std::string cgroup;  // its memory cgroup's path, when known (filled by the analysis)
  uint64_t anon_rss_bytes = 0, file_rss_bytes = 0, shmem_rss_bytes = 0;
  double t_s = 0;  // seconds since memtrail started
};

// What the paging tracer dropped or could not do; shown in every report.
struct PagingTracerCounters {
  uint64_t processes_not_tracked = 0;   // per-process map full
  uint64_t oom_kills_not_recorded = 0;  // OOM victims map full
  uint64_t cgroups_not_tracked = 0;     // per-cgroup swap-in map full
  uint64_t stalls_not_timed = 0;        // no task storage for a thread: a stall went untimed
};

// Everything sampled at one tick.
struct PagingSample {
  double t_s = 0;       // seconds since memtrail started (monotonic)
  int64_t unix_ms = 0;  // wall clock, for the report
  HostSample host;
  std::vector<CgroupSample> cgroups;
  std::vector<ProcessSample> processes;
  std::vector<TaskPagingStats> tasks;    // from BPF
  std::vector<MemcgPagingStats> memcgs;  // from BPF, deep mode
  std::vector<OomKill> oom_kills;        // new since the previous sample
  PagingTracerCounters counters;
  bool deep = false;  // deep-mode hooks were attached during (part of) the interval ending here
};

}  // namespace memtrail::model
