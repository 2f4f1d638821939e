// SPDX-License-Identifier: Apache-2.0
// Return-site probes (the default) against entry and return probes (--no-return-sites) on every
// path of glibc's malloc and calloc: the same blocks, sizes, stacks and failed calls, each
// successful call recorded exactly once.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gated_target.h"
#include "subprocess.h"
#include "test_support.h"

namespace memtrail::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr int kCount = 5;

// Per leaking function: bytes asked for and malloc_usable_size's sum, as the target says.
struct Asked {
  uint64_t bytes = 0, usable = 0;
  int reports = 0;  // the thread sites run in two threads
};

struct TracedRun {
  json report;
  std::map<std::string, Asked> asked;
  int failed = -1;  // calls that returned NULL, as the target says
  std::string stderr_text;
  json bpf_globals;  // memtrail's, once the target's calls were all made
};

// alloc_paths traced by memtrail with `extra` options; with `preload`, another allocator
// preloaded into it.
TracedRun trace(const std::vector<std::string>& extra, const std::string& preload = "") {
  std::vector<std::string> argv{MEMTRAIL_ALLOC_PATHS, std::to_string(kCount)};
  if (!preload.empty()) argv.insert(argv.begin(), {"/usr/bin/env", "LD_PRELOAD=" + preload});
  Subprocess target(argv);
  EXPECT_TRUE(target.wait_for_stdout("ready ", 10s).has_value());
  TempDir dir;
  std::string json_path = dir.file("r.json");
  std::vector<std::string> args{MEMTRAIL_BINARY, "leaks",   "-p", std::to_string(target.pid()),
                                "--json",        json_path, "-q", "-v"};
  args.insert(args.end(), extra.begin(), extra.end());
  Subprocess memtrail(args);
  auto attached = memtrail.wait_for_stderr("memtrail: tracing pid ", 30s);
  EXPECT_TRUE(attached.has_value()) << memtrail.stderr_seen() << memtrail.drain_stderr();
  TracedRun run;
  target.write_stdin("go\n");
  while (auto line = target.read_stdout_line(20s)) {
    if (*line == "done") break;
    std::istringstream words(*line);
    std::string tag, name;
    uint64_t asked = 0, usable = 0;
    if (words >> tag >> name && tag == "failed") run.failed = std::stoi(name);
    if (words >> asked >> usable && tag == "bytes") {
      run.asked[name].bytes += asked;
      run.asked[name].usable += usable;
      ++run.asked[name].reports;
    }
  }
  run.bpf_globals = bpf_globals_of(memtrail.pid());
  memtrail.signal(SIGINT);
  auto code = memtrail.wait(30s);
  EXPECT_EQ(code, std::optional<int>(0));
  run.stderr_text = memtrail.stderr_seen() + memtrail.drain_stderr();
  run.report = read_json(json_path);
  return run;
}

// The functions and lines of a site's stack, innermost first.
std::vector<std::string> frames_of(const json& site) {
  std::vector<std::string> frames;
  for (const auto& frame : site["stack"]) {
    // Unsymbolized frames (no function, no line: libc without debug info) by address.
    frames.push_back(frame["function"].is_string() ? frame["function"].get<std::string>()
                                                   : frame["address"].dump());
    if (frame["line"].is_number()) frames.back() += ":" + frame["line"].dump();
  }
  return frames;
}

// Every call of the program since attach, each once: the same totals with return sites as with
// entry and return probes, no drop, the target's 9 failing calls counted as such, and every
// size the one asked for (none the allocator's usable size).
void expect_same_calls(const TracedRun& sites, const TracedRun& entry) {
  for (const char* total :
       {"allocations", "frees", "outstanding_allocations", "drops", "failed_calls"}) {
    EXPECT_EQ(sites.report["totals"][total], entry.report["totals"][total]) << total;
  }
  EXPECT_EQ(sites.report["totals"]["drops"], 0);
  EXPECT_EQ(sites.failed, 9);
  EXPECT_EQ(sites.report["totals"]["failed_calls"], sites.failed);
  EXPECT_EQ(sites.report["totals"]["usable_size_allocations"], 0);
  // Every call's return seen: no thread is still counted as in one (else every malloc would
  // pay the task-storage lookup that tells a nested call: threads_holding[THREADS_IN_CALLS],
  // bpf/alloc/inflight.bpf.h).
  for (const TracedRun* run : {&sites, &entry}) {
    EXPECT_EQ(run->bpf_globals["threads_holding"][0], 0) << run->bpf_globals.dump();
  }
}

TEST(ReturnSites, EveryPathOfMallocAndCallocIsRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  TracedRun sites = trace({});  // the default
  TracedRun entry = trace({"--no-return-sites"});
  // Both designs were really used.
  EXPECT_NE(sites.stderr_text.find("malloc probed inside, where it returns"), std::string::npos)
      << sites.stderr_text;
  EXPECT_NE(sites.stderr_text.find("calloc probed inside, where it returns"), std::string::npos)
      << sites.stderr_text;
  EXPECT_EQ(entry.stderr_text.find("probed inside"), std::string::npos) << entry.stderr_text;

  // On the single-threaded arena path no register holds the size at the site: the call
  // into _int_malloc took it (rsi) on the way.
  EXPECT_NE(sites.stderr_text.find("size taken at"), std::string::npos) << sites.stderr_text;
  EXPECT_NE(sites.stderr_text.find("failed calls (NULL) counted at"), std::string::npos)
      << sites.stderr_text;

  ASSERT_EQ(sites.asked.size(), 17u);
  for (const auto& [function, asked] : sites.asked) {
    SCOPED_TRACE(function);
    json with_sites = sites_with_function(sites.report, function).size() == 1
                          ? sites_with_function(sites.report, function)[0]
                          : json();
    json with_entry = sites_with_function(entry.report, function).size() == 1
                          ? sites_with_function(entry.report, function)[0]
                          : json();
    ASSERT_TRUE(with_sites.is_object()) << sites.report.dump(2);
    ASSERT_TRUE(with_entry.is_object()) << entry.report.dump(2);
    int blocks = kCount * asked.reports;
    EXPECT_EQ(with_sites["outstanding_allocations"], blocks);
    EXPECT_EQ(with_entry["outstanding_allocations"], blocks);
    EXPECT_EQ(with_sites["allocator"], with_entry["allocator"]);
    EXPECT_EQ(with_entry["outstanding_bytes"], asked.bytes);
    EXPECT_EQ(with_sites["outstanding_bytes"], asked.bytes);
    EXPECT_EQ(frames_of(with_sites), frames_of(with_entry));
    EXPECT_GE(frames_of(with_sites).size(), 2u);
  }
  // 100 asked is 104 usable: a usable size would show.
  EXPECT_NE(sites.asked["single_arena_odd"].usable, sites.asked["single_arena_odd"].bytes);
  // The failing calls of both threads and the main one: on the way out of malloc before any
  // arena, out of _int_malloc on the single-threaded and the locked paths, and out of calloc.
  expect_same_calls(sites, entry);
  EXPECT_EQ(entry.report["totals"]["failed_calls"], entry.failed);
  EXPECT_EQ(entry.report["totals"]["usable_size_allocations"], 0);
}

// `library` preloaded into alloc_paths, traced with return sites (the default) and with entry and
// return probes: the same blocks, sizes, stacks and failed calls on its malloc's fast and slow
// paths (the slow ones through the entry and return probes at the jumps to them) and its
// calloc's. `expected` are lines -v must show.
void compare_preloaded(const std::string& library, const char* package,
                       const std::vector<std::string>& expected) {
  if (library.empty()) {
    const char* required = std::getenv("MEMTRAIL_REQUIRE_BPF");
    if (required && std::string(required) == "1") FAIL() << "install " << package;
    GTEST_SKIP() << "install " << package << " (scripts/install-deps.sh --tests)";
  }
  TracedRun sites = trace({}, library);
  TracedRun entry = trace({"--no-return-sites"}, library);
  for (const auto& line : expected) {
    EXPECT_NE(sites.stderr_text.find(line), std::string::npos) << line << "\n" << sites.stderr_text;
  }
  EXPECT_EQ(entry.stderr_text.find("probed inside"), std::string::npos) << entry.stderr_text;
  for (const char* function :
       {"single_calloc", "thread_calloc", "single_arena", "thread_arena", "single_arena_odd",
        "single_tcache", "single_mmapped", "thread_mmapped"}) {
    SCOPED_TRACE(function);
    auto with_sites = sites_with_function(sites.report, function);
    auto with_entry = sites_with_function(entry.report, function);
    ASSERT_EQ(with_sites.size(), 1u) << sites.report.dump(2);
    ASSERT_EQ(with_entry.size(), 1u) << entry.report.dump(2);
    int blocks = kCount * sites.asked[function].reports;
    EXPECT_EQ(with_sites[0]["outstanding_allocations"], blocks);
    EXPECT_EQ(with_entry[0]["outstanding_allocations"], blocks);
    EXPECT_EQ(with_sites[0]["outstanding_bytes"], sites.asked[function].bytes);
    EXPECT_EQ(with_entry[0]["outstanding_bytes"], entry.asked[function].bytes);
    EXPECT_EQ(with_sites[0]["allocator"], with_entry[0]["allocator"]);
    EXPECT_EQ(frames_of(with_sites[0]), frames_of(with_entry[0]));
  }
  expect_same_calls(sites, entry);  // on the slow paths too
}

// tcmalloc's malloc: one site on its thread cache's free list with the size taken before it
// (at the site nothing holds it: rdi has become the size class's index), and four slow paths
// (FetchFromCentralCache, the OOM handlers) handed to entry and return probes; its calloc has
// sites of its own. Every size is the one asked for (expect_same_calls), none a usable size.
TEST(ReturnSites, TcmallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(MEMTRAIL_LIB_TCMALLOC_MINIMAL, "libtcmalloc-minimal4",
                    {"malloc probed inside, where it returns", "size taken at +0x23 ja (rdi)",
                     "slow paths left to entry and", "calloc probed inside, where it returns"});
}

// mimalloc's malloc and calloc: one site on the free list's head each, the slow paths
// (_mi_malloc_generic) handed to entry and return probes.
TEST(ReturnSites, MimallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(MEMTRAIL_LIB_MIMALLOC, "libmimalloc2.0",
                    {"malloc probed inside, where it returns", "slow paths left to entry and",
                     "calloc probed inside, where it returns"});
}

// jemalloc's malloc returns its fast path's block by mov and ret after the je on its cache
// bin's low-water mark, whose other edge can end in the slow path: each such je is a site on
// the edge that returns the block only (its program reads the flags), and the slow path has
// entry and return probes at the jump to it. Its calloc's sites read count * size where r14
// still holds it, and take it earlier elsewhere.
TEST(ReturnSites, JemallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(MEMTRAIL_LIB_JEMALLOC, "libjemalloc2",
                    {"malloc probed inside, where it returns", "je when it falls through (r11",
                     "slow paths left to entry and", "calloc probed inside, where it returns"});
}

// Full tcmalloc (libgoogle-perftools4): its calloc too.
TEST(ReturnSites, FullTcmallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(
      MEMTRAIL_LIB_TCMALLOC, "libgoogle-perftools4",
      {"malloc probed inside, where it returns", "calloc probed inside, where it returns"});
}

}  // namespace
}  // namespace memtrail::testing
