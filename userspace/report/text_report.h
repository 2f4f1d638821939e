// SPDX-License-Identifier: Apache-2.0
// Render a leak report as text for people.
#pragma once

#include <ostream>

#include "model/report.h"

namespace memtrail::report {

// Top `report.top` sites with bytes, count, age and symbolized stack; then totals and notes.
void render_text(const model::Report& report, std::ostream& out);

}  // namespace memtrail::report
