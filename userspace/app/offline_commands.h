// SPDX-License-Identifier: Apache-2.0
// Commands on saved reports, without tracing: `memtrail report` and `memtrail diff`.
#pragma once

#include "cli/options.h"

namespace memtrail::app {

// Both return the exit code; throw memtrail::Error on failures (unreadable or invalid files).
int run_report(const cli::ReportOptions& options);
int run_diff(const cli::DiffOptions& options);

}  // namespace memtrail::app
