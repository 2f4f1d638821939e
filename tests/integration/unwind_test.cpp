// SPDX-License-Identifier: Apache-2.0
// memtrail leaks --unwind end to end: whole call stacks through code built without frame
// pointers (-O2 -fomit-frame-pointer, in an executable and in a shared library), walked by the
// modules' call-frame information (.eh_frame) in BPF. The targets are tests/targets/unwind_*.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gated_target.h"
#include "subprocess.h"
#include "test_support.h"

namespace memtrail::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// What tests/targets/unwind_chain.c and unwind_cxx.cpp do (the same numbers are there).
constexpr int kChainCount = 4;      // UNWIND_CHAIN_COUNT blocks ...
constexpr int kChainBytes = 12345;  // ... of UNWIND_CHAIN_BYTES bytes: 49,380 outstanding
constexpr int kPluginCount = 5;     // UNWIND_PLUGIN_COUNT blocks through the dlopen'ed plugin
constexpr int kSignalCount = 3;     // UNWIND_SIGNAL_COUNT blocks in the signal handler
constexpr int kCxxNodes = 6;        // kUnwindCxxNodes nodes ...
constexpr int kCxxNodeBytes = 104;  // ... of sizeof(Node) bytes: 624 outstanding

// The chain of real (not inlined) frames each site must show, innermost first.
const std::vector<std::string> kChain = {"lib_level_two", "lib_level_one", "chain_inner",
                                         "chain_middle",  "chain_outer",   "main"};
const std::vector<std::string> kCxxChain = {"make_node(int)", "Parser::parse(int)",
                                            "Service::handle(int)", "main"};

struct Traced {
  json report;
  std::map<std::string, int> lines;
  int pid = 0;
};

// Attaches `memtrail leaks -p PID --unwind MODE --json FILE -q --duration 2` (plus `options`)
// to `program` at its gate, lets the program run its chain, and reads the report memtrail
// writes when the duration has elapsed. The program keeps running meanwhile.
Traced trace_by_pid(std::vector<std::string> program, const std::string& mode,
                    std::vector<std::string> options = {}) {
  TempDir dir;
  Target target(std::move(program));
  std::vector<std::string> args{MEMTRAIL_BINARY,
                                "leaks",
                                "-p",
                                std::to_string(target.process.pid()),
                                "--unwind",
                                mode,
                                "--json",
                                dir.file("r.json"),
                                "-q",
                                "--duration",
                                "2"};
  args.insert(args.end(), options.begin(), options.end());
  Subprocess tracer(args);
  Traced traced;
  traced.pid = target.process.pid();
  auto attached = tracer.wait_for_stderr("memtrail: tracing pid ", 60s);
  if (!attached) {
    ADD_FAILURE() << "memtrail did not attach; stderr:\n"
                  << tracer.stderr_seen() << tracer.drain_stderr();
    return traced;
  }
  traced.lines = run_to_done(target.process, target.process);
  auto code = tracer.wait(60s);  // --duration ends it
  EXPECT_TRUE(code.has_value()) << "memtrail did not stop after --duration";
  EXPECT_EQ(code.value_or(-1), 0) << tracer.stderr_seen() << tracer.drain_stderr();
  traced.report = read_json(dir.file("r.json"));
  return traced;
}

std::string function_of(const json& frame) {
  return frame["function"].is_string() ? frame["function"].get<std::string>() : "?";
}

bool is_allocator_function(const std::string& name) {
  return name == "malloc" || name == "__libc_malloc" || name == "__GI___libc_malloc" ||
         name.rfind("operator new", 0) == 0;
}

// The site's real frames (inlined ones left out), innermost first, without the allocator's own
// frames should the stack start with them.
std::vector<json> called_frames(const json& site) {
  std::vector<json> frames;
  for (const auto& frame : site["stack"]) {
    if (frame["inlined"] == true) continue;
    if (frames.empty() && is_allocator_function(function_of(frame))) continue;
    frames.push_back(frame);
  }
  return frames;
}

std::string names_of(const std::vector<json>& frames) {
  std::string names;
  for (const auto& frame : frames) {
    names += (names.empty() ? "" : " <- ") + function_of(frame) + " [" +
             file_name(frame["module"]) + "]";
  }
  return names;
}

// The site's stack is the whole chain: `chain`'s functions in order, innermost first, with only
// inlined frames between them, then the C library's frames that called main (the walk went on
// through libc's own call-frame information), and not truncated.
void expect_whole_chain(const json& site, const std::vector<std::string>& chain) {
  std::vector<json> frames = called_frames(site);
  std::string shown = names_of(frames);
  ASSERT_GT(frames.size(), chain.size()) << "stack: " << shown << "\n" << site.dump(2);
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_EQ(function_of(frames[i]), chain[i]) << "frame " << i << " of " << shown;
  }
  EXPECT_EQ(file_name(frames[chain.size()]["module"]), "libc.so.6")
      << "main's caller (__libc_start_call_main) is missing: " << shown;
  EXPECT_EQ(site["stack_truncated"], false) << shown;
}

// ---- the report's "unwind" summary: every assertion on it is here ----

struct UnwindExpectation {
  std::string mode;                    // "dwarf", "auto", "fp"
  std::vector<std::string> cfi_files;  // modules (file names) walked by their CFI, with rows
};

void expect_unwind_summary(const json& report, const UnwindExpectation& expected) {
  ASSERT_TRUE(report.contains("unwind")) << "no \"unwind\" object in the report";
  const json& unwind = report["unwind"];
  ASSERT_TRUE(unwind.is_object()) << unwind.dump(2);
  EXPECT_EQ(unwind["mode"], expected.mode) << unwind.dump(2);
  ASSERT_TRUE(unwind["stacks"].is_number_integer()) << unwind.dump(2);
  ASSERT_TRUE(unwind["truncated_stacks"].is_number_integer()) << unwind.dump(2);
  EXPECT_GE(unwind["stacks"].get<int64_t>(), 1) << unwind.dump(2);  // at least the chain's
  EXPECT_LE(unwind["truncated_stacks"].get<int64_t>(), unwind["stacks"].get<int64_t>());
  // Every truncated stack has one reason.
  ASSERT_TRUE(unwind["truncated_by_reason"].is_object()) << unwind.dump(2);
  int64_t by_reason = 0;
  for (const auto& [reason, count] : unwind["truncated_by_reason"].items()) {
    EXPECT_FALSE(reason.empty());
    by_reason += count.get<int64_t>();
  }
  EXPECT_EQ(by_reason, unwind["truncated_stacks"].get<int64_t>()) << unwind.dump(2);
  ASSERT_TRUE(unwind["modules"].is_array()) << unwind.dump(2);
  for (const auto& module : unwind["modules"]) {
    EXPECT_TRUE(module["path"].is_string()) << module.dump();
    EXPECT_TRUE(module["method"] == "cfi" || module["method"] == "frame_pointers" ||
                module["method"] == "none")
        << module.dump();
    EXPECT_TRUE(module["rows"].is_number_integer()) << module.dump();
    EXPECT_TRUE(module["reason"].is_string()) << module.dump();
  }
  if (expected.mode != "fp") {
    EXPECT_GT(unwind["table_rows"].get<int64_t>(), 0) << unwind.dump(2);
    EXPECT_GT(unwind["table_bytes"].get<int64_t>(), 0) << unwind.dump(2);
  }
  for (const auto& file : expected.cfi_files) {
    const json* found = nullptr;
    for (const auto& module : unwind["modules"]) {
      if (file_name(module["path"]) == file) found = &module;
    }
    ASSERT_NE(found, nullptr) << "no module " << file << " in " << unwind["modules"].dump(2);
    EXPECT_EQ((*found)["method"], "cfi") << found->dump();
    EXPECT_GT((*found)["rows"].get<int64_t>(), 0) << found->dump();
  }
}

// The modules on unwind_chain's stack, none with frame pointers: only CFI walks through them.
const std::vector<std::string> kChainCfiFiles = {"unwind_chain", "libunwind_chain_lib.so",
                                                 "libc.so.6"};
const std::vector<std::string> kCxxCfiFiles = {"unwind_cxx", "libc.so.6"};

// ---- unwind_chain: main -> chain_* -> lib_level_* (a shared library) -> malloc ----

// What every complete run of unwind_chain shows: one site through lib_level_two with exactly
// the leaked blocks, the whole chain with its modules and the malloc call's line, and nothing
// of chain_freed, which freed what it allocated.
// The one site whose stack holds lib_level_two, with exactly the chain's leaked blocks (right
// whatever the stack walk: the site's caller comes from the return address); null if absent.
json chain_site(const json& report) {
  auto sites = sites_with_function(report, "lib_level_two");
  EXPECT_EQ(sites.size(), 1u) << report.dump(2);
  if (sites.size() != 1) return nullptr;
  EXPECT_EQ(sites[0]["outstanding_bytes"], kChainCount * kChainBytes);
  EXPECT_EQ(sites[0]["outstanding_allocations"], kChainCount);
  return sites[0];
}

void expect_chain_report(const Traced& traced) {
  const json& report = traced.report;
  json site = chain_site(report);
  ASSERT_FALSE(site.is_null());
  EXPECT_EQ(site["total_allocations"], kChainCount);
  EXPECT_EQ(site["allocator"], "malloc");
  EXPECT_EQ(site["pid"], traced.pid);
  expect_whole_chain(site, kChain);
  std::vector<json> frames = called_frames(site);
  if (frames.size() >= kChain.size()) {
    EXPECT_EQ(file_name(frames[0]["file"]), "unwind_chain_lib.c");
    EXPECT_EQ(frames[0]["line"],
              traced.lines.count("lib_level_two") ? traced.lines.at("lib_level_two") : -1);
    EXPECT_EQ(file_name(frames[0]["module"]), "libunwind_chain_lib.so");
    EXPECT_EQ(file_name(frames[1]["module"]), "libunwind_chain_lib.so");
    for (size_t i = 2; i < kChain.size(); ++i) {
      EXPECT_EQ(file_name(frames[i]["module"]), "unwind_chain") << function_of(frames[i]);
    }
  }
  EXPECT_TRUE(sites_with_function(report, "chain_freed").empty()) << report.dump(2);
}

TEST(UnwindDwarf, AttachedByPidShowsTheWholeChainThroughALibraryWithoutFramePointers) {
  REQUIRE_BPF_OR_SKIP();
  Traced traced = trace_by_pid({MEMTRAIL_UNWIND_CHAIN}, "dwarf");
  expect_chain_report(traced);
  expect_unwind_summary(traced.report, {"dwarf", kChainCfiFiles});
}

TEST(UnwindAuto, AttachedByPidShowsTheWholeChainThroughALibraryWithoutFramePointers) {
  REQUIRE_BPF_OR_SKIP();
  Traced traced = trace_by_pid({MEMTRAIL_UNWIND_CHAIN}, "auto");
  expect_chain_report(traced);
  // No module of the chain has frame pointers: auto can only have walked them by their CFI.
  expect_unwind_summary(traced.report, {"auto", kChainCfiFiles});
}

TEST(UnwindDwarf, ALaunchedCommandShowsTheWholeChain) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  // memtrail's stdin and stdout are the launched command's: "go" reaches it, its lines come
  // back.
  Subprocess tracer({MEMTRAIL_BINARY, "leaks", "--unwind", "dwarf", "--json", dir.file("r.json"),
                     "-q", "--", MEMTRAIL_UNWIND_CHAIN});
  auto attached = tracer.wait_for_stderr("memtrail: tracing pid ", 60s);
  ASSERT_TRUE(attached.has_value()) << tracer.stderr_seen() << tracer.drain_stderr();
  ASSERT_TRUE(tracer.wait_for_stdout("ready ", 10s).has_value());
  // The probes are attached at exec, before the loader maps libc and libunwind_chain_lib.so;
  // memtrail learns of them by reading /proc/PID/maps (every 100 ms at first) and only then can
  // walk through them. Real programs allocate long after that; this one waits for it.
  std::this_thread::sleep_for(1s);
  Traced traced;
  traced.pid = std::stoi(attached->substr(std::string("memtrail: tracing pid ").size()));
  traced.lines = run_to_done(tracer, tracer);
  tracer.signal(SIGINT);
  auto code = tracer.wait(60s);
  ASSERT_TRUE(code.has_value()) << "memtrail did not stop on SIGINT";
  EXPECT_EQ(*code, 0) << tracer.stderr_seen() << tracer.drain_stderr();
  traced.report = read_json(dir.file("r.json"));
  expect_chain_report(traced);
  expect_unwind_summary(traced.report, {"dwarf", kChainCfiFiles});
}

// The chain run in a signal handler: between the handler and raise() lies the kernel's signal
// frame, which glibc's __restore_rt describes with DWARF expressions; the walker reads the
// interrupted registers from it and goes on through libc's raise() down to main.
TEST(UnwindDwarf, TheStackCrossesASignalFrameDownToMain) {
  REQUIRE_BPF_OR_SKIP();
  Traced traced = trace_by_pid({MEMTRAIL_UNWIND_CHAIN, "signal"}, "dwarf");
  auto sites = sites_with_function(traced.report, "lib_level_two");
  ASSERT_EQ(sites.size(), 1u) << traced.report.dump(2);
  const json& site = sites[0];
  EXPECT_EQ(site["outstanding_bytes"], kSignalCount * kChainBytes);
  EXPECT_EQ(site["outstanding_allocations"], kSignalCount);
  std::vector<json> frames = called_frames(site);
  std::string shown = names_of(frames);
  std::vector<std::string> in_handler(kChain.begin(), kChain.end() - 1);  // all but main
  in_handler.push_back("on_signal");
  ASSERT_GT(frames.size(), in_handler.size() + 1) << shown;
  for (size_t i = 0; i < in_handler.size(); ++i) {
    EXPECT_EQ(function_of(frames[i]), in_handler[i]) << "frame " << i << " of " << shown;
  }
  // Past the signal frame: raise() in libc (its inner functions vary with glibc's build),
  // then main, then main's caller in libc.
  size_t main_at = 0;
  for (size_t i = in_handler.size(); i < frames.size(); ++i) {
    if (function_of(frames[i]) == "main") main_at = i;
  }
  ASSERT_GT(main_at, in_handler.size()) << "main not reached across the signal frame: " << shown;
  for (size_t i = in_handler.size(); i < main_at; ++i) {
    EXPECT_EQ(file_name(frames[i]["module"]), "libc.so.6") << shown;
  }
  EXPECT_EQ(site["stack_truncated"], false) << shown;
}

// Code mapped after memtrail attached: the program dlopen()s a plugin (the library built again
// under other names) and leaks through it. memtrail builds the plugin's table when it re-reads
// the process's mappings (-v announces it; the test waits for that line before the leak, as a
// long-running program would be past it), and the stack goes through the plugin down to main.
TEST(UnwindDwarf, ALibraryLoadedWithDlopenAfterAttachGetsItsTable) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  Target target({MEMTRAIL_UNWIND_CHAIN, "dlopen", MEMTRAIL_UNWIND_PLUGIN});
  Subprocess tracer({MEMTRAIL_BINARY, "leaks", "-p", std::to_string(target.process.pid()),
                     "--unwind", "dwarf", "-v", "--json", dir.file("r.json"), "-q"});
  ASSERT_TRUE(tracer.wait_for_stderr("memtrail: tracing pid ", 60s).has_value())
      << tracer.stderr_seen() << tracer.drain_stderr();
  target.process.write_stdin("go\n");
  ASSERT_TRUE(target.process.wait_for_stdout("loaded", 10s).has_value());
  auto built = tracer.wait_for_stderr(
      std::string("memtrail: unwind ") + MEMTRAIL_UNWIND_PLUGIN + ": cfi", 10s);
  ASSERT_TRUE(built.has_value()) << "no table built for the plugin:\n" << tracer.stderr_seen();
  Traced traced;
  traced.pid = target.process.pid();
  traced.lines = run_to_done(target.process, target.process);
  tracer.signal(SIGINT);
  auto code = tracer.wait(60s);
  ASSERT_TRUE(code.has_value()) << "memtrail did not stop on SIGINT";
  EXPECT_EQ(*code, 0);
  traced.report = read_json(dir.file("r.json"));
  auto sites = sites_with_function(traced.report, "plugin_level_two");
  ASSERT_EQ(sites.size(), 1u) << traced.report.dump(2);
  EXPECT_EQ(sites[0]["outstanding_bytes"], kPluginCount * kChainBytes);
  EXPECT_EQ(sites[0]["outstanding_allocations"], kPluginCount);
  expect_whole_chain(sites[0], {"plugin_level_two", "plugin_level_one", "call_plugin", "main"});
  std::vector<json> frames = called_frames(sites[0]);
  ASSERT_FALSE(frames.empty());
  EXPECT_EQ(file_name(frames[0]["module"]), "unwind_plugin.so");
  EXPECT_EQ(frames[0]["line"],
            traced.lines.count("plugin_level_two") ? traced.lines.at("plugin_level_two") : -1);
  expect_unwind_summary(traced.report,
                        {"dwarf", {"unwind_chain", "unwind_plugin.so", "libc.so.6"}});
}

// The control: frame pointers alone cannot walk this chain (%rbp holds data there, not frame
// addresses), so without DWARF unwinding the tests above would fail. Seen with GCC 12: %rbp is
// 0 at the malloc calls (a counter in lib_level_one), which the walk takes for _start's cleared
// %rbp: one frame, lib_level_two, and not marked truncated; hence "no main, or truncated".
TEST(UnwindFramePointers, TheSameChainIsIncompleteWithoutCfi) {
  REQUIRE_BPF_OR_SKIP();
  Traced traced = trace_by_pid({MEMTRAIL_UNWIND_CHAIN}, "fp");
  const json& report = traced.report;
  json site = chain_site(report);
  ASSERT_FALSE(site.is_null());
  std::vector<json> frames = called_frames(site);
  ASSERT_FALSE(frames.empty());
  EXPECT_EQ(function_of(frames[0]), "lib_level_two");
  bool has_main = false;
  for (const auto& frame : site["stack"]) has_main |= frame["function"] == "main";
  EXPECT_TRUE(!has_main || site["stack_truncated"] == true)
      << "a frame-pointer walk got through the whole chain: " << names_of(frames);
  EXPECT_TRUE(sites_with_function(report, "chain_freed").empty()) << report.dump(2);
  expect_unwind_summary(report, {"fp", {}});
}

// ---- unwind_cxx: main -> Service::handle -> Parser::parse -> make_node -> new Node ----

TEST(UnwindDwarf, CxxNewShowsTheWholeChainOfMethods) {
  REQUIRE_BPF_OR_SKIP();
  Traced traced = trace_by_pid({MEMTRAIL_UNWIND_CXX}, "dwarf", {"--cxx"});
  const json& report = traced.report;
  // C++ names are demangled with their parameters.
  auto sites = sites_with_function(report, "make_node(int)");
  ASSERT_EQ(sites.size(), 1u) << report.dump(2);
  const json& site = sites[0];
  EXPECT_EQ(site["allocator"], "new");
  EXPECT_EQ(site["outstanding_bytes"], kCxxNodes * kCxxNodeBytes);
  EXPECT_EQ(site["outstanding_allocations"], kCxxNodes);
  EXPECT_EQ(site["total_allocations"], kCxxNodes);  // new's own malloc is not a second one
  EXPECT_EQ(site["pid"], traced.pid);
  expect_whole_chain(site, kCxxChain);
  std::vector<json> frames = called_frames(site);
  if (!frames.empty()) {
    EXPECT_EQ(file_name(frames[0]["file"]), "unwind_cxx.cpp");
    EXPECT_EQ(frames[0]["line"],
              traced.lines.count("make_node") ? traced.lines.at("make_node") : -1);
  }
  // new and delete in Parser::discard: nothing left.
  EXPECT_TRUE(sites_with_function(report, "Parser::discard(int)").empty()) << report.dump(2);
  expect_unwind_summary(report, {"dwarf", kCxxCfiFiles});
}

}  // namespace
}  // namespace memtrail::testing
