// SPDX-License-Identifier: Apache-2.0
// Write a finished report in the format asked for, to stdout or a file.
#pragma once

#include <string>

#include "cli/options.h"
#include "model/report.h"

namespace memtrail::app {

struct OutputRequest {
  cli::Format format = cli::Format::kText;
  std::string path;  // empty: stdout (refused for pprof, a binary format)
  int json_version = 2;
  double interval_s = 0;  // recorded in the JSON's options
};

// Throws memtrail::Error when the file cannot be written.
void write_report(const model::Report& report, const OutputRequest& request);

// Writes the report's SVG flame graph to `path` and says so on stderr.
void write_flamegraph(const model::Report& report, const std::string& path);

// Writes the report's SVG chart of memory over time to `path` and says so on stderr.
void write_memory_plot(const model::Report& report, const std::string& path);

}  // namespace memtrail::app
