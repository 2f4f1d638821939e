// SPDX-License-Identifier: Apache-2.0
// Host-wide tracing (--all): every process that uses a traced allocator, now and started later.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "session/code_maps.h"
#include "session/config.h"
#include "session/probes.h"
#include "session/targets.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// Finds the processes to trace host-wide: those running at start, and programs started since
// (exec) once their allocator is known. The filters (--comm, --cgroup, --exclude-pid) decide
// which are wanted; memtrail itself never is. Processes forked by a traced one are the
// lifecycle's (they are traced as children).
class HostWide {
 public:
  HostWide(const SessionConfig& config, tracer::AllocTracer& tracer, Targets& targets,
           Probes& probes, CodeMaps& code_maps)
      : config_(config),
        tracer_(tracer),
        targets_(targets),
        probes_(probes),
        code_maps_(code_maps) {}
  HostWide(const HostWide&) = delete;
  HostWide& operator=(const HostWide&) = delete;

  // Traces every process now running that uses a traced allocator and passes the filters; the
  // rest come as they start (exec) or are forked by a traced process.
  void start();
  // Process `pid`, not traced, executed a program: traced if wanted, once its allocator is
  // known (looked for at each tick, for up to 2 s).
  void program_started(uint32_t pid);
  // Looks again at the programs started since whose allocator was not known yet, and, when a
  // failed attach may be tried again, at the processes it left untraced.
  void look_at_pending_programs();
  bool has_pending_programs() const {
    return !pending_programs_.empty() || (!blocked_.empty() && probes_.retry_due(Clock::now()));
  }
  // `pid` is traced from now on as a traced process's child: no longer pending.
  void forget_pending(uint32_t pid) { pending_programs_.erase(pid); }

 private:
  bool wanted(uint32_t pid) const;
  bool add(uint32_t pid, bool quiet = false);

  const SessionConfig& config_;
  tracer::AllocTracer& tracer_;
  Targets& targets_;
  Probes& probes_;
  CodeMaps& code_maps_;
  void look_at_blocked();

  std::map<uint32_t, Clock::time_point> pending_programs_;  // pid -> give up at
  // Processes not traced because their allocator's file could not be probed (AttachFailed):
  // looked at again when Probes says an attempt is due.
  std::set<uint32_t> blocked_;
  // Programs traced by their mappings alone (--mmap, no malloc family): said once each.
  std::set<std::string> said_mappings_only_;
};

}  // namespace memtrail::session
