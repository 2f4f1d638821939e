// SPDX-License-Identifier: Apache-2.0
// Compare two saved reports.
#include "report/diff.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "common/format.h"
#include "report/names.h"

namespace memtrail::report {
namespace {

std::string site_key(const std::string& comm, const model::LeakSite& site) {
  std::ostringstream key;
  key << comm;
  for (const auto& frame : site.stack) {
    key << '|' << base_name(frame.module) << '+' << std::hex << frame.offset
        << (frame.inlined ? "i" : "");
  }
  return key.str();
}

std::string signed_bytes(int64_t delta) {
  std::string sign = delta < 0 ? "-" : "+";
  return sign + human_bytes(static_cast<uint64_t>(delta < 0 ? -delta : delta));
}

// "leak_malloc (leaky.c:27) < main": where the site is, in a line (inlined functions too).
std::string short_stack(const model::LeakSite& site) {
  std::string text;
  for (size_t i = 0; i < site.stack.size(); ++i) {
    const auto& frame = site.stack[i];
    if (i == 3) {
      text += " < ...";
      break;
    }
    if (i > 0) text += " < ";
    text += frame.function.value_or(base_name(frame.module) + "+?");
    if (i == 0 && frame.file) {
      text += " (" + base_name(*frame.file) +
              (frame.line ? ":" + std::to_string(*frame.line) : "") + ")";
    }
  }
  return text.empty() ? "(no stack)" : text;
}

}  // namespace

std::vector<SiteChange> diff_reports(const model::Report& before, const model::Report& after) {
  std::map<std::string, SiteChange> changes;
  auto add = [&](const model::Report& report, bool is_after) {
    for (const auto& site : report.leaks) {
      std::string comm = comm_of(report, site.pid);
      SiteChange& change = changes[site_key(comm, site)];
      change.comm = comm;
      if (!change.example || (is_after && !change.in_after)) change.example = &site;
      (is_after ? change.bytes_after : change.bytes_before) += site.outstanding_bytes;
      (is_after ? change.allocations_after : change.allocations_before) +=
          site.outstanding_allocations;
      (is_after ? change.in_after : change.in_before) = true;
      if (site.estimated) (is_after ? change.estimated_after : change.estimated_before) = true;
      if (site.sized_by_estimate()) {
        (is_after ? change.sized_by_estimate_after : change.sized_by_estimate_before) = true;
      }
    }
  };
  add(before, false);
  add(after, true);
  std::vector<SiteChange> ranked;
  for (auto& [key, change] : changes) ranked.push_back(change);
  std::stable_sort(ranked.begin(), ranked.end(), [](const SiteChange& a, const SiteChange& b) {
    return a.delta_bytes() > b.delta_bytes();
  });
  return ranked;
}

void render_diff_text(const std::vector<SiteChange>& changes, const model::Report& before,
                      const model::Report& after, size_t top, std::ostream& out) {
  auto when = [](const model::Report& report) {
    return iso8601_utc(report.end_time_unix_ms) + ", " + human_duration(report.duration_s) +
           " of tracing";
  };
  int64_t total_delta = static_cast<int64_t>(after.totals.outstanding_bytes) -
                        static_cast<int64_t>(before.totals.outstanding_bytes);
  out << "memtrail diff: before " << when(before) << "; after " << when(after) << "\n";
  // "~": a total with scaled Python objects in it (--python-objects on) is an estimate, and so
  // are bytes with objects of a type sized by estimate in them.
  auto sized_by_estimate = [](const model::Report& report) {
    return report.python_types &&
           std::any_of(report.python_types->begin(), report.python_types->end(),
                       [](const model::PythonType& type) { return type.sized_by_estimate(); });
  };
  auto estimated = [&](const model::Report& report) {
    return report.totals.estimated || sized_by_estimate(report);
  };
  auto about = [&](const model::Report& report) { return estimated(report) ? "~" : ""; };
  const char* delta_about = estimated(before) || estimated(after) ? "~" : "";
  bool any_estimate = estimated(before) || estimated(after);
  out << "Outstanding: " << about(before) << human_bytes(before.totals.outstanding_bytes) << " -> "
      << about(after) << human_bytes(after.totals.outstanding_bytes) << " (" << delta_about
      << signed_bytes(total_delta) << ")\n\n";
  size_t grew = 0;
  for (const auto& change : changes) grew += change.delta_bytes() > 0;
  if (grew == 0) {
    out << "No site grew.\n";
  } else {
    out << "Sites that grew, most first (" << std::min(grew, top) << " of " << grew << "):\n";
  }
  size_t shown = 0;
  for (const auto& change : changes) {
    if (change.delta_bytes() <= 0 || shown++ == top) break;
    const auto& site = *change.example;
    const char* before_about = change.estimated_before ? "~" : "";
    const char* after_about = change.estimated_after ? "~" : "";
    bool bytes_before_estimated = change.estimated_before || change.sized_by_estimate_before;
    bool bytes_after_estimated = change.estimated_after || change.sized_by_estimate_after;
    any_estimate = any_estimate || bytes_before_estimated || bytes_after_estimated;
    out << "  " << (bytes_before_estimated || bytes_after_estimated ? "~" : "")
        << signed_bytes(change.delta_bytes()) << "  " << (bytes_before_estimated ? "~" : "")
        << human_bytes(change.bytes_before) << " -> " << (bytes_after_estimated ? "~" : "")
        << human_bytes(change.bytes_after) << ", " << before_about
        << with_thousands(change.allocations_before) << " -> " << after_about
        << with_thousands(change.allocations_after) << " blocks"
        << (!change.in_before ? ", new" : "")
        << (change.in_after && site.growth ? ", " + site.growth->verdict : "") << "\n"
        << "      " << change.comm << ": " << short_stack(site) << "\n";
  }
  size_t shrank = 0, gone = 0;
  for (const auto& change : changes) {
    shrank += change.delta_bytes() < 0;
    gone += change.in_before && !change.in_after;
  }
  if (shrank > 0) {
    out << "\n"
        << shrank << " site" << (shrank == 1 ? "" : "s") << " shrank (" << gone
        << " gone entirely).\n";
  }
  if (any_estimate) {
    out << "\n~: an estimate: Python objects seen part of the time and scaled, or of a type "
           "sized by estimate (python_types[].sizing in the reports; their notes name them).\n";
  }
}

}  // namespace memtrail::report
