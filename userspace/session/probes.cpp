// SPDX-License-Identifier: Apache-2.0
// Allocator probes per process, or once per file for every process.
#include "session/probes.h"

#include <sys/stat.h>

#include <cerrno>
#include <iostream>

#include "common/error.h"

namespace memtrail::session {

void Probes::attach(uint32_t pid, const target::AllocatorModule& module) {
  if (host_wide_) {
    attach_everywhere(module);
  } else {
    tracer_.attach(pid, module);
  }
}

void Probes::attach_everywhere(const target::AllocatorModule& module) {
  target::AllocatorModule fresh = module;
  fresh.functions.clear();
  for (const auto& function : module.functions) {
    auto key = std::make_tuple(module.file.device, module.file.inode, function.probe_offset,
                               static_cast<int>(function.role));
    if (probed_everywhere_.insert(key).second) fresh.functions.push_back(function);
  }
  if (fresh.functions.empty()) return;
  tracer_.attach_everywhere(fresh);
  if (verbose_) {
    std::cerr << "memtrail: " << fresh.functions.size() << " functions of " << module.path
              << " probed for every process\n";
  }
}

}  // namespace memtrail::session
