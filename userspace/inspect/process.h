// SPDX-License-Identifier: Apache-2.0
// Facts about a traced process read from /proc, and launching a command held at a gate.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "model/report.h"

namespace memtrail::inspect {

enum class ProcessState { kRunning, kZombie, kMissing };

// kMissing when /proc/PID does not exist; kZombie when it exited but is not reaped yet (it has
// no memory left to trace).
ProcessState process_state(uint32_t pid);

// pid, comm, cmdline and exe of a live process; fields it cannot read stay empty.
model::Target read_target_info(uint32_t pid);

// The cgroup paths a process belongs to, one per hierarchy, from /proc/PID/cgroup's text (the
// unified hierarchy's first). Empty when the process is gone.
std::vector<std::string> cgroup_paths(const std::string& proc_cgroup_text);
std::vector<std::string> process_cgroups(uint32_t pid);
// Whether `path` is `ancestor` or below it ("/a/b" is below "/a", "/ab" is not).
bool cgroup_within(const std::string& path, const std::string& ancestor);

// The process's private memory (RssAnon in /proc/PID/status: heap and anonymous mappings), or
// nothing once it has exited.
std::optional<uint64_t> read_private_memory(uint32_t pid);

// A child process that runs `argv` once released. It is forked early and waits at a gate so
// that probes can be attached before it executes a single instruction of the command. If
// memtrail dies before releasing it, the child exits without running the command.
class GatedChild {
 public:
  // `executable` is the resolved path of argv[0].
  GatedChild(const std::string& executable, const std::vector<std::string>& argv);
  ~GatedChild();  // kills and reaps the child if it was never released
  GatedChild(const GatedChild&) = delete;
  GatedChild& operator=(const GatedChild&) = delete;

  pid_t pid() const { return pid_; }
  // Lets the child exec the command. Throws memtrail::Error if the exec failed.
  void release();
  // Reaps the child if it has exited; returns true once it has been reaped.
  bool reap_if_exited();
  // Ends a released command that is still running: SIGTERM, then SIGKILL after `grace`.
  void terminate(std::chrono::milliseconds grace);

 private:
  pid_t pid_ = -1;
  UniqueFd gate_fd_;        // write end: one byte releases the child
  UniqueFd exec_error_fd_;  // read end: closed by a successful exec (O_CLOEXEC), else errno
  bool released_ = false;
  bool reaped_ = false;
  std::string executable_;
};

}  // namespace memtrail::inspect
