// SPDX-License-Identifier: Apache-2.0
// A leaks tracing session: the owners wired together, targets attached, reports built.
#include "session/session.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <iostream>
#include <string>
#include <unordered_set>

#include "common/clock.h"
#include "common/error.h"
#include "inspect/launch.h"
#include "inspect/load_order.h"
#include "inspect/proc_maps.h"
#include "inspect/process.h"

namespace memtrail::session {

namespace {

// What can be checked of the targets before anything loads: each PID is a live process (not a
// thread, not a zombie), the command resolves to a program. Returns the command's chain.
std::optional<inspect::LaunchChain> check_targets(const SessionConfig& config) {
  // The mappings are read again once the programs are loaded: they may change meanwhile.
  for (uint32_t pid : config.pids) live_mappings(pid);
  if (config.command.empty()) return std::nullopt;
  // A script is followed through its #! lines to the program the kernel loads for it; a
  // program executed later (env's, a wrapper's `exec`) is held at its exec and probed then.
  const char* path = std::getenv("PATH");
  return inspect::resolve_launch(config.command.front(),
                                 path ? path : "/usr/local/bin:/usr/bin:/bin");
}

// Whether a site or slow path of `function` records its block's usable size (tcmalloc's size
// classes), for -v.
bool records_usable_sizes(const inspect::FunctionProbe& function) {
  return std::any_of(
             function.return_sites.begin(), function.return_sites.end(),
             [](const auto& site) { return site.usable_size != inspect::UsableSize::kNo; }) ||
         std::any_of(function.handoffs.begin(), function.handoffs.end(), [](const auto& handoff) {
           return handoff.usable_size != inspect::UsableSize::kNo;
         });
}

}  // namespace

Session::Session(SessionConfig config)
    : config_(std::move(config)),
      launch_(check_targets(config_)),
      tracer_(config_.tracer),
      probes_(tracer_, config_.host_wide(), config_.verbose()),
      code_maps_(config_, tracer_, probes_),
      host_wide_(config_.host_wide()
                     ? std::make_unique<HostWide>(config_, tracer_, targets_, probes_, code_maps_)
                     : nullptr),
      lifecycle_(config_, tracer_, targets_, code_maps_, host_wide_.get(), child_),
      measurement_(config_, tracer_, targets_, code_maps_) {
  if (config_.verbose()) {
    std::cerr << "memtrail: BPF maps hold " << tracer_.map_memory_bytes() / (1024 * 1024)
              << " MiB of kernel memory (--max-allocations "
              << config_.tracer.max_outstanding_allocations
              << (config_.max_allocations_from_memory ? ", from available memory" : "")
              << "; --max-stacks " << config_.tracer.max_stacks << ")\n";
    std::cerr << "memtrail: allocator probes: "
              << (tracer_.uprobe_multi()
                      ? "uprobe_multi links, one a program and module\n"
                      : "perf-event uprobes, one a probe (this kernel has no uprobe_multi "
                        "links, Linux 6.6: each takes ~0.1 s to detach at exit)\n");
  }
}

void Session::start() {
  if (host_wide_) {
    host_wide_->start();
  } else {
    prepare_targets();
    attach_all();
  }
  start_ = Clock::now();
  start_unix_ms_ = unix_now_ms();
  next_housekeeping_ = start_;
  code_maps_.object_windows().start(start_);
}

void Session::prepare_targets() {
  for (uint32_t pid : config_.pids) {
    TracedProcess process;
    // process.mappings stays empty: CodeMaps::refresh() hands them to the symbolizer.
    auto mappings = live_mappings(pid);
    // Each function is probed where the process binds it: the link map gives the order.
    auto order = inspect::process_load_order(pid, mappings);
    process.allocators = allocators_or_mappings_only(pid, order);
    warn_unmapped_custom(pid, mappings);
    process.info = inspect::read_target_info(pid);
    describe_allocators(process.allocators, process.info);
    targets_.add(std::move(process));
  }
  if (launch_) {
    const inspect::LaunchChain& chain = *launch_;
    if (config_.verbose()) {
      for (const auto& step : chain.steps) std::cerr << "memtrail: command: " << step << "\n";
    }
    // The command runs in memtrail's mount namespace and environment: before it runs, its
    // loader says which libraries it will load, in which order. Probes attach to files, so
    // they are in place when the libraries get mapped.
    char resolved[PATH_MAX];
    std::string real_program =
        ::realpath(chain.program.c_str(), resolved) ? resolved : chain.program;
    auto order = inspect::command_load_order(real_program);
    TracedProcess process;
    process.allocators = allocators_or_mappings_only(0, order);
    child_.emplace(chain.executable, config_.command);
    process.info.pid = static_cast<uint32_t>(child_->pid());
    describe_allocators(process.allocators, process.info);
    process.launched = true;
    targets_.add(std::move(process));
  }
}

// The allocators of `pid` (0: the command). A program without the malloc family (Go's
// runtime maps its memory itself) is refused, unless --mmap traces its mappings: then it is
// traced for those alone, and one line says what cannot be.
inspect::ProcessAllocators Session::allocators_or_mappings_only(uint32_t pid,
                                                                const inspect::LoadOrder& order) {
  try {
    return inspect::resolve_allocators(pid, order, config_.trace_cxx,
                                       config_.custom_allocators_for(pid),
                                       config_.analyse_return_sites());
  } catch (const inspect::NoAllocatorFound&) {
    if (!config_.tracer.trace_regions) throw;
    std::cerr << mappings_only_line(pid ? "pid " + std::to_string(pid)
                                        : std::string("the command"));
    inspect::ProcessAllocators none;
    none.order_source = order.source;
    return none;
  }
}

// A custom allocator the process has not mapped (yet) is probed all the same (a uprobe is on
// the file), but if it never loads it, nothing will show: say so.
void Session::warn_unmapped_custom(uint32_t pid,
                                   const std::vector<inspect::Mapping>& mappings) const {
  for (const auto& allocator : config_.allocators) {
    bool mapped = std::any_of(mappings.begin(), mappings.end(),
                              [&](const auto& mapping) { return mapping.path == allocator.path; });
    if (!mapped) {
      std::cerr << "memtrail: warning: pid " << pid << " does not map " << allocator.path
                << " (--allocator): its functions are probed in case it loads it later\n";
    }
  }
}

void Session::attach_all() {
  // The walker needs a process's code mappings before its first allocation is recorded.
  for (auto& process : targets_) {
    if (!process.launched) code_maps_.refresh(process);
  }
  for (auto& process : targets_) {
    if (config_.verbose()) {
      std::cerr << "memtrail: pid " << process.info.pid << ": load order from "
                << process.allocators.order_source << "\n";
    }
    // Without a module to attach (--mmap only), the process is followed all the same: its
    // mappings are what is traced.
    if (process.allocators.modules.empty()) tracer_.follow(process.info.pid);
    for (const auto& module : process.allocators.modules) {
      tracer_.attach(process.info.pid, module);
      if (!config_.verbose()) continue;
      for (const auto& function : module.functions) {
        std::string prefix = "memtrail: pid " + std::to_string(process.info.pid) + ": ";
        switch (tracer_.cxx_probing(function)) {
          case tracer::AllocTracer::CxxProbing::kAtMallocSites:
            std::cerr << prefix << function.name
                      << " has no probe of its own: malloc's return sites tell its calls by "
                         "their return address; it "
                      << function.cxx_reason << "\n";
            continue;
          case tracer::AllocTracer::CxxProbing::kForwarded:
            std::cerr << prefix << function.name << " has no probe of its own: it "
                      << function.cxx_reason << "\n";
            continue;
          case tracer::AllocTracer::CxxProbing::kMarksNewArray:
            std::cerr << prefix << function.name << " probed at " << module.path << "+0x"
                      << std::hex << function.probe_offset << std::dec
                      << " only to mark its calls as new[]: it " << function.cxx_reason << "\n";
            continue;
          case tracer::AllocTracer::CxxProbing::kOwnProbes:
            if (!function.cxx_reason.empty()) {
              std::cerr << prefix << function.name
                        << " keeps its own probes: " << function.cxx_reason << "\n";
            }
            break;
        }
        if (tracer_.uses_return_sites(function)) {
          std::cerr << "memtrail: pid " << process.info.pid << ": " << function.name
                    << " probed inside, where it returns ("
                    << (function.size_captures.empty()
                            ? "one trap a call"
                            : "one trap a call, two where the size is taken before the site")
                    << (records_usable_sizes(function)
                            ? "; blocks recorded at their size class's size, the usable one, "
                              "where no register holds the size asked for"
                            : "")
                    << (function.handoffs.empty() ? ""
                                                  : "; entry and return probes on a slow path it "
                                                    "hands off to")
                    << "): " << function.return_sites_reason << "\n";
          continue;
        }
        std::cerr << "memtrail: pid " << process.info.pid << ": " << function.name << " probed at "
                  << module.path << "+0x" << std::hex << function.probe_offset << std::dec << ": "
                  << function.placement << "\n";
        if (config_.tracer.return_sites && !function.return_sites_reason.empty()) {
          std::cerr << "memtrail: pid " << process.info.pid << ": " << function.name
                    << " keeps its entry and return probes: "
                    << (config_.tracer.trace_regions
                            ? std::string("--mmap tells malloc's own mappings by its entry")
                        : !function.return_sites.empty() && !tracer_.class_tables_fit(function)
                            ? std::string("its sites read tcmalloc's class size table, and "
                                          "BPF's slots for such tables are taken by other "
                                          "modules'")
                            : "its return sites are not proven: " + function.return_sites_reason)
                    << "\n";
        }
      }
    }
  }
  // The probes are in place; a process that died meanwhile cannot be traced.
  for (auto& process : targets_) {
    if (process.launched) continue;
    process.pidfd = open_pidfd(process.info.pid);
    if (inspect::process_state(process.info.pid) != inspect::ProcessState::kRunning) {
      throw Error(
          "process " + std::to_string(process.info.pid) + " exited while memtrail was attaching",
          "trace a process that keeps running");
    }
  }
  if (child_) {
    auto& process = targets_.back();
    process.pidfd = open_pidfd(process.info.pid);
    // Held at the exec into the command, and at each it makes after: its code is read there.
    tracer_.hold_execs(process.info.pid);
    child_->release();
    await_command_start();
  }
  for (auto& process : targets_) {
    code_maps_.refresh(process);
    std::cerr << "memtrail: tracing pid " << process.info.pid
              << (process.info.comm.empty() ? "" : " (" + process.info.comm + ")") << " via ";
    const auto& modules = process.allocators.modules;
    if (modules.empty()) std::cerr << "its anonymous mappings only (--mmap)";
    for (size_t i = 0; i < modules.size(); ++i) {
      std::cerr << (i == 0 ? "" : " and ") << modules[i].name << " " << modules[i].path << " ("
                << modules[i].functions.size() << " functions)";
    }
    std::cerr << "\n";
    for (const auto& untraced : process.allocators.untraced) {
      if (untraced.expected) continue;
      std::cerr << "memtrail: warning: pid " << process.info.pid << " maps " << untraced.name << " "
                << untraced.path << ", not traced: " << untraced.reason << "\n";
    }
  }
  std::cerr.flush();
}

// The command is held before its first instruction: handled at once rather than at the next
// tick, so that it starts without delay. The exec event follows the exec by microseconds.
void Session::await_command_start() {
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!targets_.back().execs && Clock::now() < deadline) {
    pollfd fd{tracer_.region_events_fd(), POLLIN, 0};
    ::poll(&fd, 1, 100);
    lifecycle_.follow();
  }
}

Session::~Session() {
  // An exec held and not handled yet (an error ended the run) must not stay stopped.
  try {
    lifecycle_.release_held();
  } catch (const std::exception& error) {
    std::cerr << "memtrail: warning: " << error.what() << "\n";
  }
}

void Session::housekeep(Clock::time_point now) {
  // Forks before the exits settle: see handle_polled().
  lifecycle_.follow();
  lifecycle_.settle(report_of(), start_);
  retire_exited();
  next_object_switch_ = code_maps_.object_windows().tick(now);
  if (now < next_housekeeping_) return;
  code_maps_.refresh_when_due(targets_, now, start_);
  if (host_wide_ && host_wide_->has_pending_programs()) host_wide_->look_at_pending_programs();
  code_maps_.name_python_frames();
  next_housekeeping_ = now + std::chrono::milliseconds(code_maps_.walks_unwind_tables() ? 50 : 100);
}

// Processes that exited and got their summary: memtrail lets go of what it held for them
// (their mappings for the symbolizer, growth and private-memory series, allocator details),
// so that a host starting programs all day keeps memtrail's memory flat. Host-wide, those that
// left nothing outstanding are only counted; of the others, the latest kMaxExitSummaries
// summaries are kept, and older ones counted with their bytes.
void Session::retire_exited() {
  for (TracedProcess* process : lifecycle_.take_summarized()) {
    if (process->retired || !process->exit) continue;
    uint32_t pid = process->info.pid;
    process->memory_at_exit = measurement_.process_memory(pid);
    measurement_.forget_process(pid);
    code_maps_.forget_retired(pid);
    probes_.forget_waiting(pid);
    process->retired = true;
    process->mappings = {};
    process->allocators = {};
    process->resolved_code_files = {};
    if (config_.host_wide() && process->exit->outstanding_bytes == 0) {
      ++folded_exits_.nothing_outstanding;
      fold_freed_sites(*process);
      targets_.remove(*process);
      continue;
    }
    kept_exits_.push_back(process);
  }
  while (kept_exits_.size() > kMaxExitSummaries) {
    const TracedProcess* oldest = kept_exits_.front();
    kept_exits_.pop_front();
    ++folded_exits_.over_cap;
    folded_exits_.over_cap_outstanding_bytes += oldest->exit->outstanding_bytes;
    fold_freed_sites(*oldest);
    targets_.remove(*oldest);
  }
}

// A process let go: its freed sites become counts.
void Session::fold_freed_sites(const TracedProcess& process) {
  assemble::count_omitted(freed_sites_folded_, process.exit_freed_sites);
  freed_sites_folded_.sites += process.exit_freed_omitted.sites;
  freed_sites_folded_.allocations += process.exit_freed_omitted.allocations;
  freed_sites_folded_.bytes += process.exit_freed_omitted.bytes;
  freed_sites_folded_.estimated =
      freed_sites_folded_.estimated || process.exit_freed_omitted.estimated;
}

void Session::add_poll_fds(std::vector<pollfd>& fds) {
  // A fork event wakes memtrail at once: the child runs untraced until it is attached.
  int region_fd = tracer_.region_events_fd();
  polled_region_events_ = region_fd >= 0;
  if (polled_region_events_) fds.push_back({region_fd, POLLIN, 0});
  // Pointers stay valid: following a fork adds targets, but does not move them.
  polled_.clear();
  for (auto& process : targets_) {
    if (process.info.exited) continue;
    fds.push_back({process.pidfd.get(), POLLIN, 0});
    polled_.push_back(&process);
  }
}

void Session::handle_polled(std::span<const pollfd> polled) {
  size_t first_pidfd = polled_region_events_ ? 1 : 0;
  bool exits = std::any_of(polled.begin() + static_cast<std::ptrdiff_t>(first_pidfd), polled.end(),
                           [](const pollfd& fd) { return fd.revents != 0; });
  // Forks before exits: a traced parent forks and exits at once (a shell's command
  // substitution, a daemon detaching), and its fork event may already have been read from
  // the ring buffer by a report (it waits in the tracer, not on the descriptor). Following it
  // while the parent is still live keeps the child traced, and its blocks with a known owner.
  if ((polled_region_events_ && polled[0].revents) || exits) lifecycle_.follow();
  for (size_t i = first_pidfd; i < polled.size(); ++i) {
    if (polled[i].revents != 0) lifecycle_.process_exited(*polled_[i - first_pidfd]);
  }
}

bool Session::wait(Clock::time_point until, int wake_fd) {
  std::vector<pollfd> fds;
  if (wake_fd >= 0) fds.push_back({wake_fd, POLLIN, 0});
  size_t first = fds.size();
  add_poll_fds(fds);
  int ready = ::poll(fds.data(), fds.size(), poll_timeout_ms(until, Clock::now()));
  if (ready < 0 && errno != EINTR) throw Error(errno_message("poll", errno));
  if (ready <= 0) return false;
  if (wake_fd >= 0 && (fds[0].revents & POLLIN)) return true;
  handle_polled(std::span<const pollfd>(fds).subspan(first));
  return false;
}

bool Session::finished() const { return !config_.host_wide() && !targets_.any_live(); }

void Session::measure() {
  Measurement::Reading reading = measurement_.measure(start_);
  say_state(reading.snapshot);
}

// With -v, what the session holds: a long run's (bench/soak.sh reads this line).
void Session::say_state(const model::Snapshot& snapshot) const {
  if (!config_.verbose()) return;
  // Sites in the maps of processes that are not live targets: those of exits not settled
  // yet, for a moment; any that stay are state nothing will ever free (bench/soak.sh).
  std::unordered_set<uint32_t> untraced;
  for (const auto& site : snapshot.sites) {
    if (!targets_.live(site.pid)) untraced.insert(site.pid);
  }
  std::cerr << "memtrail: state: " << targets_.size() << " targets kept (" << kept_exits_.size()
            << " exit summaries), " << folded_exits_.nothing_outstanding
            << " exits with nothing outstanding and " << folded_exits_.over_cap
            << " older exit summaries folded; " << snapshot.sites.size()
            << " sites in the maps, of " << untraced.size() << " processes not live\n";
}

model::Report Session::take_report(bool final, size_t sites) {
  return take_report(final, sites, nullptr);
}

Lifecycle::ReportOf Session::report_of() {
  return [this](const Lifecycle::Exited& only) { return take_report(false, SIZE_MAX, &only); };
}

// With -v, says how long each stage took (the benchmark reads these lines).
model::Report Session::take_report(bool final, size_t sites, const Lifecycle::Exited* only) {
  // An exit report reads at any moment: it must not add a point to the histories.
  Measurement::Reading reading = measurement_.measure(start_, /*record=*/only == nullptr);
  auto& aggregate = reading.aggregate;
  if (only) {
    std::erase_if(aggregate.sites, [&](const auto& site) { return !only->count(site.pid); });
    std::erase_if(aggregate.freed_sites, [&](const auto& site) { return !only->count(site.pid); });
  }
  auto symbolizing = Clock::now();
  auto report_context = context(final, only);
  if (config_.tracer.python_objects) {
    const auto& objects = code_maps_.python_objects();
    report_context.python_object_types = &reading.python_types;
    report_context.python_type_history = &measurement_.python_type_history();
    report_context.python_type_name = [&objects](uint32_t pid, uint64_t type) {
      return objects.type_name(pid, type);
    };
    report_context.python_type_exact = [&objects](uint32_t pid, uint64_t type) {
      return objects.sized_exactly(pid, type);
    };
  }
  // `sites` caps leak sites and freed sites each (build_report takes the smaller counts itself):
  // a run with few leak sites still lists the sites that freed everything.
  auto report = assemble::build_report(reading.snapshot, aggregate, code_maps_.symbolizer(),
                                       report_context, sites);
  // Processes that exited earlier: their sites as they were at the exit, after the live ones.
  for (const auto& process : targets_) {
    if (only) break;
    for (const auto& site : process.exit_sites) {
      if (report.leaks.size() >= sites) break;
      report.leaks.push_back(site);
    }
  }
  if (!only) {
    for (const auto& process : targets_) {
      assemble::add_freed_sites(report, process.exit_freed_sites, process.exit_freed_omitted);
    }
    assemble::add_freed_sites(report, {}, freed_sites_folded_);
    add_run_facts(report, reading.snapshot);
  }
  auto built = Clock::now();
  if (config_.verbose()) {
    std::cerr << "memtrail: report: " << aggregate.totals.outstanding_allocations
              << " outstanding allocations read and summed in " << reading.read_ms
              << " ms, ranked in " << reading.ranked_ms << " ms, " << report.leaks.size()
              << " sites symbolized in "
              << std::chrono::duration<double, std::milli>(built - symbolizing).count() << " ms";
    if (reading.snapshot.counters.snapshot_read_errors != 0) {
      std::cerr << " (" << reading.snapshot.counters.snapshot_read_errors
                << " entries changing while read, left for the next report)";
    }
    std::cerr << "\n";
  }
  return report;
}

// What the run could not trace, and what it folded into counts.
void Session::add_run_facts(model::Report& report, const model::Snapshot& snapshot) const {
  report.attach_failures = probes_.attach_failures();
  report.folded_exits = folded_exits_;
  say_state(snapshot);
}

// `only`: the processes a report is for (see take_report); every target otherwise.
assemble::ReportContext Session::context(bool final, const Lifecycle::Exited* only) const {
  assemble::ReportContext context;
  for (const auto& process : targets_) {
    if (only && !only->count(process.info.pid)) continue;
    context.targets.push_back(process.info);
    context.targets.back().memory =
        process.retired ? process.memory_at_exit : measurement_.process_memory(process.info.pid);
    context.targets.back().exit = process.exit;
    context.targets.back().traced_from_start = process.launched;
    if (config_.tracer.trace_regions) {
      context.targets.back().break_growth_bytes = tracer_.break_growth(process.info.pid);
    }
    if (config_.tracer.python_objects) {
      context.targets.back().python_estimated_types =
          code_maps_.python_objects().estimated_types(process.info.pid);
    }
  }
  context.start_unix_ms = start_unix_ms_;
  context.end_unix_ms = unix_now_ms();
  context.duration_s = std::chrono::duration<double>(Clock::now() - start_).count();
  context.min_age_s = config_.min_age_s;
  context.sample_rate = config_.tracer.sample_rate;
  context.top = config_.top;
  context.final = final;
  context.max_outstanding_allocations = config_.tracer.max_outstanding_allocations;
  context.history = &measurement_.history();
  context.suppressions = &config_.suppressions;
  context.unwind = code_maps_.unwind_summary();
  context.python = &code_maps_.python_naming();
  context.children_missed = lifecycle_.children_missed();
  if (config_.python_types) context.python_types = measurement_.python_types();
  const auto& windows = code_maps_.object_windows();
  context.python_objects = windows.coverage();
  if (context.python_objects && !context.python_objects->exact) {
    auto shares = windows.shares();
    const auto& unmeasured = context.python_objects->before_first_window;
    for (auto& target : context.targets) {
      auto share = shares.find(target.pid);
      if (share != shares.end()) {
        target.python_objects_observed_fraction = share->second.fraction;
        target.python_objects_share_basis = aggregator::share_basis_name(share->second.basis);
      } else if (std::find(unmeasured.begin(), unmeasured.end(), target.pid) != unmeasured.end()) {
        target.python_objects_observed_fraction = 0;  // no window yet: nothing seen
        target.python_objects_share_basis = "none";
      }
    }
  }
  return context;
}

void Session::stop() {
  // No exec is held from here: the last ones are handled (and continued) just below.
  tracer_.release_holds();
  lifecycle_.follow();
  lifecycle_.notice_exits(report_of(), start_);
  retire_exited();
  // Code mapped since the last refresh (a command stopped right after it started) must be
  // known to the symbolizer, or its frames print as [unknown].
  for (auto& process : targets_) code_maps_.refresh(process);
  // Nothing is counted after the stop: the final report's counts are exact and consistent.
  tracer_.stop_counting();
}

void Session::end_launched_command() {
  if (child_) child_->terminate(std::chrono::seconds(2));
}

}  // namespace memtrail::session
