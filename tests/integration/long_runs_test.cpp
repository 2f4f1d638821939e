// SPDX-License-Identifier: Apache-2.0
// memtrail leaks --all over long runs: never blind after a failed attach, bounded state.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "subprocess.h"
#include "test_support.h"

extern char** environ;

namespace memtrail::testing {
namespace long_runs {

using json = nlohmann::json;
using namespace std::chrono_literals;

// A leaky target (tests/targets/leaky.c), waiting for run().
struct Leaky {
  explicit Leaky(std::vector<std::string> argv) : process(std::move(argv)) {
    EXPECT_TRUE(process.wait_for_stdout("ready ", 10s).has_value()) << "target did not start";
  }
  void run() {
    process.write_stdin("go\n");
    while (auto line = process.read_stdout_line(20s)) {
      if (*line == "done") return;
    }
    ADD_FAILURE() << "target did not print done";
  }
  Subprocess process;
};

std::vector<std::string> memtrail(std::vector<std::string> args) {
  args.insert(args.begin(), {MEMTRAIL_BINARY, "leaks"});
  return args;
}

void stop(Subprocess& tracer) {
  tracer.signal(SIGINT);
  auto code = tracer.wait(30s);
  ASSERT_TRUE(code.has_value()) << "memtrail did not stop";
  EXPECT_EQ(*code, 0) << tracer.stderr_seen() << tracer.drain_stderr();
}

// Sets an environment variable for the processes started while it lives.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  const char* name_;
};

// Kernels before 6.6 have no uprobe_multi links: each allocator probe is then a perf-event link
// of its own (MEMTRAIL_TEST_PERF_UPROBES takes that path on this kernel). Both ways record the
// same blocks.
TEST(LeaksLongRuns, WithoutUprobeMultiLinksEachProbeIsAPerfLinkAndTheLeakIsTheSame) {
  REQUIRE_BPF_OR_SKIP();
  for (bool perf_links : {true, false}) {
    SCOPED_TRACE(perf_links ? "perf-event links" : "uprobe_multi links");
    TempDir dir;
    std::optional<Subprocess> tracer;
    {
      std::optional<ScopedEnv> forced;
      if (perf_links) forced.emplace("MEMTRAIL_TEST_PERF_UPROBES", "1");
      tracer.emplace(
          memtrail({"--all", "--comm", "leaky", "--json", dir.file("r.json"), "-q", "-v"}));
    }
    ASSERT_TRUE(tracer->wait_for_stderr("memtrail: tracing ", 20s).has_value())
        << tracer->stderr_seen();
    Leaky leaky({MEMTRAIL_LEAKY, "basic", "7", "1000"});
    ASSERT_TRUE(
        tracer->wait_for_stderr("memtrail: tracing pid " + std::to_string(leaky.process.pid()), 10s)
            .has_value())
        << tracer->stderr_seen();
    leaky.run();
    stop(*tracer);
    std::string said = perf_links ? "allocator probes: perf-event uprobes, one a probe"
                                  : "allocator probes: uprobe_multi links";
    EXPECT_NE(tracer->stderr_seen().find(said), std::string::npos) << tracer->stderr_seen();
    json report = read_json(dir.file("r.json"));
    auto leaks = sites_with_function(report, "leak_malloc", leaky.process.pid());
    ASSERT_EQ(leaks.size(), 1u) << report.dump(2);
    EXPECT_EQ(leaks[0]["outstanding_bytes"], 7000);
    EXPECT_EQ(leaks[0]["outstanding_allocations"], 7);
    EXPECT_TRUE(sites_with_function(report, "free_all", leaky.process.pid()).empty())
        << report.dump(2);
  }
}

// Another tool holding a probe on libc makes the kernel refuse memtrail's (EINVAL,
// "ref_ctr_offset mismatch"); MEMTRAIL_TEST_FAIL_ATTACH fails the first attach the same way.
// The failure must not mark libc's functions as probed: a glibc program started later is
// traced once an attempt succeeds, with exact bytes, and the report counts the failure.
TEST(LeaksLongRuns, AFailedAttachIsSaidCountedAndRetriedNotBlindForTheRestOfTheRun) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::optional<Subprocess> tracer;
  {
    ScopedEnv fail("MEMTRAIL_TEST_FAIL_ATTACH", "1");
    tracer.emplace(
        memtrail({"--all", "--comm", "leaky", "--json", dir.file("r.json"), "-q", "-v"}));
  }
  ASSERT_TRUE(tracer->wait_for_stderr("memtrail: tracing ", 20s).has_value())
      << tracer->stderr_seen();
  // The first one started: its attach fails, said once.
  Leaky first({MEMTRAIL_LEAKY, "basic", "3", "100"});
  auto warned = tracer->wait_for_stderr("memtrail: warning: cannot probe ", 10s);
  ASSERT_TRUE(warned.has_value()) << tracer->stderr_seen();
  EXPECT_NE(warned->find("libc"), std::string::npos) << *warned;
  // Traced at a later attempt, as is one started after the failure.
  std::string first_pid = std::to_string(first.process.pid());
  ASSERT_TRUE(tracer->wait_for_stderr("memtrail: tracing pid " + first_pid, 10s).has_value())
      << tracer->stderr_seen();
  Leaky later({MEMTRAIL_LEAKY, "basic", "7", "1000"});
  std::string later_pid = std::to_string(later.process.pid());
  ASSERT_TRUE(tracer->wait_for_stderr("memtrail: tracing pid " + later_pid, 10s).has_value())
      << tracer->stderr_seen();
  first.run();
  later.run();
  stop(*tracer);
  std::string seen = tracer->stderr_seen();
  size_t warnings = 0;
  for (size_t at = seen.find("cannot probe "); at != std::string::npos;
       at = seen.find("cannot probe ", at + 1)) {
    ++warnings;
  }
  EXPECT_EQ(warnings, 1u) << seen;
  json report = read_json(dir.file("r.json"));
  auto leaks = sites_with_function(report, "leak_malloc", later.process.pid());
  ASSERT_EQ(leaks.size(), 1u) << report.dump(2);
  EXPECT_EQ(leaks[0]["outstanding_bytes"], 7000);
  EXPECT_EQ(leaks[0]["outstanding_allocations"], 7);
  auto first_leaks = sites_with_function(report, "leak_malloc", first.process.pid());
  ASSERT_EQ(first_leaks.size(), 1u) << report.dump(2);
  EXPECT_EQ(first_leaks[0]["outstanding_bytes"], 300);
  ASSERT_EQ(report["attach_failures"].size(), 1u) << report.dump(2);
  const json& failure = report["attach_failures"][0];
  EXPECT_NE(failure["path"].get<std::string>().find("libc"), std::string::npos);
  EXPECT_NE(failure["reason"].get<std::string>().find("Invalid argument"), std::string::npos)
      << failure.dump();
  EXPECT_EQ(failure["failures"], 1);
  EXPECT_EQ(failure["processes"], 1);
  EXPECT_EQ(failure["attached"], true);
}

// Starts `count` short-lived programs, `batch` at a time, each living `seconds`; waits for all.
// Returns their pids.
std::set<int> churn(int count, int batch, const std::string& seconds) {
  std::set<int> started_pids;
  for (int started = 0; started < count;) {
    std::vector<pid_t> pids;
    for (int i = 0; i < batch && started < count; ++i, ++started) {
      pid_t pid = 0;
      char* argv[] = {const_cast<char*>(MEMTRAIL_SHORT_LIVED), const_cast<char*>(seconds.c_str()),
                      nullptr};
      if (::posix_spawn(&pid, MEMTRAIL_SHORT_LIVED, nullptr, nullptr, argv, environ) == 0) {
        pids.push_back(pid);
        started_pids.insert(pid);
      }
    }
    for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);
  }
  return started_pids;
}

// A host starting programs all day: each short-lived program that exits with nothing
// outstanding is only counted, so memtrail's targets (and what it keeps per process) stay
// bounded, while the leaking service beside them is still reported exactly, as a leak.
TEST(LeaksLongRuns, ShortLivedProcessesAreFoldedIntoACountAndTheLeakIsStillFound) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  Leaky leaky({MEMTRAIL_LEAKY, "grow", "4", "1000"});
  Subprocess tracer(memtrail({"--all", "--comm", "leaky", "--comm", "short_lived", "--interval",
                              "0.25", "--json", dir.file("r.json"), "-q"}));
  // (Processes of these names elsewhere on the host would be traced too: every assertion
  // below is about this test's own processes, by pid.)
  ASSERT_TRUE(tracer.wait_for_stderr("memtrail: tracing ", 20s).has_value())
      << tracer.stderr_seen();
  constexpr int kPrograms = 300;
  std::set<int> programs_started;
  std::thread programs([&programs_started] { programs_started = churn(kPrograms, 30, "0.3"); });
  leaky.run();
  programs.join();
  std::this_thread::sleep_for(1500ms);  // the last exits settled
  stop(tracer);
  json report = read_json(dir.file("r.json"));
  ASSERT_EQ(programs_started.size(), static_cast<size_t>(kPrograms));
  // Only the leaky service is listed; the programs are a count (two may still be listed: they
  // exited as the run ended).
  size_t programs_listed = 0;
  for (const auto& target : report["targets"]) {
    programs_listed += programs_started.count(target["pid"].get<int>());
  }
  EXPECT_LE(programs_listed, 2u) << report["targets"].dump(2);
  uint64_t folded = report["folded_exits"]["nothing_outstanding"].get<uint64_t>();
  EXPECT_GE(folded, kPrograms * 8 / 10) << report["folded_exits"].dump();
  EXPECT_EQ(report["folded_exits"]["over_cap"], 0);
  for (const auto& site : report["leaks"]) {
    EXPECT_FALSE(programs_started.count(site["pid"].get<int>())) << site.dump(2);
  }
  json grow;
  for (const auto& site : report["leaks"]) {
    if (site["pid"] != leaky.process.pid()) continue;
    for (const auto& frame : site["stack"]) {
      if (frame["function"] == "grow_steadily") grow = site;
    }
  }
  ASSERT_FALSE(grow.is_null()) << report.dump(2);
  EXPECT_EQ(grow["verdict"], "leak") << grow["growth"].dump(2);
  EXPECT_EQ(grow["outstanding_bytes"], grow["total_allocated_bytes"]);
  EXPECT_EQ(grow["outstanding_bytes"], 4 * 10 * 20 * 1000);  // every block of 4 s of growth
  EXPECT_TRUE(report["attach_failures"].empty());
}

// A shell's command substitution: the subshell is forked and the shell exits right after it,
// often before memtrail has followed the fork (a report may have read the fork event already).
// The child must be followed while its parent still counts as live, or purged with what the
// kernel recorded for it: nothing may stay in the maps under a pid no report knows (the state
// line counts the sites of processes that are not live; it was thousands after a soak).
TEST(LeaksLongRuns, ChildrenOfExitingShellsLeaveNothingInTheMaps) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string spawner = dir.file("mt_spawner");  // a bash named for the --comm filter
  ASSERT_EQ(std::system(("cp /bin/bash " + spawner).c_str()), 0);
  Subprocess tracer(memtrail({"--all", "--comm", "mt_spawner", "--interval", "0.25", "--json",
                              dir.file("r.json"), "-q", "-v"}));
  ASSERT_TRUE(tracer.wait_for_stderr("memtrail: tracing ", 20s).has_value())
      << tracer.stderr_seen();
  std::atomic<bool> done = false;
  std::thread shells([&] {
    std::string script = "for i in $(seq 150); do sh -c 'x=$(printf %s \"$0\"); : \"$x\"' $i; done";
    EXPECT_EQ(
        std::system((spawner + " -c '" + std::regex_replace(script, std::regex("'"), "'\\''") + "'")
                        .c_str()),
        0);
    done = true;
  });
  // Read memtrail's -v lines meanwhile (a full pipe would stop it), and after the shells are
  // gone and their exits settled, the state lines of a few more reports.
  std::vector<std::string> states;
  auto settled_by = std::chrono::steady_clock::time_point::max();
  while (std::chrono::steady_clock::now() < settled_by) {
    if (done && settled_by == std::chrono::steady_clock::time_point::max()) {
      settled_by = std::chrono::steady_clock::now() + 3s;
      states.clear();
    }
    auto line = tracer.read_stderr_line(100ms);
    if (line && line->rfind("memtrail: state:", 0) == 0) states.push_back(*line);
  }
  shells.join();
  ASSERT_GE(states.size(), 4u) << tracer.stderr_seen();
  std::smatch counts;
  ASSERT_TRUE(std::regex_search(
      states.back(), counts, std::regex("(\\d+) sites in the maps, of (\\d+) processes not live")))
      << states.back();
  EXPECT_EQ(counts[2], "0") << states.back();
  EXPECT_EQ(counts[1], "0") << states.back();  // the spawner exited too: nothing is traced
  stop(tracer);
  json report = read_json(dir.file("r.json"));
  std::set<int> targets;
  for (const auto& target : report["targets"]) targets.insert(target["pid"].get<int>());
  for (const auto& site : report["leaks"]) {
    EXPECT_TRUE(targets.count(site["pid"].get<int>())) << site.dump(2);
  }
}

}  // namespace long_runs
}  // namespace memtrail::testing
