// SPDX-License-Identifier: Apache-2.0
// Fork, exec and exit of the traced processes, and the purges they call for.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inspect/process.h"
#include "model/report.h"
#include "session/code_maps.h"
#include "session/config.h"
#include "session/host_wide.h"
#include "session/targets.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// Follows what the traced processes do besides allocating: a child forked by a target is
// traced too, a program executed replaces the old image (whose blocks are dropped), and a
// process that exits leaves an exit summary (its sites as they were) before its blocks leave
// the maps. The maps are purged in batches (settle), as a pass costs a read of the whole table.
class Lifecycle {
 public:
  using Exited = std::unordered_map<uint32_t, TracedProcess*>;
  // The report of the processes in `only`, as they are now: their sites, and their losses.
  using ReportOf = std::function<model::Report(const Exited& only)>;

  // `host_wide`: set with --all (programs started since are its to trace). `child`: the
  // command the session launched, if any (reaped when it exits).
  Lifecycle(const SessionConfig& config, tracer::AllocTracer& tracer, Targets& targets,
            CodeMaps& code_maps, HostWide* host_wide, std::optional<inspect::GatedChild>& child)
      : config_(config),
        tracer_(tracer),
        targets_(targets),
        code_maps_(code_maps),
        host_wide_(host_wide),
        child_(child) {}
  Lifecycle(const Lifecycle&) = delete;
  Lifecycle& operator=(const Lifecycle&) = delete;

  // Exec and fork of the traced processes, as the kernel reported them since the last call.
  void follow();
  // `process` has exited (its pidfd said so): summarized and purged at the next settle().
  void process_exited(TracedProcess& process);
  // Exits not handled yet (a child that ended just before memtrail stops), settled at once:
  // the final report should say so.
  void notice_exits(const ReportOf& report_of, Clock::time_point start);
  // Does what the lifecycle left to do since the last call, at most every 500 ms (now_or_never:
  // at once). `start`: when tracing started (exit summaries say how long after).
  void settle(const ReportOf& report_of, Clock::time_point start, bool now_or_never = false);

  // Ends the holds (the run ends): no exec is held from now on, and those held but not handled
  // yet run on, unprobed. For a session torn down early; stop() hands the last execs to
  // follow() instead.
  void release_held();

  // Forked children that could not be followed (exited at once, mostly), over the run.
  uint64_t children_missed() const { return children_missed_; }
  // The processes given an exit summary since the last call: the session may let go of
  // what it holds for them. Valid until targets are removed.
  std::vector<TracedProcess*> take_summarized() { return std::exchange(summarized_, {}); }

 private:
  void handle_fork(const tracer::AllocTracer::Fork& fork);
  void handle_exec(const tracer::AllocTracer::Exec& exec);
  void handle_python_finalizing(const tracer::AllocTracer::PythonFinalizing& finalizing);
  void handle_program_entry(const tracer::AllocTracer::Exec& entry);

  // A process the kernel stopped at its exec (hold_execs) or at Py_FinalizeEx at `held_at_ns`:
  // continued (SIGCONT) when this goes, whatever happened meanwhile. pid 0: none.
  class HeldExec {
   public:
    HeldExec(tracer::AllocTracer& tracer, uint32_t pid, uint64_t held_at_ns)
        : tracer_(tracer), pid_(pid), held_at_ns_(held_at_ns) {}
    ~HeldExec();
    HeldExec(const HeldExec&) = delete;
    HeldExec& operator=(const HeldExec&) = delete;

   private:
    tracer::AllocTracer& tracer_;
    uint32_t pid_;
    uint64_t held_at_ns_;
  };

  const SessionConfig& config_;
  tracer::AllocTracer& tracer_;
  Targets& targets_;
  CodeMaps& code_maps_;
  HostWide* host_wide_;
  std::optional<inspect::GatedChild>& child_;
  std::vector<uint32_t> exits_to_record_;               // exited since the last settle()
  std::unordered_map<uint32_t, uint64_t> purge_later_;  // unfollowable children: pid -> by
  std::vector<tracer::AllocTracer::Exec> stale_execs_;  // old images' slots to free
  std::vector<TracedProcess*> summarized_;  // exit summaries given since take_summarized()
  uint64_t children_missed_ = 0;            // how many, over the run (a note in the report)
  Clock::time_point last_settled_{};
};

}  // namespace memtrail::session
