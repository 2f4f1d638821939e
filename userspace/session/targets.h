// SPDX-License-Identifier: Apache-2.0
// The processes a session traces, indexed by pid, and what memtrail keeps about each.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/unique_fd.h"
#include "inspect/allocator.h"
#include "inspect/proc_maps.h"
#include "model/report.h"

namespace memtrail::session {

// One traced process and what memtrail keeps about it.
struct TracedProcess {
  model::Target info;
  inspect::ProcessAllocators allocators;  // every probed module: malloc's, libc's rest, C++, custom
  std::vector<inspect::Mapping> mappings;  // last seen: kept after exit for symbolization
  UniqueFd pidfd;                          // readable once the process has exited
  bool launched = false;
  // Exited while others were still traced: what it left, and its sites as they were then
  // (its blocks were purged from the maps).
  std::optional<model::ExitSummary> exit;
  std::vector<model::LeakSite> exit_sites;
  // Its sites that had freed everything at the exit, and those its exit report only counted.
  std::vector<model::LeakSite> exit_freed_sites;
  model::FreedSitesOmitted exit_freed_omitted;
  uint32_t execs =
      0;  // new programs it executed while traced (a launched command's first is its start)
  // The code files it mapped when its allocators were last resolved: a new one (dlopen) may
  // bring an allocator, or functions of one, that need probes.
  std::set<std::string> resolved_code_files;
  // Since when it has mapped code files the link map does not list (a dlopen under way): looked
  // at again until listed, for a while (CodeMaps::rebind_allocators).
  std::optional<std::chrono::steady_clock::time_point> unlisted_since;
  // The interpreter's mappings when it was last looked for (CPython): unchanged, not again.
  std::string python_key;
  std::string python_types_module;    // the interpreter file --python-types probes, once
  std::string python_objects_module;  // the interpreter file whose creation sites are probed
  std::string python_end_module;      // the interpreter file whose end is probed (its exit)
  uint64_t exited_at_ns = 0;          // CLOCK_MONOTONIC when memtrail saw it exit
  // Its Python objects were read as its program ended (at Py_FinalizeEx or _exit): the exit
  // that follows finalizing passes _exit too, and must not read what finalizing freed.
  bool python_end_read = false;
  // Its exit summary is kept and what memtrail held for it was let go (Session::retire): its
  // private memory as it was then stays with it.
  bool retired = false;
  std::optional<model::ProcessMemory> memory_at_exit;
};

// Every process traced so far, live or exited, in the order they were added (reports list
// them so). At most one live process per pid is found by live(); a pid reused after an exit is
// a new process.
class Targets {
 public:
  Targets() = default;
  Targets(const Targets&) = delete;
  Targets& operator=(const Targets&) = delete;

  // Adds a process that has not exited. The reference stays valid while Targets lives (adding
  // others does not move it).
  TracedProcess& add(TracedProcess process);
  // The traced process `pid` still running, or nullptr.
  TracedProcess* live(uint32_t pid);
  const TracedProcess* live(uint32_t pid) const;
  // Records that `process` exited: live() no longer finds it.
  void mark_exited(TracedProcess& process);
  // Forgets `process`, which has exited: references to the others stay valid.
  void remove(const TracedProcess& process);
  bool any_live() const { return !live_.empty(); }

  size_t size() const { return processes_.size(); }
  auto begin() { return processes_.begin(); }
  auto end() { return processes_.end(); }
  auto begin() const { return processes_.begin(); }
  auto end() const { return processes_.end(); }
  TracedProcess& back() { return processes_.back(); }

 private:
  // A list: adding or removing one does not move the others.
  std::list<TracedProcess> processes_;
  // The live processes by pid (the first added, if a pid was given twice).
  std::unordered_map<uint32_t, TracedProcess*> live_;
};

// What the report says about a process's allocators, from what was resolved for it.
void describe_allocators(const inspect::ProcessAllocators& allocators, model::Target& info);

// The line that says a process without the malloc family (Go's runtime maps its memory
// itself) is traced by its anonymous mappings alone under --mmap, and what is not traced.
// `who`: "pid N (comm)" or "the command".
std::string mappings_only_line(const std::string& who);

// A pidfd for `pid`: readable once it exits. Throws memtrail::Error (the process exited while
// memtrail was attaching, for ESRCH).
UniqueFd open_pidfd(uint32_t pid);

// The mappings of a process about to be traced. Throws memtrail::Error when there is none: no
// such process, a zombie, a kernel thread, or /proc unreadable.
std::vector<inspect::Mapping> live_mappings(uint32_t pid);

}  // namespace memtrail::session
