// SPDX-License-Identifier: Apache-2.0
// `memtrail leaks`: attach, report every interval, stop, write the final report.
#pragma once

#include "cli/options.h"

namespace memtrail::app {

// Runs the whole command. Returns the exit code; throws memtrail::Error on fatal failures.
int run_leaks(const cli::LeaksOptions& options);

}  // namespace memtrail::app
