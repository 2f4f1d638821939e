// SPDX-License-Identifier: Apache-2.0
// `memtrail leaks`: attach, report every interval, stop, write the final report.
#include "app/leaks_command.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "app/output.h"
#include "app/runtime.h"
#include "common/clock.h"
#include "common/error.h"
#include "report/json_report.h"
#include "report/text_report.h"
#include "sampler/host.h"
#include "session/config.h"
#include "session/session.h"

namespace memtrail::app {
namespace {

using session::Clock;

// MemAvailable in bytes; 0 when /proc/meminfo cannot be read (the smallest table then).
uint64_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::stringstream text;
  text << meminfo.rdbuf();
  model::HostSample sample;
  sampler::parse_meminfo(text.str(), sample);
  return sample.mem_available_bytes;
}

// Interval reports are text on stdout, unless stdout carries the final report in another
// format.
bool interval_reports_on_stdout(const cli::LeaksOptions& options) {
  return options.format == cli::Format::kText || !options.output_path.empty();
}

// Until a signal, --duration, or (unless host-wide) every target has exited: the session's
// work at each tick, and a report (or, without one, a reading for the verdicts) every interval.
void run_until_stopped(const cli::LeaksOptions& options, session::Session& session, int signal_fd) {
  const Clock::time_point start = session.started_at();
  const auto interval = duration_from_seconds(options.interval_s);
  std::optional<Clock::time_point> deadline;
  if (options.duration_s) deadline = start + duration_from_seconds(*options.duration_s);
  auto next_report = start + interval;
  for (;;) {
    auto now = Clock::now();
    if (deadline && now >= *deadline) return;
    session.housekeep(now);
    if (now >= next_report) {
      if (options.quiet || !interval_reports_on_stdout(options)) {
        // No report printed, but the history behind the verdicts needs the point.
        session.measure();
      } else {
        report::render_text(session.take_report(false, options.top), std::cout);
        std::cout << "\n" << std::flush;
      }
      next_report += interval;
      if (next_report <= now) next_report = now + interval;
    }
    auto wake = std::min(next_report, session.next_housekeeping());
    if (deadline) wake = std::min(wake, *deadline);
    if (session.wait(wake, signal_fd)) {
      consume_signal(signal_fd);
      return;
    }
    if (session.finished()) return;
  }
}

// The final report, to stdout or -o in --format, and the files asked for besides. False when
// one of them could not be written (each failure said on stderr; the others are still written).
bool write_final_report(const cli::LeaksOptions& options, session::Session& session) {
  // The JSON file carries every site; the text report only the top ones. The plot picks
  // the fastest growing sites among all of them.
  bool every_site = !options.json_path.empty() || !options.flamegraph_path.empty() ||
                    !options.plot_path.empty() || options.format != cli::Format::kText;
  auto report = session.take_report(true, every_site ? SIZE_MAX : options.top);
  OutputRequest final_output;
  final_output.format = options.format;
  final_output.path = options.output_path;
  final_output.json_version = options.json_version;
  final_output.interval_s = options.interval_s;
  bool written = write_or_say_why([&] { write_report(report, final_output); });
  if (!options.json_path.empty()) {
    written &= write_or_say_why([&] {
      report::write_json_file(report::to_json(report, options.interval_s, options.json_version),
                              options.json_path);
      std::cerr << "memtrail: wrote " << options.json_path << "\n";
    });
  }
  if (!options.flamegraph_path.empty()) {
    written &= write_or_say_why([&] { write_flamegraph(report, options.flamegraph_path); });
  }
  if (!options.plot_path.empty()) {
    written &= write_or_say_why([&] { write_memory_plot(report, options.plot_path); });
  }
  return written;
}

}  // namespace

int run_leaks(const cli::LeaksOptions& options) {
  // Before anything is loaded: a path that cannot be written must not cost the run.
  check_output_paths({{options.json_path, "--json"},
                      {options.output_path, "-o"},
                      {options.flamegraph_path, "--flamegraph"},
                      {options.plot_path, "--plot"}});
  session::SessionConfig config = session::session_config(options, available_memory());
  if (!options.suppressions_path.empty()) config.suppressions.load_file(options.suppressions_path);
  UniqueFd signal_fd = open_signalfd();
  session::Session session(std::move(config));
  session.start();
  run_until_stopped(options, session, signal_fd.get());
  session.stop();
  bool written = write_final_report(options, session);
  session.end_launched_command();
  return written ? kExitOk : kExitFailure;
}

}  // namespace memtrail::app
