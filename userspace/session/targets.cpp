// SPDX-License-Identifier: Apache-2.0
// The traced processes by pid, and the facts about a process read when it is added.
#include "session/targets.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.h"
#include "target/process.h"

namespace memtrail::session {

TracedProcess& Targets::add(TracedProcess process) {
  TracedProcess& added = processes_.emplace_back(std::move(process));
  if (!added.info.exited) live_.emplace(added.info.pid, &added);
  return added;
}

TracedProcess* Targets::live(uint32_t pid) {
  auto found = live_.find(pid);
  return found == live_.end() ? nullptr : found->second;
}

const TracedProcess* Targets::live(uint32_t pid) const {
  auto found = live_.find(pid);
  return found == live_.end() ? nullptr : found->second;
}

void Targets::mark_exited(TracedProcess& process) {
  process.info.exited = true;
  auto found = live_.find(process.info.pid);
  if (found == live_.end() || found->second != &process) return;
  live_.erase(found);
  // The same pid given twice (-p N -p N): the other is found from now on.
  for (auto& other : processes_) {
    if (other.info.pid == process.info.pid && !other.info.exited) {
      live_.emplace(other.info.pid, &other);
      break;
    }
  }
}

void Targets::remove(const TracedProcess& process) {
  auto found = live_.find(process.info.pid);
  if (found != live_.end() && found->second == &process) live_.erase(found);
  processes_.remove_if([&](const TracedProcess& each) { return &each == &process; });
}

void describe_allocators(const target::ProcessAllocators& allocators, model::Target& info) {
  const target::AllocatorModule* primary = allocators.primary();
  info.allocator_module = primary ? primary->path : "";
  info.allocator = primary ? primary->name : "";
  info.allocators.clear();
  for (const auto& module : allocators.modules) {
    model::TracedAllocator traced{module.name, module.path, {}, module.note};
    for (const auto& function : module.functions) traced.functions.push_back(function.name);
    info.allocators.push_back(std::move(traced));
  }
  info.untraced_allocators.clear();
  for (const auto& untraced : allocators.untraced) {
    info.untraced_allocators.push_back(
        {untraced.name, untraced.path, untraced.reason, untraced.expected});
  }
}

UniqueFd open_pidfd(uint32_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    int error_number = errno;
    if (error_number == ESRCH) {
      throw Error("process " + std::to_string(pid) + " exited while memtrail was attaching",
                  "trace a process that keeps running");
    }
    throw Error(errno_message("pidfd_open " + std::to_string(pid), error_number));
  }
  return UniqueFd(fd);
}

std::vector<target::Mapping> live_mappings(uint32_t pid) {
  auto state = target::process_state(pid);
  if (state == target::ProcessState::kMissing) {
    throw Error("no process with pid " + std::to_string(pid),
                "check the PID (ps -p " + std::to_string(pid) + ")");
  }
  if (state == target::ProcessState::kZombie) {
    throw Error("process " + std::to_string(pid) + " has exited (it is a zombie)",
                "trace a process that is still running");
  }
  auto mappings = target::read_proc_maps(pid);
  if (!mappings) {
    int error_number = errno;
    throw Error(errno_message("read /proc/" + std::to_string(pid) + "/maps", error_number),
                hint_for_errno(error_number));
  }
  if (mappings->empty()) {
    throw Error("process " + std::to_string(pid) +
                    " has no user address space (a kernel thread, or it is exiting)",
                "trace a user-space process");
  }
  return *mappings;
}

}  // namespace memtrail::session
