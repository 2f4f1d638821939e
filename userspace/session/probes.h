// SPDX-License-Identifier: Apache-2.0
// The allocator probes of a session: for one process, or (--all) on files for every process.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/error.h"
#include "inspect/allocator.h"
#include "model/report.h"
#include "session/config.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// An allocator's file could not be probed for every process (another tool holds a probe on
// it, most often): the process that maps it is not traced for now.
class AttachFailed : public Error {
 public:
  using Error::Error;
};

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
  void attach(uint32_t pid, const inspect::AllocatorModule& module);
  // Probes the module's functions not probed yet for every process. Throws memtrail::Error.
  // A function counts as probed only once its attach succeeded. A file whose attach failed
  // (another tool holds a probe there, most often) is tried again after a back-off (1 s,
  // doubling up to a minute); until then each call fails at once with the last reason. The
  // first failure on a file is said on stderr; each is counted (attach_failures()), with the
  // processes it leaves untraced (`pid`, once each). Throws AttachFailed for those, or
  // memtrail::Error.
  void attach_everywhere(const inspect::AllocatorModule& module, uint32_t pid = 0);
  // `pid` is gone, or traced: no longer counted as waiting for a file's probes.
  void forget_waiting(uint32_t pid);
  // Some file whose attach failed may be tried again now: the processes it left untraced
  // should be looked at again.
  bool retry_due(Clock::time_point now) const;
  // Every file whose attach failed over the run, in the order they first failed.
  std::vector<model::AttachFailure> attach_failures() const;

 private:
  struct Failure {
    model::AttachFailure report;
    Clock::time_point retry_at{};
    std::chrono::seconds backoff{1};
    size_t order = 0;
    std::set<uint32_t> waiting;  // processes left untraced meanwhile (live ones)
  };

  tracer::AllocTracer& tracer_;
  bool host_wide_;
  bool verbose_;
  // (device, inode, offset, role) of every function probed for every process.
  std::set<std::tuple<uint64_t, uint64_t, uint64_t, int>> probed_everywhere_;
  std::map<std::pair<uint64_t, uint64_t>, Failure> failures_;  // by (device, inode)
};

}  // namespace memtrail::session
