// SPDX-License-Identifier: Apache-2.0
// Forks followed, execs and exits purged from the maps in batches.
#include "session/lifecycle.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <unordered_set>

#include "common/clock.h"
#include "common/error.h"

namespace memtrail::session {

namespace {

// MEMTRAIL_TEST_KILL_AT_HOLD=start|exec|finalizing (tests only): memtrail kills itself
// (SIGKILL) as it reads the first hold of that kind (the command's own exec; an exec the
// running command or its child makes; Py_FinalizeEx), before it continues the process: the
// moment a `kill -9` is the most harmful.
void killed_here_in_tests(const char* hold) {
  static const char* wanted = std::getenv("MEMTRAIL_TEST_KILL_AT_HOLD");
  if (wanted && std::strcmp(wanted, hold) == 0) ::kill(::getpid(), SIGKILL);
}

}  // namespace

void Lifecycle::follow() {
  auto news = tracer_.drain_region_events();
  // Forks first: a child forked by a target and executing a program at once is the target's
  // child that executed, not a program started elsewhere.
  for (const auto& fork : news.forks) handle_fork(fork);
  for (const auto& exec : news.execs) handle_exec(exec);
  for (const auto& finalizing : news.python_finalizing) handle_python_finalizing(finalizing);
  for (const auto& entry : news.program_entries) handle_program_entry(entry);
}

// A Python program whose interpreter is a shared library, held at its executable's entry point
// (CodeMaps::hold_at_entry_for_python): its libraries are mapped now, and no Python code has
// run. Its mappings are read again, which finds the interpreter, points the frame walker at it
// and places its object probes, before it is continued.
void Lifecycle::handle_program_entry(const tracer::AllocTracer::Exec& entry) {
  HeldExec held(tracer_, entry.held ? entry.pid : 0, entry.at_ns);
  tracer_.forget_program_entry(entry.pid);  // once
  TracedProcess* process = targets_.live(entry.pid);
  if (!process) return;
  if (entry.held) killed_here_in_tests("entry");
  if (entry.hold_failed) {
    std::cerr << "memtrail: warning: pid " << entry.pid << " could not be held at its entry "
              << "point (the kernel refused the stop signal, or too many processes were held "
              << "at once): its Python interpreter is found once its library is mapped, and "
              << "what it does before is seen without Python frames or objects\n";
  }
  auto began = Clock::now();
  code_maps_.refresh(*process);
  if (entry.held && config_.verbose()) {
    std::cerr << "memtrail: pid " << entry.pid << " held at the entry point of "
              << process->info.exe << " for "
              << std::chrono::duration<double, std::milli>(Clock::now() - began).count()
              << " ms while its libraries were read"
              << (process->info.python ? " and its Python interpreter probed" : "") << "\n";
  }
}

// A launched CPython program ends: stopped at Py_FinalizeEx, before the interpreter frees what
// its modules keep, or at libc's _exit when it ends without finalizing (os._exit), before the
// process and its memory are gone. Its objects are read now, those alive kept with their sizes:
// its report (at its exit, or the final one) shows what the program kept to its end, also the
// objects created since the last report. Once: a finalized program passes _exit too.
// Its report describes this moment, natively too: the BPF program that held it stopped
// recording its allocations and frees, so the buffers its kept objects own (a large dict's
// keys table, a list's item array), which finalization frees next, stay in it; and its objects
// are not read again (AllocTracer::read_python_objects_of).
void Lifecycle::handle_python_finalizing(const tracer::AllocTracer::PythonFinalizing& finalizing) {
  HeldExec held(tracer_, finalizing.held ? finalizing.pid : 0, finalizing.at_ns);
  TracedProcess* process = targets_.live(finalizing.pid);
  if (!process || process->python_end_read) return;
  if (finalizing.held) killed_here_in_tests("finalizing");
  const char* where = finalizing.at_exit ? "_exit" : "Py_FinalizeEx";
  if (finalizing.hold_failed) {
    std::cerr << "memtrail: warning: pid " << finalizing.pid << " could not be held at " << where
              << " (the kernel refused the stop signal, or too many processes "
              << "were held at once): its report shows the Python objects the last reading "
              << "found alive, not those created since\n";
  }
  process->python_end_read = true;
  auto began = Clock::now();
  uint64_t alive = tracer_.read_python_objects_of(finalizing.pid);
  // The code objects of its new stacks, named while they are there to read: housekeeping names
  // them every 50-100 ms, so the functions that ran last (those that kept the objects just
  // read) would otherwise be "<unreadable code object>" in its exit report.
  code_maps_.name_python_frames();
  if (config_.verbose()) {
    std::cerr << "memtrail: pid " << finalizing.pid << " held at " << where << " for "
              << std::chrono::duration<double, std::milli>(Clock::now() - began).count()
              << " ms while its Python objects were read: " << alive << " alive\n";
  }
}

void Lifecycle::process_exited(TracedProcess& process) {
  targets_.mark_exited(process);
  process.pidfd.reset();
  if (process.launched && child_) child_->reap_if_exited();
  process.exited_at_ns = monotonic_now_ns();
  exits_to_record_.push_back(process.info.pid);
}

void Lifecycle::notice_exits(const ReportOf& report_of, Clock::time_point start) {
  for (auto& process : targets_) {
    if (process.info.exited || process.pidfd.get() < 0) continue;
    pollfd fd{process.pidfd.get(), POLLIN, 0};
    if (::poll(&fd, 1, 0) == 1) process_exited(process);
  }
  settle(report_of, start, /*now_or_never=*/true);
}

// A traced process forked: its child is traced too, with the same allocator modules (its
// memory is a copy of the parent's). Its probes are attached now, so what it allocates from
// here on is seen; the blocks it inherited are the parent's (frees of them are unmatched).
void Lifecycle::handle_fork(const tracer::AllocTracer::Fork& fork) {
  const TracedProcess* parent = targets_.live(fork.parent);
  if (!parent) {
    // Not a traced process's child (or a parent memtrail already let go of: the session
    // drains fork events before it looks at exits, so a traced parent is still live here).
    // The kernel followed the child from its fork and may have recorded its blocks and
    // stacks already: they leave the maps with the next purge, or they would stay there for
    // the whole run, under a pid no report knows.
    tracer_.unfollow(fork.child);
    purge_later_[fork.child] = monotonic_now_ns();
    ++children_missed_;
    if (config_.verbose()) {
      std::cerr << "memtrail: pid " << fork.child << ", forked by pid " << fork.parent
                << ", is not traced: its parent is no longer traced\n";
    }
    return;
  }
  if (targets_.live(fork.child)) return;  // already traced (host-wide, seen at its exec)
  if (host_wide_) host_wide_->forget_pending(fork.child);  // traced from now on as the child
  TracedProcess child;
  child.allocators = parent->allocators;
  child.info = inspect::read_target_info(fork.child);
  child.info.parent_pid = fork.parent;
  describe_allocators(child.allocators, child.info);
  try {
    // Host-wide, the probes are on the files already, and the kernel follows the child.
    if (!config_.host_wide()) {
      for (const auto& module : child.allocators.modules) tracer_.attach(fork.child, module);
    }
    child.pidfd = open_pidfd(fork.child);
  } catch (const Error& error) {
    // Most often a child that exited at once (a shell's command): counted, and said once in
    // the report; one line each only with -v, as a busy host forks hundreds a second.
    ++children_missed_;
    if (config_.verbose()) {
      std::cerr << "memtrail: pid " << fork.child << ", forked by pid " << fork.parent
                << ", is not traced: " << error.what() << "\n";
    }
    // Its probes may have recorded blocks already: those from before now are its own.
    purge_later_[fork.child] = monotonic_now_ns();
    return;
  }
  TracedProcess& traced = targets_.add(std::move(child));
  code_maps_.refresh(traced);
  if (config_.host_wide() && !config_.verbose()) return;  // many a second host-wide: -v says each
  std::cerr << "memtrail: tracing pid " << fork.child << " (" << traced.info.comm
            << "), forked by pid " << fork.parent << "\n";
}

// A traced process executed a new program: the old image's blocks, regions and stacks mean
// nothing now (its memory is gone) and must not be reported as leaks of the new one.
// A launched command's program (or its child's) is held at its first instruction: its
// allocator probes go in and its code is read (stack walker, CPython runtime) before it runs, so
// that a wrapper script executing the real program loses none of its allocations.
void Lifecycle::handle_exec(const tracer::AllocTracer::Exec& exec) {
  // Stopped by the kernel at the exec: continued on every way out of here.
  HeldExec held(tracer_, exec.held ? exec.pid : 0, exec.at_ns);
  auto began = Clock::now();
  TracedProcess* process = targets_.live(exec.pid);
  // Host-wide, a program started since memtrail attached: traced if it is wanted.
  if (!process) {
    if (host_wide_) host_wide_->program_started(exec.pid);
    return;
  }
  if (exec.hold_failed) {
    std::cerr << "memtrail: warning: pid " << exec.pid << " executed a program that could not "
              << "be held at its first instruction (the kernel refused the stop signal, or "
              << "too many processes were held at once): its allocations before its probes "
              << "are in are not seen\n";
  }
  bool starting = process->launched && process->execs == 0;  // the command starting
  if (exec.held) killed_here_in_tests(starting ? "start" : "exec");
  ++process->execs;
  process->python_end_read = false;  // a new program: its own end is to be read
  tracer_.program_executed(exec.pid);
  std::string probed;
  if (exec.held && !starting) {
    try {
      probed = code_maps_.probe_executed_program(*process);
    } catch (const Error& error) {
      probed =
          std::string("its allocators bound once its libraries are mapped (") + error.what() + ")";
    }
  }
  if (starting) {
    if (exec.held) code_maps_.refresh(*process);
  } else {
    process->mappings.clear();  // the new image's code: read again now
    process->python_key = "(exec)";
    code_maps_.forget_python_code(exec.pid);
    code_maps_.refresh(*process);
    stale_execs_.push_back(exec);  // its old blocks: freed with others (settle)
  }
  if (exec.held) code_maps_.hold_at_entry_for_python(*process);
  if (exec.held && config_.verbose()) {
    std::cerr << "memtrail: pid " << exec.pid << " held at the first instruction of "
              << (probed.empty() ? process->info.exe : probed) << " for "
              << std::chrono::duration<double, std::milli>(Clock::now() - began).count()
              << " ms while its code was read" << (probed.empty() ? "" : " and probed") << "\n";
  }
}

void Lifecycle::release_held() {
  tracer_.release_holds();
  auto news = tracer_.drain_region_events();
  for (const auto& exec : news.execs) {
    if (exec.held) {
      HeldExec resume(tracer_, exec.pid, exec.at_ns);
    }
  }
  for (const auto& finalizing : news.python_finalizing) {
    if (finalizing.held) {
      HeldExec resume(tracer_, finalizing.pid, finalizing.at_ns);
    }
  }
  for (const auto& entry : news.program_entries) {
    if (entry.held) {
      HeldExec resume(tracer_, entry.pid, entry.at_ns);
    }
  }
}

Lifecycle::HeldExec::~HeldExec() {
  if (pid_ != 0) tracer_.continue_held(pid_, held_at_ns_);
}

// Keeps what an exited process left outstanding (its sites as they are now), then removes its
// blocks, stacks and counters from the maps: dead processes must not fill them, and a new
// process reusing the PID must not inherit them.
// What the lifecycle left to do since the last call, done together at most every 500 ms
// (now_or_never: at once): the processes that exited get their exit summary (the last one
// to exit is covered by the final report instead) from one report; then their blocks, the
// old blocks of processes that executed a program, and those of children that could not be
// followed leave the table in one pass, which costs a read of the whole table (hundreds of
// MiB at most): a busy host forks, executes and ends dozens of programs a second. Slots are
// chosen by pid and time, so a pid reused meanwhile loses nothing.
void Lifecycle::settle(const ReportOf& report_of, Clock::time_point start, bool now_or_never) {
  if (exits_to_record_.empty() && stale_execs_.empty() && purge_later_.empty()) return;
  auto started = Clock::now();
  if (!now_or_never && started - last_settled_ < std::chrono::milliseconds(500)) return;
  last_settled_ = started;
  // The last target to exit is left to the final report, which follows at once when the
  // session ends with it. Host-wide it does not end: programs keep starting, and an exit left
  // unsettled would keep its blocks and stacks in the maps for the rest of the run.
  bool others_live = targets_.any_live() || config_.host_wide();
  Exited exited;
  if (others_live) {
    for (auto& process : targets_) {
      if (process.info.exited && !process.exit &&
          std::find(exits_to_record_.begin(), exits_to_record_.end(), process.info.pid) !=
              exits_to_record_.end()) {
        exited[process.info.pid] = &process;
      }
    }
  }
  exits_to_record_.clear();
  std::unordered_map<uint32_t, model::ExitSummary> summaries;
  if (!exited.empty()) {
    model::Report now = report_of(exited);
    double after_s = std::chrono::duration<double>(Clock::now() - start).count();
    for (auto& site : now.leaks) {
      auto process = exited.find(site.pid);
      if (process == exited.end()) continue;
      auto& summary = summaries[site.pid];
      summary.outstanding_bytes += site.outstanding_bytes;
      summary.outstanding_allocations += site.outstanding_allocations;
      ++summary.sites;
      process->second->exit_sites.push_back(std::move(site));
    }
    for (auto& site : now.freed_sites) {
      auto process = exited.find(site.pid);
      if (process != exited.end()) process->second->exit_freed_sites.push_back(std::move(site));
    }
    // Counted, not listed: kept with one of them (reports only sum them).
    exited.begin()->second->exit_freed_omitted = now.freed_omitted;
    for (const auto& target : now.targets) {
      auto process = exited.find(target.pid);
      // The purge drops the map's losses: keep them; and the process's mappings go with it.
      if (process == exited.end()) continue;
      process->second->info.losses = target.losses;
      process->second->info.mappings = target.mappings;
    }
    for (auto& [pid, process] : exited) summaries[pid].after_s = after_s;
  }
  auto purge = std::move(purge_later_);
  purge_later_.clear();
  for (const auto& [pid, process] : exited) purge[pid] = process->exited_at_ns;
  auto dropped = tracer_.purge_processes(purge, stale_execs_);
  // Said a line each; beyond kExitsSaidEach in one pass (a shim's helpers, a build's
  // compilers), one line for them all unless -v. Host-wide (many a second), only with -v.
  constexpr size_t kExitsSaidEach = 3;
  bool each = config_.verbose() || (!config_.host_wide() && exited.size() <= kExitsSaidEach);
  uint64_t bytes = 0, allocations = 0;
  std::map<std::string, size_t> names;
  for (auto& [pid, process] : exited) {
    auto& summary = summaries[pid];
    summary.purged_blocks = dropped[pid];
    code_maps_.forget_exited(pid);
    process->exit = summary;
    summarized_.push_back(process);
    bytes += summary.outstanding_bytes;
    allocations += summary.outstanding_allocations;
    ++names[process->info.comm];
    if (!each) continue;
    std::cerr << "memtrail: pid " << pid << " exited with " << summary.outstanding_bytes
              << " bytes outstanding in " << summary.outstanding_allocations << " allocations at "
              << summary.sites << " sites; still tracing the others\n";
  }
  if (!each && !config_.host_wide()) {
    std::cerr << "memtrail: " << exited.size() << " processes exited (";
    const char* separator = "";
    for (const auto& [name, count] : names) {
      std::cerr << separator << name << " " << count;
      separator = ", ";
    }
    std::cerr << ") with " << bytes << " bytes outstanding in " << allocations
              << " allocations; still tracing the others\n";
  }
  // Once a process: a wrapper's chain of execs (env, then the shell, then the program) is
  // dropped in one pass, the count the same for each of them.
  std::unordered_set<uint32_t> said;
  for (const auto& exec : stale_execs_) {
    if ((config_.host_wide() && !config_.verbose()) || !said.insert(exec.pid).second) continue;
    const TracedProcess* process = targets_.live(exec.pid);
    std::cerr << "memtrail: pid " << exec.pid << " executed "
              << (process ? process->info.exe : std::string("a new program")) << ": "
              << dropped[exec.pid] << " blocks of the old program dropped, and its mappings; "
              << "still tracing it through the allocator probes attached before\n";
  }
  stale_execs_.clear();
}

}  // namespace memtrail::session
