// SPDX-License-Identifier: Apache-2.0
// Text and JSON renderers: what a person and a tool read, checked against the documented schema.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/output_file.h"
#include "report/json_reader.h"
#include "report/json_report.h"
#include "report/text_report.h"

namespace memtrail::report {
namespace {

model::Report sample_report() {
  model::Report report;
  report.tool_version = "9.9.9";
  report.host = "testhost";
  report.kernel = "6.18.0";
  report.start_time_unix_ms = 1'700'000'000'000;
  report.end_time_unix_ms = 1'700'000'012'345;
  report.duration_s = 12.345;
  report.top = 1;
  report.final = true;
  model::ProcessMemory memory;
  memory.rss_anon_bytes = 50 << 20;
  memory.assessed = true;
  memory.rss_bytes_per_s = 40000;
  memory.traced_bytes_per_s = 200;
  memory.untraced_growth = true;
  memory.reason =
      "private memory (RssAnon) +2.3 MiB/min, traced allocations +11.7 KiB/min: "
      "growth outside the traced allocators";
  memory.series = {{5, 40 << 20, 5000}, {10, 45 << 20, 6000}, {15, 50 << 20, 7000}};
  memory.coverage =
      model::ProcessMemory::Coverage{true, 10, 10 << 20, 2000, 2000.0 / (10 << 20), ""};
  report.targets = {{4242,
                     "server",
                     {"./server", "--port", "8080"},
                     "/srv/server",
                     "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                     true,
                     memory,
                     "jemalloc",
                     {{"jemalloc",
                       "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                       {"malloc", "free", "mallocx"},
                       ""},
                      {"glibc", "/usr/lib/x86_64-linux-gnu/libc.so.6", {"reallocarray"}, ""}},
                     {{"tcmalloc", "/opt/libtcmalloc.so.4", "mapped outside the link map", false}},
                     {2, 0, 0, 0, 3, 4},  // losses: 2 drops, 3 unmatched frees, 4 region events
                     std::nullopt,
                     3 << 20,
                     4000,
                     "/system.slice/server.service"}};
  report.targets[0].python = model::PythonRuntime{"3.11.2", "/usr/bin/python3.11", true, ""};
  report.python_types = std::vector<model::PythonType>{
      {4242, "Session", 2000, 112000, 800.5, 6001, 4001}, {4242, "dict", -3, -192, 0, 10, 13}};
  report.totals.allocations = 100;
  report.totals.frees = 90;
  report.totals.outstanding_bytes = 7000;
  report.totals.outstanding_allocations = 7;
  report.totals.unmatched_frees = 3;
  report.totals.drops = 2;
  report.totals.failed_calls = 1;
  report.totals.sites = 2;
  model::LeakSite leak;
  leak.pid = 4242;
  leak.outstanding_bytes = 7000;
  leak.outstanding_allocations = 7;
  leak.total_allocated_bytes = 9000;
  leak.total_allocations = 9;
  leak.oldest_age_s = 3.5;
  leak.allocator = "malloc";
  leak.stack = {{0x5555'0000'1234, "/srv/server", 0x1234, "inlined_helper", "/src/a.c", 10, true},
                {0x5555'0000'1234, "/srv/server", 0x1234, "leak_here(int)", "/src/a.c", 42, false},
                {0x7f00'0000'5678, "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x5678, std::nullopt,
                 std::nullopt, std::nullopt, false},
                // A Python frame (--python-frames): the code object, its bytecode offset.
                {0x7f12'3456'0000, "[python]", 0x58, "Cache.fill", "/srv/app.py", 24, false, true}};
  leak.stack_truncated = true;
  leak.stack_truncation_reason = "no_cfi";
  model::Growth growth;
  growth.verdict = "leak";
  growth.bytes_per_s = 200;
  growth.r_squared = 0.98;
  growth.grew_share = 0.9;
  growth.points = 3;
  growth.span_s = 10;
  growth.reason = "+11.7 KiB/min for 10.0s, R² 0.98, oldest 3.5s, 2 of 9 freed";
  growth.freed_any = true;
  growth.series = {{5, 5000, 5}, {10, 6000, 6}, {15, 7000, 7}};
  leak.growth = growth;
  model::LeakSite second = leak;
  second.outstanding_bytes = 10;
  second.allocator = "calloc";
  second.growth->verdict = "steady";
  second.growth->reason = "flat at 10 B for the last 5.0s (peak 10 B), oldest 3.5s";
  second.stack = {{0x99, "[unknown]", 0x99, std::nullopt, std::nullopt, std::nullopt, false}};
  second.stack_truncated = true;
  report.leaks = {leak, second};
  report.notes = {"Allocations made before memtrail attached are invisible."};
  model::UnwindSummary unwind;
  unwind.mode = "auto";
  unwind.stacks = 12;
  unwind.stacks_using_tables = 10;
  unwind.truncated_stacks = 2;
  unwind.truncated_by_reason = {{"no_cfi", 1}, {"depth", 1}};
  unwind.modules = {
      {"/srv/server", "cfi", "41 functions with CFI", 300},
      {"/usr/lib/libfp.so", "frame_pointers", "9 of 10 functions keep a frame pointer", 0}};
  unwind.table_rows = 300;
  unwind.table_bytes = 2400;
  unwind.table_capacity_rows = 1u << 21;
  unwind.python_segments_walked = 25;
  unwind.python_segments_reused = 1975;
  report.unwind = unwind;
  return report;
}

TEST(TextReport, ShowsTopSitesWithStackTotalsAndNotes) {
  std::ostringstream out;
  render_text(sample_report(), out);
  std::string text = out.str();
  EXPECT_NE(text.find("final report"), std::string::npos);
  EXPECT_NE(text.find("pid 4242 server"), std::string::npos);
  EXPECT_NE(text.find("    memory: 50.0 MiB private; private memory (RssAnon) +2.3 MiB/min, "
                      "traced allocations +11.7 KiB/min: growth outside the traced allocators"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("    memory: 50.0 MiB private; private memory (RssAnon) +2.3 MiB/min, "
                      "traced allocations +11.7 KiB/min: growth outside the traced allocators\n"
                      "    traced: 0 % of RssAnon growth (+2.0 KiB traced, +10.0 MiB RssAnon "
                      "over 10.0s)\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("7,000 B (6.8 KiB) outstanding in 7 allocations from malloc"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("leak_here(int)"), std::string::npos);
  EXPECT_NE(text.find("a.c:42"), std::string::npos);
  EXPECT_NE(text.find("inlined_helper (inlined)"), std::string::npos) << text;
  EXPECT_NE(text.find("outer callers unknown: the walk reached code that no CFI describes"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("Stacks (--unwind auto): 12 captured, 2 truncated (depth 1, no_cfi 1); "
                      "modules by CFI table 1, by frame pointers 1; 300 table rows (2.3 KiB); "
                      "Python walks' C frames below the innermost eval loop reused 1,975 "
                      "times of 2,000"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("libc.so.6+0x5678"), std::string::npos);
  EXPECT_NE(text.find("Top 1 of 2 allocation sites, leaks first, by growth"), std::string::npos)
      << text;
  EXPECT_NE(text.find("LEAK: +11.7 KiB/min for 10.0s, R² 0.98, oldest 3.5s, 2 of 9 freed"),
            std::string::npos)
      << text;
  // --top 1: the second site is in the model but not in the text.
  EXPECT_EQ(text.find("from calloc"), std::string::npos);
  EXPECT_NE(text.find("3 unmatched frees, 2 drops"), std::string::npos) << text;
  EXPECT_NE(text.find("    lost: 2 allocations dropped (table full: --max-allocations), 3 frees "
                      "of blocks from before attach, 4 mmap/munmap/brk calls not followed "
                      "(event buffer full)\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("    heap break: +3.0 MiB since attach"), std::string::npos) << text;
  EXPECT_NE(text.find("forked by pid 4000"), std::string::npos) << text;
  EXPECT_NE(text.find("cgroup /system.slice/server.service"), std::string::npos) << text;
  // Which allocator each process uses, what else is probed, and what is not traced.
  EXPECT_NE(text.find("allocator jemalloc /usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("also traced: glibc /usr/lib/x86_64-linux-gnu/libc.so.6 (reallocarray)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("not traced: tcmalloc /opt/libtcmalloc.so.4"), std::string::npos) << text;
  EXPECT_NE(text.find("Note: Allocations made before memtrail attached are invisible."),
            std::string::npos);
}

// Sites that freed all they allocated are no leak: the text says how many and the biggest in
// one line; JSON and pprof list them.
TEST(TextReport, SitesThatFreedEverythingAreOneLineWithTheBiggest) {
  model::Report report = sample_report();
  model::LeakSite churn;
  churn.pid = 4242;
  churn.total_allocated_bytes = 64000;
  churn.total_allocations = 1000;
  churn.stack = {{0x10, "/srv/server", 0x10, "churn_inner", "/src/a.c", 7, true},
                 {0x10, "/srv/server", 0x10, "churn", "/src/a.c", 8, false}};
  model::LeakSite small = churn;
  small.total_allocated_bytes = 100;
  small.total_allocations = 1;
  report.freed_sites = {churn, small};
  report.freed_omitted = {2, 24, 1936};
  std::ostringstream out;
  render_text(report, out);
  EXPECT_NE(out.str().find(
                "4 sites freed all they allocated: 64.5 KiB in 1,025 calls, the most "
                "(62.5 KiB) from churn_inner in pid 4242 (the JSON and pprof reports list them)\n"),
            std::string::npos)
      << out.str();
  std::ostringstream none;
  render_text(sample_report(), none);
  EXPECT_EQ(none.str().find("freed all"), std::string::npos);
}

TEST(Report, PythonFramesAndTheInterpreterAreInTextAndJson) {
  auto report = sample_report();
  report.targets[0].python = model::PythonRuntime{"3.11.2", "/usr/bin/python3.11", true, ""};
  std::ostringstream text;
  render_text(report, text);
  EXPECT_NE(text.str().find("CPython 3.11.2"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("Cache.fill"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("app.py:24"), std::string::npos) << text.str();
  auto json = to_json(report, 5.0);
  const auto& frames = json["leaks"][0]["stack"];
  EXPECT_EQ(frames[0]["language"], "native");
  EXPECT_EQ(frames[frames.size() - 1]["language"], "python");
  EXPECT_EQ(frames[frames.size() - 1]["function"], "Cache.fill");
  EXPECT_EQ(json["targets"][0]["python"]["version"], "3.11.2");
  EXPECT_EQ(json["targets"][0]["python"]["frames"], true);
  ASSERT_EQ(json["python_types"].size(), 2u);
  EXPECT_EQ(json["python_types"][0]["type"], "Session");
  EXPECT_EQ(json["python_types"][0]["outstanding_objects"], 2000);
  EXPECT_EQ(json["python_types"][1]["outstanding_bytes"], -192);
  // --top 1: the fastest growing type, then how many more.
  EXPECT_NE(text.str().find("pid 4242  Session  +48,030 objects/min   2,000 objects     109.4 KiB"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("... and 1 more type\n"), std::string::npos) << text.str();
  // An interpreter memtrail cannot walk: native frames, and a note that says why.
  report.targets[0].python = model::PythonRuntime{"3.12.1", "/usr/bin/python3.12", false,
                                                  "CPython 3.12.1 is not supported"};
  std::ostringstream unsupported;
  render_text(report, unsupported);
  EXPECT_NE(unsupported.str().find("CPython 3.12.1 (native frames only)"), std::string::npos)
      << unsupported.str();
}

// A sample report whose first site holds Python objects (--python-objects on), with the
// process's types from the tracked objects.
model::Report python_objects_report() {
  auto report = sample_report();
  auto& site = report.leaks[0];
  site.kind = "python_objects";
  site.allocator = "python_object";
  site.outstanding_allocations = 6000;
  site.outstanding_bytes = 409631;
  site.total_allocations = 6500;
  site.freed_allocations = 500;
  site.total_allocated_bytes = 0;
  auto type = [](const char* name, int64_t objects, int64_t bytes, double per_s) {
    model::PythonType entry{4242, name, objects, bytes, per_s};
    entry.growth_bytes_per_s = per_s * 56;
    entry.source = "objects";
    return entry;
  };
  site.python_types = {type("str", 2000, 185631, 200), type("Item", 3000, 168000, 300),
                       type("tuple", 1000, 56000, 100)};
  report.leaks[1].kind = "native";
  report.python_types = std::vector<model::PythonType>{type("Item", 3000, 168000, 300),
                                                       type("str", 2000, 185631, 200)};
  return report;
}

TEST(Report, PythonObjectSitesSayTheirKindAndTypesInTextAndJson) {
  auto report = python_objects_report();
  report.top = 2;
  std::ostringstream text;
  render_text(report, text);
  EXPECT_NE(text.str().find("#1  409,631 B (400.0 KiB) outstanding in 6,000 Python objects  pid "
                            "4242"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("    6,500 created since attach, 500 of them gone\n"
                            "    by type: str 2,000 (181.3 KiB) · Item 3,000 (164.1 KiB) · "
                            "tuple 1,000 (54.7 KiB)\n"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("outstanding in 7 allocations from calloc"), std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("Python objects by type (live at this report; growth over the "
                            "run), growing first:\n"
                            "  pid 4242  Item  +18,000 objects/min  +984.4 KiB/min"),
            std::string::npos)
      << text.str();
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["leaks"][0]["kind"], "python_objects");
  EXPECT_EQ(json["leaks"][1]["kind"], "native");
  ASSERT_EQ(json["leaks"][0]["python_types"].size(), 3u);
  EXPECT_EQ(json["leaks"][0]["python_types"][1],
            nlohmann::ordered_json::parse(R"({"type": "Item", "outstanding_objects": 3000,
              "outstanding_bytes": 168000, "growth_objects_per_s": 300.0,
              "growth_bytes_per_s": 16800.0})"));
  EXPECT_FALSE(json["leaks"][1].contains("python_types"));
  EXPECT_EQ(json["python_types"][0]["source"], "objects");
  EXPECT_EQ(json["python_types"][0]["growth_bytes_per_s"], 16800.0);
  EXPECT_FALSE(json["python_types"][0].contains("made"));  // the allocator probes' only
}

TEST(TextReport, SaysWhyNoShareOfRssAnonGrowthIsGivenAndWhenTracedExceedsIt) {
  model::Report report = sample_report();
  report.targets[0].memory->coverage = model::ProcessMemory::Coverage{
      false, 0.5, 0, 0, 0, "too short a history: 2 readings over 0.5s (4 over 3 intervals needed)"};
  std::ostringstream out;
  render_text(report, out);
  EXPECT_NE(out.str().find("\n    traced: no share of RssAnon growth to say: too short a history: "
                           "2 readings over 0.5s (4 over 3 intervals needed)\n"),
            std::string::npos)
      << out.str();
  report.targets[0].memory->coverage =
      model::ProcessMemory::Coverage{true, 20, 1 << 20, 1.5 * (1 << 20), 1.5, ""};
  std::ostringstream over;
  render_text(report, over);
  EXPECT_NE(over.str().find("    traced: 150 % of RssAnon growth (+1.5 MiB traced, +1.0 MiB "
                            "RssAnon over 20.0s); over 100 %: traced blocks not all touched, or "
                            "in memory resident before\n"),
            std::string::npos)
      << over.str();
  // A report from before the coverage statement says nothing of it.
  report.targets[0].memory->coverage.reset();
  std::ostringstream old;
  render_text(report, old);
  EXPECT_EQ(old.str().find("    traced:"), std::string::npos) << old.str();
}

// A launched wrapper's helpers (a pyenv shim's bash and readlink processes): beyond 5 exited
// processes, those that left the most are listed and the others summed on one line by name;
// the live process and JSON keep every one.
TEST(TextReport, ManyProcessesThatExitedEarlyAreSummedOnOneLineBeyondTheFiveThatLeftTheMost) {
  model::Report report = sample_report();
  model::Target live = report.targets[0];
  report.targets.clear();
  report.targets.push_back(live);
  for (uint32_t i = 0; i < 9; ++i) {
    model::Target helper = live;
    helper.pid = 100 + i;
    helper.comm = i < 6 ? "bash" : i < 8 ? "readlink" : "env";
    helper.exited = true;
    helper.exit = model::ExitSummary{0.5, 1000u * (i + 1), i + 1, 1, i + 1};
    report.targets.push_back(helper);
  }
  std::ostringstream out;
  render_text(report, out);
  std::string text = out.str();
  EXPECT_NE(text.find("  pid " + std::to_string(live.pid) + " "), std::string::npos) << text;
  // Listed: the five that left the most (pids 104-108); summed: 100-103 (1+2+3+4 thousand B).
  for (uint32_t pid = 104; pid <= 108; ++pid) {
    EXPECT_NE(text.find("  pid " + std::to_string(pid) + " "), std::string::npos) << text;
  }
  for (uint32_t pid = 100; pid <= 103; ++pid) {
    EXPECT_EQ(text.find("  pid " + std::to_string(pid) + " "), std::string::npos) << text;
  }
  EXPECT_NE(text.find("  ... 4 more processes exited earlier (bash 4): 10,000 B (9.8 KiB) "
                      "outstanding at their exits in 10 allocations; the JSON report lists "
                      "each\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(to_json(report, 5.0)["targets"].size(), 10u);
  // Five or fewer: each listed, no sum.
  report.targets.resize(6);
  std::ostringstream few;
  render_text(report, few);
  EXPECT_EQ(few.str().find("more processes exited earlier"), std::string::npos) << few.str();
}

TEST(TextReport, AProcessThatExitedEarlySaysWhatItLeft) {
  model::Report report = sample_report();
  report.targets[0].exited = true;
  report.targets[0].exit = model::ExitSummary{12.5, 7010, 8, 2, 8};
  std::ostringstream out;
  render_text(report, out);
  EXPECT_NE(out.str().find("    exited after 12.5s with 7,010 B outstanding in 8 allocations at "
                           "2 sites (shown as they were at its exit; its 8 blocks were removed "
                           "from memtrail's table)"),
            std::string::npos)
      << out.str();
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["targets"][0]["exit"]["outstanding_bytes"], 7010);
  EXPECT_EQ(json["targets"][0]["exit"]["purged_blocks"], 8);
}

TEST(TextReport, SeveralProcessesAreListedProcessByProcessTheLargestFirst) {
  model::Report report;
  report.top = 10;
  report.targets.resize(2);
  report.targets[0].pid = 100;
  report.targets[0].comm = "small";
  report.targets[0].outstanding_bytes = 300;
  report.targets[0].sites = 2;
  report.targets[1].pid = 200;
  report.targets[1].comm = "big";
  report.targets[1].cgroup = "/system.slice/big.service";
  report.targets[1].outstanding_bytes = 5000;
  report.targets[1].sites = 1;
  for (auto [pid, bytes] : {std::pair{100u, 200u}, std::pair{200u, 5000u}, std::pair{100u, 100u}}) {
    model::LeakSite site;
    site.pid = pid;
    site.allocator = "malloc";
    site.outstanding_bytes = bytes;
    site.outstanding_allocations = 1;
    report.leaks.push_back(site);
  }
  report.totals.sites = 3;
  std::ostringstream out;
  render_text(report, out);
  std::string text = out.str();
  size_t big =
      text.find("== pid 200 big: 4.9 KiB outstanding in 1 site, cgroup /system.slice/big.service");
  size_t small = text.find("== pid 100 small: 300 B outstanding in 2 sites");
  ASSERT_NE(big, std::string::npos) << text;
  ASSERT_NE(small, std::string::npos) << text;
  EXPECT_LT(big, small) << text;
  // Within a process, sites keep their rank and number.
  size_t first = text.find("#1  200 B"), third = text.find("#3  100 B");
  EXPECT_LT(small, first) << text;
  EXPECT_LT(first, third) << text;
  EXPECT_LT(text.find("#2  5,000 B"), small) << text;
  // One process: no grouping.
  report.leaks.erase(report.leaks.begin() + 1);
  std::ostringstream single;
  render_text(report, single);
  EXPECT_EQ(single.str().find("== pid"), std::string::npos);
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["targets"][1]["outstanding_bytes"], 5000);
  EXPECT_EQ(json["targets"][0]["sites"], 2);
}

TEST(TextReport, SaysSoWhenNothingIsOutstanding) {
  model::Report report = sample_report();
  report.leaks.clear();
  std::ostringstream out;
  render_text(report, out);
  EXPECT_NE(out.str().find("No outstanding allocations."), std::string::npos);
}

TEST(JsonReport, HasTheDocumentedFieldsAndNullsForUnknowns) {
  auto json = to_json(sample_report(), 5.0);
  EXPECT_EQ(json["schema"], "memtrail.leaks/2");
  EXPECT_EQ(json["targets"][0]["losses"]["drops"], 2);
  EXPECT_FALSE(json["targets"][0].contains("exit"));  // still running at the end
  EXPECT_EQ(json["targets"][0]["losses"]["unmatched_frees"], 3);
  EXPECT_EQ(json["targets"][0]["losses"]["region_events_lost"], 4);
  EXPECT_EQ(json["targets"][0]["break_growth_bytes"], 3 << 20);
  EXPECT_EQ(json["targets"][0]["parent_pid"], 4000);
  EXPECT_EQ(json["targets"][0]["cgroup"], "/system.slice/server.service");
  EXPECT_EQ(json["unwind"]["mode"], "auto");
  EXPECT_EQ(json["unwind"]["truncated_by_reason"]["no_cfi"], 1);
  EXPECT_EQ(json["unwind"]["modules"][1]["method"], "frame_pointers");
  EXPECT_EQ(json["unwind"]["python_segments_reused"], 1975);
  EXPECT_EQ(json["leaks"][0]["stack_truncation_reason"], "no_cfi");
  EXPECT_FALSE(to_json(sample_report(), 5.0, 1).contains("unwind"));  // v1 stays as it was
  EXPECT_EQ(json["tool"]["version"], "9.9.9");
  EXPECT_EQ(json["start_time"], "2023-11-14T22:13:20.000Z");
  EXPECT_EQ(json["options"]["interval_s"], 5.0);
  EXPECT_EQ(json["targets"][0]["cmdline"][2], "8080");
  EXPECT_EQ(json["targets"][0]["exited"], true);
  EXPECT_EQ(json["targets"][0]["memory"]["untraced_growth"], true);
  EXPECT_EQ(json["targets"][0]["allocator"], "jemalloc");
  EXPECT_EQ(json["targets"][0]["allocators"][0]["functions"][2], "mallocx");
  EXPECT_EQ(json["targets"][0]["allocators"][1]["name"], "glibc");
  EXPECT_EQ(json["targets"][0]["untraced_allocators"][0]["path"], "/opt/libtcmalloc.so.4");
  EXPECT_EQ(json["targets"][0]["untraced_allocators"][0]["expected"], false);
  EXPECT_EQ(json["targets"][0]["memory"]["series"][2][1], 50 << 20);
  EXPECT_EQ(json["targets"][0]["memory"]["coverage"]["assessed"], true);
  EXPECT_EQ(json["targets"][0]["memory"]["coverage"]["rss_anon_growth_bytes"], 10 << 20);
  EXPECT_EQ(json["targets"][0]["memory"]["coverage"]["traced_growth_bytes"], 2000);
  EXPECT_EQ(json["totals"]["unmatched_frees"], 3);
  EXPECT_EQ(json["totals"]["drops"], 2);
  ASSERT_EQ(json["leaks"].size(), 2u);  // the JSON keeps every site, not only --top
  const auto& site = json["leaks"][0];
  EXPECT_EQ(site["outstanding_bytes"], 7000);
  EXPECT_EQ(site["stack"][0]["inlined"], true);
  EXPECT_EQ(site["stack"][1]["line"], 42);
  EXPECT_EQ(site["stack"][1]["address"], 0x5555'0000'1234ull);
  EXPECT_TRUE(site["stack"][2]["function"].is_null());
  EXPECT_TRUE(site["stack"][2]["file"].is_null());
  EXPECT_TRUE(site["stack"][2]["line"].is_null());
  EXPECT_EQ(json["leaks"][0]["stack_truncated"], true);
  EXPECT_EQ(json["leaks"][1]["stack_truncated"], true);
}

TEST(JsonReport, Version2CarriesEachSitesVerdictGrowthAndSeries) {
  auto json = to_json(sample_report(), 5.0);
  const auto& site = json["leaks"][0];
  EXPECT_EQ(site["verdict"], "leak");
  EXPECT_EQ(site["growth_bytes_per_s"], 200.0);
  EXPECT_EQ(site["growth"]["r_squared"], 0.98);
  EXPECT_EQ(site["growth"]["freed_any"], true);
  ASSERT_EQ(site["growth"]["series"].size(), 3u);
  EXPECT_EQ(site["growth"]["series"][2], nlohmann::json::parse("[15.0, 7000.0, 7.0]"));
  EXPECT_EQ(json["leaks"][1]["verdict"], "steady");
}

TEST(JsonReport, Version1KeepsItsLayoutAndItsRankingByBytes) {
  model::Report report = sample_report();
  std::swap(report.leaks[0], report.leaks[1]);  // a small leak ranked above a big steady site
  auto json = to_json(report, 5.0, 1);
  EXPECT_EQ(json["schema"], "memtrail.leaks/1");
  ASSERT_EQ(json["leaks"].size(), 2u);
  EXPECT_EQ(json["leaks"][0]["outstanding_bytes"], 7000);
  EXPECT_EQ(json["leaks"][1]["outstanding_bytes"], 10);
  for (const auto& site : json["leaks"]) {
    EXPECT_FALSE(site.contains("verdict"));
    EXPECT_FALSE(site.contains("growth"));
  }
  EXPECT_EQ(to_json(report, 5.0, 2)["leaks"][0]["outstanding_bytes"], 10);  // v2: as ranked
}

std::string temp_dir() {
  char pattern[] = "/tmp/memtrail-report-test-XXXXXX";
  const char* dir = mkdtemp(pattern);
  EXPECT_NE(dir, nullptr);
  return dir ? dir : "/tmp";
}

// The shell command that validates the JSON file at `path` against docs/leaks.schema.json: it
// exits 0 when the file follows the schema.
std::string schema_check(const std::string& path) {
  return "python3 -c 'import json, sys, jsonschema; "
         "jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))' " +
         path + " " + MEMTRAIL_SOURCE_DIR "/docs/leaks.schema.json";
}

// Whether `json`, written to a file, validates against the documented schema.
template <typename Json>
bool matches_schema(const Json& json) {
  std::string dir = temp_dir();
  std::string path = dir + "/report.json";
  write_json_file(json, path);
  bool valid = std::system(schema_check(path).c_str()) == 0;
  std::remove(path.c_str());
  rmdir(dir.c_str());
  return valid;
}

TEST(JsonReport, ValidatesAgainstTheDocumentedSchema) {
  std::string dir = temp_dir();
  std::string path = dir + "/report.json";
  write_json_file(to_json(sample_report(), 5.0), path);
  std::string command = schema_check(path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "schema validation failed: " << command;

  // And a report that breaks the schema is caught, so the check above can fail.
  auto broken = to_json(sample_report(), 5.0);
  broken["leaks"][0].erase("outstanding_bytes");
  write_json_file(broken, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);

  // A process that exited early carries its exit summary.
  model::Report exited = sample_report();
  exited.targets[0].exited = true;
  exited.targets[0].exit = model::ExitSummary{3.5, 100, 2, 1, 2};
  write_json_file(to_json(exited, 5.0), path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "an exit summary failed the schema";

  // Sites that freed everything and the mapped files validate.
  model::Report freed = sample_report();
  freed.targets[0].mappings = {{"/srv/server", 0x5555'0000'1000, 0x5555'0000'9000, 0x1000}};
  model::LeakSite churn;
  churn.pid = 4242;
  churn.total_allocated_bytes = 6400;
  churn.total_allocations = 100;
  churn.freed_allocations = 100;
  churn.stack = {{0x5555'0000'2000, "/srv/server", 0x2000, "churn", "/src/a.c", 7, false}};
  freed.freed_sites = {churn};
  freed.freed_omitted = {1, 2, 3};
  write_json_file(to_json(freed, 5.0), path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "freed sites or mappings failed the schema";
  auto freed_broken = to_json(freed, 5.0);
  freed_broken["freed_sites"][0]["outstanding_bytes"] = 0;  // a freed site holds nothing
  write_json_file(freed_broken, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);

  // Sites of Python objects, with their kinds and types, and the types by process.
  write_json_file(to_json(python_objects_report(), 5.0), path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "Python objects' sites failed the schema";
  auto bad_kind = to_json(python_objects_report(), 5.0);
  bad_kind["leaks"][0]["kind"] = "python";
  write_json_file(bad_kind, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);

  // Version 1 validates too; a version 2 site without its verdict does not.
  write_json_file(to_json(sample_report(), 5.0, 1), path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "version 1 failed the schema";
  auto no_verdict = to_json(sample_report(), 5.0);
  no_verdict["leaks"][1].erase("verdict");
  write_json_file(no_verdict, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);
  std::remove(path.c_str());
  rmdir(dir.c_str());
}

// --python-objects on: estimated sites say so in text ("~") and JSON ("estimated"), with the
// share seen per process and for the report; a site that is a count says nothing; the JSON
// validates and reads back.
TEST(Report, EstimatedPythonObjectSitesAreMarkedEverywhere) {
  model::Report report = sample_report();
  report.leaks[0].allocator = "python_object";
  report.leaks[0].estimated = true;
  report.targets[0].python_objects_observed_fraction = 0.125;
  report.targets[0].python_objects_share_basis = "allocations";
  report.python_objects = model::PythonObjectsCoverage{false, 0.25, 1.0, 0.125, "allocations"};
  report.python_objects->recorded = 5000;
  report.python_objects->untyped = 3;
  report.python_objects->found_dead = 4000;
  // A site of Python objects that freed them all: known by where it starts, scaled alike.
  model::LeakSite freed = report.leaks[0];
  freed.kind = "python_objects";
  freed.outstanding_bytes = freed.outstanding_allocations = 0;
  freed.total_allocations = freed.freed_allocations = 48;
  freed.total_allocated_bytes = 2400;
  report.freed_sites = {freed};
  report.python_objects->found_replaced = 300;
  report.python_objects->at_risk = 20;
  report.python_objects->window_sweeps = 9;
  report.python_objects->sweep_objects_read = 7000;
  report.python_objects->whole_table_sweeps = 1;
  report.python_objects->sweep_seconds = 0.5;
  report.python_objects->unwatched = 1234;
  std::ostringstream text;
  render_text(report, text);
  EXPECT_NE(text.str().find("#1  ~"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("(estimated)"), std::string::npos) << text.str();
  // The freed sites' sum holds an estimate: it is one.
  EXPECT_NE(text.str().find("1 site freed all it allocated: ~2.3 KiB in ~48 calls, the most "
                            "(~2.3 KiB)"),
            std::string::npos)
      << text.str();
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["leaks"][0]["estimated"], true);
  EXPECT_FALSE(json["leaks"][1].contains("estimated"));
  EXPECT_EQ(json["targets"][0]["python_objects_observed_fraction"], 0.125);
  EXPECT_EQ(json["targets"][0]["python_objects_share_basis"], "allocations");
  EXPECT_EQ(json["python_objects"]["mode"], "duty_cycle");
  EXPECT_EQ(json["python_objects"]["observed_fraction"], 0.125);
  EXPECT_EQ(json["python_objects"]["share_basis"], "allocations");
  EXPECT_EQ(json["python_objects"]["attached_share"], 0.25);
  EXPECT_EQ(json["python_objects"]["recorded"], 5000);
  EXPECT_EQ(json["python_objects"]["untyped"], 3);
  EXPECT_EQ(json["python_objects"]["found_dead"], 4000);
  EXPECT_EQ(json["freed_sites"][0]["allocator"], "python_object");
  EXPECT_EQ(json["freed_sites"][0]["kind"], "python_objects");
  EXPECT_EQ(json["freed_sites"][0]["estimated"], true);
  EXPECT_EQ(json["freed_sites"][0]["total_allocations"], 48);
  EXPECT_EQ(json["python_objects"]["found_replaced"], 300);
  EXPECT_EQ(json["python_objects"]["at_risk"], 20);
  EXPECT_EQ(json["python_objects"]["window_sweeps"], 9);
  EXPECT_EQ(json["python_objects"]["sweep_objects_read"], 7000);
  EXPECT_EQ(json["python_objects"]["whole_table_sweeps"], 1);
  EXPECT_EQ(json["python_objects"]["sweep_seconds"], 0.5);
  EXPECT_EQ(json["python_objects"]["unwatched"], 1234);
  EXPECT_TRUE(matches_schema(json)) << "schema validation failed";
  model::Report read = from_json(nlohmann::json::parse(json.dump()));
  EXPECT_TRUE(read.leaks[0].estimated);
  EXPECT_FALSE(read.leaks[1].estimated);
  ASSERT_TRUE(read.python_objects);
  EXPECT_FALSE(read.python_objects->exact);
  EXPECT_DOUBLE_EQ(read.python_objects->observed_fraction, 0.125);
  EXPECT_EQ(read.python_objects->share_basis, "allocations");
  EXPECT_EQ(read.python_objects->recorded, 5000u);
  EXPECT_EQ(read.python_objects->untyped, 3u);
  EXPECT_EQ(read.python_objects->found_dead, 4000u);
  ASSERT_EQ(read.freed_sites.size(), 1u);
  EXPECT_EQ(read.freed_sites[0].allocator, "python_object");
  EXPECT_EQ(read.freed_sites[0].kind, "python_objects");
  EXPECT_TRUE(read.freed_sites[0].estimated);
  EXPECT_EQ(read.python_objects->found_replaced, 300u);
  EXPECT_EQ(read.python_objects->at_risk, 20u);
  EXPECT_EQ(read.python_objects->window_sweeps, 9u);
  EXPECT_EQ(read.python_objects->sweep_objects_read, 7000u);
  EXPECT_EQ(read.python_objects->whole_table_sweeps, 1u);
  EXPECT_DOUBLE_EQ(read.python_objects->sweep_seconds, 0.5);
  EXPECT_EQ(read.python_objects->unwatched, 1234u);
  EXPECT_EQ(read.targets[0].python_objects_observed_fraction, 0.125);
  EXPECT_EQ(read.targets[0].python_objects_share_basis, "allocations");
  // A report from before the basis was said measured by time.
  auto older = nlohmann::json::parse(json.dump());
  older["python_objects"].erase("share_basis");
  older["targets"][0].erase("python_objects_share_basis");
  model::Report read_older = from_json(older);
  EXPECT_EQ(read_older.python_objects->share_basis, "time");
  EXPECT_EQ(read_older.targets[0].python_objects_share_basis, "time");
  // Exact: counts are counts, nothing marked.
  report.leaks[0].estimated = false;
  report.freed_sites[0].estimated = false;
  report.targets[0].python_objects_observed_fraction.reset();
  report.python_objects = model::PythonObjectsCoverage{};
  auto exact = to_json(report, 5.0);
  EXPECT_EQ(exact["python_objects"]["mode"], "exact");
  EXPECT_FALSE(exact["leaks"][0].contains("estimated"));
  std::ostringstream exact_text;
  render_text(report, exact_text);
  EXPECT_EQ(exact_text.str().find("~"), std::string::npos);
}

// A launched program that ended before its first object window: nothing seen, said as a share
// of 0 measured by "none" and its pid in before_first_window; the JSON validates and reads back.
TEST(Report, ProcessesBeforeTheirFirstObjectWindowAreListed) {
  model::Report report = sample_report();
  report.targets[0].python_objects_observed_fraction = 0;
  report.targets[0].python_objects_share_basis = "none";
  report.python_objects = model::PythonObjectsCoverage{false, 0.1, 1.0, 0, "none"};
  report.python_objects->before_first_window = {report.targets[0].pid};
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["python_objects"]["share_basis"], "none");
  EXPECT_EQ(json["python_objects"]["observed_fraction"], 0.0);
  EXPECT_EQ(json["python_objects"]["before_first_window"],
            nlohmann::json::array({report.targets[0].pid}));
  EXPECT_EQ(json["targets"][0]["python_objects_share_basis"], "none");
  EXPECT_TRUE(matches_schema(json)) << "schema validation failed";
  model::Report read = from_json(nlohmann::json::parse(json.dump()));
  ASSERT_TRUE(read.python_objects);
  EXPECT_EQ(read.python_objects->before_first_window, std::vector<uint32_t>{report.targets[0].pid});
  EXPECT_EQ(read.python_objects->share_basis, "none");
  EXPECT_EQ(read.targets[0].python_objects_share_basis, "none");
  // Once every process had a window, the list is absent.
  report.python_objects->before_first_window.clear();
  EXPECT_FALSE(to_json(report, 5.0)["python_objects"].contains("before_first_window"));
}

// The sums that hold estimates are marked too: the Totals line's outstanding figures when
// scaled objects are in them, and the freed sites beyond those listed (freed_sites_omitted)
// when some are object sites seen part of the time. In text ("~"), pprof's comment, JSON
// ("estimated", schema-valid), and read back by `memtrail report` and `diff`; exact sums
// say nothing.
TEST(Report, EstimatedTotalsAndOmittedFreedSitesAreMarkedEverywhere) {
  model::Report report = sample_report();
  report.leaks[0].estimated = true;
  report.totals.estimated = true;
  report.freed_omitted = {3, 96, 4800, true};
  std::ostringstream text;
  render_text(report, text);
  // sample_report's totals: 7 outstanding, 7,000 B.
  EXPECT_NE(text.str().find("Totals: 100 allocations, 90 frees, ~7 outstanding (~6.8 KiB), "),
            std::string::npos)
      << text.str();
  // No freed site listed, none estimated: the omitted ones alone make the sum an estimate.
  EXPECT_NE(text.str().find("3 sites freed all they allocated: ~4.7 KiB in ~96 calls"),
            std::string::npos)
      << text.str();
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["totals"]["estimated"], true);
  EXPECT_EQ(json["freed_sites_omitted"]["estimated"], true);
  EXPECT_EQ(json["freed_sites_omitted"]["bytes"], 4800);
  std::string dir = temp_dir();
  std::string path = dir + "/report.json";
  write_json_file(json, path);
  std::string command = schema_check(path);
  EXPECT_EQ(std::system(command.c_str()), 0) << "schema validation failed: " << command;
  // The schema knows the flag: only true is allowed (absent means exact).
  auto wrong = json;
  wrong["totals"]["estimated"] = false;
  write_json_file(wrong, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);
  wrong = json;
  wrong["freed_sites_omitted"]["estimated"] = "yes";
  write_json_file(wrong, path);
  EXPECT_NE(std::system((command + " 2>/dev/null").c_str()), 0);
  std::remove(path.c_str());
  rmdir(dir.c_str());

  model::Report read = from_json(nlohmann::json::parse(json.dump()));
  EXPECT_TRUE(read.totals.estimated);
  EXPECT_TRUE(read.freed_omitted.estimated);
  EXPECT_EQ(read.freed_omitted.sites, 3u);
  std::ostringstream reread;
  render_text(read, reread);
  EXPECT_EQ(reread.str().substr(reread.str().find("Totals: ")),
            text.str().substr(text.str().find("Totals: ")));
  EXPECT_NE(reread.str().find("~4.7 KiB in ~96 calls"), std::string::npos) << reread.str();

  // Exact: nothing marked, and nothing in the JSON.
  report.leaks[0].estimated = false;
  report.totals.estimated = false;
  report.freed_omitted.estimated = false;
  std::ostringstream exact_text;
  render_text(report, exact_text);
  EXPECT_EQ(exact_text.str().find("~"), std::string::npos) << exact_text.str();
  auto exact = to_json(report, 5.0);
  EXPECT_FALSE(exact["totals"].contains("estimated"));
  EXPECT_FALSE(exact["freed_sites_omitted"].contains("estimated"));
  model::Report exact_read = from_json(nlohmann::json::parse(exact.dump()));
  EXPECT_FALSE(exact_read.totals.estimated);
  EXPECT_FALSE(exact_read.freed_omitted.estimated);
}

TEST(JsonReport, WritesAtomicallyAndLeavesNoTemporaryFile) {
  std::string dir = temp_dir();
  std::string path = dir + "/out.json";
  write_json_file(to_json(sample_report(), 1.0), path);
  std::ifstream in(path);
  auto parsed = nlohmann::json::parse(in);
  EXPECT_EQ(parsed["host"], "testhost");
  EXPECT_EQ(access((path + ".tmp." + std::to_string(getpid())).c_str(), F_OK), -1);
  std::remove(path.c_str());
  rmdir(dir.c_str());
}

TEST(JsonReport, UnwritablePathIsAClearErrorBeforeTracing) {
  try {
    check_output_path("/nonexistent-dir/leaks.json", "--json");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    std::string message = error.what();
    EXPECT_NE(message.find("cannot write --json /nonexistent-dir/leaks.json"), std::string::npos)
        << message;
    EXPECT_NE(message.find("directory /nonexistent-dir does not exist"), std::string::npos)
        << message;
  }
  EXPECT_THROW(write_json_file(to_json(sample_report(), 1.0), "/nonexistent-dir/x.json"), Error);
}

// A name that is not UTF-8 (a file name, or bytes read from a target's memory) is written as
// U+FFFD: the report is kept (nlohmann's dump threw, and memtrail ended without its report).
TEST(JsonReport, BytesThatAreNotUtf8AreReplacedNotFatal) {
  model::Report report = sample_report();
  ASSERT_FALSE(report.leaks.empty());
  ASSERT_FALSE(report.leaks[0].stack.empty());
  report.leaks[0].stack[0].function = std::string("f\xfb\xff", 3);
  std::string text = json_text(to_json(report, 5.0));
  EXPECT_NE(text.find("f\xef\xbf\xbd"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_TRUE(nlohmann::json::accept(text));
}

// How each type's bytes were sized: "~" before the bytes of a type sized by estimate, in the
// site's types, on the site's bytes (not its object count), in the process's types and the
// totals' bytes; "sizing" in JSON for every type, per site and per process, valid against the
// schema and read back; a report that does not say reads back as not saying.
TEST(Report, PythonTypesSayHowTheirBytesWereSized) {
  auto report = python_objects_report();
  report.top = 2;
  auto& site_types = report.leaks[0].python_types;
  site_types[0].sizing = model::PythonType::kSizingExact;      // str
  site_types[1].type = "array.array";                          // 3,000, 164.1 KiB
  site_types[1].sizing = model::PythonType::kSizingEstimated;  // its items not read
  site_types[2].sizing = model::PythonType::kSizingExact;      // tuple
  (*report.python_types)[0].type = "array.array";
  (*report.python_types)[0].sizing = model::PythonType::kSizingEstimated;
  (*report.python_types)[1].sizing = model::PythonType::kSizingExact;
  std::ostringstream text;
  render_text(report, text);
  EXPECT_NE(text.str().find("#1  ~409,631 B (400.0 KiB) outstanding in 6,000 Python objects"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("    by type: str 2,000 (181.3 KiB) · array.array 3,000 (~164.1 KiB) "
                            "· tuple 1,000 (54.7 KiB)\n"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("3,000 objects     ~164.1 KiB\n"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("2,000 objects     181.3 KiB\n"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("7 outstanding (~6.8 KiB)"), std::string::npos) << text.str();
  auto json = to_json(report, 5.0);
  EXPECT_EQ(json["leaks"][0]["python_types"][0]["sizing"], "exact");
  EXPECT_EQ(json["leaks"][0]["python_types"][1]["sizing"], "estimated");
  EXPECT_EQ(json["python_types"][0]["sizing"], "estimated");
  EXPECT_EQ(json["python_types"][1]["sizing"], "exact");
  EXPECT_TRUE(matches_schema(json)) << "schema validation failed";
  model::Report read = from_json(nlohmann::json::parse(json.dump()));
  ASSERT_EQ(read.leaks[0].python_types.size(), 3u);
  EXPECT_EQ(read.leaks[0].python_types[0].sizing, "exact");
  EXPECT_TRUE(read.leaks[0].python_types[1].sized_by_estimate());
  EXPECT_TRUE(read.leaks[0].sized_by_estimate());
  ASSERT_TRUE(read.python_types);
  EXPECT_TRUE((*read.python_types)[0].sized_by_estimate());
  EXPECT_EQ((*read.python_types)[1].sizing, "exact");
  // Read back, rendered the same (memtrail report).
  std::ostringstream again;
  render_text(read, again);
  EXPECT_NE(again.str().find("array.array 3,000 (~164.1 KiB)"), std::string::npos) << again.str();
  // A report from before types said it: nothing said, nothing marked.
  for (auto& entry : json["leaks"][0]["python_types"]) entry.erase("sizing");
  for (auto& entry : json["python_types"]) entry.erase("sizing");
  model::Report old = from_json(nlohmann::json::parse(json.dump()));
  EXPECT_EQ(old.leaks[0].python_types[1].sizing, "");
  EXPECT_FALSE(old.leaks[0].sized_by_estimate());
  EXPECT_FALSE(to_json(old, 5.0)["python_types"][0].contains("sizing"));
}

// The types section is for runs with a CPython process: a C program's report (Python objects
// tracked by default, none found) has none, a Python one's says none were counted yet.
TEST(TextReport, TheEmptyPythonTypesSectionIsShownOnlyForCPythonProcesses) {
  model::Report report = sample_report();
  report.python_types = std::vector<model::PythonType>{};
  std::ostringstream python_out;
  render_text(report, python_out);
  EXPECT_NE(python_out.str().find("(none counted yet)"), std::string::npos) << python_out.str();
  for (auto& target : report.targets) target.python.reset();
  std::ostringstream c_out;
  render_text(report, c_out);
  EXPECT_EQ(c_out.str().find("Python objects by type"), std::string::npos) << c_out.str();
}

}  // namespace
}  // namespace memtrail::report
