// SPDX-License-Identifier: Apache-2.0
// Renderers for the tools people already use: folded stacks (flamegraph.pl, speedscope,
// inferno) and pprof (go tool pprof, Pyroscope, Parca).
#pragma once

#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "model/report.h"

namespace memtrail::report {

// One line per site, "comm;outermost;...;innermost BYTES": outstanding bytes, every frame
// (inlined ones too) named by its function, else module+0xoffset.
void render_folded(const model::Report& report, std::ostream& out);

// What a pprof profile's reader expects besides the sites: Go's /debug/pprof/allocs defaults
// to alloc_space, /debug/pprof/heap to inuse_space; Pyroscope and Parca group profiles by
// string labels (comm, cgroup, container_id, pod_uid), put on every sample.
struct PprofOptions {
  std::string default_sample_type = "inuse_space";
  std::vector<std::pair<std::string, std::string>> labels;  // empty values are left out
};

// A gzip-compressed pprof profile (profile.proto) with the sample types alloc_objects,
// alloc_space, inuse_objects and inuse_space (the default), period type space/bytes (period:
// the sampling rate in bytes, 1 when every allocation is recorded), one sample per site,
// labelled with its pid and, when known, its verdict.
std::string to_pprof(const model::Report& report, const PprofOptions& options = {});

// Decompresses gzip data (for reading a pprof file back). Throws memtrail::Error.
std::string gunzip(const std::string& compressed);

}  // namespace memtrail::report
