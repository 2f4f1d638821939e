// SPDX-License-Identifier: Apache-2.0
// /proc facts about traced processes, and the gated child for `memtrail leaks -- COMMAND`.
#include "inspect/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace memtrail::inspect {
namespace {

std::string proc_path(uint32_t pid, const char* leaf) {
  return "/proc/" + std::to_string(pid) + "/" + leaf;
}

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

ProcessState process_state(uint32_t pid) {
  std::string stat = read_file(proc_path(pid, "stat"));
  if (stat.empty()) return ProcessState::kMissing;
  // The state letter follows the command name, which is in parentheses and may contain spaces.
  size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return ProcessState::kMissing;
  char state = stat[close + 2];
  return (state == 'Z' || state == 'X') ? ProcessState::kZombie : ProcessState::kRunning;
}

model::Target read_target_info(uint32_t pid) {
  model::Target target;
  target.pid = pid;
  target.comm = read_file(proc_path(pid, "comm"));
  if (!target.comm.empty() && target.comm.back() == '\n') target.comm.pop_back();
  std::string cmdline = read_file(proc_path(pid, "cmdline"));
  size_t begin = 0;
  while (begin < cmdline.size()) {
    size_t end = cmdline.find('\0', begin);
    if (end == std::string::npos) end = cmdline.size();
    target.cmdline.push_back(cmdline.substr(begin, end - begin));
    begin = end + 1;
  }
  char exe[PATH_MAX];
  ssize_t length = ::readlink(proc_path(pid, "exe").c_str(), exe, sizeof(exe) - 1);
  if (length > 0) target.exe.assign(exe, static_cast<size_t>(length));
  auto cgroups = process_cgroups(pid);
  if (!cgroups.empty()) target.cgroup = cgroups.front();
  return target;
}

std::vector<std::string> cgroup_paths(const std::string& text) {
  std::vector<std::string> paths;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // "ID:CONTROLLERS:PATH"; the unified hierarchy is "0::PATH".
    size_t first = line.find(':'),
           second = first == std::string::npos ? std::string::npos : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    std::string path = line.substr(second + 1);
    if (path.empty()) continue;
    if (line.compare(0, 3, "0::") == 0) {
      paths.insert(paths.begin(), path);
    } else if (std::find(paths.begin(), paths.end(), path) == paths.end()) {
      paths.push_back(path);
    }
  }
  return paths;
}

std::vector<std::string> process_cgroups(uint32_t pid) {
  return cgroup_paths(read_file(proc_path(pid, "cgroup")));
}

bool cgroup_within(const std::string& path, const std::string& ancestor) {
  std::string base = ancestor;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (base == "/") return true;
  return path == base || (path.size() > base.size() && path.compare(0, base.size(), base) == 0 &&
                          path[base.size()] == '/');
}

GatedChild::GatedChild(const std::string& executable, const std::vector<std::string>& argv)
    : executable_(executable) {
  int gate[2], exec_error[2];
  if (::pipe2(gate, O_CLOEXEC) != 0) {
    int error_number = errno;
    throw Error(errno_message("pipe", error_number));
  }
  UniqueFd gate_read(gate[0]), gate_write(gate[1]);
  if (::pipe2(exec_error, O_CLOEXEC) != 0) {
    int error_number = errno;
    throw Error(errno_message("pipe", error_number));
  }
  UniqueFd error_read(exec_error[0]), error_write(exec_error[1]);
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  pid_ = ::fork();
  if (pid_ < 0) {
    int error_number = errno;
    throw Error(errno_message("fork", error_number));
  }
  if (pid_ == 0) {
    // Child: only async-signal-safe calls from here on. memtrail blocks SIGINT and SIGTERM to
    // read them from a signalfd, and ignores SIGPIPE (main.cpp), which an exec keeps: the
    // command must get the normal defaults back (`yes | head` ends quietly by SIGPIPE).
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    gate_write.reset();
    error_read.reset();
    char go = 0;
    ssize_t got;
    do {
      got = ::read(gate_read.get(), &go, 1);
    } while (got < 0 && errno == EINTR);
    if (got != 1) _exit(127);  // memtrail gave up or died before attaching: do not run untraced
    ::execv(executable_.c_str(), args.data());
    int error_number = errno;
    ssize_t ignored = ::write(error_write.get(), &error_number, sizeof(error_number));
    (void)ignored;
    _exit(127);
  }
  gate_read.reset();
  error_write.reset();
  gate_fd_ = std::move(gate_write);
  exec_error_fd_ = std::move(error_read);
}

GatedChild::~GatedChild() {
  gate_fd_.reset();  // an unreleased child reads EOF and exits without running the command
  exec_error_fd_.reset();
  if (!released_ && pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void GatedChild::release() {
  char go = 'g';
  if (::write(gate_fd_.get(), &go, 1) != 1) {
    int error_number = errno;
    throw Error(errno_message("release launched command", error_number));
  }
  released_ = true;
  gate_fd_.reset();
  int exec_errno = 0;
  ssize_t got;
  do {
    got = ::read(exec_error_fd_.get(), &exec_errno, sizeof(exec_errno));
  } while (got < 0 && errno == EINTR);
  exec_error_fd_.reset();
  if (got == static_cast<ssize_t>(sizeof(exec_errno))) {
    reap_if_exited();
    throw Error(errno_message("exec " + executable_, exec_errno));
  }
}

void GatedChild::terminate(std::chrono::milliseconds grace) {
  if (!released_ || pid_ <= 0 || reap_if_exited()) return;
  ::kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (reap_if_exited()) return;
    ::usleep(10'000);
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  reaped_ = true;
}

std::optional<uint64_t> read_private_memory(uint32_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;  // in kB
  }
  return std::nullopt;
}

bool GatedChild::reap_if_exited() {
  if (reaped_) return true;
  int status = 0;
  pid_t result = ::waitpid(pid_, &status, WNOHANG);
  if (result == pid_ || (result < 0 && errno == ECHILD)) reaped_ = true;
  return reaped_;
}

}  // namespace memtrail::inspect
