// SPDX-License-Identifier: Apache-2.0
// The traced processes of a session: found by pid while live, kept in order after exit.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "session/targets.h"
#include "tracer/libbpf_util.h"

namespace memtrail::session {
namespace {

TracedProcess process(uint32_t pid) {
  TracedProcess traced;
  traced.info.pid = pid;
  return traced;
}

std::vector<uint32_t> pids(const Targets& targets) {
  std::vector<uint32_t> listed;
  for (const auto& traced : targets) listed.push_back(traced.info.pid);
  return listed;
}

TEST(Targets, FindsLiveProcessesByPidAndKeepsExitedOnesInOrder) {
  Targets targets;
  EXPECT_FALSE(targets.any_live());
  TracedProcess& first = targets.add(process(10));
  targets.add(process(20));
  for (uint32_t pid = 100; pid < 200; ++pid) targets.add(process(pid));  // no move of `first`
  EXPECT_EQ(targets.live(10), &first);
  EXPECT_EQ(targets.live(20)->info.pid, 20u);
  EXPECT_EQ(targets.live(30), nullptr);
  EXPECT_TRUE(targets.any_live());

  targets.mark_exited(first);
  EXPECT_TRUE(first.info.exited);
  EXPECT_EQ(targets.live(10), nullptr);
  // The pid reused by a new process: found, and the exited one is still listed first.
  TracedProcess& reused = targets.add(process(10));
  EXPECT_EQ(targets.live(10), &reused);
  EXPECT_EQ(targets.size(), 103u);
  EXPECT_EQ(pids(targets).front(), 10u);
  EXPECT_EQ(pids(targets).back(), 10u);
  EXPECT_EQ(&targets.back(), &reused);
}

TEST(Targets, APidGivenTwiceIsFoundUntilBothExited) {
  Targets targets;
  TracedProcess& first = targets.add(process(7));
  TracedProcess& second = targets.add(process(7));
  EXPECT_EQ(targets.live(7), &first);  // the first added, as a search in order finds it
  targets.mark_exited(first);
  EXPECT_EQ(targets.live(7), &second);
  targets.mark_exited(second);
  EXPECT_EQ(targets.live(7), nullptr);
  EXPECT_FALSE(targets.any_live());
}

// The message and hint of the memtrail::Error `run` throws.
template <typename Run>
std::pair<std::string, std::string> error_of(Run run) {
  try {
    run();
  } catch (const Error& error) {
    return {error.what(), error.hint()};
  }
  return {"", ""};
}

TEST(Targets, AThreadIdIsRefusedNamingItsProcess) {
  // pidfd_open of a thread said "pidfd_open failed: No such file or directory".
  std::mutex mutex;
  std::condition_variable changed;
  pid_t tid = 0;
  bool done = false;
  std::thread thread([&] {
    std::unique_lock lock(mutex);
    tid = static_cast<pid_t>(::syscall(SYS_gettid));
    changed.notify_all();
    changed.wait(lock, [&] { return done; });
  });
  {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return tid != 0; });
  }
  std::string pid = std::to_string(::getpid());
  std::string expected =
      std::to_string(tid) + " is a thread of process " + pid + ", not a process; trace " + pid;
  EXPECT_EQ(error_of([&] { live_mappings(static_cast<uint32_t>(tid)); }).first, expected);
  EXPECT_EQ(error_of([&] { open_pidfd(static_cast<uint32_t>(tid)); }).first, expected);
  {
    std::lock_guard lock(mutex);
    done = true;
  }
  changed.notify_all();
  thread.join();
}

TEST(Targets, RootRefusedAProcessIsNotToldToRunAsRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  // PID 1 of a sandbox or of another user namespace: where memtrail may read its maps, there
  // is nothing to test.
  if (std::ifstream("/proc/1/maps").peek() != EOF) GTEST_SKIP() << "/proc/1/maps is readable";
  auto [message, hint] = error_of([] { live_mappings(1); });
  EXPECT_EQ(message, "read /proc/1/maps failed: Permission denied");
  EXPECT_EQ(hint.find("run memtrail as root"), std::string::npos) << hint;
  EXPECT_NE(hint.find("memtrail runs as root"), std::string::npos) << hint;
  EXPECT_EQ(hint_for_errno(EPERM).find("run memtrail as root"), std::string::npos);
}

// A program the verifier refuses (EACCES) is not a missing capability (EPERM): the hint says
// which, so that root is not told to run as root.
TEST(Targets, ALoadTheVerifierRefusedIsNotBlamedOnPermissions) {
  std::string refused = tracer::load_failure_hint(EACCES, "--max-allocations");
  EXPECT_NE(refused.find("verifier"), std::string::npos) << refused;
  EXPECT_EQ(refused.find("run memtrail as root"), std::string::npos) << refused;
  std::string not_permitted = tracer::load_failure_hint(EPERM, "--max-allocations");
  EXPECT_NE(not_permitted.find("run memtrail as root"), std::string::npos) << not_permitted;
}

TEST(Targets, DescribesAllocatorsForTheReport) {
  inspect::ProcessAllocators allocators;
  inspect::AllocatorModule libc;
  libc.name = "glibc";
  libc.path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
  libc.functions.resize(2);
  libc.functions[0].name = "malloc";
  libc.functions[1].name = "free";
  allocators.modules.push_back(libc);
  allocators.untraced.push_back({"tcmalloc", "/usr/lib/libtcmalloc.so", "not bound", false});
  model::Target info;
  describe_allocators(allocators, info);
  EXPECT_EQ(info.allocator, "glibc");
  EXPECT_EQ(info.allocator_module, libc.path);
  ASSERT_EQ(info.allocators.size(), 1u);
  EXPECT_EQ(info.allocators[0].functions, (std::vector<std::string>{"malloc", "free"}));
  ASSERT_EQ(info.untraced_allocators.size(), 1u);
  EXPECT_EQ(info.untraced_allocators[0].name, "tcmalloc");
}

}  // namespace
}  // namespace memtrail::session
