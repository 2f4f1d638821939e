// SPDX-License-Identifier: Apache-2.0
// `memtrail report` and `memtrail diff` on saved JSON files, linked with memtrail_offline alone:
// a renderer that needed the symbolizer, the tracer or the Python reader would fail to link
// here, and the libraries tracing needs (libdw, libelf, capstone, libbpf) are not even loaded.
#include "app/offline_commands.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/error.h"
#include "report/json_report.h"

namespace memtrail::app {
namespace {

model::Report saved_report(uint64_t bytes) {
  model::Report report;
  report.tool_version = "1.2.3";
  report.host = "h";
  report.kernel = "k";
  report.duration_s = 30;
  report.final = true;
  model::Target target;
  target.pid = 42;
  target.comm = "server";
  report.targets.push_back(target);
  model::LeakSite leak;
  leak.pid = 42;
  leak.allocator = "malloc";
  leak.outstanding_bytes = bytes;
  leak.outstanding_allocations = 7;
  model::Frame frame;
  frame.address = 0x1000;
  frame.module = "/srv/server";
  frame.offset = 0x100;
  frame.function = "leak_here";
  leak.stack = {frame};
  model::Growth growth;
  growth.verdict = "leak";
  growth.series = {{10, 2000, 2}, {20, 4500, 4}, {30, static_cast<double>(bytes), 7}};
  leak.growth = growth;
  report.leaks = {leak};
  report.totals.outstanding_bytes = bytes;
  report.totals.sites = 1;
  return report;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

class OfflineCommands : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("memtrail-offline-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

TEST_F(OfflineCommands, RenderASavedReportInEveryFormatAndDiffTwo) {
  report::write_json_file(report::to_json(saved_report(3000), 10), path("before.json"));
  report::write_json_file(report::to_json(saved_report(7000), 10), path("after.json"));

  cli::ReportOptions text;
  text.input_path = path("after.json");
  text.output_path = path("report.txt");
  text.flamegraph_path = path("flame.svg");
  text.plot_path = path("plot.svg");
  EXPECT_EQ(run_report(text), kExitOk);
  EXPECT_NE(read_file(path("report.txt")).find("leak_here"), std::string::npos);
  EXPECT_NE(read_file(path("flame.svg")).find("<svg"), std::string::npos);
  EXPECT_NE(read_file(path("plot.svg")).find("<svg"), std::string::npos);

  for (auto [format, name] : {std::pair{cli::Format::kJson, "report.json"},
                              std::pair{cli::Format::kFolded, "report.folded"},
                              std::pair{cli::Format::kPprof, "report.pb.gz"}}) {
    cli::ReportOptions options;
    options.input_path = path("after.json");
    options.format = format;
    options.output_path = path(name);
    EXPECT_EQ(run_report(options), kExitOk) << name;
    EXPECT_FALSE(read_file(path(name)).empty()) << name;
  }
  EXPECT_NE(read_file(path("report.folded")).find("leak_here 7000"), std::string::npos);

  cli::DiffOptions diff;
  diff.before_path = path("before.json");
  diff.after_path = path("after.json");
  ::testing::internal::CaptureStdout();
  int code = run_diff(diff);
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(code, kExitOk);
  EXPECT_NE(out.find("leak_here"), std::string::npos) << out;
}

TEST(OfflineLinks, NoTracingLibraryIsLoaded) {
  std::string maps = read_file("/proc/self/maps");
  ASSERT_FALSE(maps.empty());
  for (const char* library : {"/libdw", "/libelf", "/libcapstone", "/libbpf", "/libpython"}) {
    EXPECT_EQ(maps.find(library), std::string::npos) << library << " is mapped";
  }
}

}  // namespace
}  // namespace memtrail::app
