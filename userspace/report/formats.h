// SPDX-License-Identifier: Apache-2.0
// Renderers for the tools people already use: folded stacks (flamegraph.pl, speedscope,
// inferno) and pprof (go tool pprof, Pyroscope, Parca).
#pragma once

#include <ostream>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// One line per site, "comm;outermost;...;innermost BYTES": outstanding bytes, every frame
// (inlined ones too) named by its function, else module+0xoffset.
void render_folded(const model::Report& report, std::ostream& out);

// A gzip-compressed pprof profile (profile.proto) with the sample types alloc_objects,
// alloc_space, inuse_objects and inuse_space (the default), one sample per site, labelled with
// its pid and, when known, its verdict.
std::string to_pprof(const model::Report& report);

// Decompresses gzip data (for reading a pprof file back). Throws memtrail::Error.
std::string gunzip(const std::string& compressed);

}  // namespace memtrail::report
