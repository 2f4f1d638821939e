// SPDX-License-Identifier: Apache-2.0
// What a leaks tracing session is asked to do, translated from the command line once.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "aggregator/object_windows.h"
#include "assemble/suppressions.h"
#include "cli/options.h"
#include "inspect/allocator.h"
#include "model/stack_modes.h"
#include "tracer/tracer_config.h"

namespace memtrail::session {

// The clock of the session's schedules (refreshes, settling, ages of reports).
using Clock = std::chrono::steady_clock;

struct SessionConfig {
  // The BPF side: table sizes, sampling, --unwind, the Python layouts, --mmap, forks, --all,
  // -v (tracer.verbose says libbpf's messages and memtrail's timings both).
  tracer::TracerConfig tracer;
  // --max-allocations was not given: tracer.max_outstanding_allocations is sized from the
  // available memory (-v says so).
  bool max_allocations_from_memory = false;

  // What to trace: processes by pid, a command to launch, or (tracer.host_wide) every process
  // using a traced allocator that these filters let in.
  std::vector<uint32_t> pids;
  std::vector<std::string> command;
  std::vector<std::string> comms;
  std::vector<std::string> cgroups;
  std::vector<uint32_t> excluded_pids;

  bool trace_cxx = false;  // probe C++ operators new and delete too
  // Custom allocators as the command line names them (their files: custom_allocators_for).
  std::vector<inspect::CustomAllocator> allocators;

  model::PythonFramesMode python_frames = model::PythonFramesMode::kMixed;
  // CPython objects counted by type by the allocator probes (--python-types without object
  // tracking; with it, the types come from the tracked objects).
  bool python_types = false;
  // CPython objects charged to the stack that created them (--python-objects on).
  bool python_objects = false;
  // When their probes are attached: all the time (exact) or part of each period (on).
  aggregator::DutyCycle python_object_cycle;

  // Reports: the interval behind the growth verdicts, the age below which allocations are left
  // out, the sites a text report shows, and the sites kept on purpose.
  double interval_s = 5;
  double min_age_s = 0;
  uint32_t top = 10;
  assemble::Suppressions suppressions = assemble::Suppressions::builtin();

  bool host_wide() const { return tracer.host_wide; }
  bool verbose() const { return tracer.verbose; }
  // The custom allocators for one process: opened through its root (pid 0: memtrail's own).
  std::vector<inspect::CustomAllocator> custom_allocators_for(uint32_t pid) const;
  // Whether malloc and calloc may be probed at return sites, so their code is worth analysing:
  // not with --no-return-sites, nor with --mmap (which tells malloc's mappings by its entry).
  bool analyse_return_sites() const { return tracer.return_sites && !tracer.trace_regions; }
};

// The session `options` ask for on a host with `available_bytes` of MemAvailable (sizes the
// tables when --max-allocations or --max-stacks are not given). Pure: reads nothing; the
// suppressions are the built-in ones (the command adds the user's file).
SessionConfig session_config(const cli::LeaksOptions& options, uint64_t available_bytes);

}  // namespace memtrail::session
