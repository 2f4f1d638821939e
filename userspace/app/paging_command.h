// SPDX-License-Identifier: Apache-2.0
// `memtrail paging`: host-wide paging pressure, its culprits and its victims.
#pragma once

#include "cli/options.h"

namespace memtrail::app {

// Runs the whole command. Returns the exit code; throws memtrail::Error on fatal failures.
int run_paging(const cli::PagingOptions& options);

}  // namespace memtrail::app
