// SPDX-License-Identifier: Apache-2.0
// Write a finished report in the format asked for.
#include "app/output.h"

#include <iostream>
#include <sstream>

#include "common/error.h"
#include "common/output_file.h"
#include "report/flamegraph.h"
#include "report/formats.h"
#include "report/json_report.h"
#include "report/memory_plot.h"
#include "report/text_report.h"

namespace memtrail::app {

void write_report(const model::Report& report, const OutputRequest& request) {
  std::string content;
  switch (request.format) {
    case cli::Format::kText: {
      std::ostringstream text;
      report::render_text(report, text);
      content = text.str();
      break;
    }
    case cli::Format::kJson:
      content =
          report::json_text(report::to_json(report, request.interval_s, request.json_version));
      break;
    case cli::Format::kFolded: {
      std::ostringstream folded;
      report::render_folded(report, folded);
      content = folded.str();
      break;
    }
    case cli::Format::kPprof:
      if (request.path.empty()) throw Error("pprof is a binary format", "give -o FILE");
      content = report::to_pprof(report);
      break;
  }
  if (request.path.empty()) {
    write_stdout(content);
  } else {
    write_output_file(content, request.path);
    std::cerr << "memtrail: wrote " << request.path << "\n";
  }
}

void write_flamegraph(const model::Report& report, const std::string& path) {
  write_output_file(report::render_flamegraph_svg(report), path);
  std::cerr << "memtrail: wrote " << path << "\n";
}

void write_memory_plot(const model::Report& report, const std::string& path) {
  write_output_file(report::render_memory_plot_svg(report), path);
  std::cerr << "memtrail: wrote " << path << "\n";
}

void check_output_paths(const std::vector<OutputPath>& paths) {
  for (const auto& [path, option] : paths) {
    if (!path.empty()) check_output_path(path, option);
  }
}

bool write_or_say_why(const std::function<void()>& write) {
  try {
    write();
    return true;
  } catch (const Error& error) {
    std::cerr << "memtrail: error: " << error.what() << "\n";
    if (!error.hint().empty()) std::cerr << "memtrail: hint: " << error.hint() << "\n";
    return false;
  }
}

}  // namespace memtrail::app
