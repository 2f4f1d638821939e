// SPDX-License-Identifier: Apache-2.0
// Command-line parsing and validation: good values become options, bad ones exit 2.
#include "cli/options.h"

#include <gtest/gtest.h>

#include <cctype>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/error.h"

namespace memtrail::cli {
namespace {

Command parse(std::initializer_list<const char*> args) {
  std::vector<const char*> argv{"memtrail"};
  argv.insert(argv.end(), args);
  return parse_command_line(static_cast<int>(argv.size()), argv.data());
}

TEST(Options, ParsesPidsDurationAndJson) {
  auto command =
      parse({"leaks", "-p", "4242", "-p", "4243", "--duration", "30", "--json", "x.json"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  const auto& options = std::get<LeaksOptions>(command);
  EXPECT_EQ(options.pids, (std::vector<uint32_t>{4242, 4243}));
  ASSERT_TRUE(options.duration_s.has_value());
  EXPECT_DOUBLE_EQ(*options.duration_s, 30);
  EXPECT_EQ(options.json_path, "x.json");
  EXPECT_DOUBLE_EQ(options.interval_s, 5);
  EXPECT_EQ(options.top, 10u);
  EXPECT_FALSE(options.max_allocations);                // sized from available memory at start
  EXPECT_EQ(options.unwind, model::UnwindMode::kAuto);  // whole stacks by default
  EXPECT_EQ(options.unwind_table_mib, 0u);              // chosen at start: unwind_table_mib_for
  EXPECT_EQ(unwind_table_mib_for(false), 8u);
  EXPECT_EQ(unwind_table_mib_for(true), 16u);  // --all: every binary of the host
  // Python frames where there are any
  EXPECT_EQ(options.python_frames, model::PythonFramesMode::kMixed);
}

TEST(Options, ReturnSitesAreOnByDefaultAndCanBeTurnedOff) {
  EXPECT_TRUE(std::get<LeaksOptions>(parse({"leaks", "-p", "1"})).return_sites);
  EXPECT_TRUE(std::get<LeaksOptions>(parse({"leaks", "-p", "1", "--return-sites"})).return_sites);
  EXPECT_FALSE(
      std::get<LeaksOptions>(parse({"leaks", "-p", "1", "--no-return-sites"})).return_sites);
}

TEST(Options, MaxAllocationsGivenOrSizedFromAvailableMemory) {
  auto command = parse({"leaks", "-p", "1", "--max-allocations", "4096"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  EXPECT_EQ(std::get<LeaksOptions>(command).max_allocations, 4096u);
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  // 1/256 of available memory at 64 bytes each, in steps of 65,536, within [2^18, 2^22].
  EXPECT_EQ(max_allocations_for(24 * kGiB), 1572864u);  // 96 MiB of table on 24 GiB
  EXPECT_EQ(max_allocations_for(16 * kGiB), 1048576u);
  EXPECT_EQ(max_allocations_for(1 * kGiB), 262144u);      // the floor: 16 MiB
  EXPECT_EQ(max_allocations_for(0), 262144u);             // meminfo unreadable
  EXPECT_EQ(max_allocations_for(1024 * kGiB), 4194304u);  // the ceiling: 256 MiB
  EXPECT_EQ(max_allocations_for(20 * kGiB) % 65536, 0u);
  EXPECT_EQ(max_stacks_for(24 * kGiB), 36864u);  // about 22 MiB of stacks on 24 GiB
  EXPECT_EQ(max_stacks_for(0), 16384u);
  EXPECT_EQ(max_stacks_for(1024 * kGiB), 262144u);
  auto given = std::get<LeaksOptions>(parse({"leaks", "-p", "1", "--max-stacks", "5000"}));
  EXPECT_EQ(given.max_stacks, 5000u);
  EXPECT_FALSE(std::get<LeaksOptions>(parse({"leaks", "-p", "1"})).max_stacks.has_value());
}

TEST(Options, UnwindModeAndTableSize) {
  for (const char* mode : {"fp", "dwarf", "auto"}) {
    auto command = parse({"leaks", "-p", "1", "--unwind", mode, "--unwind-table-mib", "64"});
    ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command)) << mode;
    EXPECT_STREQ(model::unwind_mode_name(std::get<LeaksOptions>(command).unwind), mode);
    EXPECT_EQ(std::get<LeaksOptions>(command).unwind_table_mib, 64u);
  }
}

TEST(Options, ParsesACommandAfterDoubleDash) {
  auto command = parse({"leaks", "--interval", "10", "--top", "20", "--min-age", "2", "--",
                        "./server", "--port", "8080"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  const auto& options = std::get<LeaksOptions>(command);
  EXPECT_EQ(options.command, (std::vector<std::string>{"./server", "--port", "8080"}));
  EXPECT_DOUBLE_EQ(options.interval_s, 10);
  EXPECT_EQ(options.top, 20u);
  EXPECT_DOUBLE_EQ(options.min_age_s, 2);
  EXPECT_FALSE(options.duration_s.has_value());
}

void expect_usage_error(std::initializer_list<const char*> args, const std::string& fragment) {
  auto command = parse(args);
  ASSERT_TRUE(std::holds_alternative<ExitRequest>(command));
  const auto& request = std::get<ExitRequest>(command);
  EXPECT_EQ(request.code, kExitUsage);
  EXPECT_EQ(request.message.rfind("memtrail: error: ", 0), 0u) << request.message;
  EXPECT_NE(request.message.find(fragment), std::string::npos) << request.message;
}

TEST(Options, RejectsBadValuesWithExitCode2) {
  expect_usage_error({"leaks", "-p", "1", "--interval", "0"}, "--interval");
  expect_usage_error({"leaks", "-p", "1", "--interval", "-3"}, "--interval");
  expect_usage_error({"leaks", "-p", "1", "--top", "0"}, "--top");
  expect_usage_error({"leaks", "-p", "1", "--top", "-1"}, "top");
  expect_usage_error({"leaks", "-p", "1", "--duration", "abc"}, "duration");
  expect_usage_error({"leaks", "-p", "1", "--duration", "0"}, "--duration");
  expect_usage_error({"leaks", "-p", "1", "--min-age", "-1"}, "--min-age");
  expect_usage_error({"leaks", "-p", "1", "--max-allocations", "10"}, "--max-allocations");
  expect_usage_error({"leaks", "-p", "1", "--max-stacks", "10"}, "--max-stacks");
  expect_usage_error({"leaks", "-p", "1", "--unwind", "lbr"}, "--unwind must be auto, dwarf or fp");
  expect_usage_error({"leaks", "-p", "1", "--python-frames", "both"},
                     "--python-frames must be mixed, python or native");
  expect_usage_error({"leaks", "-p", "1", "--python-objects", "always"},
                     "--python-objects must be on, exact or off");
  expect_usage_error({"leaks", "-p", "1", "--python-objects-duty", "0"},
                     "--python-objects-duty must be a percentage above 0, at most 100");
  expect_usage_error({"leaks", "-p", "1", "--python-objects-duty", "150"}, "--python-objects-duty");
  expect_usage_error({"leaks", "-p", "1", "--unwind-table-mib", "0"}, "--unwind-table-mib");
  expect_usage_error({"leaks", "-p", "1", "--unwind-table-mib", "5000"}, "--unwind-table-mib");
  expect_usage_error({"leaks", "-p", "0"}, "pid");
  expect_usage_error({"leaks", "-p", "abc"}, "pid");
  expect_usage_error({"leaks"}, "nothing to trace");
  expect_usage_error({"leaks", "-p", "1", "--bogus"}, "bogus");
  expect_usage_error({}, "subcommand");
  expect_usage_error({"frobnicate"}, "unknown command 'frobnicate'");
}

// on: duty-cycled (the default share, or --python-objects-duty); exact: always attached.
TEST(Options, PythonObjectsOnExactOffAndTheDuty) {
  auto on = std::get<LeaksOptions>(parse({"leaks", "-p", "1", "--python-objects", "on"}));
  EXPECT_TRUE(on.python_objects);
  EXPECT_DOUBLE_EQ(on.python_objects_duty, kDefaultPythonObjectsDuty);
  auto duty = std::get<LeaksOptions>(
      parse({"leaks", "-p", "1", "--python-objects", "on", "--python-objects-duty", "40"}));
  EXPECT_DOUBLE_EQ(duty.python_objects_duty, 0.4);
  auto exact = std::get<LeaksOptions>(
      parse({"leaks", "-p", "1", "--python-objects", "exact", "--python-objects-duty", "40"}));
  EXPECT_TRUE(exact.python_objects);
  EXPECT_DOUBLE_EQ(exact.python_objects_duty, 1.0);
  auto off = std::get<LeaksOptions>(parse({"leaks", "-p", "1", "--python-objects", "off"}));
  EXPECT_FALSE(off.python_objects);
}

TEST(Options, NumbersOutOfRangeSayWhatTheyMustBe) {
  // Not CLI11's "0 not in range [1 - 1.79769e+308]"-style wording: what a pid is.
  expect_usage_error({"leaks", "-p", "0"},
                     "--pid must be a positive process id (1 to 4194304), not '0'");
  expect_usage_error({"leaks", "-p", "-5"}, "--pid must be a positive process id");
  expect_usage_error({"leaks", "-p", "99999999999999999999999"}, "--pid must be a positive");
  expect_usage_error({"leaks", "--all", "--exclude-pid", "1.5"},
                     "--exclude-pid must be a positive process id");
  // Seconds that overflow a clock's nanoseconds, or make no sense, are refused up front.
  expect_usage_error({"leaks", "-p", "1", "--interval", "1e10"},
                     "--interval must be from 0.01 to 86400 seconds, not '1e10'");
  expect_usage_error({"leaks", "-p", "1", "--interval", "0.001"}, "from 0.01 to 86400");
  expect_usage_error({"leaks", "-p", "1", "--interval", "nan"}, "--interval");
  expect_usage_error({"paging", "--interval", "1e10"},
                     "--interval must be from 0.1 to 86400 seconds, not '1e10'");
  expect_usage_error({"leaks", "-p", "1", "--duration", "inf"},
                     "--duration must be a number of seconds above 0, not 'inf'");
  expect_usage_error({"leaks", "-p", "1", "--duration", "nan"}, "--duration");
  expect_usage_error({"paging", "--duration", "-1"}, "--duration must be a number of seconds");
  expect_usage_error({"leaks", "-p", "1", "--min-age", "inf"}, "--min-age must be a number");
  expect_usage_error({"leaks", "-p", "1", "--top", "99999999999"},
                     "--top must be a whole number from 1 to 1000000");
  expect_usage_error({"leaks", "-p", "1", "--top", "2.5"}, "--top must be a whole number");
  expect_usage_error({"report", "r.json", "--top", "0"}, "--top must be a whole number");
  expect_usage_error({"diff", "a", "b", "--top", "x"}, "--top must be a whole number");
  expect_usage_error({"paging", "--max-processes", "99999999"}, "--max-processes must be");
  expect_usage_error({"leaks", "-p", "1", "--json-version", "3"}, "--json-version");
  // The edges of the ranges are allowed; a long --duration is fine (it is clamped, not
  // converted with overflow).
  auto edges = parse({"leaks", "-p", "4194304", "--interval", "86400", "--top", "1000000",
                      "--duration", "1e300", "--min-age", "0"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(edges)) << std::get<ExitRequest>(edges).message;
  EXPECT_EQ(std::get<LeaksOptions>(edges).pids, (std::vector<uint32_t>{4194304}));
  EXPECT_DOUBLE_EQ(std::get<LeaksOptions>(edges).interval_s, 86400);
  EXPECT_DOUBLE_EQ(*std::get<LeaksOptions>(edges).duration_s, 1e300);
  auto fast = parse({"leaks", "-p", "1", "-i", "0.01"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(fast));
  EXPECT_DOUBLE_EQ(std::get<LeaksOptions>(fast).interval_s, 0.01);
}

TEST(Options, HelpOfEveryCommandNamesValuesInWordsNotLibraryTypes) {
  for (const char* command : {"", "leaks", "paging", "report", "diff"}) {
    std::vector<const char*> args;
    if (*command) args.push_back(command);
    args.push_back("--help");
    std::vector<const char*> argv{"memtrail"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto parsed = parse_command_line(static_cast<int>(argv.size()), argv.data());
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(parsed)) << command;
    const std::string& help = std::get<ExitRequest>(parsed).message;
    EXPECT_NE(help.find("Usage"), std::string::npos) << command;
    // CLI11's names of C++ types and of its validators.
    for (const char* jargon : {"UINT", "INT", "TEXT", "FLOAT", "POSITIVE", "NONNEGATIVE", "ENUM",
                               "NUMBER", "BOOLEAN", ":{", "[ARGS...] ..."}) {
      std::string word(jargon);
      size_t at = help.find(word);
      while (at != std::string::npos) {
        // Words the help itself uses may contain these letters: only a whole word counts.
        bool alone = (at == 0 || !std::isalpha(static_cast<unsigned char>(help[at - 1]))) &&
                     (at + word.size() >= help.size() ||
                      !std::isalpha(static_cast<unsigned char>(help[at + word.size()])));
        EXPECT_FALSE(alone) << "memtrail " << command << " --help shows '" << word << "':\n"
                            << help;
        at = help.find(word, at + 1);
      }
    }
  }
}

TEST(Options, HostWideFiltersAndLifecycleFlags) {
  auto command = parse({"leaks", "--all", "--comm", "nginx", "--comm", "php-fpm", "--cgroup",
                        "/system.slice", "--exclude-pid", "42", "--mmap", "--no-follow-forks"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  const auto& options = std::get<LeaksOptions>(command);
  EXPECT_TRUE(options.all);
  EXPECT_EQ(options.comms, (std::vector<std::string>{"nginx", "php-fpm"}));
  EXPECT_EQ(options.cgroups, (std::vector<std::string>{"/system.slice"}));
  EXPECT_EQ(options.excluded_pids, (std::vector<uint32_t>{42}));
  EXPECT_TRUE(options.mmap);
  EXPECT_TRUE(options.no_follow_forks);
  auto defaults = std::get<LeaksOptions>(parse({"leaks", "-p", "1"}));
  EXPECT_FALSE(defaults.all || defaults.mmap || defaults.no_follow_forks);
  expect_usage_error({"leaks", "--all", "-p", "1"}, "--all traces every process");
  expect_usage_error({"leaks", "-p", "1", "--comm", "x"}, "give --all too");
  expect_usage_error({"leaks", "-p", "1", "--exclude-pid", "2"}, "give --all too");
  expect_usage_error({"leaks", "--all", "--exclude-pid", "0"}, "exclude-pid");
}

TEST(Options, HelpAndVersionExitZero) {
  for (auto args : {std::initializer_list<const char*>{"--help"},
                    std::initializer_list<const char*>{"leaks", "--help"}}) {
    auto command = parse(args);
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(command));
    const auto& request = std::get<ExitRequest>(command);
    EXPECT_EQ(request.code, kExitOk);
    EXPECT_NE(request.message.find("EXIT STATUS"), std::string::npos);
    EXPECT_NE(request.message.find("--min-age"), std::string::npos);
  }
  auto version = parse({"--version"});
  ASSERT_TRUE(std::holds_alternative<ExitRequest>(version));
  EXPECT_EQ(std::get<ExitRequest>(version).message.rfind("memtrail ", 0), 0u);
}

TEST(Options, FormatsOutputAndFlameGraph) {
  auto command =
      parse({"leaks", "-p", "1", "--format", "pprof", "-o", "h.pb.gz", "--flamegraph", "f.svg",
             "--plot", "p.svg", "--suppressions", "s.txt", "--json-version", "1"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  const auto& options = std::get<LeaksOptions>(command);
  EXPECT_EQ(options.format, Format::kPprof);
  EXPECT_EQ(options.output_path, "h.pb.gz");
  EXPECT_EQ(options.flamegraph_path, "f.svg");
  EXPECT_EQ(options.plot_path, "p.svg");
  EXPECT_EQ(options.suppressions_path, "s.txt");
  EXPECT_EQ(options.json_version, 1);
  EXPECT_EQ(std::get<LeaksOptions>(parse({"leaks", "-p", "1", "-f", "folded"})).format,
            Format::kFolded);
}

TEST(Options, BadFormatsAndPprofWithoutAFileAreUsageErrors) {
  for (auto command : {parse({"leaks", "-p", "1", "--format", "svg"}),
                       parse({"leaks", "-p", "1", "--format", "pprof"}),
                       parse({"leaks", "-p", "1", "--json-version", "3"}),
                       parse({"report", "r.json", "--format", "pprof"}), parse({"report"}),
                       parse({"diff", "a.json"})}) {
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(command));
    EXPECT_EQ(std::get<ExitRequest>(command).code, kExitUsage)
        << std::get<ExitRequest>(command).message;
  }
  auto pprof = std::get<ExitRequest>(parse({"leaks", "-p", "1", "--format", "pprof"}));
  EXPECT_NE(pprof.message.find("give -o FILE"), std::string::npos) << pprof.message;
}

TEST(Options, ReportAndDiffSubcommands) {
  auto report = parse(
      {"report", "r.json", "--format", "folded", "-o", "out.txt", "-n", "3", "--plot", "p.svg"});
  ASSERT_TRUE(std::holds_alternative<ReportOptions>(report));
  EXPECT_EQ(std::get<ReportOptions>(report).input_path, "r.json");
  EXPECT_EQ(std::get<ReportOptions>(report).format, Format::kFolded);
  EXPECT_EQ(std::get<ReportOptions>(report).top, 3u);
  EXPECT_EQ(std::get<ReportOptions>(report).plot_path, "p.svg");
  auto diff = parse({"diff", "a.json", "b.json"});
  ASSERT_TRUE(std::holds_alternative<DiffOptions>(diff));
  EXPECT_EQ(std::get<DiffOptions>(diff).before_path, "a.json");
  EXPECT_EQ(std::get<DiffOptions>(diff).after_path, "b.json");
  auto unknown = parse({"trace"});
  ASSERT_TRUE(std::holds_alternative<ExitRequest>(unknown));
  EXPECT_NE(std::get<ExitRequest>(unknown).message.find("commands: leaks, paging, report, diff"),
            std::string::npos);
}

TEST(Options, PagingDefaultsAndOptions) {
  auto defaults = parse({"paging"});
  ASSERT_TRUE(std::holds_alternative<PagingOptions>(defaults));
  const auto& d = std::get<PagingOptions>(defaults);
  EXPECT_FALSE(d.duration_s.has_value());
  EXPECT_DOUBLE_EQ(d.interval_s, 2);
  EXPECT_EQ(d.top, 10u);
  EXPECT_EQ(d.deep, DeepMode::kAuto);
  EXPECT_EQ(d.max_processes, 32768u);
  EXPECT_TRUE(d.cgroup.empty());

  auto command = parse({"paging", "--duration", "60", "-i", "0.5", "--json", "p.json", "--cgroup",
                        "/sys/fs/cgroup/memory/db", "--deep", "always", "-n", "3", "-q"});
  ASSERT_TRUE(std::holds_alternative<PagingOptions>(command));
  const auto& o = std::get<PagingOptions>(command);
  ASSERT_TRUE(o.duration_s.has_value());
  EXPECT_DOUBLE_EQ(*o.duration_s, 60);
  EXPECT_DOUBLE_EQ(o.interval_s, 0.5);
  EXPECT_EQ(o.json_path, "p.json");
  EXPECT_EQ(o.cgroup, "/sys/fs/cgroup/memory/db");
  EXPECT_EQ(o.deep, DeepMode::kAlways);
  EXPECT_EQ(o.top, 3u);
  EXPECT_TRUE(o.quiet);
  EXPECT_EQ(std::get<PagingOptions>(parse({"paging", "--deep", "never"})).deep, DeepMode::kNever);
}

TEST(Options, PagingRefusesBadValuesWithExitCode2) {
  for (auto args : {std::initializer_list<const char*>{"paging", "--deep", "sometimes"},
                    std::initializer_list<const char*>{"paging", "--interval", "0.01"},
                    std::initializer_list<const char*>{"paging", "--duration", "0"},
                    std::initializer_list<const char*>{"paging", "--top", "0"},
                    std::initializer_list<const char*>{"paging", "--max-processes", "10"},
                    std::initializer_list<const char*>{"paging", "-p", "42"}}) {
    auto command = parse(args);
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(command)) << *(args.begin() + 1);
    const auto& request = std::get<ExitRequest>(command);
    EXPECT_EQ(request.code, kExitUsage) << *(args.begin() + 1);
    EXPECT_EQ(request.message.rfind("memtrail: error: ", 0), 0u) << request.message;
    EXPECT_NE(request.message.find("memtrail paging --help"), std::string::npos) << request.message;
  }
}

TEST(Options, AllocatorMapsEachSymbolToTheRoleOfAStandardFunction) {
  auto command = parse({"leaks", "-p", "1", "--allocator",
                        "/usr/lib/libfoo.so:foo_alloc=malloc,foo_free=free,calloc", "--allocator",
                        "/opt/a:b/libbar.so:bar_realloc=realloc"});
  ASSERT_TRUE(std::holds_alternative<LeaksOptions>(command));
  const auto& allocators = std::get<LeaksOptions>(command).allocators;
  ASSERT_EQ(allocators.size(), 2u);
  EXPECT_EQ(allocators[0].path, "/usr/lib/libfoo.so");
  ASSERT_EQ(allocators[0].functions.size(), 3u);
  EXPECT_EQ(allocators[0].functions[0].symbol, "foo_alloc");
  EXPECT_EQ(allocators[0].functions[0].role, "malloc");
  EXPECT_EQ(allocators[0].functions[2].symbol, "calloc");  // a bare standard name: itself
  EXPECT_EQ(allocators[0].functions[2].role, "calloc");
  EXPECT_EQ(allocators[1].path, "/opt/a:b/libbar.so");  // split at the last colon
}

TEST(Options, MalformedAllocatorIsOneUsageErrorLine) {
  for (const char* bad :
       {"/usr/lib/libfoo.so", "relative.so:f=malloc", "/x.so:", "/x.so:f=", "/x.so:=malloc",
        "/x.so:f=grab", "/x.so:foo_alloc", "/x.so:f=free,f=free"}) {
    auto command = parse({"leaks", "-p", "1", "--allocator", bad});
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(command)) << bad;
    const auto& request = std::get<ExitRequest>(command);
    EXPECT_EQ(request.code, 2) << bad;
    EXPECT_EQ(request.message.rfind("memtrail: error: --allocator ", 0), 0u) << request.message;
  }
}

TEST(Options, ServeDefaultsAndValues) {
  auto defaults = parse({"serve"});
  ASSERT_TRUE(std::holds_alternative<ServeOptions>(defaults));
  const auto& d = std::get<ServeOptions>(defaults);
  EXPECT_EQ(d.listen_address, "127.0.0.1");  // another address only when asked
  EXPECT_EQ(d.listen_port, 9752);
  EXPECT_DOUBLE_EQ(d.interval_s, 10);
  EXPECT_EQ(d.max_sessions, 2u);
  EXPECT_DOUBLE_EQ(d.max_profile_s, 300);
  EXPECT_EQ(d.max_processes, 200u);
  auto command =
      parse({"serve", "--listen", "0.0.0.0:8080", "-i", "2", "--trace", "pid:7", "--trace",
             "comm:db", "--pyroscope-url", "http://p:4040", "--max-profile-seconds", "5"});
  ASSERT_TRUE(std::holds_alternative<ServeOptions>(command));
  const auto& o = std::get<ServeOptions>(command);
  EXPECT_EQ(o.listen_address, "0.0.0.0");
  EXPECT_EQ(o.listen_port, 8080);
  EXPECT_DOUBLE_EQ(o.interval_s, 2);
  EXPECT_EQ(o.trace, (std::vector<std::string>{"pid:7", "comm:db"}));
  EXPECT_EQ(o.pyroscope_url, "http://p:4040");
  EXPECT_DOUBLE_EQ(o.max_profile_s, 5);
  EXPECT_DOUBLE_EQ(o.default_profile_s, 5);  // the default profile fits the maximum
}

TEST(Options, ServeRefusals) {
  struct Case {
    std::vector<const char*> args;
    std::string message;
  };
  for (const auto& bad : std::vector<Case>{
           {{"serve", "--listen", "9752"},
            "--listen must be ADDR:PORT, as 127.0.0.1:9752, not '9752'"},
           {{"serve", "--listen", "127.0.0.1:70000"},
            "--listen's port must be a whole number from 1 to 65535, not '70000'"},
           {{"serve", "-i", "0"}, "--interval must be from 0.1 to 86400 seconds, not '0'"},
           {{"serve", "--pyroscope-url", "http://p:4040"},
            "--pyroscope-url pushes the --trace targets' profiles: give --trace too"},
           {{"serve", "--trace", "pid:1", "--pyroscope-url", "ftp://p"},
            "--pyroscope-url must start with http:// or https://, not 'ftp://p'"},
           {{"serve", "--max-sessions", "17"},
            "--max-sessions must be a whole number from 0 to 16, not '17'"},
       }) {
    std::vector<const char*> argv{"memtrail"};
    argv.insert(argv.end(), bad.args.begin(), bad.args.end());
    auto command = parse_command_line(static_cast<int>(argv.size()), argv.data());
    ASSERT_TRUE(std::holds_alternative<ExitRequest>(command));
    const auto& request = std::get<ExitRequest>(command);
    EXPECT_EQ(request.code, kExitUsage);
    EXPECT_EQ(request.message,
              "memtrail: error: " + bad.message + "\nmemtrail: hint: see memtrail serve --help\n");
  }
}

}  // namespace
}  // namespace memtrail::cli
