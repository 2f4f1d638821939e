// SPDX-License-Identifier: Apache-2.0
// The allocator probes of a session: for one process, or (--all) on files for every process.
#pragma once

#include <cstdint>
#include <set>
#include <tuple>

#include "target/allocator.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// Attaches a module's allocator functions. Host-wide, a function is probed in its file for
// every process, and each (file, offset, role) only once however many processes map it.
class Probes {
 public:
  Probes(tracer::AllocTracer& tracer, bool host_wide, bool verbose)
      : tracer_(tracer), host_wide_(host_wide), verbose_(verbose) {}
  Probes(const Probes&) = delete;
  Probes& operator=(const Probes&) = delete;

  // A module process `pid` maps: probed for every process host-wide, for `pid` only otherwise.
  // Throws memtrail::Error.
  void attach(uint32_t pid, const target::AllocatorModule& module);
  // Probes the module's functions not probed yet for every process. Throws memtrail::Error.
  void attach_everywhere(const target::AllocatorModule& module);

 private:
  tracer::AllocTracer& tracer_;
  bool host_wide_;
  bool verbose_;
  // (device, inode, offset, role) of every function probed for every process.
  std::set<std::tuple<uint64_t, uint64_t, uint64_t, int>> probed_everywhere_;
};

}  // namespace memtrail::session
