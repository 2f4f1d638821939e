// SPDX-License-Identifier: Apache-2.0
// Paging verdicts, culprits and victims on interval series shaped like the recorded thrashes.
//
// The series are built the way /proc, cgroupfs and the BPF maps report them: cumulative counters
// that each interval advance by the per-second rates measured on the project's test machine
// (docs/paging-format.md, "Where the thresholds come from"): an anonymous thrash in a 256 MiB
// cgroup with swap (PSI some/full ≈ 28/26 %, ≈ 45k anon refaults/s, a leaker growing 128 MiB/s
// to 640 MiB, an idle victim flat at 128 MiB, a file victim reclaiming ≈ 0.39 s/s) and a file
// thrash in a 64 MiB cgroup (PSI full ≈ 13 %, ≈ 350k file refaults/s).
#include "aggregator/paging_analysis.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "report/paging_renderers.h"

namespace memtrail::aggregator {
namespace {

using model::PagingVerdict;
using model::ProcessRole;

constexpr uint64_t kKiB = 1ull << 10, kMiB = 1ull << 20, kGiB = 1ull << 30;
constexpr int64_t kStartUnixMs = 1'795'000'000'000;
const double kPage = static_cast<double>(sysconf(_SC_PAGESIZE));

// Per-second rates of a scope's cumulative counters during one interval.
struct ScopeRates {
  double psi_some_pct = 0, psi_full_pct = 0;
  double minor_faults = 0, major_faults = 0;
  double swapins = 0, swapouts = 0, zswapins = 0;               // pages/s
  double refault_anon = 0, refault_file = 0, restore_anon = 0;  // pages/s
  double kswapd_scan = 0, direct_scan = 0;  // pages/s, host only: global reclaim
};

// Per-second rates of one process's counters during one interval.
struct TaskRates {
  double minor_faults = 0, major_faults = 0;
  double memcg_reclaim_s = 0, direct_reclaim_s = 0;  // seconds stalled per second
  // Deep mode only (the per-fault hooks): every major fault is timed.
  double fault_wait_s = 0;
  double swapins = 0, refault_anon = 0, refault_file = 0;
};

struct Cgroup {
  model::CgroupSample sample;
  ScopeRates rates;
};

struct Process {
  model::ProcessSample proc;
  model::TaskPagingStats task;
  TaskRates rates;
  bool in_proc = true;  // listed in /proc at the next sample
  bool in_bpf = false;  // has a BPF entry: one of its events was counted since attach

  // Anonymous memory + swap (what reclaim cannot drop); what does not fit in `resident` is in
  // swap.
  void footprint(uint64_t bytes, uint64_t resident) {
    proc.rss_anon_bytes = std::min(bytes, resident);
    proc.swap_bytes = bytes - proc.rss_anon_bytes;
  }
};

// A recorded run: one sample per interval. Before each interval the scripts set the rates (and
// any footprints) for it; the tick then advances every counter by rate x interval.
class Recording {
 public:
  using Script = std::function<void(Recording&, int)>;

  explicit Recording(double interval_s = 1) : interval_s_(interval_s) {
    // A 24 GiB host up for a while: counters since boot are far from zero.
    host_.psi.available = true;
    host_.psi.some_total_us = 41'234'567;
    host_.psi.full_total_us = 12'345'678;
    host_.pgfault = 812'345'678;
    host_.pgmajfault = 123'456;
    host_.pswpin = 2'345;
    host_.pswpout = 6'789;
    host_.workingset_refault_file = 345'678;
    host_.workingset_refault_anon = 1'234;
    host_.pgscan_kswapd = 99'999;
    host_.mem_total_bytes = 24 * kGiB;
    host_.mem_available_bytes = 18 * kGiB;
    host_.swap_total_bytes = 2 * kGiB;
  }

  model::HostSample& host() { return host_; }
  ScopeRates& host_rates() { return host_rates_; }
  bool deep = false;  // the per-fault hooks are attached during the coming interval

  Cgroup& add_cgroup(const std::string& path, std::optional<uint64_t> limit, int version = 2) {
    Cgroup& cgroup = cgroups_[path];
    cgroup.sample.path = path;
    cgroup.sample.id = next_cgroup_id_++;
    cgroup.sample.version = version;
    cgroup.sample.limit_bytes = limit;
    cgroup.sample.psi.available = true;
    cgroup.sample.pgfault = 5'000'000;
    cgroup.sample.pgmajfault = 1'000;
    cgroup.sample.workingset_refault_file = 7'000;
    if (version == 2) {
      cgroup.sample.pswpin = 100;
      cgroup.sample.pswpout = 300;
      cgroup.sample.zswpin = 0;
      cgroup.sample.pgscan = 20'000;
    }
    return cgroup;
  }
  Cgroup& cgroup(const std::string& path) { return cgroups_.at(path); }

  Process& add_process(uint32_t pid, const std::string& comm, const std::string& cgroup,
                       uint64_t anon_bytes, uint64_t start_time_ticks = 0) {
    Process& process = processes_[pid];
    process = Process{};
    process.proc.pid = pid;
    process.proc.start_time_ticks = start_time_ticks ? start_time_ticks : 10'000 + pid;
    process.proc.comm = comm;
    process.proc.cgroup = cgroup;
    process.proc.minor_faults = 1'500;  // loading and start-up
    process.proc.rss_anon_bytes = anon_bytes;
    process.task.tgid = pid;
    process.task.comm = comm;
    process.task.memcg_id = cgroups_.count(cgroup) ? cgroups_.at(cgroup).sample.id : 1;
    return process;
  }
  Process& process(uint32_t pid) { return processes_.at(pid); }

  void script(Script step) { scripts_.push_back(std::move(step)); }
  void oom_kill(model::OomKill kill) { oom_kills_.push_back(std::move(kill)); }

  // The baseline and then `intervals` samples.
  std::vector<model::PagingSample> record(int intervals) {
    std::vector<model::PagingSample> samples{snapshot()};
    for (int k = 1; k <= intervals; ++k) {
      host_rates_ = ScopeRates{};
      host_rates_.psi_some_pct = 0.1;  // an idle host: a little of everything
      host_rates_.minor_faults = 2'000;
      host_rates_.refault_file = 5;
      for (auto& [path, cgroup] : cgroups_) cgroup.rates = ScopeRates{};
      for (auto& [pid, process] : processes_) process.rates = TaskRates{};
      for (const auto& step : scripts_) step(*this, k);
      advance();
      samples.push_back(snapshot());
      oom_kills_.clear();
      // The tracer reports an exited task once, then deletes its entry.
      std::erase_if(processes_, [](const auto& entry) {
        return entry.second.task.exited || !entry.second.in_proc;
      });
    }
    return samples;
  }

 private:
  static void add(uint64_t& counter, double per_s, double duration_s) {
    counter += static_cast<uint64_t>(std::llround(per_s * duration_s));
  }

  static void advance_psi(model::PressureStall& psi, const ScopeRates& rates, double duration_s) {
    add(psi.some_total_us, rates.psi_some_pct / 100 * 1e6, duration_s);
    add(psi.full_total_us, rates.psi_full_pct / 100 * 1e6, duration_s);
    psi.some_avg10 = rates.psi_some_pct;
    psi.full_avg10 = rates.psi_full_pct;
  }

  void advance() {
    double dt = interval_s_;
    t_s_ += dt;
    const ScopeRates& h = host_rates_;
    advance_psi(host_.psi, h, dt);
    add(host_.pgfault, h.minor_faults + h.major_faults, dt);
    add(host_.pgmajfault, h.major_faults, dt);
    add(host_.pswpin, h.swapins, dt);
    add(host_.pswpout, h.swapouts, dt);
    add(host_.zswpin, h.zswapins, dt);
    add(host_.workingset_refault_anon, h.refault_anon, dt);
    add(host_.workingset_refault_file, h.refault_file, dt);
    add(host_.workingset_restore_anon, h.restore_anon, dt);
    add(host_.pgscan_kswapd, h.kswapd_scan, dt);
    add(host_.pgscan_direct, h.direct_scan, dt);
    for (auto& [path, cgroup] : cgroups_) {
      auto& s = cgroup.sample;
      const ScopeRates& r = cgroup.rates;
      if (s.psi.available) advance_psi(s.psi, r, dt);
      add(s.pgfault, r.minor_faults + r.major_faults, dt);
      add(s.pgmajfault, r.major_faults, dt);
      add(s.workingset_refault_anon, r.refault_anon, dt);
      add(s.workingset_refault_file, r.refault_file, dt);
      add(s.workingset_restore_anon, r.restore_anon, dt);
      if (s.version == 2) {
        add(*s.pswpin, r.swapins, dt);
        add(*s.pswpout, r.swapouts, dt);
        add(*s.zswpin, r.zswapins, dt);
      } else if (deep) {
        // cgroup v1 counts no swap-ins: the deep hooks count them per memcg.
        auto& memcg = memcgs_[s.id];
        memcg.id = s.id;
        add(memcg.swapin_pages, r.swapins, dt);
        add(memcg.zswapin_pages, r.zswapins, dt);
      }
    }
    for (auto& [pid, p] : processes_) {
      const TaskRates& r = p.rates;
      add(p.proc.minor_faults, r.minor_faults, dt);
      add(p.proc.major_faults, r.major_faults, dt);
      add(p.task.major_faults, r.major_faults, dt);
      add(p.task.memcg_reclaim_ns, r.memcg_reclaim_s * 1e9, dt);
      add(p.task.direct_reclaim_ns, r.direct_reclaim_s * 1e9, dt);
      if (deep) {
        add(p.task.timed_major_faults, r.major_faults, dt);
        add(p.task.major_fault_wait_ns, r.fault_wait_s * 1e9, dt);
        add(p.task.swapin_pages, r.swapins, dt);
        add(p.task.refault_anon, r.refault_anon, dt);
        add(p.task.refault_file, r.refault_file, dt);
      }
      p.in_bpf |= r.major_faults > 0 || r.memcg_reclaim_s > 0 || r.direct_reclaim_s > 0;
    }
    deep_in_interval_ = deep;
  }

  model::PagingSample snapshot() const {
    model::PagingSample sample;
    sample.t_s = t_s_;
    sample.unix_ms = kStartUnixMs + std::llround(t_s_ * 1000);
    sample.host = host_;
    uint64_t swapped = 0;
    std::map<std::string, uint64_t> resident, swap;
    for (const auto& [pid, p] : processes_) {
      if (p.in_proc) {
        sample.processes.push_back(p.proc);
        swapped += p.proc.swap_bytes;
        resident[p.proc.cgroup] +=
            p.proc.rss_anon_bytes + p.proc.rss_file_bytes + p.proc.rss_shmem_bytes;
        swap[p.proc.cgroup] += p.proc.swap_bytes;
      }
      if (p.in_bpf) sample.tasks.push_back(p.task);
    }
    sample.host.swap_free_bytes =
        host_.swap_total_bytes - std::min(host_.swap_total_bytes, swapped);
    for (const auto& [path, cgroup] : cgroups_) {
      model::CgroupSample s = cgroup.sample;
      s.usage_bytes = resident[path];
      if (s.limit_bytes) s.usage_bytes = std::min(s.usage_bytes, *s.limit_bytes);
      s.swap_bytes = swap[path];
      sample.cgroups.push_back(std::move(s));
    }
    for (const auto& [id, memcg] : memcgs_) sample.memcgs.push_back(memcg);
    sample.oom_kills = oom_kills_;
    sample.deep = deep_in_interval_;
    return sample;
  }

  double interval_s_;
  double t_s_ = 0;
  bool deep_in_interval_ = false;
  model::HostSample host_;
  ScopeRates host_rates_;
  uint64_t next_cgroup_id_ = 2'001;
  std::map<std::string, Cgroup> cgroups_;
  std::map<uint32_t, Process> processes_;
  std::map<uint64_t, model::MemcgPagingStats> memcgs_;
  std::vector<model::OomKill> oom_kills_;
  std::vector<Script> scripts_;
};

PagingAnalyzer analyze(const std::vector<model::PagingSample>& samples, size_t max_points = 240) {
  PagingAnalyzer analyzer({}, max_points);
  for (const auto& sample : samples) analyzer.add(sample);
  return analyzer;
}

const model::ProcessReport* find_process(const model::PagingReport& report, uint32_t pid) {
  for (const auto& process : report.processes) {
    if (process.pid == pid) return &process;
  }
  return nullptr;
}

const model::CgroupReport* find_cgroup(const model::PagingReport& report, const std::string& path) {
  for (const auto& cgroup : report.cgroups) {
    if (cgroup.path == path) return &cgroup;
  }
  return nullptr;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  return text;
}

// The anonymous thrash measured on the test machine: a 256 MiB cgroup with swap; the leaker
// grows 128 MiB/s to 640 MiB, an idle victim keeps 128 MiB (part of it in swap) and touches all
// of it, a file victim keeps a 96 MiB file map. Interval 1 fills the cgroup to its limit; from
// interval 2 on it thrashes, and the PSI trigger attaches the per-fault hooks.
constexpr uint32_t kLeaker = 26670, kIdleVictim = 26608, kFileVictim = 26609;
constexpr uint64_t kLeakerStart = 256 * kKiB;

void anon_thrash(Recording& run, const std::string& path = "/thrash", int version = 2,
                 bool psi = true) {
  run.add_cgroup(path, 256 * kMiB, version).sample.psi.available = psi;
  run.add_process(kLeaker, "thrash", path, kLeakerStart);
  run.add_process(kIdleVictim, "thrash", path, 128 * kMiB);
  run.add_process(kFileVictim, "thrash", path, 2 * kMiB).proc.rss_file_bytes = 96 * kMiB;
  run.script([path](Recording& run, int k) {
    bool thrashing = k >= 2;
    run.deep = thrashing;
    Process& leaker = run.process(kLeaker);
    leaker.footprint(kLeakerStart + 128 * kMiB * static_cast<uint64_t>(std::min(k, 5)),
                     thrashing ? 40 * kMiB : 96 * kMiB);
    // Growing means touching new pages: one minor fault per page.
    if (k <= 5) leaker.rates.minor_faults = 32'768;
    Process& idle = run.process(kIdleVictim);
    Process& reader = run.process(kFileVictim);
    // Flat footprint; how much of it is in swap moves from interval to interval.
    idle.footprint(128 * kMiB, thrashing ? (98 - 20 * (k % 3)) * kMiB : 128 * kMiB);
    ScopeRates& cgroup = run.cgroup(path).rates;
    ScopeRates& host = run.host_rates();
    if (!thrashing) {
      leaker.rates.memcg_reclaim_s = 0.02;
      cgroup.psi_some_pct = 3;
      cgroup.psi_full_pct = 1;
      cgroup.minor_faults = 32'768 + 300;
      cgroup.swapouts = 8'192;
    } else {
      leaker.rates.major_faults = 3'500;
      leaker.rates.memcg_reclaim_s = 0.25;
      leaker.rates.fault_wait_s = 0.10;
      leaker.rates.swapins = leaker.rates.refault_anon = 21'100;
      idle.rates.major_faults = 3'500;
      idle.rates.memcg_reclaim_s = 0.17;
      idle.rates.fault_wait_s = 0.70;  // 0.2 ms per major fault
      idle.rates.swapins = idle.rates.refault_anon = 23'900;
      reader.rates.major_faults = 10;
      reader.rates.memcg_reclaim_s = 0.39;
      reader.rates.fault_wait_s = 0.048;  // 4.8 ms per major fault
      reader.rates.refault_file = 41'100;
      cgroup.psi_some_pct = 28;
      cgroup.psi_full_pct = 26;
      cgroup.major_faults = 7'010;
      cgroup.minor_faults = (k <= 5 ? 32'768 : 0) + 1'000;
      cgroup.swapins = cgroup.refault_anon = 45'000;
      cgroup.swapouts = 30'000;
      cgroup.refault_file = 41'100;
      cgroup.restore_anon = 1'500;
    }
    // The host sees the same faults, and the cgroup's stalls in its own PSI.
    host.psi_some_pct = std::max(host.psi_some_pct, cgroup.psi_some_pct);
    host.psi_full_pct = std::max(host.psi_full_pct, cgroup.psi_full_pct);
    host.minor_faults += cgroup.minor_faults;
    host.major_faults += cgroup.major_faults;
    host.swapins += cgroup.swapins;
    host.swapouts += cgroup.swapouts;
    host.refault_anon += cgroup.refault_anon;
    host.refault_file += cgroup.refault_file;
    host.restore_anon += cgroup.restore_anon;
  });
}

// The file thrash measured on the test machine: one reader of a 128 MiB mmap'd file in a 64 MiB
// cgroup without swap: few major faults (readahead) but ≈ 350k file refaults/s, PSI some = full
// ≈ 13 %.
constexpr uint32_t kReader = 27001;

void file_thrash(Recording& run, const std::string& path = "/filethrash") {
  run.add_cgroup(path, 64 * kMiB);
  run.add_process(kReader, "thrash", path, 1 * kMiB).proc.rss_file_bytes = 62 * kMiB;
  run.script([path](Recording& run, int k) {
    bool thrashing = k >= 2;
    run.deep = run.deep || thrashing;
    Process& reader = run.process(kReader);
    ScopeRates& cgroup = run.cgroup(path).rates;
    if (!thrashing) {
      // The first pass reads the file in: the cgroup fills, nothing stalls yet.
      reader.rates.major_faults = 30;
      reader.rates.memcg_reclaim_s = 0.03;
      cgroup.psi_some_pct = cgroup.psi_full_pct = 2;
      cgroup.refault_file = 20'000;
    } else {
      reader.rates.major_faults = 35;
      reader.rates.memcg_reclaim_s = 0.15;
      reader.rates.fault_wait_s = 0.105;  // 3 ms per major fault
      reader.rates.refault_file = 350'000;
      cgroup.psi_some_pct = cgroup.psi_full_pct = 13;
      cgroup.refault_file = 350'000;
    }
    cgroup.major_faults = reader.rates.major_faults;
    cgroup.minor_faults = 1'000;
    ScopeRates& host = run.host_rates();
    host.psi_some_pct = std::max(host.psi_some_pct, cgroup.psi_some_pct);
    host.psi_full_pct = std::max(host.psi_full_pct, cgroup.psi_full_pct);
    host.major_faults += cgroup.major_faults;
    host.minor_faults += cgroup.minor_faults;
    host.refault_file += cgroup.refault_file;
  });
}

// A calm host: a database in a limited cgroup, a shell, nothing under pressure.
void idle_host(Recording& run) {
  run.add_cgroup("/system.slice", std::nullopt);
  run.add_cgroup("/system.slice/db.service", 4 * kGiB);
  run.add_cgroup("/user.slice", std::nullopt);
  run.add_process(812, "postgres", "/system.slice/db.service", 900 * kMiB);
  run.add_process(3301, "bash", "/user.slice", 4 * kMiB);
  run.script([](Recording& run, int) {
    run.process(812).rates.minor_faults = 400;
    run.process(3301).rates.minor_faults = 20;
    run.cgroup("/system.slice/db.service").rates.minor_faults = 400;
  });
}

// A global anonymous thrash on the 24 GiB host, 2 s intervals: an ingest service without a
// memory limit grows 256 MiB/s until the host swaps 40k pages/s (160 MB/s: 0.007 of its RAM per
// second, but a thrash); kswapd and direct reclaim scan, and nginx stalls beside it.
void global_thrash(Recording& run) {
  idle_host(run);
  run.host().swap_total_bytes = 4 * kGiB;
  run.add_cgroup("/system.slice/ingest.service", std::nullopt);
  run.add_cgroup("/system.slice/nginx.service", std::nullopt);
  run.add_process(7001, "ingest", "/system.slice/ingest.service", 2 * kGiB);
  run.add_process(7002, "nginx", "/system.slice/nginx.service", 300 * kMiB);
  run.script([](Recording& run, int k) {
    Process& ingest = run.process(7001);
    ingest.footprint(2 * kGiB + 512 * kMiB * static_cast<uint64_t>(k), 3 * kGiB);
    ingest.rates.minor_faults = 65'536;
    if (k < 2) return;
    ScopeRates& host = run.host_rates();
    host.psi_some_pct = 30;
    host.psi_full_pct = 25;
    host.swapins = host.refault_anon = 40'000;
    host.refault_file += 2'000;
    host.major_faults = 9'000;
    host.kswapd_scan = 200'000;
    host.direct_scan = 50'000;
    ingest.rates.direct_reclaim_s = 0.3;
    Process& nginx = run.process(7002);
    nginx.rates.direct_reclaim_s = 0.2;
    nginx.rates.major_faults = 800;
  });
}

TEST(PagingAnalysis, IdleHostIsOkEverywhereWithNoRoles) {
  Recording run(2);
  idle_host(run);
  auto analyzer = analyze(run.record(6));
  EXPECT_FALSE(analyzer.under_pressure());
  EXPECT_EQ(analyzer.intervals(), 6u);
  auto report = analyzer.report(10);

  EXPECT_EQ(report.verdict, PagingVerdict::kOk);
  EXPECT_EQ(report.verdict_scope, "host");
  EXPECT_DOUBLE_EQ(report.duration_s, 12);
  EXPECT_DOUBLE_EQ(report.interval_s, 2);
  EXPECT_EQ(report.started_unix_ms, kStartUnixMs);
  ASSERT_EQ(report.host.size(), 6u);
  for (const auto& interval : report.host) {
    EXPECT_EQ(interval.verdict, PagingVerdict::kOk) << interval.reason;
    EXPECT_NEAR(*interval.psi_some_pct, 0.1, 1e-9);
    EXPECT_DOUBLE_EQ(interval.minor_faults_per_s, 2'000);
    EXPECT_DOUBLE_EQ(interval.major_faults_per_s, 0);
    EXPECT_DOUBLE_EQ(*interval.swapin_pages_per_s, 0);
    EXPECT_DOUBLE_EQ(interval.refault_file_per_s, 5);
    EXPECT_DOUBLE_EQ(interval.turnover_per_s, 5 * kPage / static_cast<double>(24 * kGiB));
    EXPECT_TRUE(contains(interval.reason, "re-read: less than its whole 24.0 GiB an hour)"))
        << interval.reason;
    EXPECT_EQ(interval.memory_bytes, 24 * kGiB);
    EXPECT_EQ(interval.usage_bytes, 6 * kGiB);
    EXPECT_EQ(interval.available_bytes, 18 * kGiB);
    EXPECT_EQ(interval.oom_kills, 0u);
  }
  // Only the limited cgroup is worth a report; unlimited calm ones are left out.
  ASSERT_EQ(report.cgroups.size(), 1u);
  const auto& db = report.cgroups[0];
  EXPECT_EQ(db.path, "/system.slice/db.service");
  EXPECT_EQ(db.verdict, PagingVerdict::kOk);
  ASSERT_EQ(db.intervals.size(), 6u);
  EXPECT_DOUBLE_EQ(db.intervals.back().minor_faults_per_s, 400);
  EXPECT_EQ(db.intervals.back().usage_bytes, 900 * kMiB);
  EXPECT_EQ(db.intervals.back().available_bytes, 4 * kGiB - 900 * kMiB);
  // Nobody faulted, reclaimed or grew: nothing to list.
  EXPECT_TRUE(report.processes.empty());
  EXPECT_EQ(report.processes_omitted, 0u);
}

TEST(PagingAnalysis, AnonThrashInACgroupIsThrashingThereFromItsSecondInterval) {
  Recording run;
  anon_thrash(run);
  auto analyzer = analyze(run.record(7));
  EXPECT_TRUE(analyzer.under_pressure());
  auto report = analyzer.report(10);

  const auto* cgroup = find_cgroup(report, "/thrash");
  ASSERT_NE(cgroup, nullptr);
  ASSERT_EQ(cgroup->intervals.size(), 7u);
  EXPECT_EQ(cgroup->limit_bytes, 256 * kMiB);
  // Interval 1 fills the cgroup: some reclaim, PSI 3 %: still ok.
  EXPECT_EQ(cgroup->intervals[0].verdict, PagingVerdict::kOk) << cgroup->intervals[0].reason;
  EXPECT_EQ(cgroup->intervals[0].kind, "");
  // The first thrashing-like interval is only pressure: one interval could be a burst.
  const auto& first = cgroup->intervals[1];
  EXPECT_EQ(first.verdict, PagingVerdict::kPressure) << first.reason;
  EXPECT_TRUE(contains(first.reason, "thrashing-like (1 interval so far)")) << first.reason;
  double turnover = (45'000.0 + 41'100.0) * kPage / static_cast<double>(256 * kMiB);
  for (size_t i = 2; i < cgroup->intervals.size(); ++i) {
    const auto& interval = cgroup->intervals[i];
    EXPECT_EQ(interval.verdict, PagingVerdict::kThrashing) << i << ": " << interval.reason;
    // Mostly anonymous, but the file victim re-reads nearly as many pages: both are named.
    EXPECT_EQ(interval.kind, "anon/swap + file/page cache");
    EXPECT_TRUE(contains(interval.reason, "anon/swap + file/page cache thrashing for " +
                                              std::to_string(i) +
                                              " intervals at the cgroup's limit"))
        << interval.reason;
    EXPECT_NEAR(*interval.psi_some_pct, 28, 1e-9);
    EXPECT_NEAR(*interval.psi_full_pct, 26, 1e-9);
    EXPECT_DOUBLE_EQ(*interval.swapin_pages_per_s, 45'000);
    EXPECT_DOUBLE_EQ(*interval.swapout_pages_per_s, 30'000);
    EXPECT_DOUBLE_EQ(interval.refault_anon_per_s, 45'000);
    EXPECT_DOUBLE_EQ(interval.refault_file_per_s, 41'100);
    EXPECT_DOUBLE_EQ(interval.restore_per_s, 1'500);
    EXPECT_DOUBLE_EQ(interval.major_faults_per_s, 7'010);
    EXPECT_DOUBLE_EQ(interval.turnover_per_s, turnover);
    EXPECT_NEAR(interval.memcg_reclaim_stall, 0.25 + 0.17 + 0.39, 1e-9);
    EXPECT_DOUBLE_EQ(interval.direct_reclaim_stall, 0);
    EXPECT_EQ(interval.memory_bytes, 256 * kMiB);
  }
  EXPECT_EQ(cgroup->verdict, PagingVerdict::kThrashing);
  EXPECT_EQ(cgroup->reason, cgroup->intervals[2].reason);  // the first thrashing interval

  // The host's PSI counts the cgroup's stalls and it re-reads 350 MB/s: it thrashes too, but
  // without global reclaim (kswapd and direct scans stay 0) it is the cgroup's limit that
  // drives it, and the host's reason says so.
  ASSERT_EQ(report.host.size(), 7u);
  EXPECT_EQ(report.host[0].verdict, PagingVerdict::kOk) << report.host[0].reason;
  EXPECT_EQ(report.host[1].verdict, PagingVerdict::kPressure) << report.host[1].reason;
  for (size_t i = 1; i < report.host.size(); ++i) {
    EXPECT_DOUBLE_EQ(report.host[i].turnover_per_s,
                     (45'000.0 + 41'100.0 + 5.0) * kPage / static_cast<double>(24 * kGiB));
    EXPECT_NEAR(report.host[i].memcg_reclaim_stall, 0.25 + 0.17 + 0.39, 1e-9);
  }
  std::string memcg_limited =
      "; memcg-limited: memory cgroup /thrash is thrashing at its limit, no global reclaim";
  EXPECT_FALSE(contains(report.host[1].reason, memcg_limited)) << report.host[1].reason;
  for (size_t i = 2; i < report.host.size(); ++i) {
    EXPECT_EQ(report.host[i].verdict, PagingVerdict::kThrashing) << report.host[i].reason;
    EXPECT_TRUE(contains(report.host[i].reason, memcg_limited)) << report.host[i].reason;
  }

  // The run's verdict is the worst anywhere; on a tie the cgroup names the place.
  EXPECT_EQ(report.verdict, PagingVerdict::kThrashing);
  EXPECT_EQ(report.verdict_scope, "/thrash");
  EXPECT_EQ(report.verdict_reason, cgroup->reason);
  EXPECT_DOUBLE_EQ(report.deep_s, 6);
}

TEST(PagingAnalysis, AnonThrashBlamesTheLeakerAndNamesBothVictims) {
  Recording run;
  anon_thrash(run);
  auto report = analyze(run.record(7)).report(10);

  // Culprits first, then victims by the share of time they stalled: nobody else is listed.
  ASSERT_EQ(report.processes.size(), 3u);
  EXPECT_EQ(report.processes[0].pid, kLeaker);
  EXPECT_EQ(report.processes[1].pid, kIdleVictim);
  EXPECT_EQ(report.processes[2].pid, kFileVictim);
  EXPECT_EQ(report.processes_omitted, 0u);

  const auto& leaker = report.processes[0];
  EXPECT_EQ(leaker.role, ProcessRole::kCulprit);
  EXPECT_EQ(leaker.next_command, "memtrail leaks -p 26670");
  EXPECT_EQ(leaker.comm, "thrash");
  EXPECT_EQ(leaker.cgroup, "/thrash");
  EXPECT_FALSE(leaker.exited);
  EXPECT_EQ(leaker.major_faults, 6 * 3'500u);
  EXPECT_EQ(leaker.minor_faults, 5 * 32'768u);
  EXPECT_EQ(leaker.swapins, 6 * 21'100u);
  EXPECT_EQ(leaker.refault_anon, 6 * 21'100u);
  EXPECT_DOUBLE_EQ(leaker.reclaim_stall_s, 1.52);  // 0.02 + 6 x 0.25
  EXPECT_EQ(leaker.footprint_growth_bytes, static_cast<int64_t>(640 * kMiB));
  EXPECT_DOUBLE_EQ(leaker.footprint_growth_bytes_per_s, 128.0 * kMiB);
  EXPECT_EQ(leaker.footprint_bytes, kLeakerStart + 640 * kMiB);
  EXPECT_EQ(leaker.swap_bytes, kLeakerStart + 600 * kMiB);
  EXPECT_EQ(leaker.rss_bytes, 40 * kMiB);
  EXPECT_DOUBLE_EQ(leaker.scope_share,
                   static_cast<double>(kLeakerStart + 640 * kMiB) / (256.0 * kMiB));
  std::string evidence = joined(leaker.evidence);
  EXPECT_TRUE(contains(evidence,
                       "footprint (anon + shmem + swap) grew 256.0 KiB -> 640.2 MiB, "
                       "+128.0 MiB/s in 5 intervals"))
      << evidence;
  EXPECT_TRUE(contains(evidence, "holds 250.1% of the limit of /thrash (600.2 MiB in swap)"))
      << evidence;

  const auto& idle = report.processes[1];
  EXPECT_EQ(idle.role, ProcessRole::kVictim);
  EXPECT_EQ(idle.next_command, "");
  EXPECT_EQ(idle.major_faults, 6 * 3'500u);  // as many as the leaker: faults do not tell them apart
  EXPECT_EQ(idle.timed_major_faults, 6 * 3'500u);
  EXPECT_EQ(idle.footprint_growth_bytes, 0);
  EXPECT_EQ(idle.footprint_bytes, 128 * kMiB);
  EXPECT_DOUBLE_EQ(idle.reclaim_stall_s, 6 * 0.17);
  EXPECT_DOUBLE_EQ(idle.fault_wait_s, 6 * 0.70);
  EXPECT_DOUBLE_EQ(idle.observed_s, 7);
  EXPECT_DOUBLE_EQ(idle.stall_share, (6 * 0.17 + 6 * 0.70) / 7);
  EXPECT_EQ(idle.refault_anon, 6 * 23'900u);
  EXPECT_TRUE(contains(joined(idle.evidence), "footprint 128.0 MiB, not growing"))
      << joined(idle.evidence);

  const auto& reader = report.processes[2];
  EXPECT_EQ(reader.role, ProcessRole::kVictim);
  EXPECT_EQ(reader.major_faults, 60u);
  EXPECT_EQ(reader.refault_file, 6 * 41'100u);
  EXPECT_EQ(reader.swapins, 0u);
  EXPECT_DOUBLE_EQ(reader.reclaim_stall_s, 6 * 0.39);
  EXPECT_EQ(reader.rss_bytes, 98 * kMiB);  // its file map counts in RSS, not in its footprint
  EXPECT_EQ(reader.footprint_bytes, 2 * kMiB);
  EXPECT_LT(reader.stall_share, idle.stall_share);
}

TEST(PagingAnalysis, FileThrashIsPageCacheThrashingAndTheReaderIsAVictim) {
  Recording run;
  file_thrash(run);
  auto report = analyze(run.record(7)).report(10);

  const auto* cgroup = find_cgroup(report, "/filethrash");
  ASSERT_NE(cgroup, nullptr);
  ASSERT_EQ(cgroup->intervals.size(), 7u);
  EXPECT_EQ(cgroup->intervals[0].verdict, PagingVerdict::kOk) << cgroup->intervals[0].reason;
  EXPECT_EQ(cgroup->intervals[1].verdict, PagingVerdict::kPressure);
  for (size_t i = 2; i < cgroup->intervals.size(); ++i) {
    const auto& interval = cgroup->intervals[i];
    EXPECT_EQ(interval.verdict, PagingVerdict::kThrashing) << interval.reason;
    EXPECT_EQ(interval.kind, "file/page cache");
    // Few major faults: readahead hides the thrash from them; the refaults show it.
    EXPECT_DOUBLE_EQ(interval.major_faults_per_s, 35);
    EXPECT_DOUBLE_EQ(interval.refault_file_per_s, 350'000);
    // The cgroup re-reads its whole 64 MiB about 21 times a second.
    EXPECT_DOUBLE_EQ(interval.turnover_per_s, 350'000 * kPage / static_cast<double>(64 * kMiB));
    EXPECT_TRUE(
        contains(interval.reason, "(1.3 GiB/s re-read: its whole 64.0 MiB 21 times a second)"))
        << interval.reason;
    EXPECT_DOUBLE_EQ(*interval.swapin_pages_per_s, 0);
  }
  EXPECT_EQ(report.verdict, PagingVerdict::kThrashing);
  EXPECT_EQ(report.verdict_scope, "/filethrash");
  EXPECT_TRUE(contains(report.verdict_reason, "file/page cache thrashing for 2 intervals"))
      << report.verdict_reason;
  EXPECT_EQ(report.host[1].verdict, PagingVerdict::kPressure) << report.host[1].reason;
  for (size_t i = 2; i < report.host.size(); ++i) {
    EXPECT_EQ(report.host[i].verdict, PagingVerdict::kThrashing) << report.host[i].reason;
    EXPECT_TRUE(contains(report.host[i].reason, "memcg-limited: memory cgroup /filethrash"))
        << report.host[i].reason;
  }

  ASSERT_EQ(report.processes.size(), 1u);
  const auto& reader = report.processes[0];
  EXPECT_EQ(reader.pid, kReader);
  EXPECT_EQ(reader.role, ProcessRole::kVictim);
  EXPECT_EQ(reader.major_faults, 30u + 6 * 35u);
  EXPECT_EQ(reader.timed_major_faults, 6 * 35u);  // the hooks came with the pressure
  EXPECT_EQ(reader.refault_file, 6 * 350'000u);
  EXPECT_DOUBLE_EQ(reader.reclaim_stall_s, 0.03 + 6 * 0.15);
  EXPECT_DOUBLE_EQ(reader.stall_share, (0.03 + 6 * 0.15 + 6 * 0.105) / 7);
  EXPECT_EQ(reader.footprint_growth_bytes, 0);
  EXPECT_TRUE(contains(joined(reader.evidence), "0 anon + 2.1M file pages refaulted"))
      << joined(reader.evidence);
}

TEST(PagingAnalysis, HostStallsWithoutRereadsArePressureNotThrashing) {
  Recording run(2);
  idle_host(run);
  // Stalls high enough for a thrash, but the few refaults (8 MB/s) re-read nothing much.
  run.script([](Recording& run, int) {
    ScopeRates& host = run.host_rates();
    host.psi_some_pct = 26;
    host.psi_full_pct = 24;
    host.refault_file = 2'000;
    host.kswapd_scan = 50'000;
    run.process(812).rates.direct_reclaim_s = 0.1;
  });
  auto report = analyze(run.record(6)).report(10);
  for (const auto& interval : report.host) {
    EXPECT_EQ(interval.verdict, PagingVerdict::kPressure) << interval.reason;
    EXPECT_DOUBLE_EQ(interval.kswapd_scan_pages_per_s, 50'000);
    EXPECT_NEAR(interval.direct_reclaim_stall, 0.1, 1e-9);
  }
  EXPECT_EQ(report.verdict, PagingVerdict::kPressure);
  for (const auto& cgroup : report.cgroups) {
    EXPECT_NE(cgroup.verdict, PagingVerdict::kThrashing) << cgroup.path << ": " << cgroup.reason;
  }
  // postgres stalls reclaiming, which puts its cgroup and the parent under pressure too. A tie
  // goes to the most specific scope: the service, not the host nor /system.slice.
  EXPECT_EQ(find_cgroup(report, "/system.slice")->verdict, PagingVerdict::kPressure);
  EXPECT_EQ(report.verdict_scope, "/system.slice/db.service");
}

TEST(PagingAnalysis, GlobalThrashIsTheHostsAndBlamesTheGrowerHostWide) {
  Recording run(2);
  global_thrash(run);
  auto report = analyze(run.record(6)).report(10);

  ASSERT_EQ(report.host.size(), 6u);
  EXPECT_EQ(report.host[0].verdict, PagingVerdict::kOk) << report.host[0].reason;
  EXPECT_EQ(report.host[1].verdict, PagingVerdict::kPressure) << report.host[1].reason;
  for (size_t i = 2; i < report.host.size(); ++i) {
    const auto& interval = report.host[i];
    EXPECT_EQ(interval.verdict, PagingVerdict::kThrashing) << interval.reason;
    EXPECT_EQ(interval.kind, "anon/swap");
    EXPECT_TRUE(
        contains(interval.reason, "anon/swap thrashing for " + std::to_string(i) + " intervals"))
        << interval.reason;
    EXPECT_FALSE(interval.memcg_limited);
    EXPECT_FALSE(contains(interval.reason, "memcg-limited")) << interval.reason;
    EXPECT_FALSE(contains(interval.reason, "at the cgroup's limit")) << interval.reason;
    EXPECT_DOUBLE_EQ(interval.direct_scan_pages_per_s, 50'000);
    EXPECT_NEAR(interval.direct_reclaim_stall, 0.5, 1e-9);
  }
  EXPECT_EQ(report.verdict, PagingVerdict::kThrashing);
  EXPECT_EQ(report.verdict_scope, "host");

  ASSERT_GE(report.processes.size(), 2u);
  const auto& ingest = report.processes[0];
  EXPECT_EQ(ingest.pid, 7001u);
  EXPECT_EQ(ingest.role, ProcessRole::kCulprit);
  EXPECT_EQ(ingest.footprint_growth_bytes, static_cast<int64_t>(3 * kGiB));
  EXPECT_DOUBLE_EQ(ingest.footprint_growth_bytes_per_s, 256.0 * kMiB);
  EXPECT_EQ(ingest.swap_bytes, 2 * kGiB);
  EXPECT_DOUBLE_EQ(ingest.scope_share, 5.0 / 24);
  std::string evidence = joined(ingest.evidence);
  EXPECT_TRUE(contains(evidence, "holds 20.8% of the host's memory (2.0 GiB in swap)")) << evidence;
  EXPECT_TRUE(contains(evidence, "at this rate the host's free swap (2.0 GiB) lasts 8.0s"))
      << evidence;
  EXPECT_EQ(report.processes[1].pid, 7002u);
  EXPECT_EQ(report.processes[1].role, ProcessRole::kVictim);
  EXPECT_DOUBLE_EQ(report.processes[1].stall_share, 5 * 2 * 0.2 / 12);
}

TEST(PagingAnalysis, ALargeFlatProcessIsNotACulprit) {
  Recording run(2);
  global_thrash(run);
  // A database holding a third of the host, steady but for allocator noise, in a cgroup without
  // a limit: the host is its scope, and the host thrashes.
  run.add_cgroup("/system.slice/analytics.service", std::nullopt);
  run.add_process(9100, "clickhouse", "/system.slice/analytics.service", 8 * kGiB);
  run.script([](Recording& run, int k) {
    Process& db = run.process(9100);
    db.footprint(8 * kGiB + static_cast<uint64_t>(k % 2) * 768 * kKiB, 8 * kGiB);
    db.rates.major_faults = 5;
    db.rates.minor_faults = 300;
  });
  auto report = analyze(run.record(6)).report(10);
  ASSERT_EQ(report.verdict, PagingVerdict::kThrashing);
  ASSERT_EQ(report.verdict_scope, "host");

  const auto* db = find_process(report, 9100);
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(db->role, ProcessRole::kNone);
  EXPECT_EQ(db->next_command, "");
  EXPECT_EQ(db->major_faults, 6 * 2 * 5u);
  EXPECT_EQ(db->footprint_growth_bytes, 0);
  EXPECT_NEAR(db->scope_share, 1.0 / 3, 1e-6);
  std::string evidence = joined(db->evidence);
  EXPECT_TRUE(contains(evidence, "footprint 8.0 GiB, not growing")) << evidence;
  EXPECT_TRUE(contains(evidence, "holds 33.3% of the host's memory")) << evidence;
  // The grower is the one culprit, and comes first.
  EXPECT_EQ(report.processes.front().pid, 7001u);
  EXPECT_EQ(std::count_if(report.processes.begin(), report.processes.end(),
                          [](const auto& p) { return p.role == ProcessRole::kCulprit; }),
            1);
}

TEST(PagingAnalysis, AThrashAtACgroupsLimitHasNoCulpritsOrVictimsOutsideIt) {
  Recording run;
  anon_thrash(run);
  // Outside /thrash: a build that grows, and a desktop process that waits on its own major
  // faults. The host's PSI shows the cgroup's stalls, but nothing reclaims globally.
  run.add_process(4100, "cc1plus", "/user.slice", 16 * kMiB);
  run.add_process(3400, "firefox", "/user.slice", 900 * kMiB);
  run.script([](Recording& run, int k) {
    Process& cc = run.process(4100);
    cc.footprint(16 * kMiB + 32 * kMiB * static_cast<uint64_t>(k), 16 * kGiB);
    Process& firefox = run.process(3400);
    firefox.rates.major_faults = 80;
    firefox.rates.fault_wait_s = 0.1;
  });
  auto report = analyze(run.record(7)).report(10);
  for (size_t i = 2; i < report.host.size(); ++i) {
    EXPECT_TRUE(report.host[i].memcg_limited) << report.host[i].reason;
  }
  const auto* cc = find_process(report, 4100);
  ASSERT_NE(cc, nullptr);
  EXPECT_EQ(cc->role, ProcessRole::kNone);
  EXPECT_EQ(cc->footprint_growth_bytes, static_cast<int64_t>(7 * 32 * kMiB));
  const auto* firefox = find_process(report, 3400);
  ASSERT_NE(firefox, nullptr);
  EXPECT_EQ(firefox->role, ProcessRole::kNone);
  EXPECT_DOUBLE_EQ(firefox->stall_share, 6 * 0.1 / 7);
  // Inside, nothing changes.
  EXPECT_EQ(find_process(report, kLeaker)->role, ProcessRole::kCulprit);
  EXPECT_EQ(find_process(report, kIdleVictim)->role, ProcessRole::kVictim);
}

TEST(PagingAnalysis, AProcessThatAllocatedOnceAtStartIsNotACulprit) {
  Recording run;
  anon_thrash(run);
  // Loads 64 MiB of tables in the first interval and then serves from them, stalling in the
  // thrash like everyone else in the cgroup.
  run.add_process(26700, "loader", "/thrash", 2 * kMiB);
  run.script([](Recording& run, int k) {
    Process& loader = run.process(26700);
    loader.footprint(66 * kMiB, k >= 2 ? 30 * kMiB : 66 * kMiB);
    if (k == 1) loader.rates.minor_faults = 16'384;
    if (k >= 2) loader.rates.memcg_reclaim_s = 0.1;
  });
  auto report = analyze(run.record(7)).report(10);

  const auto* loader = find_process(report, 26700);
  ASSERT_NE(loader, nullptr);
  EXPECT_EQ(loader->role, ProcessRole::kVictim);
  EXPECT_EQ(loader->footprint_growth_bytes, static_cast<int64_t>(64 * kMiB));
  EXPECT_DOUBLE_EQ(loader->footprint_growth_bytes_per_s, 64.0 * kMiB);
  EXPECT_EQ(loader->minor_faults, 16'384u);
  EXPECT_TRUE(contains(joined(loader->evidence), "footprint 66.0 MiB, not growing"))
      << joined(loader->evidence);
  EXPECT_EQ(find_process(report, kLeaker)->role, ProcessRole::kCulprit);
}

TEST(PagingAnalysis, AHeapThatGrowsAndShrinksBackIsNotACulprit) {
  Recording run;
  anon_thrash(run);
  // A garbage-collected heap: +48 MiB, collected back, three times. As many growth steps as a
  // leak, 144 MiB of them, but it ends where it started.
  run.add_process(26800, "java", "/thrash", 32 * kMiB);
  run.script([](Recording& run, int k) {
    Process& gc = run.process(26800);
    gc.footprint(k % 2 ? 32 * kMiB : 80 * kMiB, 32 * kMiB);
    gc.rates.memcg_reclaim_s = 0.08;
  });
  auto report = analyze(run.record(7)).report(10);

  const auto* gc = find_process(report, 26800);
  ASSERT_NE(gc, nullptr);
  EXPECT_EQ(gc->footprint_growth_bytes, 0);
  EXPECT_EQ(gc->role, ProcessRole::kVictim) << joined(gc->evidence);
  EXPECT_EQ(gc->next_command, "");
  EXPECT_TRUE(contains(joined(gc->evidence), "footprint 32.0 MiB, not growing"))
      << joined(gc->evidence);
}

TEST(PagingAnalysis, NoRolesWhenNothingIsUnderPressureEvenIfAProcessGrows) {
  Recording run(2);
  idle_host(run);
  // A build grows by 32 MiB/s for the whole run on a host with 18 GiB available: growth, but
  // nobody is short of memory.
  run.add_process(4100, "cc1plus", "/user.slice", 16 * kMiB);
  run.script([](Recording& run, int k) {
    Process& cc = run.process(4100);
    cc.footprint(16 * kMiB + 64 * kMiB * static_cast<uint64_t>(k), 16 * kGiB);
    cc.rates.minor_faults = 8'192;
  });
  auto report = analyze(run.record(6)).report(10);

  EXPECT_EQ(report.verdict, PagingVerdict::kOk);
  ASSERT_EQ(report.processes.size(), 1u);
  const auto& cc = report.processes[0];
  EXPECT_EQ(cc.pid, 4100u);
  EXPECT_EQ(cc.role, ProcessRole::kNone);
  EXPECT_EQ(cc.next_command, "");
  EXPECT_EQ(cc.footprint_growth_bytes, static_cast<int64_t>(6 * 64 * kMiB));
  EXPECT_DOUBLE_EQ(cc.footprint_growth_bytes_per_s, 32.0 * kMiB);
  EXPECT_EQ(cc.minor_faults, 6 * 2 * 8'192u);
  for (const auto& p : report.processes) EXPECT_EQ(p.role, ProcessRole::kNone);
}

TEST(PagingAnalysis, AReusedPidIsTwoProcesses) {
  Recording run(2);
  idle_host(run);
  // pid 4242 is a shell script that grows and exits after interval 2; by the next sample the
  // kernel has handed 4242 to a new python3, which grows too.
  run.add_process(4242, "sh", "/user.slice", 4 * kMiB, 5'000);
  run.script([](Recording& run, int k) {
    if (k <= 2) {
      Process& sh = run.process(4242);
      sh.footprint(4 * kMiB + 8 * kMiB * static_cast<uint64_t>(k), 1 * kGiB);
      sh.rates.minor_faults = 1'024;
    } else if (k == 3) {
      run.add_process(4242, "python3", "/user.slice", 6 * kMiB, 9'000).proc.minor_faults = 2'000;
    } else {
      Process& python = run.process(4242);
      python.footprint(6 * kMiB + 10 * kMiB * static_cast<uint64_t>(k - 3), 1 * kGiB);
      python.rates.minor_faults = 1'280;
    }
  });
  auto report = analyze(run.record(6)).report(10);

  std::vector<const model::ProcessReport*> entries;
  for (const auto& p : report.processes) {
    if (p.pid == 4242) entries.push_back(&p);
  }
  ASSERT_EQ(entries.size(), 2u);
  const auto* sh = entries[0]->comm == "sh" ? entries[0] : entries[1];
  const auto* python = entries[0]->comm == "sh" ? entries[1] : entries[0];
  ASSERT_EQ(sh->comm, "sh");
  ASSERT_EQ(python->comm, "python3");
  EXPECT_TRUE(sh->exited);
  EXPECT_FALSE(python->exited);
  EXPECT_EQ(sh->footprint_growth_bytes, static_cast<int64_t>(16 * kMiB));
  EXPECT_EQ(python->footprint_growth_bytes, static_cast<int64_t>(30 * kMiB));
  // Present at the baseline: only what it did since. Started later: everything it did.
  EXPECT_EQ(sh->minor_faults, 2 * 2 * 1'024u);
  EXPECT_EQ(python->minor_faults, 2'000u + 3 * 2 * 1'280u);
}

TEST(PagingAnalysis, ATaskTheTracerSawExitIsReportedExited) {
  Recording run(2);
  idle_host(run);
  // A test job in its own 512 MiB cgroup reclaims directly and faults until the OOM killer
  // ends it in interval 3; BPF reports its exit with its final counters once.
  run.add_cgroup("/ci.slice/job-17", 512 * kMiB);
  run.add_process(5555, "pytest", "/ci.slice/job-17", 480 * kMiB);
  run.script([](Recording& run, int k) {
    if (k > 3) return;
    Process& job = run.process(5555);
    job.rates.major_faults = 200;
    job.rates.direct_reclaim_s = 0.1;
    if (k == 3) {
      job.in_proc = false;
      job.task.exited = true;
      run.oom_kill({5555, "pytest", job.task.memcg_id, "", 470 * kMiB, 8 * kMiB, 0, 5.4});
    }
  });
  auto analyzer = analyze(run.record(5));
  auto report = analyzer.report(10);

  const auto* job = find_process(report, 5555);
  ASSERT_NE(job, nullptr);
  EXPECT_TRUE(job->exited);
  EXPECT_EQ(job->cgroup, "/ci.slice/job-17");
  EXPECT_EQ(job->major_faults, 3 * 2 * 200u);
  EXPECT_DOUBLE_EQ(job->reclaim_stall_s, 0.6);
  EXPECT_DOUBLE_EQ(job->observed_s, 6);
  ASSERT_EQ(report.oom_kills.size(), 1u);
  EXPECT_EQ(report.oom_kills[0].pid, 5555u);
  EXPECT_EQ(report.oom_kills[0].cgroup, "/ci.slice/job-17");  // from the memcg id
  // Its stalls count once: in the interval it exited, not again after the tracer dropped it.
  ASSERT_EQ(report.host.size(), 5u);
  EXPECT_NEAR(report.host[2].direct_reclaim_stall, 0.1, 1e-9);
  EXPECT_DOUBLE_EQ(report.host[3].direct_reclaim_stall, 0);
  EXPECT_DOUBLE_EQ(report.host[4].direct_reclaim_stall, 0);
}

TEST(PagingAnalysis, CgroupV1WithoutPsiStillReachesThrashingFromStallsAndTurnover) {
  Recording run;
  anon_thrash(run, "/thrash", 1, /*psi=*/false);
  auto report = analyze(run.record(7)).report(10);

  const auto* cgroup = find_cgroup(report, "/thrash");
  ASSERT_NE(cgroup, nullptr);
  EXPECT_EQ(cgroup->version, 1);
  ASSERT_EQ(cgroup->intervals.size(), 7u);
  EXPECT_EQ(cgroup->intervals[0].verdict, PagingVerdict::kOk) << cgroup->intervals[0].reason;
  EXPECT_EQ(cgroup->intervals[1].verdict, PagingVerdict::kPressure);
  for (size_t i = 2; i < cgroup->intervals.size(); ++i) {
    const auto& interval = cgroup->intervals[i];
    EXPECT_EQ(interval.verdict, PagingVerdict::kThrashing) << interval.reason;
    EXPECT_EQ(interval.kind, "anon/swap + file/page cache");
    EXPECT_FALSE(interval.psi_some_pct.has_value());
    EXPECT_FALSE(interval.psi_full_pct.has_value());
    EXPECT_FALSE(interval.swapout_pages_per_s.has_value());  // v1 has no pswpout
    // Swap-ins come from the deep hooks' per-memcg count.
    EXPECT_DOUBLE_EQ(*interval.swapin_pages_per_s, 45'000);
    EXPECT_TRUE(interval.reason.starts_with("no PSI")) << interval.reason;
    EXPECT_TRUE(contains(interval.reason, "reclaim stall 0.81 s/s")) << interval.reason;
  }
  // Before the hooks were attached nobody counted its swap-ins.
  EXPECT_FALSE(cgroup->intervals[0].swapin_pages_per_s.has_value());
  EXPECT_EQ(report.verdict, PagingVerdict::kThrashing);
  EXPECT_EQ(report.verdict_scope, "/thrash");
  EXPECT_EQ(find_process(report, kLeaker)->role, ProcessRole::kCulprit);
}

TEST(PagingAnalysis, CgroupFilterKeepsThatCgroupItsChildrenAndTheirProcesses) {
  Recording run;
  anon_thrash(run, "/thrash");
  file_thrash(run, "/filethrash");
  // A child of /thrash, and a sibling whose name merely starts with "/thrash".
  run.add_cgroup("/thrash/worker", std::nullopt);
  run.add_process(26900, "worker", "/thrash/worker", 8 * kMiB);
  run.add_cgroup("/thrashing", 1 * kGiB);
  run.add_process(27100, "other", "/thrashing", 8 * kMiB);
  run.script([](Recording& run, int) {
    run.process(26900).rates.major_faults = 20;
    run.process(27100).rates.major_faults = 20;
  });
  auto analyzer = analyze(run.record(7));

  auto everything = analyzer.report(20);
  EXPECT_NE(find_cgroup(everything, "/filethrash"), nullptr);
  EXPECT_NE(find_cgroup(everything, "/thrashing"), nullptr);
  EXPECT_NE(find_process(everything, kReader), nullptr);
  EXPECT_NE(find_process(everything, 27100), nullptr);

  auto report = analyzer.report(20, "/thrash");
  EXPECT_EQ(report.cgroup_filter, "/thrash");
  std::vector<std::string> paths;
  for (const auto& cgroup : report.cgroups) paths.push_back(cgroup.path);
  // /thrash/worker has neither a limit nor pressure: nothing to say about it.
  EXPECT_EQ(paths, std::vector<std::string>{"/thrash"});
  std::vector<uint32_t> pids;
  for (const auto& p : report.processes) pids.push_back(p.pid);
  std::sort(pids.begin(), pids.end());
  EXPECT_EQ(pids, (std::vector<uint32_t>{kIdleVictim, kFileVictim, kLeaker, 26900}));
  EXPECT_EQ(report.verdict_scope, "/thrash");
  // The host is still the host.
  EXPECT_EQ(report.host.size(), 7u);

  // Naming a calm, unlimited cgroup shows it anyway.
  auto worker = analyzer.report(20, "/thrash/worker");
  ASSERT_EQ(worker.cgroups.size(), 1u);
  EXPECT_EQ(worker.cgroups[0].path, "/thrash/worker");
  ASSERT_EQ(worker.processes.size(), 1u);
  EXPECT_EQ(worker.processes[0].pid, 26900u);

  auto file = analyzer.report(20, "/filethrash");
  EXPECT_EQ(file.verdict_scope, "/filethrash");
  ASSERT_EQ(file.processes.size(), 1u);
  EXPECT_EQ(file.processes[0].pid, kReader);
}

TEST(PagingAnalysis, AFilterOnAChildCgroupKeepsTheLimitAboveIt) {
  Recording run;
  anon_thrash(run);
  // A worker in a child of /thrash, without a limit of its own, grows 32 MiB/s: /thrash's limit
  // is the memory it competes for, whether the report shows /thrash or only the child.
  run.add_cgroup("/thrash/worker", std::nullopt);
  run.add_process(26900, "worker", "/thrash/worker", 8 * kMiB);
  run.script([](Recording& run, int k) {
    Process& worker = run.process(26900);
    worker.footprint(8 * kMiB + 32 * kMiB * static_cast<uint64_t>(k), 64 * kMiB);
    worker.rates.memcg_reclaim_s = 0.1;
  });
  auto analyzer = analyze(run.record(7));
  for (const std::string filter : {"", "/thrash", "/thrash/worker"}) {
    auto report = analyzer.report(10, filter);
    const auto* worker = find_process(report, 26900);
    ASSERT_NE(worker, nullptr) << filter;
    EXPECT_EQ(worker->role, ProcessRole::kCulprit) << filter;
    EXPECT_DOUBLE_EQ(worker->scope_share, (8.0 + 7 * 32) / 256) << filter;
    EXPECT_TRUE(contains(joined(worker->evidence), "of the limit of /thrash")) << filter;
  }
}

TEST(PagingAnalysis, TopNKeepsTheFirstRankedAndCountsTheRest) {
  Recording run;
  anon_thrash(run);
  run.add_process(26900, "worker", "/thrash", 8 * kMiB);
  run.script([](Recording& run, int) { run.process(26900).rates.major_faults = 20; });
  auto analyzer = analyze(run.record(7));
  EXPECT_EQ(analyzer.report(10).processes.size(), 4u);

  auto report = analyzer.report(2);
  ASSERT_EQ(report.processes.size(), 2u);
  EXPECT_EQ(report.processes_omitted, 2u);
  EXPECT_EQ(report.processes[0].pid, kLeaker);
  EXPECT_EQ(report.processes[1].pid, kIdleVictim);
}

TEST(PagingAnalysis, ALongRunKeepsItsIntervalLengthWhenTheSeriesIsThinned) {
  Recording run(2);
  idle_host(run);
  // 4 points at most: 9 intervals leave every other one.
  auto analyzer = analyze(run.record(9), 4);
  auto report = analyzer.report(10);
  EXPECT_LT(report.host.size(), 9u);
  EXPECT_DOUBLE_EQ(report.duration_s, 18);
  EXPECT_DOUBLE_EQ(report.interval_s, 2);
  for (const auto& interval : report.host) EXPECT_DOUBLE_EQ(interval.duration_s, 2);
}

// Only the baseline, taken just after BPF attached: the leaker had stalled already.
std::vector<model::PagingSample> baseline_only() {
  Recording run;
  anon_thrash(run);
  auto samples = run.record(0);
  auto& task = samples[0].tasks.emplace_back();
  task.tgid = kLeaker;
  task.comm = "thrash";
  task.memcg_id = samples[0].cgroups[0].id;
  task.memcg_reclaim_ns = 40'000'000;
  task.major_faults = 100;
  return samples;
}

TEST(PagingAnalysis, AReportBeforeTheFirstIntervalHasNoNaN) {
  // Ctrl-C within 200 ms of the baseline: the final report has no interval at all.
  auto report = analyze(baseline_only()).report(10);
  EXPECT_TRUE(report.host.empty());
  EXPECT_DOUBLE_EQ(report.interval_s, 0);
  EXPECT_EQ(report.verdict, PagingVerdict::kOk);
  ASSERT_EQ(report.processes.size(), 1u);
  const auto& leaker = report.processes[0];
  EXPECT_EQ(leaker.pid, kLeaker);
  EXPECT_EQ(leaker.major_faults, 100u);
  EXPECT_DOUBLE_EQ(leaker.reclaim_stall_s, 0.04);
  EXPECT_TRUE(std::isfinite(leaker.stall_share));
  EXPECT_TRUE(std::isfinite(leaker.major_faults_per_s));
  EXPECT_EQ(leaker.role, ProcessRole::kNone);
}

// --- Rendering ---------------------------------------------------------------------------------

model::PagingReport anon_thrash_report(const std::string& filter = {}) {
  Recording run;
  anon_thrash(run);
  auto report = analyze(run.record(7)).report(10, filter);
  report.sources = {"host: /proc/pressure/memory, /proc/vmstat, /proc/meminfo"};
  return report;
}

// Validates documents against docs/paging.schema.json with python3-jsonschema, all in one run
// (a start of python costs more than the rest of this file): "valid", or "invalid: " and why,
// for each document; empty when python3 or jsonschema is missing.
std::vector<std::string> validate(const std::vector<nlohmann::json>& documents) {
  char pattern[] = "/tmp/memtrail-paging-test-XXXXXX";
  const char* dir = mkdtemp(pattern);
  EXPECT_NE(dir, nullptr);
  if (!dir) return {};
  std::string command =
      "python3 -c '"
      "import json, sys, jsonschema\n"
      "schema = json.load(open(sys.argv[1]))\n"
      "cls = jsonschema.validators.validator_for(schema)\n"
      "cls.check_schema(schema)\n"
      "for path in sys.argv[2:]:\n"
      "    error = "
      "jsonschema.exceptions.best_match(cls(schema).iter_errors(json.load(open(path))))\n"
      "    print(\"invalid: %s at %s\" % (error.message, list(error.absolute_path)) if error\n"
      "          else \"valid\")\n"
      "' " MEMTRAIL_SOURCE_DIR "/docs/paging.schema.json";
  std::vector<std::string> paths;
  for (size_t i = 0; i < documents.size(); ++i) {
    paths.push_back(std::string(dir) + "/" + std::to_string(i) + ".json");
    std::ofstream(paths.back()) << documents[i].dump(2);
    command += " " + paths.back();
  }
  std::vector<std::string> results;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char line[4096];
    while (std::fgets(line, sizeof line, pipe)) {
      results.emplace_back(line);
      if (!results.back().empty() && results.back().back() == '\n') results.back().pop_back();
    }
    EXPECT_EQ(pclose(pipe), 0) << command;
  }
  for (const auto& path : paths) std::remove(path.c_str());
  rmdir(dir);
  return results;
}

TEST(PagingSchema, AnonThrashReportValidatesAndBrokenOnesDoNot) {
  auto json = report::paging_json(anon_thrash_report());
  EXPECT_EQ(json["schema"], "memtrail.paging/1");
  EXPECT_EQ(json["verdict"], "thrashing");
  EXPECT_EQ(json["verdict_scope"], "/thrash");
  EXPECT_TRUE(json["cgroup_filter"].is_null());
  EXPECT_EQ(json["intervals"].size(), 7u);
  EXPECT_EQ(json["cgroups"][0]["path"], "/thrash");
  EXPECT_EQ(json["cgroups"][0]["verdict"], "thrashing");
  EXPECT_EQ(json["cgroups"][0]["intervals"][3]["kind"], "anon/swap + file/page cache");
  const auto& leaker = json["processes"][0];
  EXPECT_EQ(leaker["pid"], kLeaker);
  EXPECT_EQ(leaker["role"], "culprit");
  EXPECT_EQ(leaker["major_faults"], 21'000);
  EXPECT_EQ(leaker["minor_faults"], 163'840);
  EXPECT_EQ(leaker["swapins"], 126'600);
  EXPECT_EQ(leaker["refaults"], 126'600);
  EXPECT_EQ(leaker["footprint_growth_bytes"], 640 * kMiB);
  EXPECT_EQ(leaker["next_command"], "memtrail leaks -p 26670");
  EXPECT_EQ(json["processes"][1]["role"], "victim");
  EXPECT_TRUE(json["processes"][1]["next_command"].is_null());
  EXPECT_EQ(json["processes"][2]["role"], "victim");
  EXPECT_EQ(json["processes"][2]["refaults"], 6 * 41'100);

  // Reports that break the schema are caught, so the check of the real one can fail.
  std::vector<nlohmann::json> documents{json};
  auto broken = [&](auto change) {
    documents.push_back(json);
    change(documents.back());
  };
  broken([](auto& j) { j["processes"][0].erase("role"); });
  broken([](auto& j) { j["cgroups"][0]["intervals"][0]["verdict"] = "oom"; });
  broken([](auto& j) { j["processes"][1]["stall_share"] = nullptr; });  // a NaN, dumped
  broken([](auto& j) { j["surprise"] = 1; });
  // Culprits, and only culprits, carry the command to run next.
  broken([](auto& j) { j["processes"][0]["next_command"] = nullptr; });
  broken([](auto& j) { j["processes"][1]["next_command"] = "memtrail leaks -p 26608"; });
  auto results = validate(documents);
  ASSERT_EQ(results.size(), documents.size()) << "python3 with jsonschema is needed";
  EXPECT_EQ(results[0], "valid");
  for (size_t i = 1; i < results.size(); ++i) {
    EXPECT_TRUE(results[i].starts_with("invalid: ")) << i << ": " << results[i];
  }
}

TEST(PagingSchema, NullsOfAV1CgroupAFilterAnOomKillAndNoIntervalsValidate) {
  std::vector<nlohmann::json> documents;
  {
    Recording run;
    anon_thrash(run, "/thrash", 1, /*psi=*/false);
    auto json = report::paging_json(analyze(run.record(7)).report(10, "/thrash"));
    EXPECT_EQ(json["cgroup_filter"], "/thrash");
    EXPECT_EQ(json["cgroups"][0]["cgroup_version"], 1);
    EXPECT_TRUE(json["cgroups"][0]["intervals"][0]["psi_some_pct"].is_null());
    EXPECT_TRUE(json["cgroups"][0]["intervals"][0]["swapin_pages_per_s"].is_null());
    EXPECT_TRUE(json["cgroups"][0]["intervals"][0]["swapout_pages_per_s"].is_null());
    documents.push_back(std::move(json));
  }
  {
    Recording run(2);
    idle_host(run);
    run.add_cgroup("/ci.slice/job-17", 512 * kMiB);
    run.add_process(5555, "pytest", "/ci.slice/job-17", 480 * kMiB);
    run.script([](Recording& run, int k) {
      if (k != 2) return;
      Process& job = run.process(5555);
      job.rates.major_faults = 200;
      job.in_proc = false;
      job.task.exited = true;
      run.oom_kill({5555, "pytest", job.task.memcg_id, "", 470 * kMiB, 8 * kMiB, 0, 3.9});
    });
    auto samples = run.record(3);
    samples.back().counters = {1, 2, 3, 4};
    auto json = report::paging_json(analyze(samples).report(10));
    EXPECT_EQ(json["oom_kills"].size(), 1u);
    EXPECT_EQ(json["oom_kills"][0]["anon_rss_bytes"], 470 * kMiB);
    EXPECT_EQ(json["not_recorded"]["untimed_stalls"], 4);
    EXPECT_EQ(json["processes"][0]["exited"], true);
    documents.push_back(std::move(json));
  }
  // Nothing but the baseline: no intervals, no verdict to speak of.
  documents.push_back(report::paging_json(analyze(baseline_only()).report(10)));
  EXPECT_EQ(validate(documents), (std::vector<std::string>{"valid", "valid", "valid"}));
}

TEST(PagingText, SummaryNamesTheVerdictTheCulpritAndTheVictims) {
  auto report = anon_thrash_report();
  std::ostringstream out;
  report::render_paging_summary(report, out);
  std::string text = out.str();
  EXPECT_TRUE(contains(text, "VERDICT: THRASHING in memory cgroup /thrash")) << text;
  EXPECT_TRUE(contains(text, "anon/swap + file/page cache thrashing for 2 intervals")) << text;
  EXPECT_TRUE(contains(text,
                       "memory cgroup /thrash (v2, limit 256.0 MiB): THRASHING "
                       "(thrashing in 5 of 7 intervals)"))
      << text;
  size_t culprits = text.find("CULPRITS");
  size_t victims = text.find("VICTIMS");
  ASSERT_NE(culprits, std::string::npos) << text;
  ASSERT_NE(victims, std::string::npos) << text;
  EXPECT_LT(culprits, victims);
  size_t leaker = text.find("26670", culprits);
  ASSERT_NE(leaker, std::string::npos) << text;
  EXPECT_LT(leaker, victims);
  EXPECT_TRUE(contains(text, "memtrail leaks -p 26670")) << text;
  EXPECT_NE(text.find("26608", victims), std::string::npos) << text;
  EXPECT_NE(text.find("26609", victims), std::string::npos) << text;
  EXPECT_FALSE(contains(text, "OTHER PROCESSES")) << text;
  EXPECT_TRUE(contains(text,
                       "deep hooks (fault timing, refaults, swap-ins per process) "
                       "attached for 6.0s of 7.0s"))
      << text;
}

TEST(PagingText, IntervalScreenShowsTheLatestVerdictsAndTheRoles) {
  auto report = anon_thrash_report();
  std::ostringstream out;
  report::render_paging_interval(report, out);
  std::string text = out.str();
  EXPECT_TRUE(contains(text, "host: THRASHING (anon/swap + file/page cache)")) << text;
  EXPECT_TRUE(contains(text,
                       "memory cgroup /thrash (v2, limit 256.0 MiB): THRASHING "
                       "(anon/swap + file/page cache)"))
      << text;
  EXPECT_TRUE(contains(text, "PSI some 28.0% full 26.0%")) << text;
  size_t culprits = text.find("CULPRITS");
  ASSERT_NE(culprits, std::string::npos) << text;
  EXPECT_NE(text.find("26670", culprits), std::string::npos) << text;
  EXPECT_TRUE(contains(text, "memtrail leaks -p 26670")) << text;
  EXPECT_TRUE(contains(text, "VICTIMS")) << text;
}

TEST(PagingText, AnIdleHostSaysOkAndListsNobody) {
  Recording run(2);
  idle_host(run);
  auto report = analyze(run.record(3)).report(10);
  std::ostringstream out;
  report::render_paging_summary(report, out);
  std::string text = out.str();
  EXPECT_TRUE(contains(text, "VERDICT: OK\n")) << text;
  EXPECT_FALSE(contains(text, "CULPRITS")) << text;
  EXPECT_FALSE(contains(text, "VICTIMS")) << text;
  EXPECT_TRUE(contains(text, "no process faulted, reclaimed or grew notably")) << text;
}

}  // namespace
}  // namespace memtrail::aggregator
