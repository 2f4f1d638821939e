// SPDX-License-Identifier: Apache-2.0
// Child processes for integration tests.
#include "subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace memtrail::testing {
namespace {

using Clock = std::chrono::steady_clock;

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

}  // namespace

Subprocess::Subprocess(std::vector<std::string> argv) {
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) || ::pipe2(out, O_CLOEXEC) || ::pipe2(err, O_CLOEXEC)) {
    std::perror("pipe");
    std::abort();
  }
  std::vector<char*> args;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  pid_ = ::fork();
  if (pid_ < 0) {
    std::perror("fork");
    std::abort();
  }
  if (pid_ == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  stdin_fd_ = in[1];
  stdout_.fd = out[0];
  stderr_.fd = err[0];
  // A test that writes to a dead child must fail its assertion, not die of SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
}

Subprocess::~Subprocess() {
  if (!exit_code_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  close_fd(stdin_fd_);
  close_fd(stdout_.fd);
  close_fd(stderr_.fd);
}

std::optional<std::string> Subprocess::read_line(Stream& stream,
                                                 std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    size_t newline = stream.buffer.find('\n');
    if (newline != std::string::npos) {
      std::string line = stream.buffer.substr(0, newline);
      stream.buffer.erase(0, newline + 1);
      return line;
    }
    if (stream.eof) return std::nullopt;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd descriptor{stream.fd, POLLIN, 0};
    int ready = ::poll(&descriptor, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return std::nullopt;
    char chunk[4096];
    ssize_t got = ::read(stream.fd, chunk, sizeof(chunk));
    if (got <= 0) {
      stream.eof = true;
      continue;
    }
    stream.buffer.append(chunk, static_cast<size_t>(got));
  }
}

std::optional<std::string> Subprocess::read_stdout_line(std::chrono::milliseconds timeout) {
  return read_line(stdout_, timeout);
}

std::optional<std::string> Subprocess::read_stderr_line(std::chrono::milliseconds timeout) {
  auto line = read_line(stderr_, timeout);
  if (line) stderr_seen_ += *line + "\n";
  return line;
}

template <typename ReadLine>
std::optional<std::string> Subprocess::wait_for(ReadLine read_line, const std::string& prefix,
                                                std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto line =
        read_line(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    if (!line) return std::nullopt;
    if (line->rfind(prefix, 0) == 0) return line;
  }
  return std::nullopt;
}

std::optional<std::string> Subprocess::wait_for_stderr(const std::string& prefix,
                                                       std::chrono::milliseconds timeout) {
  return wait_for([this](auto left) { return read_stderr_line(left); }, prefix, timeout);
}

std::optional<std::string> Subprocess::wait_for_stdout(const std::string& prefix,
                                                       std::chrono::milliseconds timeout) {
  return wait_for([this](auto left) { return read_stdout_line(left); }, prefix, timeout);
}

void Subprocess::write_stdin(const std::string& text) {
  if (stdin_fd_ >= 0) {
    ssize_t ignored = ::write(stdin_fd_, text.data(), text.size());
    (void)ignored;
  }
}

void Subprocess::close_stdin() { close_fd(stdin_fd_); }

void Subprocess::signal(int signal_number) {
  if (!exit_code_) ::kill(pid_, signal_number);
}

std::optional<int> Subprocess::wait(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t result = ::waitpid(pid_, &status, WNOHANG);
    if (result == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string Subprocess::drain(Stream& stream) {
  std::string rest = stream.buffer;  // a last line without a newline
  stream.buffer.clear();
  return rest;
}

std::string Subprocess::drain_stdout() {
  std::string all;
  while (auto line = read_line(stdout_, std::chrono::milliseconds(2000))) all += *line + "\n";
  return all + drain(stdout_);
}

std::string Subprocess::drain_stderr() {
  std::string all;
  while (auto line = read_stderr_line(std::chrono::milliseconds(2000))) all += *line + "\n";
  return all + drain(stderr_);
}

}  // namespace memtrail::testing
