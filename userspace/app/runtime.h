// SPDX-License-Identifier: Apache-2.0
// What every long-running command needs: signals as a descriptor for poll().
#pragma once

#include "common/unique_fd.h"

namespace memtrail::app {

// Blocks SIGINT and SIGTERM and delivers them through a file descriptor, so that the main loop
// sees them in poll() and always reaches the final report. Throws memtrail::Error.
UniqueFd open_signalfd();

// Drains one pending signal from `fd` (after poll() said it is readable).
void consume_signal(int fd);

}  // namespace memtrail::app
