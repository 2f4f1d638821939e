// SPDX-License-Identifier: Apache-2.0
// memtrail reads and probes the files a traced process maps, not what their names lead to now:
// targets in a mount namespace of their own (unshare) whose libc name was changed after start
// (an absolute symlink out to a host file or FIFO, a bind mount over it), a chrooted target, a
// target whose libc was deleted. Mounts live only in the target's namespace and end with it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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

// What `leaky basic 7 1000` leaks at leak_malloc.
constexpr int kLeakCount = 7;
constexpr int kLeakBytes = 1000;

// `leaky basic 7 1000` run by `launcher` (unshare, chroot, env: each executes it in place, so
// the PID is leaky's), with `path` the leaky binary as the launched process names it.
std::vector<std::string> leaky_via(std::vector<std::string> launcher,
                                   const std::string& path = MEMTRAIL_LEAKY) {
  launcher.insert(launcher.end(),
                  {path, "basic", std::to_string(kLeakCount), std::to_string(kLeakBytes)});
  return launcher;
}

// Runs a command in a mount namespace of its own, which no mount made there leaves.
const std::vector<std::string> kOwnMountNamespace{"/usr/bin/unshare", "--mount", "--propagation",
                                                  "private", "--"};

// The file name of the mapping of `pid` whose name holds `part`, as /proc/PID/maps gives it.
std::string mapped_name(pid_t pid, const std::string& part) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    size_t slash = line.find('/');
    if (slash != std::string::npos && line.find(part, slash) != std::string::npos) {
      return line.substr(slash);
    }
  }
  ADD_FAILURE() << "pid " << pid << " maps no " << part;
  return "";
}

// Bind-mounts `source` over `target` in the mount namespace of `pid` only.
void bind_mount_in_namespace_of(pid_t pid, const std::string& source, const std::string& target) {
  std::string line = "nsenter --target " + std::to_string(pid) + " --mount -- mount --bind '" +
                     source + "' '" + target + "'";
  ASSERT_EQ(std::system(line.c_str()), 0) << line;
}

// Traces `target` with `memtrail leaks -p PID`, lets it run and reads the report. memtrail must
// attach within 20 s: a name that leads to a FIFO must never block it.
json trace(Target& target, std::map<std::string, int>& lines) {
  TempDir dir;
  std::string json_path = dir.file("r.json");
  Subprocess tracer({MEMTRAIL_BINARY, "leaks", "-p", std::to_string(target.process.pid()), "--json",
                     json_path, "-q"});
  if (!tracer.wait_for_stderr("memtrail: tracing pid ", 20s)) {
    ADD_FAILURE() << "memtrail did not attach within 20 s; stderr:\n"
                  << tracer.stderr_seen() << tracer.drain_stderr();
    return json::object();
  }
  lines = target.run();
  tracer.signal(SIGINT);
  auto code = tracer.wait(30s);
  EXPECT_TRUE(code.has_value()) << "memtrail did not stop on SIGINT";
  EXPECT_EQ(code.value_or(-1), 0) << tracer.stderr_seen() << tracer.drain_stderr();
  return read_json(json_path);
}

// The leak of `leaky basic`, exactly, from the libc named `libc` (as the process names it).
void expect_the_leak(const json& report, const std::map<std::string, int>& lines,
                     const std::string& libc) {
  auto leaks = sites_with_function(report, "leak_malloc");
  ASSERT_EQ(leaks.size(), 1u) << report.dump(2);
  EXPECT_EQ(leaks[0]["outstanding_bytes"], kLeakCount * kLeakBytes);
  EXPECT_EQ(leaks[0]["outstanding_allocations"], kLeakCount);
  auto line = lines.find("leak_malloc");
  EXPECT_EQ(leaks[0]["stack"][0]["line"], line == lines.end() ? -1 : line->second);
  EXPECT_TRUE(sites_with_function(report, "free_all").empty()) << report.dump(2);
  ASSERT_EQ(report["targets"].size(), 1u);
  EXPECT_EQ(report["targets"][0]["allocator_module"], libc);
}

// A target in a mount namespace of its own whose libc name becomes, after it started, an
// absolute symlink to `host_file`: followed through /proc/PID/root, it resolves on the host.
void expect_symlink_not_followed(const TempDir& dir, const std::string& host_file) {
  Target target(leaky_via(kOwnMountNamespace));
  pid_t pid = target.process.pid();
  std::string libc = mapped_name(pid, "/libc.so");
  // A directory holding the symlink, mounted over libc's directory in the target's namespace.
  std::string directory = dir.file("container-lib");
  std::filesystem::create_directories(directory);
  std::filesystem::create_symlink(host_file, directory + libc.substr(libc.rfind('/')));
  bind_mount_in_namespace_of(pid, directory, libc.substr(0, libc.rfind('/')));
  std::map<std::string, int> lines;
  json report = trace(target, lines);
  expect_the_leak(report, lines, libc);
}

TEST(ProcessFiles, AContainersSymlinkToAHostFileIsNeverFollowed) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string secret = dir.file("host-secret");
  std::ofstream(secret) << "root:secret:19000:0:99999:7:::\n";
  expect_symlink_not_followed(dir, secret);
}

TEST(ProcessFiles, AContainersSymlinkToAHostFifoNeverBlocksMemtrail) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string fifo = dir.file("host-fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_symlink_not_followed(dir, fifo);
}

TEST(ProcessFiles, AFileBindMountedOverLibcAfterStartIsNotTheOneProbed) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  Target target(leaky_via(kOwnMountNamespace));
  pid_t pid = target.process.pid();
  std::string libc = mapped_name(pid, "/libc.so");
  // The same bytes, another file: probes on it would never fire for the target.
  std::string copy = dir.file("libc-copy.so.6");
  std::filesystem::copy_file(libc, copy);
  bind_mount_in_namespace_of(pid, copy, libc);
  std::map<std::string, int> lines;
  json report = trace(target, lines);
  expect_the_leak(report, lines, libc);
}

TEST(ProcessFiles, AChrootedTargetIsTraced) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  // The least a dynamically linked leaky needs: itself, its loader, its libc.
  std::string root = dir.file("root");
  std::filesystem::create_directories(root + "/lib64");
  std::filesystem::create_directories(root + "/lib/x86_64-linux-gnu");
  std::filesystem::copy_file(MEMTRAIL_LEAKY, root + "/leaky");
  std::filesystem::copy_file(std::filesystem::canonical("/lib64/ld-linux-x86-64.so.2"),
                             root + "/lib64/ld-linux-x86-64.so.2");
  std::filesystem::copy_file(std::filesystem::canonical("/lib/x86_64-linux-gnu/libc.so.6"),
                             root + "/lib/x86_64-linux-gnu/libc.so.6");
  Target target(leaky_via({"/usr/sbin/chroot", root}, "/leaky"));
  // memtrail shares the target's mount namespace: the maps name its files with the chroot's
  // prefix, which its root would add a second time.
  std::string libc = mapped_name(target.process.pid(), "/libc.so");
  EXPECT_EQ(libc, root + "/lib/x86_64-linux-gnu/libc.so.6");
  std::map<std::string, int> lines;
  json report = trace(target, lines);
  expect_the_leak(report, lines, libc);
  auto leaks = sites_with_function(report, "leak_malloc");
  ASSERT_EQ(leaks.size(), 1u);
  EXPECT_EQ(file_name(leaks[0]["stack"][0]["file"]), "leaky.c");  // symbolized through the mapping
}

TEST(ProcessFiles, ATargetWhoseLibcWasDeletedIsTraced) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  std::string libraries = dir.file("lib");
  std::filesystem::create_directories(libraries);
  std::string libc = libraries + "/libc.so.6";
  std::filesystem::copy_file(std::filesystem::canonical("/lib/x86_64-linux-gnu/libc.so.6"), libc);
  Target target(leaky_via({"/usr/bin/env", "LD_LIBRARY_PATH=" + libraries}));
  ASSERT_EQ(mapped_name(target.process.pid(), "/libc.so"), libc);
  // As an upgrade does: the file the process runs is gone from the disk, still mapped.
  std::filesystem::remove(libc);
  ASSERT_EQ(mapped_name(target.process.pid(), "/libc.so"), libc + " (deleted)");
  std::map<std::string, int> lines;
  json report = trace(target, lines);
  expect_the_leak(report, lines, libc);
}

}  // namespace
}  // namespace memtrail::testing
