// SPDX-License-Identifier: Apache-2.0
// Long runs stay bounded: exited processes removed, their series dropped, folds reported.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "aggregator/aggregator.h"
#include "aggregator/growth.h"
#include "report/json_reader.h"
#include "report/json_report.h"
#include "report/text_report.h"
#include "session/targets.h"

namespace memtrail {
namespace {

session::TracedProcess process(uint32_t pid) {
  session::TracedProcess traced;
  traced.info.pid = pid;
  return traced;
}

TEST(LongRuns, RemovingAnExitedTargetLeavesTheOthersInPlace) {
  session::Targets targets;
  session::TracedProcess& first = targets.add(process(1));
  session::TracedProcess& gone = targets.add(process(2));
  session::TracedProcess& last = targets.add(process(3));
  targets.mark_exited(gone);
  targets.remove(gone);
  EXPECT_EQ(targets.size(), 2u);
  EXPECT_EQ(targets.live(1), &first);  // references to the others stay valid
  EXPECT_EQ(targets.live(3), &last);
  EXPECT_EQ(targets.live(2), nullptr);
  // The pid reused afterwards is a new process.
  session::TracedProcess& reused = targets.add(process(2));
  EXPECT_EQ(targets.live(2), &reused);
}

TEST(LongRuns, GrowthSeriesOfAProcessGoWithIt) {
  aggregator::GrowthHistory history(8, 3);
  aggregator::Aggregate aggregate;
  for (uint32_t pid : {10u, 20u, 30u}) {
    aggregator::SiteSummary site;
    site.pid = pid;
    site.site_id = 1;
    site.outstanding_bytes = 100;
    site.outstanding_allocations = 1;
    aggregate.sites.push_back(site);
  }
  history.record(0, aggregate);
  ASSERT_NE(history.series(10, 1), nullptr);
  history.forget_process(10);
  EXPECT_EQ(history.series(10, 1), nullptr);
  EXPECT_NE(history.series(20, 1), nullptr);
  history.keep_processes([](uint32_t pid) { return pid == 20; });
  EXPECT_EQ(history.series(30, 1), nullptr);
  EXPECT_NE(history.series(20, 1), nullptr);
  // The cap (3 sites) has room again for a new process's site.
  aggregator::Aggregate fresh;
  aggregator::SiteSummary site;
  site.pid = 40;
  site.site_id = 1;
  site.outstanding_bytes = 1;
  fresh.sites.push_back(site);
  history.record(1, fresh);
  EXPECT_NE(history.series(40, 1), nullptr);
  EXPECT_EQ(history.sites_not_followed(), 0u);
}

model::Report folded_report() {
  model::Report report;
  report.final = true;
  report.top = 10;
  report.folded_exits = {1234, 5, 2048};
  report.attach_failures.push_back({"/usr/lib/x86_64-linux-gnu/libc.so.6",
                                    "attach uprobe malloc: Invalid argument", 3, 17, true});
  return report;
}

TEST(LongRuns, TheReportSaysWhatWasFoldedAndWhatCouldNotBeProbed) {
  std::ostringstream out;
  report::render_text(folded_report(), out);
  EXPECT_NE(out.str().find("1,234 short-lived processes exited with nothing outstanding"),
            std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("5 older exited processes not listed, with 2.0 KiB outstanding"),
            std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("could not probe /usr/lib/x86_64-linux-gnu/libc.so.6: attach uprobe "
                           "malloc: Invalid argument (3 attempts failed; 17 processes left "
                           "untraced meanwhile; probed at a later attempt)"),
            std::string::npos)
      << out.str();
  auto json = report::to_json(folded_report(), 1.0);
  EXPECT_EQ(json["folded_exits"]["nothing_outstanding"], 1234);
  EXPECT_EQ(json["attach_failures"][0]["processes"], 17);
  // Read back (memtrail report) as written.
  model::Report read = report::from_json(nlohmann::json::parse(json.dump()));
  EXPECT_EQ(read.folded_exits.over_cap_outstanding_bytes, 2048u);
  ASSERT_EQ(read.attach_failures.size(), 1u);
  EXPECT_EQ(read.attach_failures[0].failures, 3u);
  EXPECT_TRUE(read.attach_failures[0].attached);
  // And it follows the documented schema.
  std::string path = ::testing::TempDir() + "/long_runs_report.json";
  report::write_json_file(json, path);
  std::string command =
      "python3 -c 'import json, sys, jsonschema; "
      "jsonschema.validate(json.load(open(sys.argv[1])), "
      "json.load(open(sys.argv[2])))' " +
      path + " " MEMTRAIL_SOURCE_DIR "/docs/leaks.schema.json";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  std::remove(path.c_str());
}

}  // namespace
}  // namespace memtrail
