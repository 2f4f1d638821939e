// SPDX-License-Identifier: Apache-2.0
// Host-wide discovery: the processes running at start, and the programs started since.
#include "session/host_wide.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <iostream>
#include <string>

#include "common/error.h"
#include "inspect/allocator.h"
#include "inspect/load_order.h"
#include "inspect/proc_maps.h"
#include "inspect/process.h"

namespace memtrail::session {
namespace {

void raise_open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);  // best effort: fewer processes traced otherwise
  }
}

}  // namespace

void HostWide::start() {
  raise_open_file_limit();  // a pidfd per traced process
  uint32_t skipped = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    uint32_t pid = static_cast<uint32_t>(std::stoul(name));
    if (!add(pid)) ++skipped;
  }
  skipped -= static_cast<uint32_t>(blocked_.size());
  std::cerr << "memtrail: tracing " << targets_.size()
            << " processes host-wide (--all), and those started from now on; " << skipped
            << " others have no traced allocator, are kernel threads or are left out by the "
            << "filters";
  if (!blocked_.empty()) {
    std::cerr << "; " << blocked_.size()
              << " wait for their allocator's probes (the attach failed, see above)";
  }
  std::cerr << "\n";
  std::cerr.flush();
}

// Right after exec only the executable and the dynamic linker are mapped: its allocator is
// looked up again at each tick until its libraries are loaded (for up to 2 s). Meanwhile it
// is already followed in the kernel, so the probes already on its libraries (libc's, nearly
// always) record its allocations from the start.
void HostWide::program_started(uint32_t pid) {
  if (!wanted(pid)) return;
  tracer_.follow(pid);
  pending_programs_[pid] = Clock::now() + std::chrono::seconds(2);
  look_at_pending_programs();
}

void HostWide::look_at_pending_programs() {
  auto now = Clock::now();
  for (auto it = pending_programs_.begin(); it != pending_programs_.end();) {
    auto [pid, deadline] = *it;
    if (targets_.live(pid)) {  // traced meanwhile (a traced process's child)
      it = pending_programs_.erase(it);
      continue;
    }
    bool added = add(pid, /*quiet=*/now < deadline);
    if (added && config_.verbose()) {
      std::cerr << "memtrail: tracing pid " << pid << " (" << targets_.back().info.comm
                << "), started since\n";
    }
    if (added || now >= deadline || blocked_.count(pid)) {
      if (!added) tracer_.unfollow(pid);  // no traced allocator: stop following it
      it = pending_programs_.erase(it);
    } else {
      ++it;
    }
  }
  if (!blocked_.empty() && probes_.retry_due(now)) look_at_blocked();
}

// A failed attach may succeed now (the other tool is gone): the processes it left untraced
// are tried again, the first one attempting the attach, the others then traced or failing at
// once. Those that exited meanwhile are dropped.
void HostWide::look_at_blocked() {
  auto blocked = std::move(blocked_);
  blocked_.clear();
  for (uint32_t pid : blocked) {
    if (targets_.live(pid) || inspect::process_state(pid) != inspect::ProcessState::kRunning) {
      probes_.forget_waiting(pid);
      continue;
    }
    if (add(pid, /*quiet=*/true)) {
      probes_.forget_waiting(pid);
      if (config_.verbose()) {
        std::cerr << "memtrail: tracing pid " << pid << " (" << targets_.back().info.comm
                  << "), its allocator probed at last\n";
      }
    } else if (!blocked_.count(pid)) {
      probes_.forget_waiting(pid);  // no longer wanted, or failed for another reason
    }
  }
}

// Whether --comm, --cgroup and --exclude-pid let `pid` in (never memtrail itself).
bool HostWide::wanted(uint32_t pid) const {
  if (pid == static_cast<uint32_t>(::getpid())) return false;
  const auto& excluded = config_.excluded_pids;
  if (std::find(excluded.begin(), excluded.end(), pid) != excluded.end()) return false;
  if (!config_.comms.empty()) {
    std::string comm = inspect::read_target_info(pid).comm;
    if (std::find(config_.comms.begin(), config_.comms.end(), comm) == config_.comms.end()) {
      return false;
    }
  }
  if (!config_.cgroups.empty()) {
    auto paths = inspect::process_cgroups(pid);
    bool inside = std::any_of(paths.begin(), paths.end(), [&](const std::string& path) {
      return std::any_of(config_.cgroups.begin(), config_.cgroups.end(),
                         [&](const std::string& wanted_cgroup) {
                           return inspect::cgroup_within(path, wanted_cgroup);
                         });
    });
    if (!inside) return false;
  }
  return true;
}

// Traces one more process host-wide; false when it is not wanted, has no traced allocator,
// or is gone. Its allocator's functions are probed in their files, for every process, once.
bool HostWide::add(uint32_t pid, bool quiet) {
  if (!wanted(pid)) return false;
  if (inspect::process_state(pid) != inspect::ProcessState::kRunning) return false;
  auto mappings = inspect::read_proc_maps(pid);
  if (!mappings || mappings->empty()) return false;  // a kernel thread, or exiting
  TracedProcess process;
  bool mappings_only = false;
  try {
    auto order = inspect::process_load_order(pid, *mappings);
    try {
      process.allocators = inspect::resolve_allocators(pid, order, config_.trace_cxx,
                                                       config_.custom_allocators_for(pid),
                                                       config_.analyse_return_sites());
    } catch (const inspect::NoAllocatorFound&) {
      // No malloc family (Go's runtime maps its memory itself): with --mmap it is traced by
      // its anonymous mappings, as with -p. A dynamically linked program just started may not
      // have mapped its libraries yet: it is looked at again until its deadline first.
      if (!config_.tracer.trace_regions || (quiet && !order.static_executable)) throw;
      process.allocators = {};
      process.allocators.order_source = order.source;
      mappings_only = true;
    }
    if (process.allocators.modules.empty() && !mappings_only) return false;
    for (const auto& module : process.allocators.modules) {
      probes_.attach_everywhere(module, pid);
    }
    tracer_.follow(pid);
    process.pidfd = open_pidfd(pid);
  } catch (const AttachFailed& error) {
    // Said once per file by Probes, counted in the report; tried again later.
    blocked_.insert(pid);
    if (config_.verbose() && !quiet) {
      std::cerr << "memtrail: pid " << pid << " not traced for now: " << error.what() << "\n";
    }
    return false;
  } catch (const Error& error) {
    if (config_.verbose() && !quiet) {
      std::cerr << "memtrail: pid " << pid << " not traced: " << error.what() << "\n";
    }
    return false;
  }
  process.info = inspect::read_target_info(pid);
  describe_allocators(process.allocators, process.info);
  // Said once per program: a host may start the same one all day.
  if (mappings_only && said_mappings_only_.insert(process.info.exe).second) {
    std::cerr << mappings_only_line("pid " + std::to_string(pid) + " (" + process.info.comm + ")");
  }
  code_maps_.refresh(targets_.add(std::move(process)));
  return true;
}

}  // namespace memtrail::session
