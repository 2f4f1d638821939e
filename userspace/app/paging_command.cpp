// SPDX-License-Identifier: Apache-2.0
// `memtrail paging`: sample the host, its memory cgroups and its processes every interval,
// count faults and stalls with BPF, attach the per-fault hooks while memory is under pressure,
// and say who causes the pressure and who suffers from it.
#include "app/paging_command.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <vector>

#include "aggregator/paging_analysis.h"
#include "app/runtime.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/host.h"
#include "common/output_file.h"
#include "report/json_report.h"
#include "report/paging_renderers.h"
#include "sampler/cgroups.h"
#include "sampler/host.h"
#include "sampler/pressure.h"
#include "sampler/processes.h"
#include "tracer/paging_tracer.h"

namespace memtrail::app {
namespace {

using Clock = std::chrono::steady_clock;

// Deep hooks go on when PSI "some" passes 100 ms in a 2 s window (5 %: the pressure verdict's
// threshold); windows must be multiples of 2 s without CAP_SYS_RESOURCE. They go off after
// this many calm intervals in a row.
constexpr uint64_t kTriggerStallUs = 100'000;
constexpr uint64_t kTriggerWindowUs = 2'000'000;
constexpr int kCalmIntervalsBeforeDetach = 3;

class PagingSession {
 public:
  explicit PagingSession(const cli::PagingOptions& options) : options_(options) {}

  int run() {
    layout_ = sampler::detect_cgroup_layout();
    scanner_.emplace(layout_);
    if (!options_.cgroup.empty()) {
      auto resolved = sampler::resolve_cgroup_argument(layout_, options_.cgroup);
      if (!resolved) {
        throw Error("no memory cgroup " + options_.cgroup,
                    "give a directory under " + layout_.memory_root +
                        " or a path as in /proc/PID/cgroup, e.g. /system.slice/db.service");
      }
      cgroup_filter_ = *resolved;
    }
    if (!options_.json_path.empty()) check_output_path(options_.json_path, "--json");
    signal_fd_ = open_signalfd();

    tracer::PagingTracerConfig config;
    config.max_processes = options_.max_processes;
    config.verbose = options_.verbose;
    tracer_ = std::make_unique<tracer::PagingTracer>(config);
    if (options_.deep == cli::DeepMode::kAlways) set_deep(true);
    if (options_.deep == cli::DeepMode::kAuto) arm_triggers();
    std::cerr << "memtrail: watching paging host-wide"
              << (cgroup_filter_.empty() ? "" : ", focused on memory cgroup " + cgroup_filter_)
              << "; Ctrl-C to stop\n";

    // Loading took a moment: time (intervals, OOM kills) counts from the baseline.
    start_ns_ = monotonic_now_ns();
    start_ = Clock::now();
    take_sample();  // the baseline
    loop();
    // Always read the counters once more, so that events since the last interval count; a
    // last stretch shorter than a quarter interval updates the processes only.
    auto since_last = std::chrono::duration<double>(Clock::now() - last_sample_).count();
    take_sample(since_last >= options_.interval_s / 4);

    auto report = analyzer_.report(options_.top, cgroup_filter_);
    report.sources = sources();
    report.host_name = host_name();
    report.kernel = kernel_release();
    report.options = {options_.interval_s, deep_mode_name(), options_.top, options_.max_processes};
    report::render_paging_summary(report, std::cout);
    std::cout.flush();
    if (!options_.json_path.empty()) {
      write_output_file(report::json_text(report::paging_json(report)), options_.json_path);
      std::cerr << "memtrail: wrote " << options_.json_path << "\n";
    }
    return kExitOk;
  }

 private:
  void arm_triggers() {
    std::vector<std::string> paths{"/proc/pressure/memory"};
    if (!layout_.unified_root.empty()) {
      for (const auto& path : sampler::list_memory_cgroups(layout_)) {
        if (path == "/") continue;
        if (!cgroup_filter_.empty() && path != cgroup_filter_) continue;
        std::string file = layout_.unified_root + path + "/memory.pressure";
        if (::access(file.c_str(), R_OK) == 0) paths.push_back(file);
        if (triggers_.size() + paths.size() >= 64) break;  // one fd each: stay modest
      }
    }
    for (const auto& path : paths) {
      try {
        triggers_.emplace_back(path, sampler::StallKind::kSome, kTriggerStallUs, kTriggerWindowUs);
      } catch (const Error& error) {
        // Without a trigger the interval's own check still attaches the hooks, one interval later.
        trigger_failures_.push_back(error.what());
      }
    }
  }

  void set_deep(bool on) {
    if (on == tracer_->deep()) return;
    tracer_->set_deep(on);
    if (on) deep_in_interval_ = true;
    if (options_.verbose) {
      std::cerr << "memtrail: per-fault hooks " << (on ? "attached" : "detached") << "\n";
    }
  }

  void take_sample(bool closes_interval = true) {
    model::PagingSample sample;
    last_sample_ = Clock::now();
    sample.t_s = std::chrono::duration<double>(last_sample_ - start_).count();
    sample.unix_ms = unix_now_ms();
    sample.host = sampler::read_host_sample();
    for (const auto& path : sampler::list_memory_cgroups(layout_)) {
      if (auto cgroup = sampler::read_cgroup_sample(layout_, path)) {
        sample.cgroups.push_back(std::move(*cgroup));
      }
    }
    sample.processes = scanner_->scan();
    tracer_->read(sample, start_ns_);
    sample.deep = deep_in_interval_ || tracer_->deep();
    deep_in_interval_ = tracer_->deep();
    analyzer_.add(sample, closes_interval);
  }

  // After each interval: attach the deep hooks while anything is under pressure, detach them
  // after a few calm intervals.
  void steer_deep_mode() {
    if (options_.deep != cli::DeepMode::kAuto) return;
    if (analyzer_.under_pressure()) {
      calm_intervals_ = 0;
      set_deep(true);
    } else if (tracer_->deep() && ++calm_intervals_ >= kCalmIntervalsBeforeDetach) {
      set_deep(false);
    }
  }

  void loop() {
    auto interval = duration_from_seconds(options_.interval_s);
    std::optional<Clock::time_point> deadline;
    if (options_.duration_s) deadline = start_ + duration_from_seconds(*options_.duration_s);
    auto next_tick = start_ + interval;
    bool screen = !options_.quiet;
    bool terminal = ::isatty(STDOUT_FILENO) == 1;
    for (;;) {
      auto now = Clock::now();
      if (deadline && now >= *deadline) return;
      if (now >= next_tick) {
        take_sample();
        steer_deep_mode();
        if (screen) {
          if (terminal) std::cout << "\033[H\033[2J";  // one screen per interval
          auto report = analyzer_.report(options_.top, cgroup_filter_);
          report::render_paging_interval(report, std::cout);
          std::cout.flush();
        }
        next_tick += interval;
        if (next_tick <= now) next_tick = now + interval;
        continue;
      }
      auto wake = deadline ? std::min(next_tick, *deadline) : next_tick;
      std::vector<pollfd> fds{{signal_fd_.get(), POLLIN, 0}};
      for (const auto& trigger : triggers_) fds.push_back({trigger.fd(), POLLPRI, 0});
      int ready = ::poll(fds.data(), fds.size(), poll_timeout_ms(wake, now));
      if (ready < 0) {
        int error_number = errno;
        if (error_number != EINTR) throw Error(errno_message("poll", error_number));
      }
      if (ready <= 0) continue;
      if (fds[0].revents & POLLIN) {
        consume_signal(signal_fd_.get());
        return;
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents & POLLPRI) {
          // Pressure began: attach now, not at the end of the interval.
          calm_intervals_ = 0;
          set_deep(true);
        }
        if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) {
          triggers_.erase(triggers_.begin() + static_cast<std::ptrdiff_t>(i - 1));  // cgroup gone
          break;
        }
      }
    }
  }

  std::string deep_mode_name() const {
    switch (options_.deep) {
      case cli::DeepMode::kAuto:
        return "auto";
      case cli::DeepMode::kAlways:
        return "always";
      case cli::DeepMode::kNever:
        return "never";
    }
    return "auto";
  }

  std::vector<std::string> sources() const {
    std::string unified = layout_.unified_root.empty() ? "(none)" : layout_.unified_root;
    std::vector<std::string> list{
        "host: /proc/pressure/memory, /proc/vmstat, /proc/meminfo",
        "memory cgroups: cgroup v" + std::to_string(layout_.version) + " at " +
            layout_.memory_root + " (memory.stat, limits, OOM kills); PSI from " + unified,
        "processes: /proc/PID/{stat,status,cgroup} every interval",
        "major faults per process: BPF perf_event on PAGE_FAULTS_MAJ (as /proc/PID/stat counts "
        "them, without faults taken by the kernel on a process's behalf)",
        "reclaim stalls per process: BPF tp_btf "
        "vmscan:mm_vmscan_{direct,memcg}_reclaim_{begin,end}",
        "OOM kills: BPF tp_btf oom:mark_victim",
        std::string("per-fault hooks (fault wait, refaults, swap-ins per process): BPF tp_btf "
                    "exceptions:page_fault_user, memcg:count_memcg_events, "
                    "memcg:mod_memcg_lruvec_state; --deep ") +
            (options_.deep == cli::DeepMode::kAuto     ? "auto (attached while under pressure)"
             : options_.deep == cli::DeepMode::kAlways ? "always"
                                                       : "never"),
    };
    for (const auto& missing : tracer_->deep_unavailable())
      list.push_back("unavailable: " + missing);
    for (const auto& failure : trigger_failures_) {
      list.push_back("PSI trigger not armed (hooks follow the interval check): " + failure);
    }
    return list;
  }

  cli::PagingOptions options_;
  sampler::CgroupLayout layout_;
  std::optional<sampler::ProcessScanner> scanner_;  // remembers cgroups: fewer reads a scan
  std::string cgroup_filter_;
  UniqueFd signal_fd_;
  uint64_t start_ns_ = 0;
  Clock::time_point start_, last_sample_;
  std::unique_ptr<tracer::PagingTracer> tracer_;
  std::vector<sampler::PressureTrigger> triggers_;
  std::vector<std::string> trigger_failures_;
  aggregator::PagingAnalyzer analyzer_;
  bool deep_in_interval_ = false;
  int calm_intervals_ = 0;
};

}  // namespace

int run_paging(const cli::PagingOptions& options) { return PagingSession(options).run(); }

}  // namespace memtrail::app
