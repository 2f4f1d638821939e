// SPDX-License-Identifier: Apache-2.0
// Write a finished report in the format asked for, to stdout or a file.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "cli/options.h"
#include "model/report.h"

namespace memtrail::app {

struct OutputRequest {
  cli::Format format = cli::Format::kText;
  std::string path;  // empty: stdout (refused for pprof, a binary format)
  int json_version = 2;
  double interval_s = 0;  // recorded in the JSON's options
};

// Throws memtrail::Error when the report cannot be written; says "wrote FILE" on stderr when
// it was written to a file.
void write_report(const model::Report& report, const OutputRequest& request);

// Writes the report's SVG flame graph to `path` and says so on stderr.
void write_flamegraph(const model::Report& report, const std::string& path);

// Writes the report's SVG chart of memory over time to `path` and says so on stderr.
void write_memory_plot(const model::Report& report, const std::string& path);

// An output file and the option that named it, as error messages say it.
struct OutputPath {
  std::string path;  // empty: not asked for
  std::string option;
};

// Before the work starts: throws memtrail::Error for the first path that cannot be written.
void check_output_paths(const std::vector<OutputPath>& paths);

// Runs `write`; its memtrail::Error is said on stderr as main says errors, and false returned,
// so that one failed output does not cost the others (a full disk for -o, and still --json).
bool write_or_say_why(const std::function<void()>& write);

}  // namespace memtrail::app
