// SPDX-License-Identifier: Apache-2.0
// Return-site probes (the default) against entry and return probes (--no-return-sites) on every
// path of glibc's malloc and calloc: the same blocks, sizes, stacks and failed calls, each
// successful call recorded exactly once.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
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
  int failed = -1;                         // calls that returned NULL, as the target says
  std::map<uint64_t, uint64_t> usable_of;  // malloc's sizes: malloc_usable_size's, as it says
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
    if (tag == "usable") {
      uint64_t usable = 0;
      if (words >> usable) run.usable_of[std::stoull(name)] = usable;
      continue;
    }
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
// entry and return probes, no drop, the target's 9 failing calls counted as such, and
// `usable_sizes` blocks recorded at the allocator's usable size (the others at the size asked
// for).
void expect_same_calls(const TracedRun& sites, const TracedRun& entry, uint64_t usable_sizes = 0) {
  for (const char* total :
       {"allocations", "frees", "outstanding_allocations", "drops", "failed_calls"}) {
    EXPECT_EQ(sites.report["totals"][total], entry.report["totals"][total]) << total;
  }
  EXPECT_EQ(sites.report["totals"]["drops"], 0);
  EXPECT_EQ(sites.failed, 9);
  EXPECT_EQ(sites.report["totals"]["failed_calls"], sites.failed);
  EXPECT_EQ(sites.report["totals"]["usable_size_allocations"], usable_sizes);
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

// The blocks the sites of `sites` recorded at the allocator's usable size, from their bytes: a
// malloc site (each of alloc_paths's asks one size, s: its bytes over its blocks with entry and
// return probes, in `entry`) of n blocks and B bytes has (B - n * s) / (u - s) of them at the
// usable size u (malloc_usable_size's of s, as the target says), the others at s. Every site is
// listed (none omitted); those the report lists as freed are churn's, malloc's.
uint64_t usable_sized_blocks(const TracedRun& sites, const TracedRun& entry) {
  EXPECT_EQ(sites.report["freed_sites_omitted"]["allocations"], 0);
  EXPECT_EQ(sites.usable_of.size(), 10u);
  auto entry_site = [&](const std::vector<std::string>& frames) -> json {
    for (const char* list : {"leaks", "freed_sites"}) {
      for (const auto& site : entry.report[list]) {
        if (frames_of(site) == frames) return site;
      }
    }
    return json();
  };
  uint64_t blocks = 0;
  for (const char* list : {"leaks", "freed_sites"}) {
    for (const auto& site : sites.report[list]) {
      std::vector<std::string> frames = frames_of(site);
      SCOPED_TRACE(frames.empty() ? std::string("?") : frames[0]);
      if (list == std::string("leaks") && site["allocator"] != "malloc") continue;
      if (list != std::string("leaks")) {
        EXPECT_EQ(frames.at(0).rfind("churn", 0), 0u);
      }
      json asked = entry_site(frames);
      if (!asked.is_object()) {
        ADD_FAILURE() << "no such site with entry and return probes";
        continue;
      }
      uint64_t n = site["total_allocations"], bytes = site["total_allocated_bytes"];
      EXPECT_EQ(asked["total_allocations"], n);
      uint64_t asked_bytes = asked["total_allocated_bytes"];
      EXPECT_EQ(asked_bytes % n, 0u);
      uint64_t size = asked_bytes / n;
      auto usable = sites.usable_of.find(size);
      if (usable == sites.usable_of.end() || usable->second <= size) {
        ADD_FAILURE() << "no usable size above " << size;
        continue;
      }
      uint64_t step = usable->second - size;
      EXPECT_GE(bytes, asked_bytes);
      EXPECT_EQ((bytes - asked_bytes) % step, 0u);
      EXPECT_LE((bytes - asked_bytes) / step, n);
      blocks += (bytes - asked_bytes) / step;
    }
  }
  return blocks;
}

// `library` preloaded into alloc_paths, traced with return sites (the default) and with entry and
// return probes: the same blocks, stacks and failed calls on its malloc's fast and slow paths
// (the slow ones through the entry and return probes at the jumps to them) and its calloc's, and
// the same sizes but for the functions in `at_usable_size`, whose blocks the sites record at the
// allocator's usable size (malloc_usable_size's, as the target sums it), as are some blocks of
// other malloc sites (usable_sized_blocks counts them all). `expected` are lines -v must show.
void compare_preloaded(const std::string& library, const char* package,
                       const std::vector<std::string>& expected,
                       const std::set<std::string>& at_usable_size = {}) {
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
    EXPECT_EQ(with_sites[0]["outstanding_bytes"], at_usable_size.count(function)
                                                      ? sites.asked[function].usable
                                                      : sites.asked[function].bytes);
    EXPECT_EQ(with_entry[0]["outstanding_bytes"], entry.asked[function].bytes);
    EXPECT_EQ(with_sites[0]["allocator"], with_entry[0]["allocator"]);
    EXPECT_EQ(frames_of(with_sites[0]), frames_of(with_entry[0]));
  }
  if (!at_usable_size.empty()) {
    // 100 asked is 112 usable in tcmalloc (its size class): a size asked for would show.
    EXPECT_NE(sites.asked["single_arena_odd"].usable, sites.asked["single_arena_odd"].bytes);
    // At least the blocks of at_usable_size's functions.
    uint64_t at_least = 0;
    for (const auto& function : at_usable_size) at_least += kCount * sites.asked[function].reports;
    EXPECT_GE(usable_sized_blocks(sites, entry), at_least);
  }
  expect_same_calls(sites, entry, at_usable_size.empty() ? 0 : usable_sized_blocks(sites, entry));
}

// The functions of alloc_paths that call tcmalloc's malloc with sizes of its size classes (up to
// 256 KiB): its fast path and FetchFromCentralCache record them at their class's size.
const std::set<std::string> kTcmallocClassSized{"single_arena", "single_arena_odd", "single_tcache",
                                                "single_mmapped", "thread_arena"};

// tcmalloc's malloc: one site on its thread cache's free list, where no register holds the size
// asked for (rdi has become the class array's index) but rsi holds the block's size class: the
// site reads the class's size from tcmalloc's class size table (found in its nallocx), the
// usable size, with no second trap to take the size asked for. Four slow paths
// (FetchFromCentralCache, with the class in rsi; the OOM handlers and the large path, with the
// size in rdi) are handed to entry and return probes; its calloc has sites of its own, with the
// size asked for. Blocks of malloc's size classes are at their usable size, counted as such
// (usable_size_allocations, exactly), the others at the size asked for.
TEST(ReturnSites, TcmallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(MEMTRAIL_LIB_TCMALLOC_MINIMAL, "libtcmalloc-minimal4",
                    {"malloc probed inside, where it returns (one trap a call;",
                     "(r9, size usable: its class's, from the class size table at rsi)",
                     "(size usable: its class's, from the class size table at rsi)",
                     "slow paths left to entry and", "calloc probed inside, where it returns"},
                    kTcmallocClassSized);
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

// Full tcmalloc (libgoogle-perftools4): its malloc loads its block's class size itself (rcx),
// which the site reads as it is; its calloc as above.
TEST(ReturnSites, FullTcmallocsMallocAndCallocAreRecordedOnceWithTheSameBlocksAndStacks) {
  REQUIRE_BPF_OR_SKIP();
  compare_preloaded(MEMTRAIL_LIB_TCMALLOC, "libgoogle-perftools4",
                    {"malloc probed inside, where it returns (one trap a call;",
                     "(r8, size usable: its class's, in rcx)", "(size usable: its class's, in rdx)",
                     "calloc probed inside, where it returns"},
                    kTcmallocClassSized);
}

}  // namespace
}  // namespace memtrail::testing
