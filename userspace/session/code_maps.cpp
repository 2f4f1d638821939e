// SPDX-License-Identifier: Apache-2.0
// Each traced process's code, followed as its mappings change.
#include "session/code_maps.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "inspect/elf_file.h"
#include "inspect/load_order.h"
#include "inspect/proc_maps.h"
#include "inspect/process.h"

namespace memtrail::session {
namespace {

// What identifies the files that may hold a CPython runtime, where they are mapped.
std::string python_candidates_key(const std::vector<inspect::Mapping>& mappings) {
  std::string key;
  for (const auto& mapping : mappings) {
    if (!mapping.executable || mapping.path.find("python") == std::string::npos) continue;
    key += mapping.path + "@" + std::to_string(mapping.start) + ";";
  }
  return key;
}

// The files a process maps code from.
std::set<std::string> code_files(const std::vector<inspect::Mapping>& mappings) {
  std::set<std::string> files;
  for (const auto& mapping : mappings) {
    if (mapping.executable && mapping.is_file()) files.insert(mapping.path);
  }
  return files;
}

bool same_mappings(const std::vector<inspect::Mapping>& a, const std::vector<inspect::Mapping>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.start == y.start && x.end == y.end && x.inode == y.inode && x.path == y.path;
  });
}

}  // namespace

CodeMaps::CodeMaps(const SessionConfig& config, tracer::AllocTracer& tracer, Probes& probes)
    : config_(config),
      tracer_(tracer),
      probes_(probes),
      object_windows_(tracer, config.python_object_cycle) {
  python_naming_.mode = config.python_frames;
  python_naming_.reader = &python_reader_;
  if (config.tracer.unwind_mode != unwind::UnwindMode::kFramePointers) {
    unwind_tables_.emplace(config.tracer.unwind_mode, tracer_);
  }
  if (config.tracer.python_objects) {
    tracer_.set_python_object_judge(&python_objects_);
    // Detached part of the time, objects are created unseen: one may take a dead one's
    // address, which only its identity can tell.
    bool duty_cycled = !config.python_object_cycle.exact();
    python_objects_.set_read_identities(duty_cycled);
    tracer_.check_python_identities(duty_cycled);
  }
}

CodeMaps::~CodeMaps() { tracer_.set_python_object_judge(nullptr); }

void CodeMaps::refresh(TracedProcess& process) {
  if (process.info.exited) return;
  auto mappings = inspect::read_proc_maps(process.info.pid);
  if (!mappings || mappings->empty()) return;
  if (same_mappings(*mappings, process.mappings)) {
    // A library being dlopen'ed at the last look, mapped but not yet in the link map.
    if (process.unlisted_since) rebind_allocators(process);
    return;
  }
  process.mappings = std::move(*mappings);
  // The launched command's name and image are known only after exec.
  model::Target info = inspect::read_target_info(process.info.pid);
  if (!info.comm.empty()) {
    info.parent_pid = process.info.parent_pid;
    info.python = process.info.python;
    info.python_objects_reason = process.info.python_objects_reason;
    info.python_sizes_reason = process.info.python_sizes_reason;
    describe_allocators(process.allocators, info);
    process.info = std::move(info);
  }
  symbolizer_.set_process_mappings(process.info.pid, process.mappings);
  update_unwind_mappings(process);
  rebind_allocators(process);
  update_python(process);
}

void CodeMaps::refresh_when_due(Targets& targets, Clock::time_point now, Clock::time_point start) {
  // Code the stack walker met outside every known mapping (a library just dlopen'ed)
  // brings the next re-read forward, to at most every 200 ms: a JIT compiler's code is
  // unknown for good, and re-reading a large maps file at every tick would cost the host
  // more than it brings.
  uint64_t unknown_code = unwind_tables_ ? tracer_.unknown_code_frames() : 0;
  if (now >= next_full_refresh_ || (unknown_code != unknown_code_seen_ &&
                                    now - last_full_refresh_ >= std::chrono::milliseconds(200))) {
    for (auto& process : targets) refresh(process);
    unknown_code_seen_ = unknown_code;
    last_full_refresh_ = now;
    // Frequent at first: a launched command maps its libraries right after exec.
    next_full_refresh_ =
        now + (now - start < std::chrono::seconds(2) ? std::chrono::milliseconds(100)
                                                     : std::chrono::milliseconds(1000));
  }
}

// Finds the CPython runtime a process runs (again when its interpreter's mappings changed)
// and points the Python frame walker at it.
void CodeMaps::update_python(TracedProcess& process) {
  uint32_t pid = process.info.pid;
  auto key = python_candidates_key(process.mappings);
  if (key == process.python_key) return;
  process.python_key = key;
  auto interpreter = key.empty() ? std::nullopt : python::find_interpreter(pid, process.mappings);
  if (!interpreter) {
    process.info.python.reset();
    python_naming_.interpreters.erase(pid);
    tracer_.forget_python_process(pid);
    return;
  }
  bool walk = interpreter->supported && python_naming_.mode != python::FramesMode::kNative;
  model::PythonRuntime runtime{interpreter->version, interpreter->module, walk,
                               interpreter->reason};
  if (!interpreter->supported) {
    std::cerr << "memtrail: warning: pid " << pid << ": " << interpreter->reason << "\n";
  } else if (!walk) {
    runtime.reason = "--python-frames native";
  }
  if (walk) {
    tracer_.set_python_process(pid, interpreter->runtime_address, interpreter->eval_loop_start,
                               interpreter->eval_loop_end);
  }
  if (interpreter->supported) python_naming_.interpreters[pid] = *interpreter;
  if (config_.python_types && interpreter->supported) attach_python_types(process, *interpreter);
  // Objects are charged to the Python line that created them: without the frame walk (another
  // version, or --python-frames native, which promises no cost) there is no line to charge.
  std::string objects_reason;
  if (config_.tracer.python_objects && walk) {
    objects_reason = attach_python_objects(process, *interpreter);
  }
  if (walk) attach_python_end(process, *interpreter);
  process.info.python_objects_reason = std::move(objects_reason);
  // Objects traced, but OrderedDicts sized as plain dicts: said once, and in the report.
  std::string sizes_reason;
  if (config_.tracer.python_objects && walk && interpreter->supported &&
      process.info.python_objects_reason.empty() && !interpreter->odict_sizing) {
    sizes_reason = interpreter->odict_reason;
    if (process.info.python_sizes_reason.empty()) {
      std::cerr << "memtrail: warning: pid " << pid << ": OrderedDict objects are sized as "
                << "plain dicts, without their nodes (lower bounds): " << sizes_reason << "\n";
    }
  }
  process.info.python_sizes_reason = std::move(sizes_reason);
  process.info.python = std::move(runtime);
}

// --python-types: the interpreter's object allocators, probed for this process (once per
// interpreter file it maps).
void CodeMaps::attach_python_types(TracedProcess& process, const python::Interpreter& interpreter) {
  uint32_t pid = process.info.pid;
  if (process.python_types_module == interpreter.module) return;
  if (interpreter.object_probes.empty()) {
    std::cerr << "memtrail: warning: pid " << pid << ": Python objects are not counted by "
              << "type: " << interpreter.types_reason << "\n";
    return;
  }
  std::vector<tracer::AllocTracer::PythonObjectProbe> probes;
  for (const auto& probe : interpreter.object_probes) {
    probes.push_back({probe.function, probe.file_offset, probe.release, probe.call});
  }
  try {
    tracer_.attach_python_types(pid, interpreter.file, probes);
  } catch (const Error& error) {
    std::cerr << "memtrail: warning: pid " << pid << ": Python objects are not counted by "
              << "type: " << error.what() << "\n";
    return;
  }
  process.python_types_module = interpreter.module;
}

// Python objects charged to the line that created them: the interpreter's creation sites,
// probed for this process (once per interpreter file it maps). Returns why they are not traced
// (empty when they are), said once on stderr.
std::string CodeMaps::attach_python_objects(TracedProcess& process,
                                            const python::Interpreter& interpreter) {
  uint32_t pid = process.info.pid;
  if (process.python_objects_module == interpreter.module) {
    return process.info.python_objects_reason;
  }
  process.python_objects_module = interpreter.module;  // said once, whatever the outcome
  std::string reason = interpreter.objects_reason;
  if (!interpreter.object_sites.empty()) {
    std::vector<tracer::AllocTracer::PythonObjectSite> sites;
    for (const auto& site : interpreter.object_sites) {
      sites.push_back({site.file_offset, static_cast<uint32_t>(site.object)});
    }
    try {
      tracer_.attach_python_objects(pid, interpreter.file, sites,
                                    !object_windows_.measures_from_now());
      // Where the probes sit in the process: each object site's first frame is one of them.
      std::unordered_set<uint64_t> addresses;
      for (const auto& site : interpreter.object_sites) {
        for (const auto& mapping : process.mappings) {
          if (!mapping.executable || mapping.path != interpreter.module ||
              site.file_offset < mapping.file_offset ||
              site.file_offset - mapping.file_offset >= mapping.end - mapping.start) {
            continue;
          }
          addresses.insert(mapping.start + (site.file_offset - mapping.file_offset));
        }
      }
      object_windows_.add_process(pid, std::move(addresses));
      return {};
    } catch (const Error& error) {
      reason = error.what();
    }
  }
  std::cerr << "memtrail: warning: pid " << pid << ": its Python objects are not traced (its "
            << "native allocations are): " << reason << "\n";
  return reason;
}

// A launched CPython program is held where it ends: at Py_FinalizeEx, or at libc's _exit when
// it ends without finalizing (os._exit). Its objects are read once more there, before the
// interpreter frees them and the process is gone (Lifecycle::handle_python_finalizing), and its
// allocations and frees are no longer recorded, so that its report keeps the buffers the
// finalization frees (a module-level list's item array), with object tracking or without.
// Without these probes, its exit report has the objects a report or a window's close found
// alive, and those buffers freed. Not without the lifecycle events (--no-follow-forks without
// --mmap: said with -v). Once per interpreter file.
void CodeMaps::attach_python_end(TracedProcess& process, const python::Interpreter& interpreter) {
  if (process.python_end_module == interpreter.module) return;
  process.python_end_module = interpreter.module;
  uint32_t pid = process.info.pid;
  bool objects = config_.tracer.python_objects;
  std::string lost = objects ? "the Python objects the last report found alive, not those "
                               "created since"
                             : "the blocks the interpreter freed as it finalized as freed";
  bool events = tracer_.region_events_fd() >= 0;
  if (!interpreter.finalize_offset ||
      (events &&
       !tracer_.attach_python_finalizing(pid, interpreter.file, *interpreter.finalize_offset))) {
    if (objects || config_.verbose()) {
      std::cerr << (objects ? "memtrail: warning: pid " : "memtrail: pid ") << pid
                << ": Py_FinalizeEx "
                << (interpreter.finalize_offset ? "could not be probed" : "not found")
                << ": if it exits, its report shows " << lost << "\n";
    }
  } else if (!events && config_.verbose()) {
    std::cerr << "memtrail: pid " << pid << ": Py_FinalizeEx not probed (no lifecycle "
              << "events with --no-follow-forks): if it exits, its report shows " << lost << "\n";
  }
  // Held at its first instruction, the process maps no libc yet: the one its load order names.
  auto exit_function = interpreter.exit_function;
  for (const auto& module : process.allocators.modules) {
    if (exit_function) break;
    if (module.name == "glibc") exit_function = python::exit_function_in(module.file);
  }
  if (events && (!exit_function || !tracer_.attach_python_finalizing(pid, exit_function->file,
                                                                     exit_function->file_offset,
                                                                     /*at_exit=*/true))) {
    if (config_.verbose()) {
      std::cerr << "memtrail: pid " << pid << ": _exit "
                << (exit_function ? "could not be probed" : "not found")
                << ": if it ends with os._exit, its report shows " << lost << "\n";
    }
  }
}

bool CodeMaps::hold_at_entry_for_python(TracedProcess& process) {
  uint32_t pid = process.info.pid;
  tracer_.forget_program_entry(pid);  // a hold placed for the program it executed before
  if (process.info.python || process.info.exe.empty() ||
      std::filesystem::path(process.info.exe).filename().string().rfind("python", 0) != 0) {
    return false;
  }
  for (const auto& mapping : process.mappings) {
    if (!mapping.is_file() || mapping.path != process.info.exe) continue;
    try {
      inspect::ProcessFile file = inspect::mapped_file(pid, mapping);
      auto elf = inspect::ElfFile::open_shared(inspect::open_file(file).fd, mapping.path);
      // Statically linked, or its runtime in the executable (Debian's): found at the exec.
      if (elf->interpreter().empty() || elf->find_object("_PyRuntime")) return false;
      auto offset = elf->file_offset_of(elf->entry());
      bool held = offset && tracer_.attach_program_entry(pid, file, *offset);
      if (!held && config_.verbose()) {
        std::cerr << "memtrail: pid " << pid << ": " << mapping.path << " could not be held "
                  << "at its entry point: its Python interpreter is found once its library is "
                  << "mapped, and what it does before is seen without Python frames\n";
      }
      return held;
    } catch (const Error&) {
      return false;
    }
  }
  return false;
}

// Code objects are read from the process's memory, which is gone once it exits.
void CodeMaps::name_python_frames() {
  if (python_naming_.interpreters.empty()) return;
  uint32_t created = tracer_.stacks_created();
  if (created == python_stacks_seen_) return;
  python_stacks_seen_ = created;
  tracer_.for_each_python_stack(
      [&](uint32_t id, uint32_t pid, std::span<const model::PythonFrame> frames) {
        if (!python_stacks_named_.insert(id).second) return;
        auto interpreter = python_naming_.interpreters.find(pid);
        if (interpreter == python_naming_.interpreters.end()) return;
        for (const auto& frame : frames) python_reader_.frame(pid, interpreter->second, frame);
      });
}

void CodeMaps::forget_exited(uint32_t pid) {
  python_naming_.interpreters.erase(pid);
  python_objects_.forget(pid);
  python_reader_.forget(pid);
  tracer_.forget_python_objects(pid);
  object_windows_.process_exited(pid);
}

// A process that mapped code since its allocators were resolved (dlopen, or a launched
// command's libraries after exec): resolves them again and probes what is new, e.g.
// jemalloc's mallocx once a plugin loads libjemalloc. Functions already probed stay.
void CodeMaps::rebind_allocators(TracedProcess& process) {
  auto files = code_files(process.mappings);
  if (process.resolved_code_files.empty()) {  // the first look: resolved at attach
    process.resolved_code_files = std::move(files);
    return;
  }
  if (std::includes(process.resolved_code_files.begin(), process.resolved_code_files.end(),
                    files.begin(), files.end())) {
    process.unlisted_since.reset();
    return;
  }
  uint32_t pid = process.info.pid;
  inspect::ProcessAllocators fresh;
  std::set<std::string> listed;
  try {
    auto order = inspect::process_load_order(pid, process.mappings);
    for (const auto& module : order.modules) listed.insert(module.file.path);
    fresh = inspect::resolve_allocators(pid, order, config_.trace_cxx,
                                        config_.custom_allocators_for(pid),
                                        config_.analyse_return_sites());
  } catch (const Error&) {
    return;  // the link map is not readable yet (right after exec): next time
  }
  // dlopen maps a library before it adds it to the link map, which says where symbols bind:
  // a library caught in between is looked at again at the next refreshes, mappings unchanged
  // or not, rather than taken as resolved with none of its functions probed (a dlopen'ed
  // mimalloc went unprobed so). A file mapped for good outside the link map stops being
  // looked for after kLinkMapWait.
  constexpr auto kLinkMapWait = std::chrono::seconds(10);
  bool unlisted = std::erase_if(files, [&](const std::string& file) {
                    return !listed.count(file) && !process.resolved_code_files.count(file);
                  }) != 0;
  if (!unlisted) {
    process.unlisted_since.reset();
  } else if (!process.unlisted_since) {
    process.unlisted_since = Clock::now();
  } else if (Clock::now() - *process.unlisted_since >= kLinkMapWait) {
    files = code_files(process.mappings);  // for good: taken as they are
    process.unlisted_since.reset();
  }
  files.insert(process.resolved_code_files.begin(), process.resolved_code_files.end());
  process.resolved_code_files = std::move(files);
  probe_new_functions(process, std::move(fresh), "mapped", " since attach");
}

size_t CodeMaps::probe_new_functions(TracedProcess& process, inspect::ProcessAllocators fresh,
                                     const std::string& how, const std::string& when) {
  uint32_t pid = process.info.pid;
  size_t added_functions = 0;
  std::set<std::pair<std::string, uint64_t>> probed;  // (path, probe offset)
  for (const auto& module : process.allocators.modules) {
    for (const auto& function : module.functions) {
      probed.insert({module.path, function.probe_offset});
    }
  }
  for (const auto& module : fresh.modules) {
    inspect::AllocatorModule added = module;
    added.functions.clear();
    for (const auto& function : module.functions) {
      if (!probed.count({module.path, function.probe_offset})) {
        added.functions.push_back(function);
      }
    }
    if (added.functions.empty()) continue;
    try {
      probes_.attach(pid, added);
    } catch (const Error& error) {
      std::cerr << "memtrail: warning: pid " << pid << ": " << module.path
                << " not probed: " << error.what() << "\n";
      continue;
    }
    added_functions += added.functions.size();
    std::string names;
    for (const auto& function : added.functions)
      names += (names.empty() ? "" : ", ") + function.name;
    std::cerr << "memtrail: pid " << pid << " " << how << " " << module.name << " " << module.path
              << when << ": probing " << names << "\n";
  }
  process.allocators = std::move(fresh);
  describe_allocators(process.allocators, process.info);
  return added_functions;
}

// The program is mapped, its libraries not yet: the loader lists them as for a launched
// command, with the process's environment (a wrapper may set LD_LIBRARY_PATH or LD_PRELOAD
// before it executes the real program). A process in another root or mount namespace would
// name files memtrail cannot see as it does: left to the binding after its libraries are
// mapped.
std::string CodeMaps::probe_executed_program(TracedProcess& process) {
  uint32_t pid = process.info.pid;
  std::string proc = "/proc/" + std::to_string(pid);
  auto same_file = [](const std::string& a, const std::string& b) {
    struct stat first {
    }, second{};
    return ::stat(a.c_str(), &first) == 0 && ::stat(b.c_str(), &second) == 0 &&
           first.st_dev == second.st_dev && first.st_ino == second.st_ino;
  };
  if (!same_file(proc + "/root", "/proc/self/root") ||
      !same_file(proc + "/ns/mnt", "/proc/self/ns/mnt")) {
    throw Error("it runs in another root or mount namespace");
  }
  char exe[PATH_MAX];
  ssize_t length = ::readlink((proc + "/exe").c_str(), exe, sizeof(exe) - 1);
  if (length <= 0) throw Error(errno_message("readlink " + proc + "/exe", errno));
  std::string program(exe, static_cast<size_t>(length));
  std::ifstream environ_file(proc + "/environ", std::ios::binary);
  std::vector<std::string> environment;
  for (std::string variable; std::getline(environ_file, variable, '\0');) {
    environment.push_back(std::move(variable));
  }
  auto order = inspect::command_load_order(program, &environment);
  auto fresh =
      inspect::resolve_allocators(0, order, config_.trace_cxx, config_.custom_allocators_for(0),
                                  config_.analyse_return_sites());
  std::set<std::string> files;
  for (const auto& module : order.modules) files.insert(module.file.path);
  size_t added =
      probe_new_functions(process, std::move(fresh), "executed a program that loads", "");
  // Its libraries, once mapped, are these: bound already.
  process.resolved_code_files = std::move(files);
  return program + " (" + std::to_string(added) + " functions newly probed; load order from " +
         order.source + ")";
}

// Points the stack walker at the tables of every code module the process maps now (a
// module seen for the first time gets its table built and stored).
void CodeMaps::update_unwind_mappings(const TracedProcess& process) {
  if (!unwind_tables_) return;
  size_t known = unwind_tables_->modules().size();
  auto entries = unwind_tables_->mappings_for(process.info.pid, process.mappings);
  tracer_.set_unwind_mappings(process.info.pid, entries);
  if (!config_.verbose()) return;
  const auto& modules = unwind_tables_->modules();
  for (size_t i = known; i < modules.size(); ++i) {
    std::cerr << "memtrail: unwind " << modules[i].path << ": " << modules[i].method;
    if (modules[i].rows) {
      std::cerr << ", " << modules[i].rows << " rows built in " << modules[i].build_ms << " ms";
    }
    std::cerr << " (" << modules[i].reason << ")\n";
  }
}

model::UnwindSummary CodeMaps::unwind_summary() const {
  model::UnwindSummary summary;
  summary.mode = model::unwind_mode_name(config_.tracer.unwind_mode);
  if (!unwind_tables_) return summary;
  for (const auto& module : unwind_tables_->modules()) {
    summary.modules.push_back({module.path, module.method, module.reason, module.rows});
  }
  summary.table_rows = unwind_tables_->rows_stored();
  summary.table_bytes = summary.table_rows * tracer::kUnwindRowBytes;
  summary.table_capacity_rows = tracer_.row_capacity();
  summary.mappings_beyond_limit = unwind_tables_->mappings_beyond_limit();
  return summary;
}

}  // namespace memtrail::session
