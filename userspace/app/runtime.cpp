// SPDX-License-Identifier: Apache-2.0
// Owned descriptors, signals for poll(), the wall clock.
#include "app/runtime.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <time.h>

#include <cerrno>

#include "common/error.h"

namespace memtrail::app {

UniqueFd open_signalfd() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &signals, nullptr) != 0) {
    int error_number = errno;
    throw Error(errno_message("block SIGINT and SIGTERM", error_number));
  }
  UniqueFd fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd) {
    int error_number = errno;
    throw Error(errno_message("signalfd", error_number));
  }
  return fd;
}

void consume_signal(int fd) {
  signalfd_siginfo signal_info{};
  ssize_t ignored = ::read(fd, &signal_info, sizeof(signal_info));
  (void)ignored;
}

}  // namespace memtrail::app
