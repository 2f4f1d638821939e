// SPDX-License-Identifier: Apache-2.0
// The command line, parsed and validated in one place into plain options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "model/stack_modes.h"

namespace memtrail::cli {

// How a report is written: text for people, JSON for tooling, folded stacks for flame graph
// tools, pprof for go tool pprof, Pyroscope and Parca.
enum class Format { kText, kJson, kFolded, kPprof };

// --allocator PATH:SYMBOL[=ROLE],...: a custom allocator's functions, each in the role of a
// standard function (malloc, calloc, realloc, reallocarray, free, posix_memalign,
// aligned_alloc, memalign, valloc, pvalloc). A bare SYMBOL is its own role (`malloc`).
struct AllocatorOption {
  std::string path;
  struct Function {
    std::string symbol;
    std::string role;
  };
  std::vector<Function> functions;
};

// The default --max-allocations for a host with `available_bytes` of MemAvailable: the table
// (64 bytes of kernel memory per allocation) gets 1/256 of it, from 262,144 allocations (16 MiB)
// to 4,194,304 (256 MiB), rounded down to a multiple of 65,536.
uint32_t max_allocations_for(uint64_t available_bytes);
// The default --max-stacks: distinct call stacks (sites) memtrail can hold, about 600 bytes of
// kernel memory each, from 1/1024 of the available memory (16384 to 262144).
uint32_t max_stacks_for(uint64_t available_bytes);
// The default --unwind-table-mib: 8 MiB (a million rows: a large program's libraries take one
// or two), 16 MiB with --all, where every binary of the host may need its table.
uint32_t unwind_table_mib_for(bool host_wide);

// Parses one --allocator value; nullopt and `error` set when it is malformed.
std::optional<AllocatorOption> parse_allocator_option(const std::string& text, std::string& error);

// --python-objects on: the share of each period the object probes are attached by default,
// and the period (bench/python_objects.py measured what they cost: README, "Python objects").
inline constexpr double kDefaultPythonObjectsDuty = 0.10;
inline constexpr double kPythonObjectsPeriodS = 1.0;

struct LeaksOptions {
  std::vector<uint32_t> pids;
  std::vector<std::string> command;  // after `--`: launched and traced
  std::optional<double> duration_s;
  double interval_s = 5;
  uint32_t top = 10;
  double min_age_s = 0;
  std::string json_path;
  // --max-allocations; nullopt: sized from the host's available memory (max_allocations_for).
  std::optional<uint32_t> max_allocations;
  std::optional<uint32_t> max_stacks;  // --max-stacks; nullopt: max_stacks_for(MemAvailable)
  uint64_t sample_rate = 0;            // bytes between samples on average; 0: every allocation
  bool quiet = false;                  // no interval reports, only the final one
  bool verbose = false;
  int json_version = 2;           // memtrail.leaks/N written by --json
  Format format = Format::kText;  // of the final report (stdout, or output_path)
  std::string output_path;        // -o: the final report goes to this file
  std::string flamegraph_path;    // --flamegraph: an SVG flame graph of the final report
  std::string plot_path;          // --plot: an SVG chart of memory over time per process
  std::string suppressions_path;  // --suppressions FILE: the user's own, besides the built-ins
  bool trace_cxx = false;         // --cxx: probe C++ operators new/delete too
  bool mmap = false;  // --mmap: follow memory mapped by mmap/mremap/brk (costs every process)
  bool no_follow_forks = false;  // --no-follow-forks: leave the targets' children alone
  // --all: every process using a traced allocator, now and started later, narrowed by these.
  bool all = false;
  std::vector<std::string> comms;       // --comm NAME: only processes of this name
  std::vector<std::string> cgroups;     // --cgroup PATH: only processes in this cgroup (or below)
  std::vector<uint32_t> excluded_pids;  // --exclude-pid PID
  std::vector<AllocatorOption> allocators;  // --allocator: custom allocators, probed as well
  model::UnwindMode unwind = model::UnwindMode::kAuto;  // --unwind fp|dwarf|auto
  // --python-frames native|python|mixed: what CPython processes' stacks show.
  model::PythonFramesMode python_frames = model::PythonFramesMode::kMixed;
  bool python_types = false;   // --python-types: CPython objects by type (a probe per object)
  bool python_objects = true;  // --python-objects on|exact|off: objects charged to their line
  // --python-objects on: the object probes attached this share of each period (duty cycle),
  // the counts scaled; exact: 1, always attached (--python-objects-duty PERCENT).
  double python_objects_duty = kDefaultPythonObjectsDuty;
  // --unwind-table-mib: room for CFI tables in kernel memory; 0: unwind_table_mib_for(all).
  uint32_t unwind_table_mib = 0;
  bool probe_floor = false;  // benchmarks only: probes attached, programs do nothing
  // malloc and calloc probed at their return sites (one kernel entry a call) where proven;
  // --no-return-sites: at entry and return.
  bool return_sites = true;
};

// `memtrail paging`: host-wide paging pressure, per memory cgroup and per process.
enum class DeepMode { kAuto, kAlways, kNever };

struct PagingOptions {
  std::optional<double> duration_s;  // none: until Ctrl-C
  double interval_s = 2;
  uint32_t top = 10;
  std::string json_path;
  std::string cgroup;               // --cgroup: a memory cgroup (v1 or v2 path) to focus on
  DeepMode deep = DeepMode::kAuto;  // per-fault hooks: while under pressure, always, never
  uint32_t max_processes = 32768;
  bool quiet = false;  // no screen per interval, only the final report
  bool verbose = false;
};

// `memtrail report FILE`: a saved JSON report, rendered again in any format.
struct ReportOptions {
  std::string input_path;
  Format format = Format::kText;
  std::string output_path;  // empty: stdout
  std::string flamegraph_path;
  std::string plot_path;
  uint32_t top = 10;
  int json_version = 2;
};

// `memtrail diff BEFORE AFTER`: which sites grew between two saved reports.
struct DiffOptions {
  std::string before_path, after_path;
  uint32_t top = 20;
};

// `memtrail serve`: the always-on agent (HTTP: /metrics, /debug/pprof/heap, /report.json, ...).
struct ServeOptions {
  std::string listen_address = "127.0.0.1";  // --listen ADDR:PORT
  uint16_t listen_port = 9752;
  std::string auth_token_file;   // --auth-token-file: every request needs "Bearer <token>"
  double interval_s = 10;        // --interval: one scan of every process and cgroup
  uint32_t window = 60;          // --window: scans a verdict looks at
  uint32_t max_processes = 200;  // --max-processes: per-process series (growing ones always)
  uint32_t max_cgroups = 200;    // --max-cgroups: per-cgroup series (growing ones always)
  uint32_t max_sessions = 2;     // --max-sessions: on-demand profiles at once
  double max_profile_s = 300;    // --max-profile-seconds
  double default_profile_s = 10;
  std::vector<std::string> trace;    // --trace pid:N|comm:NAME|cgroup:PATH (checked by serve/)
  double trace_interval_s = 10;      // --trace-interval: a report of each --trace target
  uint32_t max_sites = 50;           // --max-sites: sites per --trace target in /metrics
  std::string pyroscope_url;         // --pyroscope-url: push each --trace target's profile
  double pyroscope_interval_s = 15;  // --pyroscope-interval
  bool verbose = false;
};

// What main should do: run a subcommand, or exit with `code` after printing `message`
// (help, version, or a usage error).
struct ExitRequest {
  int code = 0;
  std::string message;  // printed to stdout for code 0, to stderr otherwise
};
using Command = std::variant<LeaksOptions, PagingOptions, ReportOptions, DiffOptions, ServeOptions,
                             ExitRequest>;

Command parse_command_line(int argc, const char* const* argv);

}  // namespace memtrail::cli
