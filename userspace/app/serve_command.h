// SPDX-License-Identifier: Apache-2.0
// `memtrail serve`: the always-on agent behind an HTTP server.
#pragma once

#include "cli/options.h"

namespace memtrail::app {

// Runs the agent until SIGTERM or SIGINT. Returns the exit code; throws memtrail::Error when it
// cannot start (address in use, unreadable token file, bad --trace).
int run_serve(const cli::ServeOptions& options);

}  // namespace memtrail::app
