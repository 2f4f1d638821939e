// SPDX-License-Identifier: Apache-2.0
// Commands on saved reports.
#include "app/offline_commands.h"

#include <iostream>

#include "app/output.h"
#include "common/error.h"
#include "report/diff.h"
#include "report/json_reader.h"

namespace memtrail::app {

int run_report(const cli::ReportOptions& options) {
  model::Report report = report::read_json_file(options.input_path);
  report.top = options.top;
  OutputRequest request;
  request.format = options.format;
  request.path = options.output_path;
  request.json_version = options.json_version;
  write_report(report, request);
  if (!options.output_path.empty()) std::cerr << "memtrail: wrote " << options.output_path << "\n";
  if (!options.flamegraph_path.empty()) write_flamegraph(report, options.flamegraph_path);
  if (!options.plot_path.empty()) write_memory_plot(report, options.plot_path);
  return kExitOk;
}

int run_diff(const cli::DiffOptions& options) {
  model::Report before = report::read_json_file(options.before_path);
  model::Report after = report::read_json_file(options.after_path);
  auto changes = report::diff_reports(before, after);
  report::render_diff_text(changes, before, after, options.top, std::cout);
  return kExitOk;
}

}  // namespace memtrail::app
