// SPDX-License-Identifier: Apache-2.0
// The command line's leaks options translated into a session's configuration.
#include "session/config.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "inspect/process_file.h"
#include "python/cpython.h"

namespace memtrail::session {

std::vector<inspect::CustomAllocator> SessionConfig::custom_allocators_for(uint32_t pid) const {
  std::vector<inspect::CustomAllocator> custom = allocators;
  for (auto& allocator : custom) {
    allocator.file = inspect::file_in_root(pid, allocator.path);
  }
  return custom;
}

SessionConfig session_config(const cli::LeaksOptions& options, uint64_t available_bytes) {
  SessionConfig config;
  tracer::TracerConfig& tracer = config.tracer;
  config.max_allocations_from_memory = !options.max_allocations;
  tracer.max_outstanding_allocations = options.max_allocations
                                           ? *options.max_allocations
                                           : cli::max_allocations_for(available_bytes);
  tracer.max_stacks =
      options.max_stacks ? *options.max_stacks : cli::max_stacks_for(available_bytes);
  tracer.sample_rate = options.sample_rate;
  tracer.probe_floor = options.probe_floor;
  tracer.return_sites = options.return_sites;
  tracer.trace_regions = options.mmap;
  tracer.follow_forks = !options.no_follow_forks;
  tracer.host_wide = options.all;
  tracer.hold_execs = !options.command.empty();
  tracer.verbose = options.verbose;
  tracer.unwind_mode = options.unwind;
  if (options.python_frames != model::PythonFramesMode::kNative) {
    tracer.python_layout = python::frame_layout();
  }
  // --python-types counts by the allocator probes only without object tracking: with it, the
  // types come from the tracked objects (every type, str and int included, each on the line
  // that created it), and a second probe per object would add cost for less.
  bool allocator_types = options.python_types && !options.python_objects;
  if (allocator_types) tracer.python_type_layout = python::type_layout();
  tracer.python_objects = options.python_objects;
  uint32_t unwind_table_mib =
      options.unwind_table_mib ? options.unwind_table_mib : cli::unwind_table_mib_for(options.all);
  tracer.unwind_table_rows = static_cast<uint32_t>(std::min<uint64_t>(
      uint64_t{unwind_table_mib} * 1024 * 1024 / tracer::kUnwindRowBytes, UINT32_MAX));

  config.pids = options.pids;
  config.command = options.command;
  config.comms = options.comms;
  config.cgroups = options.cgroups;
  config.excluded_pids = options.excluded_pids;
  config.trace_cxx = options.trace_cxx;
  for (const auto& option : options.allocators) {
    inspect::CustomAllocator allocator;
    allocator.path = option.path;
    for (const auto& function : option.functions) {
      allocator.functions.push_back({function.symbol, function.role});
    }
    config.allocators.push_back(std::move(allocator));
  }
  config.python_frames = options.python_frames;
  config.python_types = allocator_types;
  config.python_objects = options.python_objects;
  config.python_object_cycle.attached_share = options.python_objects_duty;
  config.python_object_cycle.period_s = cli::kPythonObjectsPeriodS;
  // A command memtrail launches starts up under it: the interpreter's initialisation and the
  // program's imports allocate in a burst unlike its steady work. A first window open then
  // saw mostly that burst, and the share it measured scaled the start-up's objects 10x (a
  // keeper run for 0.9 s: 9,173 wrapper_descriptors estimated, about 860 made, its kept
  // objects unseen). So the first window opens one period late, and each process is measured
  // from its first window (ObjectWindows::measures_from_now).
  if (!options.command.empty()) {
    config.python_object_cycle.first_window_s = config.python_object_cycle.period_s;
  }
  if (options.python_objects) {
    // The CPUs that can create objects at once: every one configured (some may come online).
    long cpus = ::sysconf(_SC_NPROCESSORS_CONF);
    auto entries =
        aggregator::NewObjectRing::override_from(std::getenv("MEMTRAIL_PYTHON_LOG_ENTRIES"));
    tracer.python_log_entries =
        entries ? *entries
                : aggregator::NewObjectRing::entries_for(config.python_object_cycle,
                                                         static_cast<uint32_t>(std::max(cpus, 1L)));
  }
  config.interval_s = options.interval_s;
  config.min_age_s = options.min_age_s;
  config.top = options.top;
  return config;
}

}  // namespace memtrail::session
