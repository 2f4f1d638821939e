// SPDX-License-Identifier: Apache-2.0
// Verdicts per interval and scope, culprits and victims per process.
#include "aggregator/paging_analysis.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/format.h"

namespace memtrail::model {

const char* paging_verdict_name(PagingVerdict verdict) {
  switch (verdict) {
    case PagingVerdict::kOk:
      return "ok";
    case PagingVerdict::kPressure:
      return "pressure";
    case PagingVerdict::kThrashing:
      return "thrashing";
  }
  return "ok";
}

const char* process_role_name(ProcessRole role) {
  switch (role) {
    case ProcessRole::kNone:
      return "none";
    case ProcessRole::kCulprit:
      return "culprit";
    case ProcessRole::kVictim:
      return "victim";
  }
  return "none";
}

}  // namespace memtrail::model

namespace memtrail::aggregator {
namespace {

using model::PagingVerdict;
using model::ProcessRole;

const uint64_t kPageSize = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
// A footprint step smaller than this is noise (allocator slack, page tables), not growth.
constexpr uint64_t kGrowthStepBytes = 1ull << 20;

double per_s(uint64_t now, uint64_t before, double duration_s) {
  return now > before && duration_s > 0 ? static_cast<double>(now - before) / duration_s : 0;
}

double ns_per_s(uint64_t now, uint64_t before, double duration_s) {
  return per_s(now, before, duration_s) / 1e9;
}

// 45712 -> "45.7k"
std::string count_text(double value) {
  char text[32];
  if (value >= 1e6) {
    std::snprintf(text, sizeof text, "%.1fM", value / 1e6);
  } else if (value >= 1e4) {
    std::snprintf(text, sizeof text, "%.1fk", value / 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.0f", value);
  }
  return text;
}

std::string percent_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f%%", value);
  return text;
}

std::string fixed_text(double value, const char* format) {
  char text[32];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

uint64_t footprint_of(const model::ProcessSample& process) {
  return process.rss_anon_bytes + process.rss_shmem_bytes + process.swap_bytes;
}

bool in_cgroup(const std::string& path, const std::string& filter) {
  if (filter.empty() || filter == "/") return true;
  return path == filter ||
         (path.size() > filter.size() && path.compare(0, filter.size(), filter) == 0 &&
          path[filter.size()] == '/');
}

// Keeps a bounded series: when full, every other point goes (the whole span at half the
// resolution).
template <typename Point>
void append_bounded(std::vector<Point>& series, Point point, size_t max_points) {
  if (series.size() >= max_points) {
    std::vector<Point> halved;
    for (size_t i = 0; i < series.size(); i += 2) halved.push_back(series[i]);
    series = std::move(halved);
  }
  series.push_back(point);
}

}  // namespace

// What the host and a cgroup count alike: time, stall shares, faults, refaults, OOM kills.
template <typename Counters>
model::ScopeInterval shared_interval(const Counters& now, const Counters& before,
                                     const model::PagingSample& sample, double duration_s) {
  model::ScopeInterval interval;
  interval.t_s = sample.t_s;
  interval.duration_s = duration_s;
  interval.unix_ms = sample.unix_ms;
  if (now.psi.available && before.psi.available) {
    interval.psi_some_pct =
        per_s(now.psi.some_total_us, before.psi.some_total_us, duration_s) / 1e4;
    interval.psi_full_pct =
        per_s(now.psi.full_total_us, before.psi.full_total_us, duration_s) / 1e4;
  }
  interval.major_faults_per_s = per_s(now.pgmajfault, before.pgmajfault, duration_s);
  interval.minor_faults_per_s =
      std::max(0.0, per_s(now.pgfault, before.pgfault, duration_s) - interval.major_faults_per_s);
  interval.refault_anon_per_s =
      per_s(now.workingset_refault_anon, before.workingset_refault_anon, duration_s);
  interval.refault_file_per_s =
      per_s(now.workingset_refault_file, before.workingset_refault_file, duration_s);
  interval.restore_per_s =
      per_s(now.workingset_restore_anon + now.workingset_restore_file,
            before.workingset_restore_anon + before.workingset_restore_file, duration_s);
  interval.oom_kills = now.oom_kill > before.oom_kill ? now.oom_kill - before.oom_kill : 0;
  return interval;
}

// Seconds per second that the processes `counts` accepts stalled in reclaim this interval.
template <typename Accept>
void PagingAnalyzer::add_reclaim_stall(model::ScopeInterval& interval,
                                       const model::PagingSample& sample, Accept counts) const {
  for (const auto& task : sample.tasks) {
    if (!counts(task)) continue;
    auto previous = previous_tasks_.find(task.tgid);
    bool seen = previous != previous_tasks_.end();
    interval.direct_reclaim_stall += ns_per_s(
        task.direct_reclaim_ns, seen ? previous->second.direct_reclaim_ns : 0, interval.duration_s);
    interval.memcg_reclaim_stall += ns_per_s(
        task.memcg_reclaim_ns, seen ? previous->second.memcg_reclaim_ns : 0, interval.duration_s);
  }
}

model::ScopeInterval PagingAnalyzer::host_interval(const model::PagingSample& sample,
                                                   double duration_s) {
  const auto& now = sample.host;
  const auto& before = previous_.host;
  auto interval = shared_interval(now, before, sample, duration_s);
  interval.swapin_pages_per_s = per_s(now.pswpin, before.pswpin, duration_s);
  interval.swapout_pages_per_s = per_s(now.pswpout, before.pswpout, duration_s);
  interval.zswapin_pages_per_s = per_s(now.zswpin, before.zswpin, duration_s);
  interval.kswapd_scan_pages_per_s = per_s(now.pgscan_kswapd, before.pgscan_kswapd, duration_s);
  interval.direct_scan_pages_per_s = per_s(now.pgscan_direct, before.pgscan_direct, duration_s);
  interval.memory_bytes = now.mem_total_bytes;
  interval.available_bytes = now.mem_available_bytes;
  interval.usage_bytes =
      now.mem_total_bytes - std::min(now.mem_total_bytes, now.mem_available_bytes);
  interval.swap_total_bytes = now.swap_total_bytes;
  interval.swap_used_bytes =
      now.swap_total_bytes - std::min(now.swap_total_bytes, now.swap_free_bytes);
  add_reclaim_stall(interval, sample, [](const model::TaskPagingStats&) { return true; });
  return interval;
}

model::ScopeInterval PagingAnalyzer::cgroup_interval(const model::CgroupSample& now,
                                                     const model::CgroupSample& before,
                                                     const model::PagingSample& sample,
                                                     double duration_s) {
  auto interval = shared_interval(now, before, sample, duration_s);
  if (now.pswpin && before.pswpin) {
    interval.swapin_pages_per_s = per_s(*now.pswpin, *before.pswpin, duration_s);
  } else {
    // cgroup v1 counts no swap-ins; the deep hooks do, per cgroup, while attached.
    auto find =
        [&](const std::vector<model::MemcgPagingStats>& memcgs) -> const model::MemcgPagingStats* {
      for (const auto& memcg : memcgs) {
        if (memcg.id == now.id) return &memcg;
      }
      return nullptr;
    };
    const auto* current = find(sample.memcgs);
    const auto* earlier = find(previous_.memcgs);
    if (current) {
      interval.swapin_pages_per_s =
          per_s(current->swapin_pages, earlier ? earlier->swapin_pages : 0, duration_s);
      interval.zswapin_pages_per_s =
          per_s(current->zswapin_pages, earlier ? earlier->zswapin_pages : 0, duration_s);
    }
  }
  if (now.pswpout && before.pswpout) {
    interval.swapout_pages_per_s = per_s(*now.pswpout, *before.pswpout, duration_s);
  }
  if (now.zswpin && before.zswpin) {
    interval.zswapin_pages_per_s = per_s(*now.zswpin, *before.zswpin, duration_s);
  }
  interval.memory_bytes = now.limit_bytes ? *now.limit_bytes : sample.host.mem_total_bytes;
  interval.usage_bytes = now.usage_bytes;
  interval.available_bytes =
      interval.memory_bytes - std::min(interval.memory_bytes, now.usage_bytes);
  interval.swap_used_bytes = now.swap_bytes;
  add_reclaim_stall(interval, sample, [&](const model::TaskPagingStats& task) {
    auto path = cgroup_paths_.find(task.memcg_id);
    return path != cgroup_paths_.end() && in_cgroup(path->second, now.path);
  });
  return interval;
}

// How often the scope re-reads all of its memory, in words: "its whole 64.0 MiB 18 times a
// second", or "as much as its whole 23.5 GiB every 21.0s" when that takes more than a second.
static std::string turnover_text(double turnover_per_s, uint64_t memory_bytes) {
  std::string whole = "its whole " + human_bytes(memory_bytes);
  if (turnover_per_s >= 1.95)
    return whole + " " + fixed_text(turnover_per_s, "%.0f") + " times a second";
  if (turnover_per_s >= 0.95) return whole + " about once a second";
  if (turnover_per_s * 3600 < 1) return "less than " + whole + " an hour";
  return "as much as " + whole + " every " + human_duration(1 / turnover_per_s);
}

// Decides an interval's verdict from its numbers and the run of thrashing-like intervals
// before it, and says why.
void PagingAnalyzer::judge(model::ScopeInterval& interval, int& thrashing_run,
                           bool at_limit) const {
  const auto& t = thresholds_;
  double swapins = interval.swapin_pages_per_s.value_or(0) + interval.zswapin_pages_per_s;
  double anon = std::max(interval.refault_anon_per_s, swapins);
  double memory = static_cast<double>(std::max<uint64_t>(interval.memory_bytes, 1));
  interval.turnover_per_s =
      (anon + interval.refault_file_per_s) * static_cast<double>(kPageSize) / memory;
  double restore_turnover = interval.restore_per_s * static_cast<double>(kPageSize) / memory;
  double reclaim = interval.direct_reclaim_stall + interval.memcg_reclaim_stall;

  bool has_psi = interval.psi_some_pct.has_value();
  double some = interval.psi_some_pct.value_or(0), full = interval.psi_full_pct.value_or(0);
  // Without PSI (a v1 cgroup with no unified twin), stalled reclaim is the stall signal.
  bool stalled = has_psi ? (full >= t.thrashing_full_pct || some >= t.thrashing_some_pct)
                         : reclaim >= 4 * t.reclaim_stall;
  double reread_bytes_per_s = interval.turnover_per_s * memory;
  bool rereading = interval.turnover_per_s >= t.thrashing_turnover ||
                   restore_turnover >= t.thrashing_restore_turnover ||
                   reread_bytes_per_s >= t.thrashing_refault_bytes_per_s;
  bool thrashing_like = stalled && rereading;
  thrashing_run = thrashing_like ? thrashing_run + 1 : 0;

  std::string anon_kind = interval.zswapin_pages_per_s > interval.swapin_pages_per_s.value_or(0)
                              ? "zswap"
                              : "anon/swap";
  double file = interval.refault_file_per_s;
  if (anon > 0 || file > 0) {
    bool anon_first = anon >= file;
    interval.kind = anon_first ? anon_kind : "file/page cache";
    if (std::min(anon, file) >= 0.1 * std::max(anon, file)) {
      interval.kind += anon_first ? " + file/page cache" : " + " + anon_kind;
    }
  }

  std::string reason;
  if (has_psi) {
    reason = "PSI some " + percent_text(some) + " full " + percent_text(full);
  } else {
    reason = "no PSI";
  }
  if (anon + interval.refault_file_per_s > 0) {
    reason += ", refaults " + count_text(interval.refault_anon_per_s) + " anon + " +
              count_text(interval.refault_file_per_s) + " file pages/s (" +
              human_bytes(static_cast<uint64_t>(reread_bytes_per_s)) +
              "/s re-read: " + turnover_text(interval.turnover_per_s, interval.memory_bytes) + ")";
  }
  if (swapins > 0) reason += ", swap-ins " + count_text(swapins) + " pages/s";
  if (reclaim > 0.001) reason += ", reclaim stall " + fixed_text(reclaim, "%.2f") + " s/s";
  if (interval.oom_kills > 0) reason += ", " + std::to_string(interval.oom_kills) + " OOM kill(s)";

  if (thrashing_run >= t.thrashing_intervals) {
    interval.verdict = PagingVerdict::kThrashing;
    reason += "; " + (interval.kind.empty() ? std::string("memory") : interval.kind) +
              " thrashing for " + std::to_string(thrashing_run) + " intervals";
    if (at_limit) reason += " at the cgroup's limit";
  } else if (thrashing_like || some >= t.pressure_some_pct || reclaim >= t.reclaim_stall) {
    interval.verdict = PagingVerdict::kPressure;
    if (thrashing_like) reason += "; thrashing-like (1 interval so far)";
  } else {
    interval.verdict = PagingVerdict::kOk;
  }
  interval.reason = reason;
}

void PagingAnalyzer::track_processes(const model::PagingSample& sample) {
  std::unordered_map<uint32_t, uint64_t> live;
  for (const auto& process : sample.processes) {
    auto key = std::make_pair(process.pid, process.start_time_ticks);
    auto [it, created] = processes_.try_emplace(key);
    ProcessHistory& history = it->second;
    if (created) {
      history.pid = process.pid;
      history.first_t = sample.t_s;
      // Present at the baseline: its counters so far predate memtrail. Appeared later: it
      // started during the run, so all of them count.
      if (!have_baseline_) {
        history.first = process;
      } else {
        history.first.pid = process.pid;
        history.first_t = previous_.t_s;
      }
    }
    history.in_proc = true;
    history.comm = process.comm;
    history.cgroup = process.cgroup;
    history.last = process;
    history.last_t = sample.t_s;
    uint64_t footprint = footprint_of(process);
    if (!history.footprint.empty()) {
      const auto& previous = history.footprint.back();
      history.grew_last = footprint >= previous.bytes + kGrowthStepBytes;
      if (history.grew_last) {
        ++history.growth_intervals;
        history.growth_bytes += footprint - previous.bytes;
        history.largest_step = std::max(history.largest_step, footprint - previous.bytes);
        history.growth_time_s += sample.t_s - previous.t_s;
      }
    }
    history.min_footprint = std::min(history.min_footprint, footprint);
    append_bounded(history.footprint, FootprintPoint{sample.t_s, footprint}, max_points_);
    live[process.pid] = process.start_time_ticks;
  }
  for (const auto& task : sample.tasks) {
    auto live_it = live.find(task.tgid);
    std::pair<uint32_t, uint64_t> key;
    if (live_it != live.end()) {
      key = {task.tgid, live_it->second};
    } else if (auto last = live_start_.find(task.tgid); last != live_start_.end()) {
      key = {task.tgid, last->second};  // seen in /proc before, gone now
    } else {
      key = {task.tgid, 0};  // started and ended between two samples, or a kernel thread
    }
    auto [it, created] = processes_.try_emplace(key);
    ProcessHistory& history = it->second;
    if (created) {
      history.pid = task.tgid;
      history.first_t = have_baseline_ ? previous_.t_s : sample.t_s;
      history.last_t = sample.t_s;
      history.comm = task.comm;
      if (auto path = cgroup_paths_.find(task.memcg_id); path != cgroup_paths_.end()) {
        history.cgroup = path->second;
      }
    }
    history.bpf = task;
    if (task.exited) {
      history.exited = true;
      history.last_t = sample.t_s;
    }
  }
  // Gone from /proc without BPF seeing the exit (no event of theirs was ever counted).
  for (const auto& [pid, start] : live_start_) {
    if (live.count(pid) && live[pid] == start) continue;
    auto it = processes_.find({pid, start});
    if (it != processes_.end()) it->second.exited = true;
  }
  live_start_ = std::move(live);
  // A busy host starts and ends many processes: keep only those that exited with something
  // to report, so memory stays bounded by the processes that matter.
  std::erase_if(processes_, [](const auto& entry) {
    const ProcessHistory& h = entry.second;
    return h.exited && h.bpf.major_faults == 0 && h.bpf.direct_reclaim_ns == 0 &&
           h.bpf.memcg_reclaim_ns == 0 && h.growth_intervals == 0 &&
           h.bpf.refault_anon + h.bpf.refault_file == 0;
  });
}

void PagingAnalyzer::add(const model::PagingSample& sample, bool closes_interval) {
  for (const auto& cgroup : sample.cgroups) cgroup_paths_[cgroup.id] = cgroup.path;
  for (auto kill : sample.oom_kills) {
    if (auto path = cgroup_paths_.find(kill.memcg_id); path != cgroup_paths_.end()) {
      kill.cgroup = path->second;
    }
    oom_kills_.push_back(std::move(kill));
  }
  counters_ = sample.counters;
  if (!have_baseline_) {
    start_t_ = sample.t_s;
    start_unix_ms_ = sample.unix_ms;
  } else {
    double duration_s = sample.t_s - previous_.t_s;
    if (duration_s <= 0) return;
    if (sample.deep) deep_s_ += duration_s;
    if (!closes_interval) {
      // Only the processes' counters move on; the scopes' last interval stays as it was.
      track_processes(sample);
      last_t_ = sample.t_s;
      return;
    }
    auto host = host_interval(sample, duration_s);
    judge(host, host_thrashing_run_, false);
    under_pressure_ = host.verdict != PagingVerdict::kOk;
    std::string thrashing_cgroup, pressured_cgroup;  // the first of each, for the host's reason
    for (const auto& cgroup : sample.cgroups) {
      if (cgroup.path == "/") continue;  // the root cgroup is the host
      const model::CgroupSample* before = nullptr;
      for (const auto& earlier : previous_.cgroups) {
        if (earlier.id == cgroup.id && earlier.path == cgroup.path) before = &earlier;
      }
      if (!before) continue;  // new since the last sample: the next interval has a baseline
      auto [it, created] = cgroups_.try_emplace(cgroup.path);
      auto& history = it->second;
      if (created) {
        history.report.path = cgroup.path;
        history.report.id = cgroup.id;
        history.report.version = cgroup.version;
      }
      history.report.limit_bytes = cgroup.limit_bytes;
      auto interval = cgroup_interval(cgroup, *before, sample, duration_s);
      judge(interval, history.thrashing_run, cgroup.limit_bytes.has_value());
      if (interval.verdict > history.report.verdict) {
        history.report.verdict = interval.verdict;
        history.report.reason = interval.reason;
      }
      if (interval.verdict != PagingVerdict::kOk) under_pressure_ = true;
      if (interval.verdict != PagingVerdict::kOk && cgroup.limit_bytes &&
          pressured_cgroup.empty()) {
        pressured_cgroup = cgroup.path;
      }
      if (interval.verdict == PagingVerdict::kThrashing && thrashing_cgroup.empty()) {
        thrashing_cgroup = cgroup.path;
      }
      append_bounded(history.report.intervals, std::move(interval), max_points_);
    }
    // Limit-driven or global: a cgroup under pressure at its own limit while the host does no
    // global reclaim is the cgroup's own problem, whatever the host's PSI shows.
    bool global_reclaim = host.kswapd_scan_pages_per_s > 0 || host.direct_scan_pages_per_s > 0 ||
                          host.direct_reclaim_stall > 0;
    if (!pressured_cgroup.empty() && !global_reclaim) {
      host.memcg_limited = true;
      const std::string& cgroup = thrashing_cgroup.empty() ? pressured_cgroup : thrashing_cgroup;
      host.reason += "; memcg-limited: memory cgroup " + cgroup + " is " +
                     (thrashing_cgroup.empty() ? "under pressure" : "thrashing") +
                     " at its limit, no global reclaim";
    }
    append_bounded(host_, std::move(host), max_points_);
  }
  track_processes(sample);
  previous_tasks_.clear();
  for (const auto& task : sample.tasks) {
    if (!task.exited) previous_tasks_[task.tgid] = task;
  }
  previous_.t_s = sample.t_s;
  previous_.unix_ms = sample.unix_ms;
  previous_.host = sample.host;
  previous_.cgroups = sample.cgroups;
  previous_.memcgs = sample.memcgs;
  last_t_ = sample.t_s;
  have_baseline_ = true;
}

model::ProcessReport PagingAnalyzer::assess(const ProcessHistory& history,
                                            const model::PagingReport& report) const {
  const auto& t = thresholds_;
  model::ProcessReport process;
  process.pid = history.pid;
  process.comm = history.comm;
  process.cgroup = history.cgroup;
  process.exited = history.exited;
  const auto& bpf = history.bpf;
  // BPF's count where BPF has the process; else (no room in its map: counted as not recorded)
  // what /proc says, which also holds faults the kernel took on the process's behalf.
  process.major_faults = bpf.tgid != 0 || !history.in_proc
                             ? bpf.major_faults
                             : history.last.major_faults -
                                   std::min(history.last.major_faults, history.first.major_faults);
  if (history.in_proc) {
    process.minor_faults =
        history.last.minor_faults - std::min(history.last.minor_faults, history.first.minor_faults);
  }
  process.swapins = bpf.swapin_pages + bpf.zswapin_pages;
  process.refault_anon = bpf.refault_anon;
  process.refault_file = bpf.refault_file;
  process.reclaim_stall_s = static_cast<double>(bpf.direct_reclaim_ns + bpf.memcg_reclaim_ns) / 1e9;
  process.fault_wait_s = static_cast<double>(bpf.major_fault_wait_ns) / 1e9;
  process.timed_major_faults = bpf.timed_major_faults;
  process.observed_s = std::max(history.last_t - history.first_t, report.interval_s);
  // A report taken before the first interval ended has observed nothing over time: no shares
  // or rates yet (0/0 would be NaN, which JSON can only write as null).
  if (process.observed_s > 0) {
    process.stall_share = (process.reclaim_stall_s + process.fault_wait_s) / process.observed_s;
    process.major_faults_per_s = static_cast<double>(process.major_faults) / process.observed_s;
    process.minor_faults_per_s = static_cast<double>(process.minor_faults) / process.observed_s;
  }
  process.rss_bytes =
      history.last.rss_anon_bytes + history.last.rss_file_bytes + history.last.rss_shmem_bytes;
  process.swap_bytes = history.last.swap_bytes;
  process.footprint_bytes = footprint_of(history.last);
  if (!history.footprint.empty()) {
    process.footprint_growth_bytes = static_cast<int64_t>(history.footprint.back().bytes) -
                                     static_cast<int64_t>(history.footprint.front().bytes);
  }
  if (history.growth_time_s > 0) {
    process.footprint_growth_bytes_per_s =
        static_cast<double>(history.growth_bytes) / history.growth_time_s;
  }

  // The scope whose memory it competes for: its cgroup if that has a limit, else the host.
  // Sought among all cgroups, not the report's: --cgroup naming a child of the limited cgroup
  // leaves the limit out of the report, not out of the process's life.
  const model::CgroupReport* cgroup = nullptr;
  for (const auto& [path, seen] : cgroups_) {
    const model::CgroupReport& candidate = seen.report;
    if (candidate.limit_bytes && in_cgroup(history.cgroup, candidate.path) &&
        (!cgroup || candidate.path.size() > cgroup->path.size())) {
      cgroup = &candidate;
    }
  }
  uint64_t scope_memory = report.host.empty() ? 0 : report.host.back().memory_bytes;
  // The host's pressure counts for everyone only when it is global: a cgroup thrashing at its
  // own limit makes no victims outside it.
  PagingVerdict scope_verdict = PagingVerdict::kOk;
  for (const auto& interval : report.host) {
    if (!interval.memcg_limited) scope_verdict = std::max(scope_verdict, interval.verdict);
  }
  std::string scope_name = "the host's memory";
  if (cgroup) {
    scope_memory = *cgroup->limit_bytes;
    scope_verdict = std::max(scope_verdict, cgroup->verdict);
    scope_name = "the limit of " + cgroup->path;
  }
  if (scope_memory > 0) {
    process.scope_share =
        static_cast<double>(process.footprint_bytes) / static_cast<double>(scope_memory);
  }
  bool pressured = scope_verdict != PagingVerdict::kOk;
  uint64_t min_growth = std::max<uint64_t>(
      t.culprit_min_growth_bytes,
      static_cast<uint64_t>(t.culprit_min_growth_share * static_cast<double>(scope_memory)));
  bool grows = history.growth_intervals >= t.culprit_growth_intervals &&
               history.growth_bytes - history.largest_step >= min_growth &&
               process.footprint_growth_bytes >= static_cast<int64_t>(min_growth);
  bool stalls = process.stall_share >= t.victim_stall_share ||
                (process.timed_major_faults == 0 &&
                 process.major_faults_per_s >= t.victim_major_faults_per_s);

  auto& evidence = process.evidence;
  if (grows) {
    evidence.push_back(
        "footprint (anon + shmem + swap) grew " +
        human_bytes(history.min_footprint == UINT64_MAX ? 0 : history.min_footprint) + " -> " +
        human_bytes(process.footprint_bytes) + ", +" +
        human_bytes(static_cast<uint64_t>(process.footprint_growth_bytes_per_s)) + "/s in " +
        std::to_string(history.growth_intervals) + " intervals");
  } else if (!history.footprint.empty()) {
    evidence.push_back("footprint " + human_bytes(process.footprint_bytes) + ", not growing");
  }
  if (grows && process.minor_faults_per_s >= 1) {
    // First touches of new memory: how a growing footprint shows in the fault counters.
    evidence.push_back(count_text(process.minor_faults_per_s) + " minor faults/s (new pages)");
  }
  if (grows && !report.host.empty()) {
    const auto& host = report.host.back();
    uint64_t swap_free =
        host.swap_total_bytes - std::min(host.swap_total_bytes, host.swap_used_bytes);
    if (host.swap_total_bytes == 0) {
      evidence.push_back("no swap on the host: the OOM killer acts once memory is used up");
    } else if (process.footprint_growth_bytes_per_s > 0 && history.grew_last) {
      evidence.push_back(
          "at this rate the host's free swap (" + human_bytes(swap_free) + ") lasts " +
          human_duration(static_cast<double>(swap_free) / process.footprint_growth_bytes_per_s));
    }
  }
  if (process.scope_share >= 0.01) {
    evidence.push_back("holds " + percent_text(100 * process.scope_share) + " of " + scope_name +
                       (process.swap_bytes ? " (" + human_bytes(process.swap_bytes) + " in swap)"
                                           : std::string()));
  }
  if (process.stall_share > 0.001) {
    evidence.push_back("stalled " + percent_text(100 * process.stall_share) + " of the time: " +
                       fixed_text(process.reclaim_stall_s, "%.2f") + " s reclaiming, " +
                       (process.timed_major_faults
                            ? fixed_text(process.fault_wait_s, "%.2f") + " s in " +
                                  count_text(static_cast<double>(process.timed_major_faults)) +
                                  " timed major faults"
                            : std::string("major faults not timed")));
  }
  if (process.major_faults > 0) {
    evidence.push_back(count_text(process.major_faults_per_s) + " major faults/s");
  }
  if (process.refault_anon + process.refault_file > 0) {
    evidence.push_back(count_text(static_cast<double>(process.refault_anon)) + " anon + " +
                       count_text(static_cast<double>(process.refault_file)) +
                       " file pages refaulted");
  }
  if (grows && pressured) {
    process.role = ProcessRole::kCulprit;
    process.next_command = "memtrail leaks -p " + std::to_string(process.pid);
  } else if (stalls && pressured) {
    process.role = ProcessRole::kVictim;
  }
  return process;
}

model::PagingReport PagingAnalyzer::report(size_t top, const std::string& cgroup_filter) const {
  model::PagingReport report;
  report.started_unix_ms = start_unix_ms_;
  report.duration_s = last_t_ - start_t_;
  // The mean length of the intervals kept. Not duration / points: once a long run has halved
  // the series, fewer points cover the same duration.
  double kept_s = 0;
  for (const auto& interval : host_) kept_s += interval.duration_s;
  report.interval_s = host_.empty() ? 0 : kept_s / static_cast<double>(host_.size());
  report.host = host_;
  report.cgroup_filter = cgroup_filter;
  report.oom_kills = oom_kills_;
  report.counters = counters_;
  report.deep_s = deep_s_;
  for (const auto& [path, history] : cgroups_) {
    if (!in_cgroup(path, cgroup_filter)) continue;
    bool named = !cgroup_filter.empty() && path == cgroup_filter;
    if (!named && !history.report.limit_bytes && history.report.verdict == PagingVerdict::kOk) {
      continue;  // neither limited nor pressured: nothing to say about it
    }
    report.cgroups.push_back(history.report);
  }
  report.verdict_scope = "host";
  for (const auto& interval : report.host) {
    if (interval.verdict > report.verdict || report.verdict_reason.empty()) {
      if (interval.verdict >= report.verdict) {
        report.verdict = interval.verdict;
        report.verdict_reason = interval.reason;
      }
    }
  }
  // The most specific scope wins a tie: "thrashing in /db" says more than "on the host", and
  // /db/worker more than /db. Ancestors come first in path order, so a tied descendant follows.
  for (const auto& cgroup : report.cgroups) {
    if (cgroup.verdict > report.verdict ||
        (cgroup.verdict == report.verdict && cgroup.verdict != PagingVerdict::kOk &&
         (report.verdict_scope == "host" || in_cgroup(cgroup.path, report.verdict_scope)))) {
      report.verdict = cgroup.verdict;
      report.verdict_scope = cgroup.path;
      report.verdict_reason = cgroup.reason;
    }
  }

  std::vector<model::ProcessReport> processes;
  for (const auto& [key, history] : processes_) {
    if (!in_cgroup(history.cgroup, cgroup_filter)) continue;
    auto process = assess(history, report);
    // Worth a line: a role, or paging activity above noise.
    bool notable = process.role != ProcessRole::kNone || process.major_faults_per_s >= 1 ||
                   process.reclaim_stall_s >= 0.01 || history.growth_intervals > 0 ||
                   process.refault_anon + process.refault_file >= 256;
    if (notable) processes.push_back(std::move(process));
  }
  auto rank = [](const model::ProcessReport& p) {
    // Culprits first, then victims, then the rest; within each by its own measure of damage.
    int group = p.role == ProcessRole::kCulprit ? 0 : p.role == ProcessRole::kVictim ? 1 : 2;
    double damage = p.role == ProcessRole::kCulprit ? p.footprint_growth_bytes_per_s
                    : p.role == ProcessRole::kVictim
                        ? p.stall_share
                        : p.major_faults_per_s + p.reclaim_stall_s +
                              static_cast<double>(p.refault_anon + p.refault_file);
    return std::make_pair(group, -damage);
  };
  std::stable_sort(processes.begin(), processes.end(),
                   [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
  if (processes.size() > top) {
    report.processes_omitted = processes.size() - top;
    processes.resize(top);
  }
  report.processes = std::move(processes);
  return report;
}

}  // namespace memtrail::aggregator
