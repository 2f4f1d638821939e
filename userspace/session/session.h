// SPDX-License-Identifier: Apache-2.0
// A leaks tracing session: attach to the targets, follow them, and report on demand.
#pragma once

#include <poll.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "assemble/report_builder.h"
#include "inspect/launch.h"
#include "inspect/process.h"
#include "model/report.h"
#include "session/code_maps.h"
#include "session/config.h"
#include "session/host_wide.h"
#include "session/lifecycle.h"
#include "session/measurement.h"
#include "session/probes.h"
#include "session/targets.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// One tracing session, as `memtrail leaks` runs it: the BPF programs loaded for it, its
// targets attached, followed through fork, exec and exit, and reports taken when the caller
// asks. The caller owns the schedule (how long, when to report), signals and output; the
// session only writes its diagnostics on stderr. Errors are thrown as memtrail::Error.
//
//   Session session(config);   // loads the BPF programs
//   session.start();           // attaches
//   while (...) { session.housekeep(now); ...; session.wait(until, fd); }
//   session.stop();
//   auto report = session.take_report(/*final=*/true, sites);
class Session {
 public:
  // Loads (and verifies) the BPF programs: without BPF permission nothing else matters, and
  // the error should say so rather than fail on a target's /proc files.
  explicit Session(SessionConfig config);
  ~Session();  // continues an exec still held (never left stopped)
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Finds the targets and attaches to them: the processes given, the command (launched at a
  // gate, let run once its probes are in) or host-wide every process wanted. The run's clock
  // starts when they are traced.
  void start();
  Clock::time_point started_at() const { return start_; }

  // Does what is due at `now`: the lifecycle settled (exit summaries, purges), and at each
  // tick (next_housekeeping()) mappings re-read, forks and execs followed, programs started
  // host-wide looked at, Python frames named.
  void housekeep(Clock::time_point now);
  Clock::time_point next_housekeeping() const {
    return std::min(next_housekeeping_, next_object_switch_);
  }

  // Waits until `until` for the session's events (a fork to follow, a target exiting) or for
  // `wake_fd` (the caller's, e.g. its signalfd; -1: none) to become readable, and handles the
  // session's. Returns true when `wake_fd` is readable (it is not read).
  bool wait(Clock::time_point until, int wake_fd = -1);
  // The same for a caller that polls several sessions at once: the descriptors to poll,
  // appended to `fds`, and, after poll(), the entries appended, with their results.
  void add_poll_fds(std::vector<pollfd>& fds);
  void handle_polled(std::span<const pollfd> polled);
  // Every target has exited (never host-wide, where programs keep starting).
  bool finished() const;

  // Reads the maps for the histories behind the verdicts, without a report.
  void measure();
  // Reads the maps and builds a report with `sites` sites symbolized (the rest are counted).
  model::Report take_report(bool final, size_t sites);

  // Stops following: last forks, execs and exits handled, mappings read again, so that the
  // final report (take_report(true, ...)) sees the processes as they ended; then the probes
  // stop counting, so that the final report's counts are exact.
  void stop();
  // Ends the command the session launched, if any, and still running: after the final report,
  // so that the report sees the program as it was (as a workload ends with `perf record`).
  void end_launched_command();

 private:
  void prepare_targets();
  inspect::ProcessAllocators allocators_or_mappings_only(uint32_t pid,
                                                         const inspect::LoadOrder& order);
  void warn_unmapped_custom(uint32_t pid, const std::vector<inspect::Mapping>& mappings) const;
  void attach_all();
  void await_command_start();
  // `only`: the report is for these processes (they exited): the others' sites are left out,
  // and so is their symbolization.
  model::Report take_report(bool final, size_t sites, const Lifecycle::Exited* only);
  assemble::ReportContext context(bool final, const Lifecycle::Exited* only) const;
  Lifecycle::ReportOf report_of();
  void retire_exited();
  void fold_freed_sites(const TracedProcess& process);
  void add_run_facts(model::Report& report, const model::Snapshot& snapshot) const;
  void say_state(const model::Snapshot& snapshot) const;

  SessionConfig config_;
  // The command's #! chain, resolved (and every PID checked) before the BPF programs load,
  // which takes seconds: a mistyped PID or script is one line at once.
  std::optional<inspect::LaunchChain> launch_;
  tracer::AllocTracer tracer_;
  // After tracer_: destroyed first, so an unreleased child is killed before the probes go.
  std::optional<inspect::GatedChild> child_;
  Targets targets_;
  Probes probes_;
  CodeMaps code_maps_;
  std::unique_ptr<HostWide> host_wide_;  // --all
  Lifecycle lifecycle_;
  Measurement measurement_;
  Clock::time_point start_{};
  int64_t start_unix_ms_ = 0;
  Clock::time_point next_housekeeping_{};
  Clock::time_point next_object_switch_ = Clock::time_point::max();  // --python-objects on
  // What add_poll_fds() appended after the fork events' descriptor (if any): whose pidfds.
  bool polled_region_events_ = false;
  std::vector<TracedProcess*> polled_;
  // Exited processes whose summary is kept, oldest first (at most kMaxExitSummaries), and
  // those folded into counts.
  std::deque<const TracedProcess*> kept_exits_;
  model::FoldedExits folded_exits_;
  // Freed sites of exited processes no longer kept: counted.
  model::FreedSitesOmitted freed_sites_folded_;
};

// Exit summaries a session keeps; older ones are folded into a count.
inline constexpr size_t kMaxExitSummaries = 100;

}  // namespace memtrail::session
