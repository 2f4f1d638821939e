// SPDX-License-Identifier: Apache-2.0
// The command line, parsed with CLI11 and validated in one place.
#include "cli/options.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

#include "common/error.h"
#include "common/version.h"

namespace memtrail::cli {

std::optional<AllocatorOption> parse_allocator_option(const std::string& text, std::string& error) {
  static const std::vector<std::string> kRoles = {
      "malloc",         "calloc",        "realloc",  "reallocarray", "free",
      "posix_memalign", "aligned_alloc", "memalign", "valloc",       "pvalloc"};
  auto is_role = [](const std::string& name) {
    return std::find(kRoles.begin(), kRoles.end(), name) != kRoles.end();
  };
  const std::string syntax =
      " (expected PATH:SYMBOL=ROLE,..., e.g. "
      "/usr/lib/libfoo.so:foo_alloc=malloc,foo_free=free)";
  // Symbols never contain ':' (C++ names are given mangled), paths might: split at the last.
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    error = "--allocator " + text + ": no PATH:SYMBOLS" + syntax;
    return std::nullopt;
  }
  AllocatorOption option;
  option.path = text.substr(0, colon);
  if (option.path[0] != '/') {
    error = "--allocator " + text + ": PATH must be absolute, as the process maps it" + syntax;
    return std::nullopt;
  }
  std::string list = text.substr(colon + 1);
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string item = list.substr(start, comma - start);
    start = comma + 1;
    size_t equals = item.find('=');
    AllocatorOption::Function function;
    function.symbol = item.substr(0, equals);
    function.role = equals == std::string::npos ? item : item.substr(equals + 1);
    if (function.symbol.empty() || function.role.empty()) {
      error = "--allocator " + text + ": empty symbol or role in '" + item + "'" + syntax;
      return std::nullopt;
    }
    if (!is_role(function.role)) {
      error = "--allocator " + text + ": '" + function.role + "' is not a role (" +
              (equals == std::string::npos ? "a bare SYMBOL must be a standard name; " : "") +
              "roles: malloc, calloc, realloc, reallocarray, free, posix_memalign, "
              "aligned_alloc, memalign, valloc, pvalloc)";
      return std::nullopt;
    }
    for (const auto& other : option.functions) {
      if (other.symbol == function.symbol) {
        error = "--allocator " + text + ": " + function.symbol + " is listed twice";
        return std::nullopt;
      }
    }
    option.functions.push_back(std::move(function));
  }
  return option;
}

namespace {

const std::map<std::string, Format> kFormats{{"text", Format::kText},
                                             {"json", Format::kJson},
                                             {"folded", Format::kFolded},
                                             {"pprof", Format::kPprof}};

constexpr const char* kDescription =
    "memtrail: find memory leaks in running processes with eBPF, without restarting them.";

constexpr const char* kExamples = R"(EXAMPLES
  memtrail leaks -p 4242
      Trace process 4242; print the top allocation sites every 5 s and a final report
      on Ctrl-C.
  memtrail leaks -p 4242 -p 4243 --duration 30 --json leaks.json
      Trace two processes for 30 s and write the final report as JSON.
  memtrail leaks --interval 10 --top 20 --min-age 2 -- ./server --port 8080
      Launch a command and trace it from its first instruction.
  memtrail leaks -p 4242 --duration 60 --format pprof -o heap.pb.gz
      Write the final report as a pprof profile (go tool pprof, Pyroscope, Parca).
  memtrail leaks -p 4242 --duration 300 --interval 2 --plot memory.svg
      Also draw memory over time as a chart per process (RSS, traced bytes, the
      fastest growing sites), to open in a browser.
  memtrail report leaks.json --format folded | flamegraph.pl > leaks.svg
      Render a saved report again, here as folded stacks for a flame graph.
  memtrail diff before.json after.json
      Show which allocation sites grew between two saved reports.
  memtrail paging
      Is the host or a container thrashing, who causes it, who suffers: one screen
      every 2 s until Ctrl-C.
  memtrail paging --duration 60 --interval 2 --json paging.json
  memtrail paging --cgroup /sys/fs/cgroup/memory/db
)";

constexpr const char* kExitStatus = R"(
EXIT STATUS
  0  the report was produced
  1  runtime failure: no such process, no allocator found, no BPF permission,
     unwritable output file, ...
  2  usage error: unknown option or bad option value

memtrail needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN). The traced process is not
stopped, restarted or modified; if memtrail is killed, the kernel removes its probes and the
process runs on.)";

constexpr const char* kLeaksFooter =
    R"(The target keeps running untouched: no restart, no preload, no ptrace. memtrail stops
on Ctrl-C, SIGTERM, when --duration has elapsed, or when every target has exited; then it
prints the final report and writes the JSON file (--json). Allocations made before memtrail
attached are invisible; frees of them are counted as unmatched frees.

Output: text reports on stdout (every --interval unless --quiet, and a final one in --format,
to -o FILE or stdout); diagnostics on stderr, including one `memtrail: tracing pid N` line per
target once its probes are attached. --json writes the final report in the format of
docs/json-format.md. Each site gets a verdict from its growth over the run (leak, suspect,
steady, transient, too_short); memory runtimes keep on purpose is marked SUPPRESSED.

Traced functions: malloc, calloc, realloc, reallocarray, free, posix_memalign, aligned_alloc,
memalign, valloc, pvalloc, in the module the process binds malloc from (its C library, or
the executable itself when statically linked); C++ operators new, new[], delete and delete[]
(all variants) in the module that defines them (libstdc++). Blocks released by a function
that does not pair with their allocator (new/free, malloc/delete) are reported.)";

// The largest pid Linux hands out (PID_MAX_LIMIT on 64-bit).
constexpr uint64_t kMaxPid = 4'194'304;
// The most sites or processes a report can list: beyond any screen, and far from overflow.
constexpr uint64_t kMaxTop = 1'000'000;
// The longest --interval: a day. Longer intervals would never report before --duration.
constexpr double kMaxIntervalSeconds = 86'400;

// All of `text` as a number (what strtod reads: 2, 0.5, 1e3, also inf and nan, which the
// ranges then refuse); nullopt for anything else.
std::optional<double> number_in(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return std::nullopt;
  return value;
}

// All of `text` as a whole decimal number from `least` to `most`; nullopt for anything else
// (signs, fractions, exponents, numbers too large for 64 bits).
std::optional<uint64_t> whole_in(const std::string& text, uint64_t least, uint64_t most) {
  if (text.empty() || text.size() > 20 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE || value < least || value > most) return std::nullopt;
  return value;
}

// The numbers of a command line, given as text to CLI11 so that memtrail, not CLI11, says what
// a bad one should be. Each check returns the message of a usage error, or empty.
std::string seconds_between(const char* name, const std::string& text, double least, double most,
                            double& seconds) {
  auto value = number_in(text);
  if (!value || !(*value >= least) || !(*value <= most)) {
    std::ostringstream message;
    message << name << " must be from " << least << " to " << most << " seconds, not '" << text
            << "'";
    return message.str();
  }
  seconds = *value;
  return "";
}

std::string seconds_above_zero(const char* name, const std::string& text, double& seconds) {
  auto value = number_in(text);
  if (!value || !(*value > 0) || !std::isfinite(*value)) {
    return std::string(name) + " must be a number of seconds above 0, not '" + text + "'";
  }
  seconds = *value;
  return "";
}

template <typename T>
std::string whole_between(const char* name, const std::string& text, uint64_t least, uint64_t most,
                          T& number) {
  auto value = whole_in(text, least, most);
  if (!value) {
    return std::string(name) + " must be a whole number from " + std::to_string(least) + " to " +
           std::to_string(most) + ", not '" + text + "'";
  }
  number = static_cast<T>(*value);
  return "";
}

std::string pids_of(const char* name, const std::vector<std::string>& texts,
                    std::vector<uint32_t>& pids) {
  for (const auto& text : texts) {
    auto pid = whole_in(text, 1, kMaxPid);
    if (!pid) {
      return std::string(name) + " must be a positive process id (1 to " + std::to_string(kMaxPid) +
             "), not '" + text + "'";
    }
    pids.push_back(static_cast<uint32_t>(*pid));
  }
  return "";
}

}  // namespace

uint32_t max_allocations_for(uint64_t available_bytes) {
  constexpr uint64_t kLeast = 1u << 18, kMost = 1u << 22, kStep = 1u << 16;
  uint64_t allocations = available_bytes / 256 / 64;
  allocations = std::clamp(allocations, kLeast, kMost);
  return static_cast<uint32_t>(allocations / kStep * kStep);
}

uint32_t max_stacks_for(uint64_t available_bytes) {
  constexpr uint64_t kLeast = 1u << 14, kMost = 1u << 18, kStep = 1u << 12;
  uint64_t stacks = available_bytes / 1024 / 640;
  stacks = std::clamp(stacks, kLeast, kMost);
  return static_cast<uint32_t>(stacks / kStep * kStep);
}

uint32_t unwind_table_mib_for(bool host_wide) { return host_wide ? 16 : 8; }

Command parse_command_line(int argc, const char* const* argv) {
  CLI::App app{kDescription, "memtrail"};
  app.footer(std::string(kExamples) + kExitStatus);
  app.set_version_flag("--version", std::string("memtrail ") + kVersion);
  app.require_subcommand(1);

  LeaksOptions options;
  // Numbers as the user typed them: checked below, with messages of memtrail's own.
  std::vector<std::string> pid_texts, excluded_pid_texts;
  std::string duration_text, interval_text, top_text, min_age_text, json_version_text,
      unwind_table_mib_text;
  double max_allocations = 0;
  CLI::App* leaks = app.add_subcommand(
      "leaks", "Trace allocations of processes and report where outstanding memory comes from");
  leaks->footer(std::string(kLeaksFooter) + "\n\n" + kExamples + kExitStatus);
  leaks->add_option("-p,--pid", pid_texts, "Process to trace (repeat for several)")
      ->type_name("PID");
  leaks->add_flag("-a,--all", options.all,
                  "Trace every process that uses a traced allocator, also those started later "
                  "(host-wide; narrow it with --comm, --cgroup, --exclude-pid)");
  leaks
      ->add_option("--comm", options.comms,
                   "With --all: only processes whose name (comm, as ps -o comm shows it) is "
                   "NAME (repeat for several)")
      ->type_name("NAME");
  leaks
      ->add_option("--cgroup", options.cgroups,
                   "With --all: only processes in this cgroup or below it: a path as in "
                   "/proc/PID/cgroup, e.g. /system.slice/nginx.service (repeat for several)")
      ->type_name("PATH");
  leaks
      ->add_option("--exclude-pid", excluded_pid_texts,
                   "With --all: leave this process out (repeat for several)")
      ->type_name("PID");
  leaks->add_option("-d,--duration", duration_text, "Stop after SECONDS (default: until Ctrl-C)")
      ->type_name("SECONDS");
  leaks
      ->add_option("-i,--interval", interval_text,
                   "Print the top sites, and sample each site's memory for its verdict, every "
                   "SECONDS (default 5)")
      ->type_name("SECONDS");
  leaks->add_option("-n,--top", top_text, "Sites shown in text reports (default 10)")
      ->type_name("N");
  leaks->add_option("--min-age", min_age_text, "Hide allocations younger than SECONDS (default 0)")
      ->type_name("SECONDS");
  leaks->add_option("-j,--json", options.json_path, "Write the final report as JSON to FILE")
      ->type_name("FILE");
  std::string leaks_format = "text";
  leaks
      ->add_option("-f,--format", leaks_format,
                   "Format of the final report: text (default), json, folded (flame graph "
                   "stacks) or pprof (gzipped profile.proto; needs -o)")
      ->type_name("FORMAT");
  leaks
      ->add_option("-o,--output", options.output_path,
                   "Write the final report to FILE instead of stdout")
      ->type_name("FILE");
  leaks
      ->add_option("--flamegraph", options.flamegraph_path,
                   "Also write an interactive SVG flame graph of outstanding bytes to FILE "
                   "(open it in a browser)")
      ->type_name("FILE.svg");
  leaks
      ->add_option("--plot", options.plot_path,
                   "Also write an SVG chart of memory over time to FILE, one per process: "
                   "private memory (RSS), traced outstanding bytes and the fastest growing "
                   "sites (open it in a browser)")
      ->type_name("FILE.svg");
  leaks
      ->add_option("--suppressions", options.suppressions_path,
                   "Sites to report as memory kept on purpose, besides the built-in ones: one "
                   "per line, FUNCTION_GLOB [MODULE_GLOB] [# REASON]")
      ->type_name("FILE");
  leaks
      ->add_option("--json-version", json_version_text,
                   "JSON schema version to write: 2 (default: with leak verdicts and growth "
                   "series) or 1 (for readers of memtrail.leaks/1)")
      ->type_name("N");
  leaks
      ->add_option("--max-allocations", max_allocations,
                   "Outstanding allocations memtrail can hold: sizes its table, 64 bytes of "
                   "kernel memory each; more are counted as drops (default: from available "
                   "memory, 1/256 of it, 262144 to 4194304)")
      ->type_name("N");
  double max_stacks = 0;
  leaks
      ->add_option("--max-stacks", max_stacks,
                   "Distinct call stacks (sites) memtrail can hold, about 600 bytes of kernel "
                   "memory each; an allocation from one more is kept under its calling function "
                   "only (default: from available memory, 1/1024 of it, 16384 to 262144)")
      ->type_name("N");
  double sample_rate = 0;
  leaks
      ->add_option("--sample-rate", sample_rate,
                   "Record one allocation per BYTES allocated on average, as tcmalloc does, "
                   "for less overhead; totals stay unbiased estimates (default 0: every "
                   "allocation)")
      ->type_name("BYTES");
  leaks->add_flag("--cxx", options.trace_cxx,
                  "Also probe C++ operators new and delete (libstdc++): sites show new/new[], "
                  "mismatched new/free and malloc/delete are reported; costs more traps per "
                  "new/delete (see README)");
  leaks->add_flag("--mmap", options.mmap,
                  "Also follow memory the program maps itself (anonymous mmap, mremap, brk "
                  "outside the allocators) with syscall tracepoints; while on, every system "
                  "call of every process on the host pays for them (see README)");
  leaks->add_flag("--no-follow-forks", options.no_follow_forks,
                  "Do not trace the processes the targets fork (traced by default, from their "
                  "fork on)");
  std::vector<std::string> allocator_texts;
  leaks
      ->add_option("--allocator", allocator_texts,
                   "Also trace a custom allocator: its file and functions, each in the role "
                   "of a standard one, e.g. /usr/lib/libfoo.so:foo_alloc=malloc,foo_free=free "
                   "(repeat for several)")
      ->type_name("PATH:SYMBOL=ROLE,...");
  std::string unwind_mode = "auto";
  leaks
      ->add_option("--unwind", unwind_mode,
                   "How call stacks are walked: auto (default: CFI tables from .eh_frame for "
                   "modules built without frame pointers, frame pointers elsewhere), dwarf "
                   "(CFI tables wherever there is CFI, nothing guessed) or fp (frame pointers "
                   "only: cheapest, stops at the first frame without one)")
      ->type_name("MODE");
  std::string python_frames = "mixed";
  leaks
      ->add_option("--python-frames", python_frames,
                   "What stacks of CPython processes show: mixed (default: Python frames, "
                   "with file and line, in place of the interpreter's eval loop, between the "
                   "native frames of C code), python (Python frames only) or native (the "
                   "interpreter's C frames only; no Python frame walk, no cost)")
      ->type_name("MODE");
  std::string python_objects = "on";
  leaks
      ->add_option("--python-objects", python_objects,
                   "For CPython processes (3.11), charge every Python object to the stack that "
                   "created it (file and line), with its size as sys.getsizeof counts it: on "
                   "(default), exact or off. A probe on each of the interpreter's object creations "
                   "costs microseconds an object: on attaches them part of the time "
                   "(--python-objects-duty) and scales what they saw, marked as estimates; "
                   "exact attaches them all the time (for a short diagnosis)")
      ->type_name("on|exact|off");
  double python_objects_duty_percent = kDefaultPythonObjectsDuty * 100;
  leaks
      ->add_option("--python-objects-duty", python_objects_duty_percent,
                   "With --python-objects on, the share of each second the object probes are "
                   "attached, in percent (default " +
                       std::to_string(static_cast<int>(kDefaultPythonObjectsDuty * 100)) +
                       "); 100 is exact")
      ->type_name("PERCENT");
  leaks->add_flag("--python-types", options.python_types,
                  "CPython objects by type (python_types in JSON). With Python objects tracked "
                  "(the default) they come from them and this adds nothing; with "
                  "--python-objects off, count the objects the garbage collector tracks "
                  "(made minus freed since attach) by a probe per object made and freed");
  leaks
      ->add_option("--unwind-table-mib", unwind_table_mib_text,
                   "Kernel memory for CFI unwind tables, shared by all traced processes "
                   "(default 8, 16 with --all, and a quarter more for page indexes; libc takes "
                   "0.25): modules "
                   "that do not fit are unwound by "
                   "frame pointers (auto) or not at all (dwarf), and the report says so")
      ->type_name("MIB");
  leaks->add_flag("-q,--quiet", options.quiet, "Print only the final report");
  leaks->add_flag("-v,--verbose", options.verbose,
                  "Show probe placement, map memory, report timing and libbpf messages");
  // Hidden (empty group): for bench/run.py, which measures what the probes' traps alone cost.
  leaks
      ->add_flag("--probe-floor", options.probe_floor,
                 "Attach every probe with programs that do nothing (benchmarks)")
      ->group("");
  // Two flags rather than CLI11's "!--no-" form, whose help prints a bare "{false}".
  leaks->add_flag("--return-sites", options.return_sites,
                  "On by default: probe malloc and calloc inside, where they return (one kernel "
                  "entry a call, not two), where memtrail proves from their code that every "
                  "path is seen with its size; -v says where, or why not");
  leaks->add_flag_callback(
      "--no-return-sites", [&options] { options.return_sites = false; },
      "Probe malloc and calloc at entry and return instead (three kernel entries per "
      "malloc+free pair, not two)");
  leaks->add_option("command", options.command, "Command to launch and trace (after --)")
      ->type_name("COMMAND [ARGS]");
  app.positionals_at_end(false);

  PagingOptions paging_options;
  std::string paging_duration_text, paging_interval_text, paging_top_text, max_processes_text;
  std::string deep_mode = "auto";
  CLI::App* paging = app.add_subcommand(
      "paging",
      "Diagnose paging pressure and thrashing: host, memory cgroups, culprits and victims");
  paging
      ->add_option("-d,--duration", paging_duration_text,
                   "Stop after SECONDS (default: until Ctrl-C)")
      ->type_name("SECONDS");
  paging
      ->add_option("-i,--interval", paging_interval_text,
                   "One screen, and one point of every series, every SECONDS (default 2)")
      ->type_name("SECONDS");
  paging->add_option("-n,--top", paging_top_text, "Processes shown (default 10)")->type_name("N");
  paging
      ->add_option("-j,--json", paging_options.json_path,
                   "Write the final report as JSON (memtrail.paging/1) to FILE")
      ->type_name("FILE");
  paging
      ->add_option("--cgroup", paging_options.cgroup,
                   "Focus on one memory cgroup and its processes: a cgroup v1 or v2 directory, "
                   "or its path as in /proc/PID/cgroup")
      ->type_name("PATH");
  paging
      ->add_option("--deep", deep_mode,
                   "Per-fault hooks (fault timing, refaults and swap-ins per process): auto "
                   "(default: attached while memory is under pressure), always, never")
      ->type_name("MODE");
  paging
      ->add_option("--max-processes", max_processes_text,
                   "Processes with BPF counters at once (default 32768); events of more are "
                   "counted as not recorded")
      ->type_name("N");
  paging->add_flag("-q,--quiet", paging_options.quiet, "Print only the final report");
  paging->add_flag("-v,--verbose", paging_options.verbose, "Show libbpf messages and timings");
  paging->footer(
      "Verdicts per interval for the host and each memory cgroup:\n"
      "  ok         none of the below\n"
      "  pressure   PSI some >= 5%, or processes stall >= 0.05 s/s in reclaim\n"
      "  thrashing  PSI full >= 10% (or some >= 20%) while memory is re-read fast (refaults and\n"
      "             swap-ins >= 0.2x the scope's memory per second, or >= 64 MiB/s), for 2\n"
      "             intervals in a row\n"
      "Processes are culprits when their footprint (anon + shmem + swap) keeps growing while\n"
      "memory is short, victims when they stall on faults and reclaim without growing. The\n"
      "per-fault hooks attach when a PSI trigger fires (some >= 100 ms in 2 s) and detach after\n"
      "3 calm intervals. See README, \"Diagnosing thrashing\", and docs/paging-format.md.\n");

  ReportOptions report_options;
  std::string report_top_text, report_json_version_text;
  CLI::App* report = app.add_subcommand(
      "report", "Render a saved JSON report (memtrail leaks --json) in another format");
  report->add_option("file", report_options.input_path, "JSON report written by memtrail leaks")
      ->required()
      ->type_name("FILE");
  std::string report_format = "text";
  report
      ->add_option("-f,--format", report_format, "text (default), json, folded or pprof (needs -o)")
      ->type_name("FORMAT");
  report->add_option("-o,--output", report_options.output_path, "Write to FILE, not stdout")
      ->type_name("FILE");
  report
      ->add_option("--flamegraph", report_options.flamegraph_path,
                   "Also write an interactive SVG flame graph of outstanding bytes to FILE")
      ->type_name("FILE.svg");
  report
      ->add_option("--plot", report_options.plot_path,
                   "Also write an SVG chart of memory over time per process to FILE")
      ->type_name("FILE.svg");
  report->add_option("-n,--top", report_top_text, "Sites shown as text (default 10)")
      ->type_name("N");
  report
      ->add_option("--json-version", report_json_version_text,
                   "JSON schema version to write: 2 (default) or 1")
      ->type_name("N");
  report->footer(
      "EXAMPLES\n"
      "  memtrail report leaks.json --format folded | flamegraph.pl > leaks.svg\n"
      "  memtrail report leaks.json --format pprof -o leaks.pb.gz && "
      "go tool pprof -http=: leaks.pb.gz\n");

  DiffOptions diff_options;
  std::string diff_top_text;
  CLI::App* diff =
      app.add_subcommand("diff", "Show which allocation sites grew between two saved JSON reports");
  diff->add_option("before", diff_options.before_path, "The earlier report")
      ->required()
      ->type_name("BEFORE.json");
  diff->add_option("after", diff_options.after_path, "The later report")
      ->required()
      ->type_name("AFTER.json");
  diff->add_option("-n,--top", diff_top_text, "Sites shown (default 20)")->type_name("N");
  diff->footer(
      "Sites match by command name and call stack (module and offset of each frame), "
      "so reports\nof two runs of the same programs compare even though pids and "
      "addresses differ.\n");

  ServeOptions serve_options;
  std::string listen_text, serve_interval_text, window_text, serve_max_processes_text,
      max_cgroups_text, max_sessions_text, max_profile_text, trace_interval_text, max_sites_text,
      pyroscope_interval_text;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Run as an agent: memory of every process and cgroup as Prometheus metrics, "
      "exact leak profiles on demand (pprof, JSON)");
  serve
      ->add_option("--listen", listen_text,
                   "Address and port of the HTTP server (default 127.0.0.1:9752)")
      ->type_name("ADDR:PORT");
  serve
      ->add_option("--auth-token-file", serve_options.auth_token_file,
                   "Ask every request for 'Authorization: Bearer TOKEN', TOKEN read from FILE")
      ->type_name("FILE");
  serve
      ->add_option("-i,--interval", serve_interval_text,
                   "Scan every process and memory cgroup every SECONDS (default 10)")
      ->type_name("SECONDS");
  serve->add_option("--window", window_text, "Scans a growth verdict looks back on (default 60)")
      ->type_name("N");
  serve
      ->add_option("--max-processes", serve_max_processes_text,
                   "Processes with series of their own, largest first (default 200); growing "
                   "ones always have theirs, the rest are folded")
      ->type_name("N");
  serve
      ->add_option("--max-cgroups", max_cgroups_text,
                   "Memory cgroups with series of their own (default 200), as --max-processes")
      ->type_name("N");
  serve
      ->add_option("--max-sessions", max_sessions_text,
                   "On-demand profiles traced at once (default 2); more are answered 429")
      ->type_name("N");
  serve
      ->add_option("--max-profile-seconds", max_profile_text,
                   "Longest on-demand profile (default 300)")
      ->type_name("SECONDS");
  serve
      ->add_option("--trace", serve_options.trace,
                   "Trace this target exactly all the time, its sites in /metrics: pid:N, "
                   "comm:NAME or cgroup:PATH (repeat for several)")
      ->type_name("TARGET");
  serve
      ->add_option("--trace-interval", trace_interval_text,
                   "Read the --trace targets' sites every SECONDS (default 10)")
      ->type_name("SECONDS");
  serve
      ->add_option("--max-sites", max_sites_text,
                   "Sites of each --trace target in /metrics, leaks first (default 50)")
      ->type_name("N");
  serve
      ->add_option("--pyroscope-url", serve_options.pyroscope_url,
                   "Push each --trace target's profile to this Pyroscope server")
      ->type_name("URL");
  serve
      ->add_option("--pyroscope-interval", pyroscope_interval_text,
                   "Push every SECONDS (default 15)")
      ->type_name("SECONDS");
  serve->add_flag("-v,--verbose", serve_options.verbose, "Log every request and session");
  serve->footer(
      "Endpoints: / (this list), /healthz, /readyz, /metrics (Prometheus text),\n"
      "/debug/pprof/heap?pid=N&seconds=S (also comm=NAME, cgroup=PATH; gzipped pprof,\n"
      "inuse_space), /debug/pprof/allocs (alloc_space), /report.json (memtrail.leaks JSON).\n"
      "SIGTERM or SIGINT stops the agent. See README, \"Running on a fleet\".\n");

  // CLI11 reports an unknown subcommand as "a subcommand is required": name it instead.
  std::string command_name = argc > 1 ? argv[1] : "";
  if (argc > 1 && argv[1][0] != '-' && command_name != "leaks" && command_name != "report" &&
      command_name != "diff" && command_name != "paging" && command_name != "serve") {
    return ExitRequest{kExitUsage, "memtrail: error: unknown command '" + command_name +
                                       "' (commands: leaks, paging, report, diff, serve)\n"
                                       "memtrail: hint: see memtrail --help\n"};
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    return ExitRequest{kExitOk, app.help()};  // the selected subcommand's help, if any
  } catch (const CLI::CallForAllHelp&) {
    return ExitRequest{kExitOk, app.help("", CLI::AppFormatMode::All)};
  } catch (const CLI::CallForVersion&) {
    return ExitRequest{kExitOk, std::string("memtrail ") + kVersion + "\n"};
  } catch (const CLI::ParseError& error) {
    return ExitRequest{kExitUsage,
                       std::string("memtrail: error: ") + error.what() +
                           "\nmemtrail: hint: see memtrail " +
                           (command_name.empty() || command_name[0] == '-' ? std::string("")
                                                                           : command_name + " ") +
                           "--help\n"};
  }
  auto usage_of = [](const std::string& command, const std::string& message) {
    return ExitRequest{kExitUsage, "memtrail: error: " + message +
                                       "\nmemtrail: hint: see memtrail " + command + " --help\n"};
  };
  auto format_of = [](const std::string& name) -> std::optional<Format> {
    auto it = kFormats.find(name);
    if (it == kFormats.end()) return std::nullopt;
    return it->second;
  };
  if (report->parsed()) {
    auto format = format_of(report_format);
    if (!format) return usage_of("report", "--format must be text, json, folded or pprof");
    report_options.format = *format;
    std::string error;
    if (report->count("--top")) {
      error = whole_between("--top", report_top_text, 1, kMaxTop, report_options.top);
    }
    if (error.empty() && report->count("--json-version")) {
      error = whole_between("--json-version", report_json_version_text, 1, 2,
                            report_options.json_version);
    }
    if (!error.empty()) return usage_of("report", error);
    if (report_options.format == Format::kPprof && report_options.output_path.empty()) {
      return usage_of("report", "pprof is a binary format: give -o FILE");
    }
    return report_options;
  }
  if (paging->parsed()) {
    std::string error;
    if (paging->count("--duration")) {
      double duration = 0;
      error = seconds_above_zero("--duration", paging_duration_text, duration);
      paging_options.duration_s = duration;
    }
    // Below 0.1 s a screen per interval would be all memtrail does.
    if (error.empty() && paging->count("--interval")) {
      error = seconds_between("--interval", paging_interval_text, 0.1, kMaxIntervalSeconds,
                              paging_options.interval_s);
    }
    if (error.empty() && paging->count("--top")) {
      error = whole_between("--top", paging_top_text, 1, kMaxTop, paging_options.top);
    }
    if (error.empty() && paging->count("--max-processes")) {
      error = whole_between("--max-processes", max_processes_text, 64, kMaxPid,
                            paging_options.max_processes);
    }
    if (!error.empty()) return usage_of("paging", error);
    static const std::map<std::string, DeepMode> kDeepModes{
        {"auto", DeepMode::kAuto}, {"always", DeepMode::kAlways}, {"never", DeepMode::kNever}};
    auto mode = kDeepModes.find(deep_mode);
    if (mode == kDeepModes.end()) return usage_of("paging", "--deep must be auto, always or never");
    paging_options.deep = mode->second;
    return paging_options;
  }
  if (serve->parsed()) {
    std::string error;
    if (serve->count("--listen")) {
      auto colon = listen_text.rfind(':');
      uint16_t port = 0;
      if (colon == std::string::npos || colon == 0) {
        error = "--listen must be ADDR:PORT, as 127.0.0.1:9752, not '" + listen_text + "'";
      } else {
        error = whole_between("--listen's port", listen_text.substr(colon + 1), 1, 65535, port);
        serve_options.listen_address = listen_text.substr(0, colon);
        serve_options.listen_port = port;
      }
    }
    if (error.empty() && serve->count("--interval")) {
      error = seconds_between("--interval", serve_interval_text, 0.1, kMaxIntervalSeconds,
                              serve_options.interval_s);
    }
    if (error.empty() && serve->count("--window")) {
      error = whole_between("--window", window_text, 4, 100000, serve_options.window);
    }
    if (error.empty() && serve->count("--max-processes")) {
      error = whole_between("--max-processes", serve_max_processes_text, 0, 100000,
                            serve_options.max_processes);
    }
    if (error.empty() && serve->count("--max-cgroups")) {
      error =
          whole_between("--max-cgroups", max_cgroups_text, 0, 100000, serve_options.max_cgroups);
    }
    if (error.empty() && serve->count("--max-sessions")) {
      error = whole_between("--max-sessions", max_sessions_text, 0, 16, serve_options.max_sessions);
    }
    if (error.empty() && serve->count("--max-profile-seconds")) {
      error = seconds_between("--max-profile-seconds", max_profile_text, 1, 3600,
                              serve_options.max_profile_s);
      serve_options.max_profile_s = std::floor(serve_options.max_profile_s);
    }
    if (error.empty() && serve->count("--trace-interval")) {
      error = seconds_between("--trace-interval", trace_interval_text, 0.1, kMaxIntervalSeconds,
                              serve_options.trace_interval_s);
    }
    if (error.empty() && serve->count("--max-sites")) {
      error = whole_between("--max-sites", max_sites_text, 1, 100000, serve_options.max_sites);
    }
    if (error.empty() && serve->count("--pyroscope-interval")) {
      error = seconds_between("--pyroscope-interval", pyroscope_interval_text, 1,
                              kMaxIntervalSeconds, serve_options.pyroscope_interval_s);
    }
    if (error.empty() && !serve_options.pyroscope_url.empty() &&
        serve_options.pyroscope_url.rfind("http://", 0) != 0 &&
        serve_options.pyroscope_url.rfind("https://", 0) != 0) {
      error = "--pyroscope-url must start with http:// or https://, not '" +
              serve_options.pyroscope_url + "'";
    }
    if (error.empty() && !serve_options.pyroscope_url.empty() && serve_options.trace.empty()) {
      error = "--pyroscope-url pushes the --trace targets' profiles: give --trace too";
    }
    if (!error.empty()) return usage_of("serve", error);
    serve_options.default_profile_s =
        std::min(serve_options.default_profile_s, serve_options.max_profile_s);
    return serve_options;
  }
  if (diff->parsed()) {
    if (diff->count("--top")) {
      std::string error = whole_between("--top", diff_top_text, 1, kMaxTop, diff_options.top);
      if (!error.empty()) return usage_of("diff", error);
    }
    return diff_options;
  }

  auto usage = [](const std::string& message) {
    return ExitRequest{kExitUsage, "memtrail: error: " + message +
                                       "\nmemtrail: hint: see memtrail leaks --help\n"};
  };
  {
    std::string error = pids_of("--pid", pid_texts, options.pids);
    if (error.empty()) error = pids_of("--exclude-pid", excluded_pid_texts, options.excluded_pids);
    if (error.empty() && leaks->count("--duration")) {
      double duration = 0;
      error = seconds_above_zero("--duration", duration_text, duration);
      options.duration_s = duration;
    }
    // Below 10 ms, reading the maps would be all memtrail does.
    if (error.empty() && leaks->count("--interval")) {
      error = seconds_between("--interval", interval_text, 0.01, kMaxIntervalSeconds,
                              options.interval_s);
    }
    if (error.empty() && leaks->count("--top")) {
      error = whole_between("--top", top_text, 1, kMaxTop, options.top);
    }
    if (error.empty() && leaks->count("--min-age")) {
      auto min_age = number_in(min_age_text);
      if (!min_age || !(*min_age >= 0) || !std::isfinite(*min_age)) {
        error = "--min-age must be a number of seconds, 0 or more, not '" + min_age_text + "'";
      } else {
        options.min_age_s = *min_age;
      }
    }
    if (error.empty() && leaks->count("--json-version")) {
      error = whole_between("--json-version", json_version_text, 1, 2, options.json_version);
    }
    if (error.empty() && leaks->count("--unwind-table-mib")) {
      error = whole_between("--unwind-table-mib", unwind_table_mib_text, 1, 4096,
                            options.unwind_table_mib);
    }
    if (!error.empty()) return usage(error);
  }
  if (leaks->count("--max-allocations")) {
    if (!(max_allocations >= 1024) || max_allocations > (1u << 28) ||
        max_allocations != std::floor(max_allocations)) {
      return usage("--max-allocations must be a whole number from 1024 to 268435456");
    }
    options.max_allocations = static_cast<uint32_t>(max_allocations);
  }
  if (leaks->count("--max-stacks")) {
    if (!(max_stacks >= 1024) || max_stacks > (1u << 22) || max_stacks != std::floor(max_stacks)) {
      return usage("--max-stacks must be a whole number from 1024 to 4194304");
    }
    options.max_stacks = static_cast<uint32_t>(max_stacks);
  }
  if (!(sample_rate >= 0) || sample_rate > 4294967296.0 || sample_rate != std::floor(sample_rate)) {
    return usage("--sample-rate must be a whole number of bytes from 0 to 4294967296");
  }
  options.sample_rate = static_cast<uint64_t>(sample_rate);
  auto unwind = model::parse_unwind_mode(unwind_mode);
  if (!unwind) return usage("--unwind must be auto, dwarf or fp");
  options.unwind = *unwind;
  if (python_objects != "on" && python_objects != "exact" && python_objects != "off") {
    return usage("--python-objects must be on, exact or off");
  }
  options.python_objects = python_objects != "off";
  if (!(python_objects_duty_percent > 0 && python_objects_duty_percent <= 100)) {
    return usage("--python-objects-duty must be a percentage above 0, at most 100");
  }
  options.python_objects_duty = python_objects == "exact" ? 1.0 : python_objects_duty_percent / 100;
  auto frames = model::parse_python_frames_mode(python_frames);
  if (!frames) return usage("--python-frames must be mixed, python or native");
  options.python_frames = *frames;
  auto format = format_of(leaks_format);
  if (!format) return usage("--format must be text, json, folded or pprof");
  options.format = *format;
  if (options.format == Format::kPprof && options.output_path.empty()) {
    return usage("pprof is a binary format: give -o FILE");
  }
  for (const auto& text : allocator_texts) {
    std::string error;
    auto allocator = parse_allocator_option(text, error);
    if (!allocator) return usage(error);
    options.allocators.push_back(std::move(*allocator));
  }
  if (options.all && (!options.pids.empty() || !options.command.empty())) {
    return usage("--all traces every process: give it without -p or a command");
  }
  if (!options.all &&
      (!options.comms.empty() || !options.cgroups.empty() || !options.excluded_pids.empty())) {
    return usage("--comm, --cgroup and --exclude-pid narrow --all: give --all too");
  }
  if (options.pids.empty() && options.command.empty() && !options.all) {
    return usage("nothing to trace: give -p PID, -- COMMAND or --all");
  }
  return options;
}

}  // namespace memtrail::cli
