// SPDX-License-Identifier: Apache-2.0
// What every long-running command needs: an owned file descriptor, signals as a descriptor for
// poll(), the wall clock.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <utility>

namespace memtrail::app {

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Blocks SIGINT and SIGTERM and delivers them through a file descriptor, so that the main loop
// sees them in poll() and always reaches the final report. Throws memtrail::Error.
UniqueFd open_signalfd();

// Drains one pending signal from `fd` (after poll() said it is readable).
void consume_signal(int fd);

int64_t unix_now_ms();

}  // namespace memtrail::app
