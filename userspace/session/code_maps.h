// SPDX-License-Identifier: Apache-2.0
// Where each traced process maps code, and what follows from it: symbols, unwind tables,
// allocators loaded since attach, the CPython runtime it runs.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <unordered_map>

#include "assemble/report_builder.h"
#include "model/report.h"
#include "python/cpython.h"
#include "python/objects.h"
#include "session/config.h"
#include "session/object_windows.h"
#include "session/probes.h"
#include "session/targets.h"
#include "symbolizer/symbolizer.h"
#include "tracer/alloc_tracer.h"
#include "unwind/module_tables.h"

namespace memtrail::session {

// Keeps what memtrail knows of the traced processes' code in step with their mappings: the
// symbolizer's and the stack walker's view of each, probes on allocators a process loads after
// attach (dlopen, or a launched command's libraries), and the Python frame walker pointed at
// the CPython runtime a process runs, whose code objects are named while it lives.
class CodeMaps {
 public:
  // --unwind dwarf/auto: the unwind tables are stored into `tracer`.
  CodeMaps(const SessionConfig& config, tracer::AllocTracer& tracer, Probes& probes);
  ~CodeMaps();
  CodeMaps(const CodeMaps&) = delete;
  CodeMaps& operator=(const CodeMaps&) = delete;

  // Reads the process's mappings again; when they changed, passes them on (symbolizer, stack
  // walker, allocators, CPython). Nothing for a process that has exited.
  void refresh(TracedProcess& process);
  // Refreshes every target when it is due at `now` (the run started at `start`): every
  // 100 ms in the first 2 s, then every second, and sooner when the stack walker met code
  // outside every mapping it knows.
  void refresh_when_due(Targets& targets, Clock::time_point now, Clock::time_point start);
  // Names the Python frames of stacks new since the last look, while their process lives.
  void name_python_frames();

  // A process held at the first instruction of a program it executed (exec): resolves that
  // program's allocators before it runs (its loader's list, in the process's environment) and
  // probes the functions not probed yet. Returns what was done, for -v; throws memtrail::Error
  // when the program cannot be looked at so (then its allocators are bound once its libraries
  // are mapped, as after any exec).
  std::string probe_executed_program(TracedProcess& process);
  // A process held at the first instruction of a program (exec), after refresh(): when the
  // program is a Python interpreter whose runtime is in a shared library the dynamic linker has
  // not mapped yet (pyenv's python3.11 and its libpython3.11.so), holds it again at its entry
  // point (AllocTracer::attach_program_entry), where the library is mapped and no Python code
  // has run: refresh() then finds the interpreter and probes it before its first line. Returns
  // whether it will be held there.
  bool hold_at_entry_for_python(TracedProcess& process);
  // Process `pid` executed a program: the code objects read from the old one mean nothing.
  void forget_python_code(uint32_t pid) { python_reader_.forget(pid); }
  // Process `pid` has exited (and its maps were purged).
  void forget_exited(uint32_t pid);
  // Process `pid` has exited and its exit summary is symbolized: how it mapped its code goes.
  void forget_retired(uint32_t pid) {
    symbolizer_.forget_process(pid);
    object_windows_.forget(pid);
  }

  // The stack walker reads unwind tables (--unwind dwarf/auto): mappings matter more often.
  bool walks_unwind_tables() const { return unwind_tables_.has_value(); }
  model::UnwindSummary unwind_summary() const;
  symbolizer::Symbolizer& symbolizer() { return symbolizer_; }
  const assemble::PythonNaming& python_naming() const { return python_naming_; }
  const python::ObjectLiveness& python_objects() const { return python_objects_; }
  // The object probes' duty cycle (--python-objects on) and the share of objects they saw.
  ObjectWindows& object_windows() { return object_windows_; }
  const ObjectWindows& object_windows() const { return object_windows_; }

 private:
  void update_python(TracedProcess& process);
  void attach_python_types(TracedProcess& process, const python::Interpreter& interpreter);
  std::string attach_python_objects(TracedProcess& process, const python::Interpreter& interpreter);
  void attach_python_end(TracedProcess& process, const python::Interpreter& interpreter);
  void rebind_allocators(TracedProcess& process);
  // Probes the functions of `fresh` that `process` has no probe on yet, and makes `fresh` its
  // allocators. `how` and `when` say how the modules came, in the line saying what was probed
  // ("pid N HOW jemalloc PATH WHEN: probing ..."). Returns the functions probed.
  size_t probe_new_functions(TracedProcess& process, inspect::ProcessAllocators fresh,
                             const std::string& how, const std::string& when);
  void update_unwind_mappings(const TracedProcess& process);

  const SessionConfig& config_;
  tracer::AllocTracer& tracer_;
  Probes& probes_;
  symbolizer::Symbolizer symbolizer_;
  std::optional<unwind::ModuleTables> unwind_tables_;  // --unwind dwarf/auto: stores into tracer_
  python::CodeReader python_reader_;
  assemble::PythonNaming python_naming_;  // its reader: python_reader_
  python::ObjectLiveness python_objects_{python_naming_.interpreters};  // the tracer's judge
  ObjectWindows object_windows_;
  uint32_t python_stacks_seen_ = 0;         // tracer_.stacks_created() at the last look
  std::set<uint32_t> python_stacks_named_;  // stacks whose Python frames were read
  uint64_t unknown_code_seen_ = 0;  // tracer_.unknown_code_frames() at the last full refresh
  Clock::time_point next_full_refresh_{};
  Clock::time_point last_full_refresh_{};
};

}  // namespace memtrail::session
