// SPDX-License-Identifier: Apache-2.0
// `memtrail report` and `memtrail diff` on saved JSON files, linked with memtrail_offline alone:
// a renderer that needed the symbolizer, the tracer or the Python reader would fail to link
// here, and the libraries tracing needs (libdw, libelf, capstone, libbpf) are not even loaded.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "app/offline_commands.h"
#include "common/error.h"
#include "common/output_file.h"
#include "report/json_reader.h"
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

// The message of the memtrail::Error `run` throws, or "" when it throws none.
template <typename Run>
std::string error_of(Run run) {
  try {
    run();
    return "";
  } catch (const Error& error) {
    return error.what();
  }
}

TEST_F(OfflineCommands, OutputPathsAreCheckedBeforeAnyWork) {
  EXPECT_EQ(error_of([&] { check_output_path(dir_.string(), "--json"); }),
            "cannot write --json " + dir_.string() +
                ": it is a directory; give a file name, "
                "e.g. " +
                dir_.string() + "/report");
  EXPECT_EQ(error_of([&] { check_output_path(path("missing/r.json"), "-o"); }),
            "cannot write -o " + path("missing/r.json") + ": directory " + path("missing") +
                " does not exist");
  report::write_json_file(report::to_json(saved_report(3000), 10), path("file.json"));
  EXPECT_NE(error_of([&] {
              check_output_path(path("file.json/x"), "--plot");
            }).find("cannot write --plot " + path("file.json/x") + ": "),
            std::string::npos);
  EXPECT_NE(error_of([&] { check_output_path(path("new/"), "-o"); }).find("-o"), std::string::npos);
  EXPECT_EQ(
      error_of([&] {
        check_output_path("/proc/memtrail-test.json", "--json");
      }).rfind("cannot write --json /proc/memtrail-test.json: cannot create files in /proc", 0),
      0u);
  // What can be written passes, and leaves nothing behind.
  EXPECT_EQ(error_of([&] { check_output_path(path("new.json"), "--json"); }), "");
  EXPECT_EQ(error_of([&] { check_output_path(path("file.json"), "--json"); }), "");
  EXPECT_EQ(error_of([&] { check_output_path("/dev/null", "-o"); }), "");
  EXPECT_FALSE(std::filesystem::exists(path("new.json")));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_),
                          std::filesystem::directory_iterator()),
            1);

  // `memtrail report -o DIR` says so before reading its input (which does not exist here).
  cli::ReportOptions options;
  options.input_path = path("absent.json");
  options.output_path = dir_.string();
  EXPECT_NE(error_of([&] { run_report(options); }).find("cannot write -o"), std::string::npos);
}

TEST_F(OfflineCommands, AFailedWriteIsAFailureNeverWrote) {
  // /dev/full: every write fails with ENOSPC. It was written in a temporary file and renamed
  // over the device, or said "wrote" without a byte written.
  EXPECT_EQ(error_of([] { write_output_file("report\n", "/dev/full"); }),
            "writing /dev/full failed: No space left on device");
  report::write_json_file(report::to_json(saved_report(3000), 10), path("r.json"));
  cli::ReportOptions options;
  options.input_path = path("r.json");
  options.output_path = "/dev/full";
  options.plot_path = path("plot.svg");
  ::testing::internal::CaptureStderr();
  int code = run_report(options);
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, kExitFailure);
  EXPECT_NE(err.find("memtrail: error: writing /dev/full failed: No space left on device"),
            std::string::npos)
      << err;
  EXPECT_EQ(err.find("wrote /dev/full"), std::string::npos) << err;
  // The other output is still written.
  EXPECT_NE(err.find("memtrail: wrote " + path("plot.svg")), std::string::npos) << err;
  EXPECT_NE(read_file(path("plot.svg")).find("<svg"), std::string::npos);
  struct stat info {};
  ASSERT_EQ(::stat("/dev/full", &info), 0);
  EXPECT_TRUE(S_ISCHR(info.st_mode)) << "/dev/full was replaced";
  // A device is written in place.
  EXPECT_EQ(error_of([] { write_output_file("report\n", "/dev/null"); }), "");
}

TEST_F(OfflineCommands, ADirectoryOrNonJsonInputIsOneLineNamingTheFile) {
  EXPECT_EQ(error_of([&] { report::read_json_file(dir_.string()); }),
            dir_.string() + " is not a memtrail.leaks report: it is a directory");
  std::ofstream(path("text.json")) << "hello";
  EXPECT_EQ(
      error_of([&] { report::read_json_file(path("text.json")); }),
      path("text.json") + " is not a memtrail.leaks report: not JSON (syntax error at byte 1)");
  std::ofstream(path("empty.json")).flush();
  EXPECT_EQ(error_of([&] { report::read_json_file(path("empty.json")); }),
            path("empty.json") + " is not a memtrail.leaks report: it is empty");
  std::ofstream(path("paging.json")) << R"({"schema": "memtrail.paging/1"})";
  EXPECT_EQ(error_of([&] {
              report::read_json_file(path("paging.json"));
            }).rfind(path("paging.json") + " is not a memtrail.leaks report: its schema is", 0),
            0u);
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
