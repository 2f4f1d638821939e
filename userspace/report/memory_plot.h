// SPDX-License-Identifier: Apache-2.0
// A chart of memory over time per traced process, as a self-contained SVG (--plot FILE): the
// picture `mprof plot` gives, for any process memtrail traces.
#pragma once

#include <cstddef>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// Sites drawn per process: beyond a handful the lines can no longer be told apart.
constexpr size_t kPlotSites = 5;

// One chart per target, stacked: its private memory (RssAnon) and traced outstanding bytes
// from `Target::memory`, and the kPlotSites sites of that process growing fastest
// (`Growth::series`), one <polyline> per series with one point per sample. Axes are labelled
// in seconds since tracing started and in bytes (KiB, MiB, ...); the legend names each site
// by its innermost symbolized function and file:line. Viewable without any script; a small
// inline one shows the values under the mouse.
std::string render_memory_plot_svg(const model::Report& report);

}  // namespace memtrail::report
