// SPDX-License-Identifier: Apache-2.0
// What the allocation tracer is asked to load and how large its maps are: plain data, so that
// the session can translate options into it (and its tests check that) without libbpf's headers.
#pragma once

#include <cstdint>
#include <optional>

#include "model/python.h"
#include "model/stack_modes.h"

namespace memtrail::tracer {

// Bytes one unwind row takes in the walker's row map (what --unwind-table-mib buys).
inline constexpr uint32_t kUnwindRowBytes = 8;

struct TracerConfig {
  uint32_t max_outstanding_allocations = 1u << 20;  // the table has two slots for each
  uint32_t max_fallback_sites = 1u << 16;           // sites whose stack could not be stored
  uint32_t max_stacks = 1u << 14;                   // distinct (pid, call stack) pairs: sites
  uint64_t sample_rate = 0;                         // --sample-rate bytes; 0: every allocation
  // --unwind: fp reads no table (and reserves no memory for one); dwarf and auto walk each
  // frame as set_unwind_mappings says.
  model::UnwindMode unwind_mode = model::UnwindMode::kFramePointers;
  uint32_t unwind_table_rows = 1u << 21;  // capacity of the row map (8 bytes a row)
  // Follow anonymous mmap/munmap/mremap and brk of the targets (syscall tracepoints).
  bool trace_regions = false;
  // Trace the processes the targets fork (the fork event comes through the region events).
  bool follow_forks = false;
  // A launched command: each program it (or a child) executes is held at its first
  // instruction until probed (AllocTracer::hold_execs); needs the exec events.
  bool hold_execs = false;
  // --all: allocator probes go on files, for every process, and record only the processes
  // added with follow().
  bool host_wide = false;
  uint32_t region_buffer_bytes = 2u << 20;  // ring buffer of region events: a power of two
  // Walk the Python frames of the CPython processes added with set_python_process(), with
  // this layout (--python-frames other than native).
  std::optional<model::PythonFrameLayout> python_layout;
  // Count CPython objects by type (--python-types), with this layout: programs loaded and the
  // map sized only then.
  std::optional<model::PythonTypeLayout> python_type_layout;
  // Record CPython objects where they are created (attach_python_objects): the program is
  // loaded only then.
  bool python_objects = false;
  // Entries of the ring of objects recorded in an attached window, read at its close: a power
  // of two (aggregator::NewObjectRing).
  uint32_t python_log_entries = 1u << 16;
  bool probe_floor = false;  // benchmarks: programs return at once (cost of the traps alone)
  // malloc and calloc probed at their return sites where proven (one trap a call) rather than
  // at entry and return (two). The command line turns it on by default (--no-return-sites);
  // a config built elsewhere (tests, tools) asks for it.
  bool return_sites = false;
  bool verbose = false;  // libbpf debug output on stderr
};

}  // namespace memtrail::tracer
