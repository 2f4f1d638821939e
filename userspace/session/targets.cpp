// SPDX-License-Identifier: Apache-2.0
// The traced processes by pid, and the facts about a process read when it is added.
#include "session/targets.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

#include "common/error.h"
#include "inspect/process.h"

namespace memtrail::session {
namespace {

// The value of "KEY:\tVALUE" in /proc/PID/status ("self" for memtrail), or empty.
std::string status_field(const std::string& pid, const std::string& key) {
  std::ifstream status("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      size_t value = line.find_first_not_of(" \t", key.size() + 1);
      return value == std::string::npos ? "" : line.substr(value);
    }
  }
  return "";
}

// The process a thread belongs to, when `pid` is a thread other than its group's leader.
std::optional<uint32_t> process_of_thread(uint32_t pid) {
  std::string tgid = status_field(std::to_string(pid), "Tgid");
  if (tgid.empty()) return std::nullopt;
  auto group = static_cast<uint32_t>(std::strtoul(tgid.c_str(), nullptr, 10));
  if (group == 0 || group == pid) return std::nullopt;
  return group;
}

[[noreturn]] void refuse_thread(uint32_t pid, uint32_t process) {
  throw Error(std::to_string(pid) + " is a thread of process " + std::to_string(process) +
              ", not a process; trace " + std::to_string(process));
}

// Why the kernel refuses root a process's /proc files (a ptrace access check), from what
// memtrail can see; as another user, the usual hint.
std::string access_denied_hint(uint32_t pid) {
  if (::geteuid() != 0) return hint_for_errno(EPERM);
  std::string effective = status_field("self", "CapEff");
  if (!effective.empty() &&
      !((std::strtoull(effective.c_str(), nullptr, 16) >> CAP_SYS_PTRACE) & 1)) {
    return "memtrail runs as root without CAP_SYS_PTRACE (a container runtime drops it): "
           "grant it that capability";
  }
  std::ifstream yama("/proc/sys/kernel/yama/ptrace_scope");
  int scope = 0;
  if (yama >> scope && scope >= 3) {
    return "kernel.yama.ptrace_scope is 3: no process may inspect another until a reboot";
  }
  return "memtrail runs as root, yet the kernel refuses it access to process " +
         std::to_string(pid) +
         ": it belongs to a user namespace memtrail's is not an ancestor of, or a security "
         "module (AppArmor, SELinux, Landlock) or a sandbox protects it";
}

}  // namespace

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

std::string mappings_only_line(const std::string& who) {
  return "memtrail: " + who +
         " has no malloc family to probe: tracing its anonymous mappings (--mmap) only; objects "
         "of a garbage-collected heap (e.g. Go's) inside them are not traced\n";
}

void describe_allocators(const inspect::ProcessAllocators& allocators, model::Target& info) {
  const inspect::AllocatorModule* primary = allocators.primary();
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
    if (auto process = process_of_thread(pid)) refuse_thread(pid, *process);
    throw Error(errno_message("pidfd_open " + std::to_string(pid), error_number));
  }
  return UniqueFd(fd);
}

std::vector<inspect::Mapping> live_mappings(uint32_t pid) {
  auto state = inspect::process_state(pid);
  if (state == inspect::ProcessState::kMissing) {
    throw Error("no process with pid " + std::to_string(pid),
                "check the PID (ps -p " + std::to_string(pid) + ")");
  }
  // /proc/TID answers for a thread too, but a thread is not a process to attach to.
  if (auto process = process_of_thread(pid)) refuse_thread(pid, *process);
  if (state == inspect::ProcessState::kZombie) {
    throw Error("process " + std::to_string(pid) + " has exited (it is a zombie)",
                "trace a process that is still running");
  }
  auto mappings = inspect::read_proc_maps(pid);
  if (!mappings) {
    int error_number = errno;
    throw Error(errno_message("read /proc/" + std::to_string(pid) + "/maps", error_number),
                error_number == EPERM || error_number == EACCES ? access_denied_hint(pid)
                                                                : hint_for_errno(error_number));
  }
  if (mappings->empty()) {
    throw Error("process " + std::to_string(pid) +
                    " has no user address space (a kernel thread, or it is exiting)",
                "trace a user-space process");
  }
  return *mappings;
}

}  // namespace memtrail::session
