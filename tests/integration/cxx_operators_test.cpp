// SPDX-License-Identifier: Apache-2.0
// --cxx with operator new told at malloc's return sites, new[] by one marking probe and the
// forwarding deletes unprobed, against every operator with its own probes
// (MEMTRAIL_TEST_CXX_OWN_PROBES): the same report, and the kernel entries each pair pays.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gated_target.h"
#include "subprocess.h"
#include "test_support.h"

namespace memtrail::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// Sets an environment variable for the processes started while it lives.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  const char* name_;
};

// memtrail leaks -p PID --cxx --json FILE -q -v, attached; with `own_probes`, every operator
// keeps its own probes.
std::unique_ptr<Subprocess> start_memtrail(pid_t pid, const std::string& json_path, bool own_probes,
                                           const std::vector<std::string>& extra = {}) {
  std::optional<ScopedEnv> forced;
  if (own_probes) forced.emplace("MEMTRAIL_TEST_CXX_OWN_PROBES", "1");
  std::vector<std::string> args{MEMTRAIL_BINARY,     "leaks", "-p",
                                std::to_string(pid), "--cxx", "--json",
                                json_path,           "-q",    "-v"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto memtrail = std::make_unique<Subprocess>(args);
  auto attached = memtrail->wait_for_stderr("memtrail: tracing pid ", 30s);
  EXPECT_TRUE(attached.has_value()) << memtrail->stderr_seen() << memtrail->drain_stderr();
  return memtrail;
}

struct Stopped {
  json report;
  std::string said;  // memtrail's stderr
};

Stopped stop(Subprocess& memtrail, const std::string& json_path) {
  memtrail.signal(SIGINT);
  EXPECT_EQ(memtrail.wait(30s), std::optional<int>(0));
  Stopped stopped;
  stopped.said = memtrail.stderr_seen() + memtrail.drain_stderr();
  stopped.report = read_json(json_path);
  return stopped;
}

// What must not differ between the two ways of probing, one line a site: its allocator, bytes,
// blocks, calls, mismatched releases and stack (functions and lines), sorted. A freed site says
// no allocator (its blocks are gone): the stack and the sums tell it.
std::multiset<std::string> sites_of(const json& report) {
  std::multiset<std::string> sites;
  for (const char* list : {"leaks", "freed_sites"}) {
    if (!report.contains(list)) continue;
    for (const auto& site : report[list]) {
      std::string line = list;
      for (const char* field : {"allocator", "outstanding_bytes", "outstanding_allocations",
                                "total_allocated_bytes", "total_allocations", "mismatched_frees"}) {
        line += " " + site.value(field, json(nullptr)).dump();
      }
      line += " @";
      for (const auto& frame : site["stack"]) {
        line += " " + frame.value("function", json("?")).dump() + ":" +
                frame.value("line", json(0)).dump();
      }
      sites.insert(line);
    }
  }
  return sites;
}

TEST(CxxOperators, WithoutTheirOwnProbesBlocksKindsSizesStacksAndMismatchesAreTheSame) {
  REQUIRE_BPF_OR_SKIP();
  std::map<bool, Stopped> runs;
  std::map<std::string, int> lines;
  for (bool own_probes : {false, true}) {
    SCOPED_TRACE(own_probes ? "own probes" : "at malloc's return sites");
    Target target({MEMTRAIL_LEAKY_CXX, "variants"});
    TempDir dir;
    auto memtrail = start_memtrail(target.process.pid(), dir.file("r.json"), own_probes);
    lines = target.run();
    runs[own_probes] = stop(*memtrail, dir.file("r.json"));
  }
  const std::string& said = runs[false].said;
  EXPECT_NE(said.find("_Znwm has no probe of its own: malloc's return sites tell its calls"),
            std::string::npos)
      << said;
  EXPECT_NE(said.find("_Znam probed at "), std::string::npos) << said;
  EXPECT_NE(said.find("only to mark its calls as new[]: it jumps to _Znwm, which calls malloc"),
            std::string::npos)
      << said;
  EXPECT_NE(said.find("_ZdlPvm has no probe of its own: it jumps to _ZdlPv, which is probed"),
            std::string::npos)
      << said;
  // Not proven, said: the aligned new calls aligned_alloc, the nothrow new calls new.
  EXPECT_NE(said.find("_ZnwmRKSt9nothrow_t keeps its own probes: it does not call malloc"),
            std::string::npos)
      << said;
  EXPECT_NE(runs[true].said.find("_Znwm keeps its own probes"), std::string::npos)
      << runs[true].said;

  const json& report = runs[false].report;
  // 4 kept, and the 6 that freed all (the 3 mismatched, then the pairs of Aligned).
  EXPECT_EQ(sites_of(report).size(), 4u + 6u) << report.dump(2);
  EXPECT_EQ(sites_of(report), sites_of(runs[true].report))
      << report.dump(2) << runs[true].report.dump(2);
  for (const char* total : {"allocations", "frees", "outstanding_allocations", "mismatched_frees",
                            "unmatched_frees", "drops", "failed_calls"}) {
    EXPECT_EQ(report["totals"][total], runs[true].report["totals"][total]) << total;
  }
  // What the program did: 4 blocks kept, 10 times three pairs, three mismatched releases
  // (new[] by delete, new by delete[], new[] by free).
  EXPECT_EQ(report["totals"]["allocations"], 4 + 10 * 3 + 3);
  EXPECT_EQ(report["totals"]["frees"], 10 * 3 + 3);
  EXPECT_EQ(report["totals"]["mismatched_frees"], 3);
  EXPECT_EQ(report["totals"]["unmatched_frees"], 0);
  struct Kept {
    const char* line;
    const char* allocator;
    int bytes;
  };
  for (const Kept& kept :
       {Kept{"nothrow_new", "new", 48}, Kept{"nothrow_new_array", "new[]", 24},
        Kept{"aligned_new", "new", 128}, Kept{"aligned_new_array", "new[]", 256}}) {
    SCOPED_TRACE(kept.line);
    bool found = false;
    for (const auto& site : report["leaks"]) {
      if (site["stack"][0].value("line", 0) != lines.at(kept.line)) continue;
      found = true;
      EXPECT_EQ(site["allocator"], kept.allocator);
      EXPECT_EQ(site["outstanding_bytes"], kept.bytes);
      EXPECT_EQ(site["stack"][0]["function"], "variants()");
    }
    EXPECT_TRUE(found) << report.dump(2);
  }
}

// Where malloc keeps its entry and return probes, operator new keeps its own, and says why.
TEST(CxxOperators, WithoutMallocsReturnSitesOperatorNewKeepsItsProbes) {
  REQUIRE_BPF_OR_SKIP();
  Target target({MEMTRAIL_LEAKY_CXX});
  TempDir dir;
  auto memtrail =
      start_memtrail(target.process.pid(), dir.file("r.json"), false, {"--no-return-sites"});
  target.run();
  Stopped stopped = stop(*memtrail, dir.file("r.json"));
  EXPECT_NE(stopped.said.find("_Znwm keeps its own probes: the malloc it calls is not probed at "
                              "its return sites alone"),
            std::string::npos)
      << stopped.said;
  EXPECT_NE(stopped.said.find("_Znam keeps its own probes: jumps to _Znwm, which keeps its probes"),
            std::string::npos)
      << stopped.said;
  const json& totals = stopped.report["totals"];
  EXPECT_EQ(totals["allocations"], 5 + 3 + 2 * 50 + 2);
  EXPECT_EQ(totals["frees"], 2 * 50 + 2);
  EXPECT_EQ(totals["mismatched_frees"], 2);
  EXPECT_EQ(totals["unmatched_frees"], 0);
}

// mimalloc's sized delete and mi_free_size only jump to mi_free, which is free: probed as free
// too, they released each block a second time, an unmatched free (51 in this scenario).
TEST(CxxOperators, UnderMimallocASizedDeleteReleasesItsBlockOnce) {
  REQUIRE_BPF_OR_SKIP();
  if (std::string(MEMTRAIL_LIB_MIMALLOC).empty()) {
    const char* required = std::getenv("MEMTRAIL_REQUIRE_BPF");
    if (required && std::string(required) == "1") FAIL() << "install libmimalloc2.0";
    GTEST_SKIP() << "install libmimalloc2.0 (scripts/install-deps.sh --tests)";
  }
  Target target(
      {"/usr/bin/env", std::string("LD_PRELOAD=") + MEMTRAIL_LIB_MIMALLOC, MEMTRAIL_LEAKY_CXX});
  TempDir dir;
  auto memtrail = start_memtrail(target.process.pid(), dir.file("r.json"), false);
  target.run();
  Stopped stopped = stop(*memtrail, dir.file("r.json"));
  EXPECT_NE(stopped.said.find("mi_free_size has no probe of its own: it jumps to mi_free"),
            std::string::npos)
      << stopped.said;
  const json& totals = stopped.report["totals"];
  EXPECT_EQ(totals["allocations"], 5 + 3 + 2 * 50 + 2);
  EXPECT_EQ(totals["frees"], 2 * 50 + 2);
  EXPECT_EQ(totals["unmatched_frees"], 0);
}

// The runs of the uprobe programs process `pid` holds (kernel BPF statistics on): the kernel
// entries its probes took. The tracepoints (region_*) fire for other processes too: left out.
uint64_t probe_runs(pid_t pid) {
  std::set<int> owned;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fdinfo")) {
    std::ifstream info(entry.path());
    std::string key;
    while (info >> key) {
      if (key != "prog_id:") continue;
      int id = 0;
      info >> id;
      owned.insert(id);
    }
  }
  uint64_t runs = 0;
  json programs = loaded_programs();
  EXPECT_FALSE(programs.empty()) << "bpftool -j prog show listed no program";
  for (const auto& program : programs) {
    if (!owned.count(program.value("id", 0))) continue;
    if (program.value("name", std::string()).rfind("region_", 0) == 0) continue;
    runs += program.value("run_cnt", uint64_t{0});
  }
  return runs;
}

// Turns the kernel's BPF run statistics on while it lives.
struct BpfStats {
  static constexpr const char* kPath = "/proc/sys/kernel/bpf_stats_enabled";
  BpfStats() {
    std::ifstream(kPath) >> before;
    std::ofstream(kPath) << "1";
  }
  ~BpfStats() { std::ofstream(kPath) << before; }
  std::string before = "0";
};

TEST(CxxOperators, ANewDeletePairPaysThreeKernelEntriesAndANewArrayDeleteArrayPairFive) {
  REQUIRE_BPF_OR_SKIP();
  constexpr int kPairs = 20000;
  BpfStats stats;
  // Entries a pair, by way of probing, for new/delete and new[]/delete[].
  std::map<bool, std::pair<double, double>> entries;
  for (bool own_probes : {false, true}) {
    SCOPED_TRACE(own_probes ? "own probes" : "at malloc's return sites");
    Target target({MEMTRAIL_LEAKY_CXX, "pairs", std::to_string(kPairs)});
    TempDir dir;
    auto memtrail = start_memtrail(target.process.pid(), dir.file("r.json"), own_probes);
    target.process.write_stdin("go\n");
    auto per_pair = [&](const char* what) {
      uint64_t before = probe_runs(memtrail->pid());
      target.process.write_stdin(std::string(what) + "\n");
      EXPECT_TRUE(target.process.wait_for_stdout("paired", 30s).has_value());
      return static_cast<double>(probe_runs(memtrail->pid()) - before) / kPairs;
    };
    entries[own_probes].first = per_pair("new");
    entries[own_probes].second = per_pair("array");
    // Each new[]'s mark taken, each delete's free() come, each call returned: no thread left
    // counted (else every malloc and free would pay a task-storage lookup, see
    // bpf/alloc/inflight.bpf.h).
    json globals = bpf_globals_of(memtrail->pid());
    // threads_holding: in calls, marking a new[], awaiting a free (enum thread_state).
    for (int state = 0; state < 3; ++state) {
      EXPECT_EQ(globals["threads_holding"][state], 0) << state << " " << globals.dump();
    }
    target.process.write_stdin("quit\n");
    Stopped stopped = stop(*memtrail, dir.file("r.json"));
    // Every pair seen, each block released by its own operator.
    EXPECT_GE(stopped.report["totals"]["allocations"], 2 * kPairs);
    EXPECT_GE(stopped.report["totals"]["frees"], 2 * kPairs);
    EXPECT_EQ(stopped.report["totals"]["mismatched_frees"], 0);
  }
  std::printf(
      "kernel entries a pair: new/delete %.3f (own probes %.3f), new[]/delete[] %.3f "
      "(own probes %.3f)\n",
      entries[false].first, entries[true].first, entries[false].second, entries[true].second);
  // new: malloc's return site, delete (sized: it jumps to delete), free. new[]: its marking
  // probe and malloc's return site; delete[] jumps to delete, which jumps to free, each probed.
  EXPECT_NEAR(entries[false].first, 3.0, 0.05);
  EXPECT_NEAR(entries[false].second, 5.0, 0.05);
  // Before: new's entry and return, malloc's site, sized delete, delete and free; new[]'s and
  // new's entries and returns besides.
  EXPECT_NEAR(entries[true].first, 6.0, 0.05);
  EXPECT_NEAR(entries[true].second, 8.0, 0.05);
}

}  // namespace
}  // namespace memtrail::testing
