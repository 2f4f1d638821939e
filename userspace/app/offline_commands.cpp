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
  check_output_paths({{options.output_path, "-o"},
                      {options.flamegraph_path, "--flamegraph"},
                      {options.plot_path, "--plot"}});
  model::Report report = report::read_json_file(options.input_path);
  report.top = options.top;
  OutputRequest request;
  request.format = options.format;
  request.path = options.output_path;
  request.json_version = options.json_version;
  bool written = write_or_say_why([&] { write_report(report, request); });
  if (!options.flamegraph_path.empty()) {
    written &= write_or_say_why([&] { write_flamegraph(report, options.flamegraph_path); });
  }
  if (!options.plot_path.empty()) {
    written &= write_or_say_why([&] { write_memory_plot(report, options.plot_path); });
  }
  return written ? kExitOk : kExitFailure;
}

int run_diff(const cli::DiffOptions& options) {
  model::Report before = report::read_json_file(options.before_path);
  model::Report after = report::read_json_file(options.after_path);
  auto changes = report::diff_reports(before, after);
  report::render_diff_text(changes, before, after, options.top, std::cout);
  return kExitOk;
}

}  // namespace memtrail::app
