// SPDX-License-Identifier: Apache-2.0
// Allocator probes per process, or once per file for every process.
#include "session/probes.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <iostream>

#include "common/error.h"

namespace memtrail::session {

void Probes::attach(uint32_t pid, const inspect::AllocatorModule& module) {
  if (host_wide_) {
    attach_everywhere(module, pid);
  } else {
    tracer_.attach(pid, module);
  }
}

void Probes::attach_everywhere(const inspect::AllocatorModule& module, uint32_t pid) {
  const uint64_t device = module.file.device;
  const uint64_t inode = module.file.inode;
  inspect::AllocatorModule fresh = module;
  fresh.functions.clear();
  std::vector<std::tuple<uint64_t, uint64_t, uint64_t, int>> keys;
  for (const auto& function : module.functions) {
    // How a C++ operator is probed depends on the process (the malloc it binds to): one
    // process's operator new left to malloc's return sites does not spare another's its own
    // probes. Both at once are correct (the return sites find the call nested, and leave it).
    int how = static_cast<int>(function.role) * 4 + static_cast<int>(tracer_.cxx_probing(function));
    auto key = std::make_tuple(device, inode, function.probe_offset, how);
    if (!probed_everywhere_.count(key)) {
      fresh.functions.push_back(function);
      keys.push_back(key);
    }
  }
  if (fresh.functions.empty()) return;
  auto failed = failures_.find({device, inode});
  auto now = Clock::now();
  auto left_untraced = [pid](Failure& failure) {
    if (failure.waiting.insert(pid).second) ++failure.report.processes;
  };
  // Not before the back-off: a busy host discovers programs many times a second.
  if (failed != failures_.end() && !failed->second.report.attached &&
      now < failed->second.retry_at) {
    left_untraced(failed->second);
    throw AttachFailed(failed->second.report.reason);
  }
  try {
    tracer_.attach_everywhere(fresh);
  } catch (const Error& error) {
    // Nothing of this module stays attached (the tracer detaches what it attached): its
    // functions are not probed, and a later attempt tries them all again.
    if (failed == failures_.end()) {
      failed = failures_.emplace(std::make_pair(device, inode), Failure{}).first;
      failed->second.order = failures_.size();
      failed->second.report.path = module.path;
      std::cerr << "memtrail: warning: cannot probe " << module.path
                << " for every process: " << error.what()
                << (error.hint().empty() ? "" : " (" + error.hint() + ")")
                << "; the processes using it are not traced until a later attempt succeeds\n";
    } else {
      failed->second.backoff =
          std::min<std::chrono::seconds>(failed->second.backoff * 2, std::chrono::seconds(60));
    }
    failed->second.report.reason = error.what();
    failed->second.report.attached = false;
    ++failed->second.report.failures;
    failed->second.retry_at = now + failed->second.backoff;
    left_untraced(failed->second);
    throw AttachFailed(error.what(), error.hint());
  }
  probed_everywhere_.insert(keys.begin(), keys.end());
  if (failed != failures_.end() && !failed->second.report.attached) {
    failed->second.report.attached = true;
    failed->second.waiting.clear();  // looked at again by the caller: traced, most of them
    std::cerr << "memtrail: " << module.path << " probed for every process after "
              << failed->second.report.failures << " failed attempts\n";
  }
  if (verbose_) {
    std::cerr << "memtrail: " << fresh.functions.size() << " functions of " << module.path
              << " probed for every process\n";
  }
}

void Probes::forget_waiting(uint32_t pid) {
  for (auto& [file, failure] : failures_) failure.waiting.erase(pid);
}

bool Probes::retry_due(Clock::time_point now) const {
  return std::any_of(failures_.begin(), failures_.end(), [now](const auto& entry) {
    return !entry.second.report.attached && now >= entry.second.retry_at;
  });
}

std::vector<model::AttachFailure> Probes::attach_failures() const {
  std::vector<const Failure*> ordered;
  for (const auto& [file, failure] : failures_) ordered.push_back(&failure);
  std::sort(ordered.begin(), ordered.end(),
            [](const Failure* a, const Failure* b) { return a->order < b->order; });
  std::vector<model::AttachFailure> result;
  for (const Failure* failure : ordered) result.push_back(failure->report);
  return result;
}

}  // namespace memtrail::session
