// SPDX-License-Identifier: Apache-2.0
// Child processes for integration tests: pipes on stdin/stdout/stderr, reads with deadlines,
// and a destructor that never leaves a child behind, even when an assertion failed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace memtrail::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path) with the given arguments. Aborts the test on failure to fork.
  explicit Subprocess(std::vector<std::string> argv);
  ~Subprocess();  // SIGKILL and reap if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }

  // Next line of stdout / stderr (without '\n'), or nullopt at end of file or deadline.
  std::optional<std::string> read_stdout_line(std::chrono::milliseconds timeout);
  std::optional<std::string> read_stderr_line(std::chrono::milliseconds timeout);
  // Reads stderr lines until one starts with `prefix`; returns it, or nullopt.
  std::optional<std::string> wait_for_stderr(const std::string& prefix,
                                             std::chrono::milliseconds timeout);
  // Reads stdout lines until one starts with `prefix`; returns it, or nullopt.
  std::optional<std::string> wait_for_stdout(const std::string& prefix,
                                             std::chrono::milliseconds timeout);

  void write_stdin(const std::string& text);
  void close_stdin();
  void signal(int signal_number);

  // Waits for exit; returns the exit code (128 + signal for a signal), or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // Everything still unread on stdout / stderr, after the process exited.
  std::string drain_stdout();
  std::string drain_stderr();
  // All stderr lines read so far (for failure messages).
  const std::string& stderr_seen() const { return stderr_seen_; }

 private:
  struct Stream {
    int fd = -1;
    std::string buffer;
    bool eof = false;
  };
  std::optional<std::string> read_line(Stream& stream, std::chrono::milliseconds timeout);
  template <typename ReadLine>
  static std::optional<std::string> wait_for(ReadLine read_line, const std::string& prefix,
                                             std::chrono::milliseconds timeout);
  std::string drain(Stream& stream);

  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  Stream stdout_, stderr_;
  std::string stderr_seen_;
  std::optional<int> exit_code_;
};

}  // namespace memtrail::testing
