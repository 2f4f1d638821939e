// SPDX-License-Identifier: Apache-2.0
// `memtrail leaks`: attach, report every interval, stop, write the final report.
#include "app/leaks_command.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <cstdint>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <set>
#include <span>
#include <tuple>
#include <fstream>
#include <sstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include "aggregator/aggregator.h"
#include "app/output.h"
#include "app/runtime.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/format.h"
#include "python/cpython.h"
#include "report/json_report.h"
#include "report/report_builder.h"
#include "report/text_report.h"
#include "sampler/host.h"
#include "symbolizer/symbolizer.h"
#include "target/allocator.h"
#include "target/process.h"
#include "target/proc_maps.h"
#include "tracer/alloc_tracer.h"
#include "unwind/module_tables.h"

namespace memtrail::app {
namespace {

using Clock = std::chrono::steady_clock;

// One traced process and what memtrail keeps about it.
struct TracedProcess {
  model::Target info;
  target::ProcessAllocators allocators;  // every probed module: malloc's, libc's rest, C++, custom
  std::vector<target::Mapping> mappings;  // last seen: kept after exit for symbolization
  UniqueFd pidfd;                         // readable once the process has exited
  bool launched = false;
  // Exited while others were still traced: what it left, and its sites as they were then
  // (its blocks were purged from the maps).
  std::optional<model::ExitSummary> exit;
  std::vector<model::LeakSite> exit_sites;
  uint32_t execs = 0;  // new programs it executed while traced (a launched command's first is its start)
  // The code files it mapped when its allocators were last resolved: a new one (dlopen) may
  // bring an allocator, or functions of one, that need probes.
  std::set<std::string> resolved_code_files;
  // The interpreter's mappings when it was last looked for (CPython): unchanged, not again.
  std::string python_key;
  std::string python_types_module;  // the interpreter file --python-types probes, once
  uint64_t exited_at_ns = 0;  // CLOCK_MONOTONIC when memtrail saw it exit
};

// What identifies the files that may hold a CPython runtime, where they are mapped.
std::string python_candidates_key(const std::vector<target::Mapping>& mappings) {
  std::string key;
  for (const auto& mapping : mappings) {
    if (!mapping.executable || mapping.path.find("python") == std::string::npos) continue;
    key += mapping.path + "@" + std::to_string(mapping.start) + ";";
  }
  return key;
}

// The files a process maps code from.
std::set<std::string> code_files(const std::vector<target::Mapping>& mappings) {
  std::set<std::string> files;
  for (const auto& mapping : mappings) {
    if (mapping.executable && mapping.is_file()) files.insert(mapping.path);
  }
  return files;
}

std::vector<target::Mapping> live_mappings(uint32_t pid) {
  auto state = target::process_state(pid);
  if (state == target::ProcessState::kMissing) {
    throw Error("no process with pid " + std::to_string(pid),
                "check the PID (ps -p " + std::to_string(pid) + ")");
  }
  if (state == target::ProcessState::kZombie) {
    throw Error("process " + std::to_string(pid) + " has exited (it is a zombie)",
                "trace a process that is still running");
  }
  auto mappings = target::read_proc_maps(pid);
  if (!mappings) {
    int error_number = errno;
    throw Error(errno_message("read /proc/" + std::to_string(pid) + "/maps", error_number),
                hint_for_errno(error_number));
  }
  if (mappings->empty()) {
    throw Error("process " + std::to_string(pid) +
                    " has no user address space (a kernel thread, or it is exiting)",
                "trace a user-space process");
  }
  return *mappings;
}

bool same_mappings(const std::vector<target::Mapping>& a, const std::vector<target::Mapping>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.start == y.start && x.end == y.end && x.inode == y.inode && x.path == y.path;
  });
}

// What the report says about a process's allocators, from what was resolved for it.
void describe_allocators(const target::ProcessAllocators& allocators, model::Target& info) {
  const target::AllocatorModule* primary = allocators.primary();
  info.allocator_module = primary ? primary->path : "";
  info.allocator = primary ? primary->name : "";
  info.allocators.clear();
  for (const auto& module : allocators.modules) {
    model::TracedAllocator traced{module.name, module.path, {}, module.note};
    for (const auto& function : module.functions) traced.functions.push_back(function.name);
    info.allocators.push_back(std::move(traced));
  }
  info.untraced_allocators.clear();
  for (const auto& untraced : allocators.untraced) {
    info.untraced_allocators.push_back(
        {untraced.name, untraced.path, untraced.reason, untraced.expected});
  }
}

// MemAvailable in bytes; 0 when /proc/meminfo cannot be read (the smallest table then).
uint64_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::stringstream text;
  text << meminfo.rdbuf();
  model::HostSample sample;
  sampler::parse_meminfo(text.str(), sample);
  return sample.mem_available_bytes;
}

UniqueFd open_pidfd(uint32_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    int error_number = errno;
    if (error_number == ESRCH) {
      throw Error("process " + std::to_string(pid) + " exited while memtrail was attaching",
                  "trace a process that keeps running");
    }
    throw Error(errno_message("pidfd_open " + std::to_string(pid), error_number));
  }
  return UniqueFd(fd);
}

class LeaksSession {
 public:
  explicit LeaksSession(const cli::LeaksOptions& options) : options_(options) {}

  int run() {
    if (!options_.json_path.empty()) report::check_writable(options_.json_path);
    if (!options_.output_path.empty()) report::check_writable(options_.output_path);
    if (!options_.flamegraph_path.empty()) report::check_writable(options_.flamegraph_path);
    if (!options_.plot_path.empty()) report::check_writable(options_.plot_path);
    if (!options_.suppressions_path.empty()) suppressions_.load_file(options_.suppressions_path);
    signal_fd_ = open_signalfd();
    // Load (and verify) the BPF programs first: without BPF permission nothing else matters,
    // and the message should say so rather than fail on a target's /proc files.
    tracer::TracerConfig config;
    max_allocations_ = options_.max_allocations ? *options_.max_allocations
                                                : cli::max_allocations_for(available_memory());
    config.max_outstanding_allocations = max_allocations_;
    config.max_stacks = options_.max_stacks ? *options_.max_stacks
                                            : cli::max_stacks_for(available_memory());
    config.sample_rate = options_.sample_rate;
    config.probe_floor = options_.probe_floor;
    config.trace_regions = options_.mmap;
    config.follow_forks = !options_.no_follow_forks;
    config.host_wide = options_.all;
    config.verbose = options_.verbose;
    config.unwind_mode = *unwind::parse_unwind_mode(options_.unwind);  // validated by the CLI
    python_naming_.mode = *python::parse_frames_mode(options_.python_frames);  // validated too
    python_naming_.reader = &python_reader_;
    if (python_naming_.mode != python::FramesMode::kNative) {
      config.python_layout = python::built_layout().walker;
    }
    if (options_.python_types) config.python_type_layout = python::built_layout().types;
    uint32_t unwind_table_mib = options_.unwind_table_mib
                                    ? options_.unwind_table_mib
                                    : cli::unwind_table_mib_for(options_.all);
    config.unwind_table_rows = static_cast<uint32_t>(
        std::min<uint64_t>(uint64_t{unwind_table_mib} * 1024 * 1024 /
                               sizeof(memtrail_unwind_row),
                           UINT32_MAX));
    tracer_ = std::make_unique<tracer::AllocTracer>(config);
    if (config.unwind_mode != unwind::UnwindMode::kFramePointers) {
      unwind_tables_.emplace(config.unwind_mode, *tracer_);
    }
    if (options_.verbose) {
      std::cerr << "memtrail: BPF maps hold " << tracer_->map_memory_bytes() / (1024 * 1024)
                << " MiB of kernel memory (--max-allocations " << max_allocations_
                << (options_.max_allocations ? "" : ", from available memory")
                << "; --max-stacks " << config.max_stacks << ")\n";
    }
    if (options_.all) {
      start_host_wide();
    } else {
      prepare_targets();
      attach_all();
    }
    start_ = Clock::now();
    start_unix_ms_ = unix_now_ms();
    loop();
    finish();
    // A command memtrail launched ends with it (as a workload ends with `perf record`): after
    // the final report, so that the report sees the program as it was.
    if (child_) child_->terminate(std::chrono::seconds(2));
    return kExitOk;
  }

 private:
  // --allocator entries for one process: opened through its root (0: memtrail's own).
  std::vector<target::CustomAllocator> custom_allocators(uint32_t pid) const {
    std::vector<target::CustomAllocator> custom;
    for (const auto& option : options_.allocators) {
      target::CustomAllocator allocator;
      allocator.path = option.path;
      allocator.file = target::file_in_root(pid, option.path);
      for (const auto& function : option.functions) {
        allocator.functions.push_back({function.symbol, function.role});
      }
      custom.push_back(std::move(allocator));
    }
    return custom;
  }

  void prepare_targets() {
    for (uint32_t pid : options_.pids) {
      TracedProcess process;
      // process.mappings stays empty: refresh_mappings() hands them to the symbolizer.
      auto mappings = live_mappings(pid);
      // Each function is probed where the process binds it: the link map gives the order.
      auto order = target::process_load_order(pid, mappings);
      process.allocators = target::resolve_allocators(pid, order, options_.trace_cxx,
                                                      custom_allocators(pid));
      warn_unmapped_custom(pid, mappings);
      process.info = target::read_target_info(pid);
      describe_allocators(process.allocators, process.info);
      targets_.push_back(std::move(process));
    }
    if (!options_.command.empty()) {
      std::string executable = target::resolve_command(options_.command.front());
      // The command runs in memtrail's mount namespace and environment: before it runs, its
      // loader says which libraries it will load, in which order. Probes attach to files, so
      // they are in place when the libraries get mapped.
      char resolved[PATH_MAX];
      std::string real_executable =
          ::realpath(executable.c_str(), resolved) ? resolved : executable;
      auto order = target::command_load_order(real_executable);
      TracedProcess process;
      process.allocators =
          target::resolve_allocators(0, order, options_.trace_cxx, custom_allocators(0));
      child_.emplace(executable, options_.command);
      process.info.pid = static_cast<uint32_t>(child_->pid());
      describe_allocators(process.allocators, process.info);
      process.launched = true;
      targets_.push_back(std::move(process));
    }
  }

  // A custom allocator the process has not mapped (yet) is probed all the same (a uprobe is on
  // the file), but if it never loads it, nothing will show: say so.
  void warn_unmapped_custom(uint32_t pid, const std::vector<target::Mapping>& mappings) const {
    for (const auto& option : options_.allocators) {
      bool mapped = std::any_of(mappings.begin(), mappings.end(),
                                [&](const auto& mapping) { return mapping.path == option.path; });
      if (!mapped) {
        std::cerr << "memtrail: warning: pid " << pid << " does not map " << option.path
                  << " (--allocator): its functions are probed in case it loads it later\n";
      }
    }
  }

  void attach_all() {
    // The walker needs a process's code mappings before its first allocation is recorded.
    for (auto& process : targets_) {
      if (!process.launched) refresh_mappings(process);
    }
    for (auto& process : targets_) {
      if (options_.verbose) {
        std::cerr << "memtrail: pid " << process.info.pid << ": load order from "
                  << process.allocators.order_source << "\n";
      }
      for (const auto& module : process.allocators.modules) {
        tracer_->attach(process.info.pid, module);
        if (!options_.verbose) continue;
        for (const auto& function : module.functions) {
          std::cerr << "memtrail: pid " << process.info.pid << ": " << function.name
                    << " probed at " << module.path << "+0x" << std::hex
                    << function.probe_offset << std::dec << ": " << function.placement << "\n";
        }
      }
    }
    // The probes are in place; a process that died meanwhile cannot be traced.
    for (auto& process : targets_) {
      if (process.launched) continue;
      process.pidfd = open_pidfd(process.info.pid);
      if (target::process_state(process.info.pid) != target::ProcessState::kRunning) {
        throw Error("process " + std::to_string(process.info.pid) +
                        " exited while memtrail was attaching",
                    "trace a process that keeps running");
      }
    }
    if (child_) {
      auto& process = targets_.back();
      process.pidfd = open_pidfd(process.info.pid);
      child_->release();
    }
    for (auto& process : targets_) {
      refresh_mappings(process);
      std::cerr << "memtrail: tracing pid " << process.info.pid
                << (process.info.comm.empty() ? "" : " (" + process.info.comm + ")") << " via ";
      const auto& modules = process.allocators.modules;
      for (size_t i = 0; i < modules.size(); ++i) {
        std::cerr << (i == 0 ? "" : " and ") << modules[i].name << " " << modules[i].path
                  << " (" << modules[i].functions.size() << " functions)";
      }
      std::cerr << "\n";
      for (const auto& untraced : process.allocators.untraced) {
        if (untraced.expected) continue;
        std::cerr << "memtrail: warning: pid " << process.info.pid << " maps " << untraced.name
                  << " " << untraced.path << ", not traced: " << untraced.reason << "\n";
      }
    }
    std::cerr.flush();
  }

  void refresh_mappings(TracedProcess& process) {
    if (process.info.exited) return;
    auto mappings = target::read_proc_maps(process.info.pid);
    if (!mappings || mappings->empty() || same_mappings(*mappings, process.mappings)) return;
    process.mappings = std::move(*mappings);
    // The launched command's name and image are known only after exec.
    model::Target info = target::read_target_info(process.info.pid);
    if (!info.comm.empty()) {
      info.parent_pid = process.info.parent_pid;
      info.python = process.info.python;
      describe_allocators(process.allocators, info);
      process.info = std::move(info);
    }
    symbolizer_.set_process_mappings(process.info.pid, process.mappings);
    update_unwind_mappings(process);
    rebind_allocators(process);
    update_python(process);
  }

  // Finds the CPython runtime a process runs (again when its interpreter's mappings changed)
  // and points the Python frame walker at it.
  void update_python(TracedProcess& process) {
    uint32_t pid = process.info.pid;
    auto key = python_candidates_key(process.mappings);
    if (key == process.python_key) return;
    process.python_key = key;
    auto interpreter =
        key.empty() ? std::nullopt : python::find_interpreter(pid, process.mappings);
    if (!interpreter) {
      process.info.python.reset();
      python_naming_.interpreters.erase(pid);
      tracer_->forget_python_process(pid);
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
      tracer_->set_python_process(pid, interpreter->runtime_address);
    }
    if (interpreter->supported) python_naming_.interpreters[pid] = *interpreter;
    if (options_.python_types && interpreter->supported) attach_python_types(process, *interpreter);
    process.info.python = std::move(runtime);
  }

  // --python-types: the interpreter's object allocators, probed for this process (once per
  // interpreter file it maps).
  void attach_python_types(TracedProcess& process, const python::Interpreter& interpreter) {
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
      tracer_->attach_python_types(pid, interpreter.file, probes);
    } catch (const Error& error) {
      std::cerr << "memtrail: warning: pid " << pid << ": Python objects are not counted by "
                << "type: " << error.what() << "\n";
      return;
    }
    process.python_types_module = interpreter.module;
  }

  // Names the Python frames of stacks new since the last look, while their process lives:
  // code objects are read from its memory, which is gone once it exits.
  void name_python_frames() {
    if (python_naming_.interpreters.empty()) return;
    uint32_t created = tracer_->stacks_created();
    if (created == python_stacks_seen_) return;
    python_stacks_seen_ = created;
    tracer_->for_each_python_stack(
        [&](uint32_t id, uint32_t pid, std::span<const uint64_t> frames) {
          if (!python_stacks_named_.insert(id).second) return;
          auto interpreter = python_naming_.interpreters.find(pid);
          if (interpreter == python_naming_.interpreters.end()) return;
          for (uint64_t packed : frames) {
            python_reader_.frame(pid, interpreter->second, python::PackedFrame::unpack(packed));
          }
        });
  }

  // A process that mapped code since its allocators were resolved (dlopen, or a launched
  // command's libraries after exec): resolves them again and probes what is new, e.g.
  // jemalloc's mallocx once a plugin loads libjemalloc. Functions already probed stay.
  void rebind_allocators(TracedProcess& process) {
    auto files = code_files(process.mappings);
    if (process.resolved_code_files.empty()) {  // the first look: resolved at attach
      process.resolved_code_files = std::move(files);
      return;
    }
    if (std::includes(process.resolved_code_files.begin(), process.resolved_code_files.end(),
                      files.begin(), files.end())) {
      return;
    }
    uint32_t pid = process.info.pid;
    target::ProcessAllocators fresh;
    try {
      auto order = target::process_load_order(pid, process.mappings);
      fresh = target::resolve_allocators(pid, order, options_.trace_cxx, custom_allocators(pid));
    } catch (const Error&) {
      return;  // the link map is not readable yet (right after exec): next time
    }
    process.resolved_code_files = std::move(files);
    std::set<std::pair<std::string, uint64_t>> probed;  // (path, probe offset)
    for (const auto& module : process.allocators.modules) {
      for (const auto& function : module.functions) {
        probed.insert({module.path, function.probe_offset});
      }
    }
    for (const auto& module : fresh.modules) {
      target::AllocatorModule added = module;
      added.functions.clear();
      for (const auto& function : module.functions) {
        if (!probed.count({module.path, function.probe_offset})) {
          added.functions.push_back(function);
        }
      }
      if (added.functions.empty()) continue;
      try {
        if (options_.all) {
          attach_everywhere(added);
        } else {
          tracer_->attach(pid, added);
        }
      } catch (const Error& error) {
        std::cerr << "memtrail: warning: pid " << pid << ": " << module.path
                  << " not probed: " << error.what() << "\n";
        continue;
      }
      std::string names;
      for (const auto& function : added.functions) names += (names.empty() ? "" : ", ") + function.name;
      std::cerr << "memtrail: pid " << pid << " mapped " << module.name << " " << module.path
                << " since attach: probing " << names << "\n";
    }
    process.allocators = std::move(fresh);
    describe_allocators(process.allocators, process.info);
  }

  // Points the stack walker at the tables of every code module the process maps now (a
  // module seen for the first time gets its table built and stored).
  void update_unwind_mappings(const TracedProcess& process) {
    if (!unwind_tables_) return;
    size_t known = unwind_tables_->modules().size();
    auto entries = unwind_tables_->mappings_for(process.info.pid, process.mappings);
    tracer_->set_unwind_mappings(process.info.pid, entries);
    if (!options_.verbose) return;
    const auto& modules = unwind_tables_->modules();
    for (size_t i = known; i < modules.size(); ++i) {
      std::cerr << "memtrail: unwind " << modules[i].path << ": " << modules[i].method;
      if (modules[i].rows) {
        std::cerr << ", " << modules[i].rows << " rows built in " << modules[i].build_ms
                  << " ms";
      }
      std::cerr << " (" << modules[i].reason << ")\n";
    }
  }

  model::UnwindSummary unwind_summary() const {
    model::UnwindSummary summary;
    summary.mode = options_.unwind;
    if (!unwind_tables_) return summary;
    for (const auto& module : unwind_tables_->modules()) {
      summary.modules.push_back({module.path, module.method, module.reason, module.rows});
    }
    summary.table_rows = unwind_tables_->rows_stored();
    summary.table_bytes = summary.table_rows * sizeof(memtrail_unwind_row);
    summary.table_capacity_rows = tracer_->row_capacity();
    summary.mappings_beyond_limit = unwind_tables_->mappings_beyond_limit();
    return summary;
  }

  void loop() {
    const auto interval = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options_.interval_s));
    std::optional<Clock::time_point> deadline;
    if (options_.duration_s) {
      deadline = start_ + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(*options_.duration_s));
    }
    auto next_report = start_ + interval;
    auto next_refresh = start_;
    auto next_full_refresh = start_;
    auto last_full_refresh = start_;
    for (;;) {
      auto now = Clock::now();
      if (deadline && now >= *deadline) return;
      settle_lifecycle();
      if (now >= next_refresh) {
        // Code the stack walker met outside every known mapping (a library just dlopen'ed)
        // brings the next re-read forward, to at most every 200 ms: a JIT compiler's code is
        // unknown for good, and re-reading a large maps file at every tick would cost the host
        // more than it brings.
        uint64_t unknown_code = unwind_tables_ ? tracer_->unknown_code_frames() : 0;
        if (now >= next_full_refresh ||
            (unknown_code != unknown_code_seen_ &&
             now - last_full_refresh >= std::chrono::milliseconds(200))) {
          for (auto& process : targets_) refresh_mappings(process);
          unknown_code_seen_ = unknown_code;
          last_full_refresh = now;
          // Frequent at first: a launched command maps its libraries right after exec.
          next_full_refresh = now + (now - start_ < std::chrono::seconds(2)
                                         ? std::chrono::milliseconds(100)
                                         : std::chrono::milliseconds(1000));
        }
        follow_lifecycle();
        if (!pending_programs_.empty()) look_at_pending_programs();
        name_python_frames();
        next_refresh = now + std::chrono::milliseconds(unwind_tables_ ? 50 : 100);
      }
      if (now >= next_report) {
        if (options_.quiet || !interval_reports_on_stdout()) {
          measure();  // no report printed, but the history behind the verdicts needs the point
        } else {
          print_interval();
        }
        next_report += interval;
        if (next_report <= now) next_report = now + interval;
      }
      auto wake = std::min(next_report, next_refresh);
      if (deadline) wake = std::min(wake, *deadline);
      auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now());

      std::vector<pollfd> fds{{signal_fd_.get(), POLLIN, 0}};
      // A fork event wakes memtrail at once: the child runs untraced until it is attached.
      int region_fd = tracer_->region_events_fd();
      if (region_fd >= 0) fds.push_back({region_fd, POLLIN, 0});
      size_t first_pidfd = fds.size();
      // Indices, not pointers: following a fork adds targets, and may move them.
      std::vector<size_t> polled;
      for (size_t index = 0; index < targets_.size(); ++index) {
        if (targets_[index].info.exited) continue;
        fds.push_back({targets_[index].pidfd.get(), POLLIN, 0});
        polled.push_back(index);
      }
      int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, timeout.count()) + 1));
      if (ready < 0 && errno != EINTR) throw Error(errno_message("poll", errno));
      if (ready <= 0) continue;
      if (fds[0].revents & POLLIN) {
        consume_signal(signal_fd_.get());
        return;
      }
      if (region_fd >= 0 && fds[1].revents) follow_lifecycle();
      for (size_t i = first_pidfd; i < fds.size(); ++i) {
        if (fds[i].revents != 0) process_exited(targets_[polled[i - first_pidfd]]);
      }
      if (!options_.all && std::all_of(targets_.begin(), targets_.end(), [](const auto& process) {
            return process.info.exited;
          })) {
        return;
      }
    }
  }

  void process_exited(TracedProcess& process) {
    process.info.exited = true;
    process.pidfd.reset();
    if (process.launched && child_) child_->reap_if_exited();
    process.exited_at_ns = monotonic_now_ns();
    exits_to_record_.push_back(process.info.pid);
  }

  // Exits not handled yet when memtrail stops (a child that ended just before): the final
  // report should say so.
  void notice_exits() {
    for (size_t index = 0; index < targets_.size(); ++index) {
      TracedProcess& process = targets_[index];
      if (process.info.exited || process.pidfd.get() < 0) continue;
      pollfd fd{process.pidfd.get(), POLLIN, 0};
      if (::poll(&fd, 1, 0) == 1) process_exited(process);
    }
    settle_lifecycle(/*now_or_never=*/true);
  }

  // Exec and fork of the traced processes, as the kernel reported them.
  void follow_lifecycle() {
    auto news = tracer_->drain_region_events();
    // Forks first: a child forked by a target and executing a program at once is the target's
    // child that executed, not a program started elsewhere.
    for (const auto& fork : news.forks) handle_fork(fork);
    for (const auto& exec : news.execs) handle_exec(exec);
  }

  // The traced process `pid` still running, or nullptr.
  TracedProcess* live_target(uint32_t pid) {
    for (auto& process : targets_) {
      if (process.info.pid == pid && !process.info.exited) return &process;
    }
    return nullptr;
  }

  // A traced process forked: its child is traced too, with the same allocator modules (its
  // memory is a copy of the parent's). Its probes are attached now, so what it allocates from
  // here on is seen; the blocks it inherited are the parent's (frees of them are unmatched).
  void handle_fork(const tracer::AllocTracer::Fork& fork) {
    const TracedProcess* parent = live_target(fork.parent);
    if (!parent) {
      tracer_->unfollow(fork.child);  // the kernel started following it
      return;
    }
    if (live_target(fork.child)) return;  // already traced (host-wide, seen at its exec)
    pending_programs_.erase(fork.child);  // traced from now on as the target's child
    TracedProcess child;
    child.allocators = parent->allocators;
    child.info = target::read_target_info(fork.child);
    child.info.parent_pid = fork.parent;
    describe_allocators(child.allocators, child.info);
    try {
      // Host-wide, the probes are on the files already, and the kernel follows the child.
      if (!options_.all) {
        for (const auto& module : child.allocators.modules) tracer_->attach(fork.child, module);
      }
      child.pidfd = open_pidfd(fork.child);
    } catch (const Error& error) {
      // Most often a child that exited at once (a shell's command): counted, and said once in
      // the report; one line each only with -v, as a busy host forks hundreds a second.
      ++children_missed_;
      if (options_.verbose) {
        std::cerr << "memtrail: pid " << fork.child << ", forked by pid " << fork.parent
                  << ", is not traced: " << error.what() << "\n";
      }
      // Its probes may have recorded blocks already: those from before now are its own.
      purge_later_[fork.child] = monotonic_now_ns();
      return;
    }
    targets_.push_back(std::move(child));
    refresh_mappings(targets_.back());
    if (options_.all && !options_.verbose) return;  // many a second host-wide: -v says each
    std::cerr << "memtrail: tracing pid " << fork.child << " ("
              << targets_.back().info.comm << "), forked by pid " << fork.parent << "\n";
  }

  // A traced process executed a new program: the old image's blocks, regions and stacks mean
  // nothing now (its memory is gone) and must not be reported as leaks of the new one.
  void handle_exec(const tracer::AllocTracer::Exec& exec) {
    TracedProcess* process = live_target(exec.pid);
    // Host-wide, a program started since memtrail attached: trace it if it is wanted. Right
    // after exec only the executable and the dynamic linker are mapped: its allocator is
    // looked up again at each tick until its libraries are loaded (for up to 2 s). Meanwhile
    // it is already followed in the kernel, so the probes already on its libraries (libc's,
    // nearly always) record its allocations from the start.
    if (!process) {
      if (!options_.all || !wanted_host_process(exec.pid)) return;
      tracer_->follow(exec.pid);
      pending_programs_[exec.pid] = Clock::now() + std::chrono::seconds(2);
      look_at_pending_programs();
      return;
    }
    if (process->launched && process->execs++ == 0) return;  // the command starting
    if (!process->launched) ++process->execs;
    process->mappings.clear();  // the new image's code: read again now
    process->python_key = "(exec)";
    python_reader_.forget(exec.pid);
    refresh_mappings(*process);
    stale_execs_.push_back(exec);  // its old blocks: freed with others (settle_lifecycle)
  }

  // ---- host-wide mode (--all) ----

  // Every process now running that uses a traced allocator and passes the filters; the rest
  // come as they start (exec) or are forked by a traced process.
  void start_host_wide() {
    raise_open_file_limit();  // a pidfd per traced process
    uint32_t skipped = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename();
      if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
      uint32_t pid = static_cast<uint32_t>(std::stoul(name));
      if (!add_host_process(pid)) ++skipped;
    }
    std::cerr << "memtrail: tracing " << targets_.size()
              << " processes host-wide (--all), and those started from now on; " << skipped
              << " others have no traced allocator, are kernel threads or are left out by the "
              << "filters\n";
    std::cerr.flush();
  }

  // Programs started since (host-wide) whose allocator is not known yet: see handle_exec.
  void look_at_pending_programs() {
    auto now = Clock::now();
    for (auto it = pending_programs_.begin(); it != pending_programs_.end();) {
      auto [pid, deadline] = *it;
      if (live_target(pid)) {  // traced meanwhile (a traced process's child)
        it = pending_programs_.erase(it);
        continue;
      }
      bool added = add_host_process(pid, /*quiet=*/now < deadline);
      if (added && options_.verbose) {
        std::cerr << "memtrail: tracing pid " << pid << " (" << targets_.back().info.comm
                  << "), started since\n";
      }
      if (added || now >= deadline) {
        if (!added) tracer_->unfollow(pid);  // no traced allocator: stop following it
        it = pending_programs_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Whether --comm, --cgroup and --exclude-pid let `pid` in (never memtrail itself).
  bool wanted_host_process(uint32_t pid) const {
    if (pid == static_cast<uint32_t>(::getpid())) return false;
    const auto& excluded = options_.excluded_pids;
    if (std::find(excluded.begin(), excluded.end(), pid) != excluded.end()) return false;
    if (!options_.comms.empty()) {
      std::string comm = target::read_target_info(pid).comm;
      if (std::find(options_.comms.begin(), options_.comms.end(), comm) == options_.comms.end()) {
        return false;
      }
    }
    if (!options_.cgroups.empty()) {
      auto paths = target::process_cgroups(pid);
      bool inside = std::any_of(paths.begin(), paths.end(), [&](const std::string& path) {
        return std::any_of(options_.cgroups.begin(), options_.cgroups.end(),
                           [&](const std::string& wanted) {
                             return target::cgroup_within(path, wanted);
                           });
      });
      if (!inside) return false;
    }
    return true;
  }

  // Traces one more process host-wide; false when it is not wanted, has no traced allocator,
  // or is gone. Its allocator's functions are probed in their files, for every process, once.
  bool add_host_process(uint32_t pid, bool quiet = false) {
    if (!wanted_host_process(pid)) return false;
    if (target::process_state(pid) != target::ProcessState::kRunning) return false;
    auto mappings = target::read_proc_maps(pid);
    if (!mappings || mappings->empty()) return false;  // a kernel thread, or exiting
    TracedProcess process;
    try {
      auto order = target::process_load_order(pid, *mappings);
      process.allocators =
          target::resolve_allocators(pid, order, options_.trace_cxx, custom_allocators(pid));
      if (process.allocators.modules.empty()) return false;
      for (const auto& module : process.allocators.modules) attach_everywhere(module);
      tracer_->follow(pid);
      process.pidfd = open_pidfd(pid);
    } catch (const Error& error) {
      if (options_.verbose && !quiet) {
        std::cerr << "memtrail: pid " << pid << " not traced: " << error.what() << "\n";
      }
      return false;
    }
    process.info = target::read_target_info(pid);
    describe_allocators(process.allocators, process.info);
    targets_.push_back(std::move(process));
    refresh_mappings(targets_.back());
    return true;
  }

  // Probes a module's functions for every process, each (file, offset, role) once.
  void attach_everywhere(const target::AllocatorModule& module) {
    target::AllocatorModule fresh = module;
    fresh.functions.clear();
    for (const auto& function : module.functions) {
      auto key = std::make_tuple(module.file.device, module.file.inode, function.probe_offset,
                                 static_cast<int>(function.role));
      if (probed_everywhere_.insert(key).second) fresh.functions.push_back(function);
    }
    if (fresh.functions.empty()) return;
    tracer_->attach_everywhere(fresh);
    if (options_.verbose) {
      std::cerr << "memtrail: " << fresh.functions.size() << " functions of " << module.path
                << " probed for every process\n";
    }
  }

  static void raise_open_file_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
      limit.rlim_cur = limit.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &limit);  // best effort: fewer processes traced otherwise
    }
  }

  // Keeps what an exited process left outstanding (its sites as they are now), then removes its
  // blocks, stacks and counters from the maps: dead processes must not fill them, and a new
  // process reusing the PID must not inherit them.
  // What the lifecycle left to do since the last call, done together at most every 500 ms
  // (now_or_never: at once): the processes that exited get their exit summary (the last one
  // to exit is covered by the final report instead) from one report; then their blocks, the
  // old blocks of processes that executed a program, and those of children that could not be
  // followed leave the table in one pass, which costs a read of the whole table (hundreds of
  // MiB at most): a busy host forks, executes and ends dozens of programs a second. Slots are
  // chosen by pid and time, so a pid reused meanwhile loses nothing.
  void settle_lifecycle(bool now_or_never = false) {
    if (exits_to_record_.empty() && stale_execs_.empty() && purge_later_.empty()) return;
    auto started = Clock::now();
    if (!now_or_never && started - last_settled_ < std::chrono::milliseconds(500)) return;
    last_settled_ = started;
    bool others_live = std::any_of(targets_.begin(), targets_.end(),
                                   [](const auto& other) { return !other.info.exited; });
    std::unordered_map<uint32_t, TracedProcess*> exited;
    if (others_live) {
      for (auto& process : targets_) {
        if (process.info.exited && !process.exit &&
            std::find(exits_to_record_.begin(), exits_to_record_.end(), process.info.pid) !=
                exits_to_record_.end()) {
          exited[process.info.pid] = &process;
        }
      }
    }
    exits_to_record_.clear();
    std::unordered_map<uint32_t, model::ExitSummary> summaries;
    if (!exited.empty()) {
      model::Report now = take_report(false, SIZE_MAX, &exited);
      double after_s = std::chrono::duration<double>(Clock::now() - start_).count();
      for (auto& site : now.leaks) {
        auto process = exited.find(site.pid);
        if (process == exited.end()) continue;
        auto& summary = summaries[site.pid];
        summary.outstanding_bytes += site.outstanding_bytes;
        summary.outstanding_allocations += site.outstanding_allocations;
        ++summary.sites;
        process->second->exit_sites.push_back(std::move(site));
      }
      for (const auto& target : now.targets) {
        auto process = exited.find(target.pid);
        // The purge drops the map's losses: keep them.
        if (process != exited.end()) process->second->info.losses = target.losses;
      }
      for (auto& [pid, process] : exited) summaries[pid].after_s = after_s;
    }
    auto purge = std::move(purge_later_);
    purge_later_.clear();
    for (const auto& [pid, process] : exited) purge[pid] = process->exited_at_ns;
    auto dropped = tracer_->purge_processes(purge, stale_execs_);
    for (auto& [pid, process] : exited) {
      auto& summary = summaries[pid];
      summary.purged_blocks = dropped[pid];
      python_naming_.interpreters.erase(pid);
      python_reader_.forget(pid);
      process->exit = summary;
      if (options_.all && !options_.verbose) continue;  // many a second: -v says each
      std::cerr << "memtrail: pid " << pid << " exited with " << summary.outstanding_bytes
                << " bytes outstanding in " << summary.outstanding_allocations
                << " allocations at " << summary.sites << " sites; still tracing the others\n";
    }
    for (const auto& exec : stale_execs_) {
      if (options_.all && !options_.verbose) continue;
      const TracedProcess* process = live_target(exec.pid);
      std::cerr << "memtrail: pid " << exec.pid << " executed "
                << (process ? process->info.exe : std::string("a new program")) << ": "
                << dropped[exec.pid] << " blocks of the old program dropped, and its mappings; "
                << "still tracing it through the allocator probes attached before\n";
    }
    stale_execs_.clear();
  }

  // `only`: the processes a report is for (see take_report); every target otherwise.
  report::ReportContext context(
      bool final, const std::unordered_map<uint32_t, TracedProcess*>* only = nullptr) const {
    report::ReportContext context;
    for (const auto& process : targets_) {
      if (only && !only->count(process.info.pid)) continue;
      context.targets.push_back(process.info);
      context.targets.back().memory = process_memory(process.info.pid);
      context.targets.back().exit = process.exit;
      if (options_.mmap) {
        context.targets.back().break_growth_bytes = tracer_->break_growth(process.info.pid);
      }
    }
    context.start_unix_ms = start_unix_ms_;
    context.end_unix_ms = unix_now_ms();
    context.duration_s = std::chrono::duration<double>(Clock::now() - start_).count();
    context.min_age_s = options_.min_age_s;
    context.sample_rate = options_.sample_rate;
    context.top = options_.top;
    context.final = final;
    context.max_outstanding_allocations = max_allocations_;
    context.history = &history_;
    context.suppressions = &suppressions_;
    context.unwind = unwind_summary();
    context.python = &python_naming_;
    context.children_missed = children_missed_;
    if (options_.python_types) context.python_types = python_types_.report();
    return context;
  }

  uint64_t min_age_ns() const { return static_cast<uint64_t>(options_.min_age_s * 1e9); }

  // One reading of the maps: the sites summed, a point added to each site's history, and the
  // sites scored and ranked on that history.
  struct Measurement {
    model::Snapshot snapshot;
    aggregator::Aggregate aggregate;
    double read_ms = 0, ranked_ms = 0;
  };
  Measurement measure() {
    auto started = Clock::now();
    Measurement measurement;
    // The allocations stream into the aggregator as they are read: at no point are millions of
    // them copied into memtrail's memory.
    aggregator::Accumulator accumulator(min_age_ns(), options_.sample_rate);
    measurement.snapshot = tracer_->snapshot(&accumulator);
    auto read = Clock::now();
    measurement.aggregate = std::move(accumulator).finish(measurement.snapshot.sites);
    double t_s = std::chrono::duration<double>(read - start_).count();
    history_.record(t_s, measurement.aggregate);
    record_process_memory(t_s, measurement.aggregate);
    if (options_.python_types) {
      python_types_.record(t_s, measurement.snapshot.python_types, python_naming_.interpreters);
    }
    aggregator::assess_sites(measurement.aggregate, history_, options_.interval_s,
                             measurement.snapshot.taken_at_ns);
    auto ranked = Clock::now();
    measurement.read_ms = std::chrono::duration<double, std::milli>(read - started).count();
    measurement.ranked_ms = std::chrono::duration<double, std::milli>(ranked - read).count();
    return measurement;
  }

  // Each live target's private memory next to what its traced allocations hold.
  void record_process_memory(double t_s, const aggregator::Aggregate& aggregate) {
    std::unordered_map<uint32_t, double> traced_by_pid;  // one pass over the sites
    for (const auto& site : aggregate.sites) {
      traced_by_pid[site.pid] += static_cast<double>(site.outstanding_bytes);
    }
    for (const auto& process : targets_) {
      if (process.info.exited) continue;
      auto rss = target::read_private_memory(process.info.pid);
      if (!rss) continue;
      process_memory_.record(process.info.pid, {t_s, static_cast<double>(*rss),
                                                traced_by_pid[process.info.pid]});
    }
  }

  std::optional<model::ProcessMemory> process_memory(uint32_t pid) const {
    const auto* series = process_memory_.series(pid);
    if (!series || series->empty()) return std::nullopt;
    auto growth = aggregator::assess_process_memory(*series, options_.interval_s);
    model::ProcessMemory memory;
    memory.rss_anon_bytes = series->back().rss_bytes;
    memory.assessed = growth.assessed;
    memory.rss_bytes_per_s = growth.rss_bytes_per_s;
    memory.traced_bytes_per_s = growth.traced_bytes_per_s;
    memory.untraced_growth = growth.untraced_growth;
    memory.reason = growth.reason;
    for (const auto& point : *series) {
      memory.series.push_back({point.t_s, point.rss_bytes, point.traced_bytes});
    }
    return memory;
  }

  // Measures and builds a report with `sites` symbolized sites; with -v, says how long each
  // stage took (the benchmark reads these lines).
  // `only`: the report is for these processes (they exited): the others' sites are left out,
  // and so is their symbolization.
  model::Report take_report(bool final, size_t sites,
                            const std::unordered_map<uint32_t, TracedProcess*>* only = nullptr) {
    Measurement measurement = measure();
    auto& aggregate = measurement.aggregate;
    if (only) {
      std::erase_if(aggregate.sites, [&](const auto& site) { return !only->count(site.pid); });
    }
    auto symbolizing = Clock::now();
    auto report = report::build_report(measurement.snapshot, aggregate, symbolizer_,
                                       context(final, only), std::min(sites, aggregate.sites.size()));
    // Processes that exited earlier: their sites as they were at the exit, after the live ones.
    for (const auto& process : targets_) {
      if (only) break;
      for (const auto& site : process.exit_sites) {
        if (report.leaks.size() >= sites) break;
        report.leaks.push_back(site);
      }
    }
    auto built = Clock::now();
    if (options_.verbose) {
      std::cerr << "memtrail: report: " << aggregate.totals.outstanding_allocations
                << " outstanding allocations read and summed in " << measurement.read_ms
                << " ms, ranked in " << measurement.ranked_ms << " ms, " << report.leaks.size()
                << " sites symbolized in "
                << std::chrono::duration<double, std::milli>(built - symbolizing).count() << " ms";
      if (measurement.snapshot.counters.snapshot_read_errors != 0) {
        std::cerr << " (" << measurement.snapshot.counters.snapshot_read_errors
                  << " entries changing while read, left for the next report)";
      }
      std::cerr << "\n";
    }
    return report;
  }

  // Interval reports are text on stdout, unless stdout carries the final report in another
  // format.
  bool interval_reports_on_stdout() const {
    return options_.format == cli::Format::kText || !options_.output_path.empty();
  }

  void print_interval() {
    report::render_text(take_report(false, options_.top), std::cout);
    std::cout << "\n" << std::flush;
  }

  void finish() {
    follow_lifecycle();
    notice_exits();
    // Code mapped since the last refresh (a command stopped right after it started) must be
    // known to the symbolizer, or its frames print as [unknown].
    for (auto& process : targets_) refresh_mappings(process);
    // The JSON file carries every site; the text report only the top ones. The plot picks
    // the fastest growing sites among all of them.
    bool every_site = !options_.json_path.empty() || !options_.flamegraph_path.empty() ||
                      !options_.plot_path.empty() ||
                      options_.format != cli::Format::kText;
    auto report = take_report(true, every_site ? SIZE_MAX : options_.top);
    OutputRequest final_output;
    final_output.format = options_.format;
    final_output.path = options_.output_path;
    final_output.json_version = options_.json_version;
    final_output.interval_s = options_.interval_s;
    write_report(report, final_output);
    if (!options_.output_path.empty()) {
      std::cerr << "memtrail: wrote " << options_.output_path << "\n";
    }
    if (!options_.json_path.empty()) {
      report::write_json_file(report::to_json(report, options_.interval_s, options_.json_version),
                              options_.json_path);
      std::cerr << "memtrail: wrote " << options_.json_path << "\n";
    }
    if (!options_.flamegraph_path.empty()) write_flamegraph(report, options_.flamegraph_path);
    if (!options_.plot_path.empty()) write_memory_plot(report, options_.plot_path);
  }

  const cli::LeaksOptions& options_;
  UniqueFd signal_fd_;
  std::unique_ptr<tracer::AllocTracer> tracer_;
  std::optional<unwind::ModuleTables> unwind_tables_;  // --unwind dwarf/auto: stores into tracer_
  uint64_t unknown_code_seen_ = 0;  // tracer_->unknown_code_frames() at the last refresh
  python::CodeReader python_reader_;
  report::PythonNaming python_naming_;
  python::TypeTracker python_types_;  // --python-types
  uint32_t python_stacks_seen_ = 0;           // tracer_->stacks_created() at the last look
  std::set<uint32_t> python_stacks_named_;  // stacks whose Python frames were read
  uint32_t max_allocations_ = 0;    // --max-allocations, or sized from available memory
  // After tracer_: destroyed first, so an unreleased child is killed before the probes go.
  std::optional<target::GatedChild> child_;
  std::vector<TracedProcess> targets_;
  // --all: (device, inode, offset, role) of every function probed for every process.
  std::set<std::tuple<uint64_t, uint64_t, uint64_t, int>> probed_everywhere_;
  std::map<uint32_t, Clock::time_point> pending_programs_;  // --all: pid -> give up at
  std::vector<uint32_t> exits_to_record_;  // exited since the last settle_lifecycle()
  std::unordered_map<uint32_t, uint64_t> purge_later_;  // unfollowable children: pid -> by
  std::vector<tracer::AllocTracer::Exec> stale_execs_;  // old images' slots to free
  uint64_t children_missed_ = 0;           // how many, over the run (a note in the report)
  Clock::time_point last_settled_{};
  symbolizer::Symbolizer symbolizer_;
  aggregator::GrowthHistory history_;
  aggregator::ProcessMemoryHistory process_memory_;
  report::Suppressions suppressions_ = report::Suppressions::builtin();
  Clock::time_point start_;
  int64_t start_unix_ms_ = 0;
};

}  // namespace

int run_leaks(const cli::LeaksOptions& options) {
  LeaksSession session(options);
  return session.run();
}

}  // namespace memtrail::app
