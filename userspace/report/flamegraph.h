// SPDX-License-Identifier: Apache-2.0
// An interactive SVG flame graph of outstanding bytes, viewable in a browser without other
// tools (--flamegraph FILE).
#pragma once

#include <string>

#include "model/report.h"

namespace memtrail::report {

// Roots at the bottom ("all", then each command), callers below callees; widths are
// outstanding bytes. A site's innermost frame is colored by its verdict (leak red, suspect
// orange, steady blue, transient green, suppressed or too_short grey); other frames warm by
// name. In the browser: hover shows a frame's bytes and share, click zooms into it, "Reset
// zoom" or Escape goes back; FILE.svg#zoom=N opens zoomed into frame N.
std::string render_flamegraph_svg(const model::Report& report);

}  // namespace memtrail::report
