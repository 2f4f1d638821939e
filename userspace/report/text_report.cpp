// SPDX-License-Identifier: Apache-2.0
// Render a leak report as text for people.
#include "report/text_report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "common/format.h"
#include "report/names.h"

namespace memtrail::report {
namespace {

std::string hex(uint64_t value) {
  std::ostringstream out;
  out << "0x" << std::hex << value;
  return out.str();
}

std::string bytes_with_human(uint64_t bytes) {
  std::string exact = with_thousands(bytes) + " B";
  return bytes < 1024 ? exact : exact + " (" + human_bytes(bytes) + ")";
}

std::string pad(std::string text, size_t width) {
  if (text.size() < width) text.append(width - text.size(), ' ');
  return text;
}

std::string frame_function(const model::Frame& frame) {
  return frame.function.value_or("??") + (frame.inlined ? " (inlined)" : "");
}

// "      #1  leak_malloc   leaky.c:42   leaky+0x1234"; an inlined function is listed above the
// function it was inlined into, at the same address, with a dot instead of a number.
std::string truncation_text(const std::string& reason) {
  if (reason == "depth") return "the stack is deeper than the 64 frames kept";
  if (reason == "no_cfi") return "the walk reached code that no CFI describes";
  if (reason == "unsupported_cfi") return "the walk reached CFI it cannot follow";
  if (reason == "rbp_unknown") return "this frame needs a frame pointer that a callee lost";
  if (reason == "unreadable") return "stack memory could not be read";
  if (reason == "bad_frame_pointer")
    return "the frame-pointer walk stopped here (no frame pointer; try --unwind dwarf)";
  if (reason == "unknown_code") return "the walk reached code in no known module";
  if (reason == "loop") return "the walk did not move up the stack";
  if (reason == "python_depth") return "the Python stack is deeper than the 32 frames kept";
  if (reason == "stack_map_full") return "the stack map was full: only the caller is known";
  return "the stack walk stopped here";
}

// What could not be tracked in one process, in one line; the Totals line sums all processes.
void render_losses(const model::ProcessLosses& lost, std::ostream& out) {
  out << "    lost:";
  const char* separator = " ";
  auto item = [&](uint64_t count, const char* one, const char* many) {
    if (count == 0) return;
    out << separator << with_thousands(count) << " " << (count == 1 ? one : many);
    separator = ", ";
  };
  item(lost.drops, "allocation dropped (table full: --max-allocations)",
       "allocations dropped (table full: --max-allocations)");
  item(lost.stack_failures, "stack not stored (stack map full: --max-stacks)",
       "stacks not stored (stack map full: --max-stacks)");
  item(lost.site_drops, "site total lost", "site totals lost");
  item(lost.unmatched_frees, "free of a block from before attach",
       "frees of blocks from before attach");
  item(lost.missed_entries, "call in flight at attach", "calls in flight at attach");
  item(lost.region_events_lost, "mmap/munmap/brk call not followed (event buffer full)",
       "mmap/munmap/brk calls not followed (event buffer full)");
  out << "\n";
}

// One line on how stacks were walked, and one on what ended some of them early.
// "traced: 92 % of RssAnon growth (...)", or why no share is said.
void render_coverage(const model::ProcessMemory::Coverage& coverage, std::ostream& out) {
  char span[32];
  std::snprintf(span, sizeof(span), "%.1fs", coverage.span_s);
  if (!coverage.assessed) {
    out << "    traced: no share of RssAnon growth to say: " << coverage.reason << "\n";
    return;
  }
  double traced = coverage.traced_growth_bytes;
  out << "    traced: " << std::llround(coverage.share * 100) << " % of RssAnon growth ("
      << (traced < 0 ? "-" : "+")
      << human_bytes(static_cast<uint64_t>(std::llround(std::fabs(traced)))) << " traced, +"
      << human_bytes(static_cast<uint64_t>(std::llround(coverage.rss_anon_growth_bytes)))
      << " RssAnon over " << span << ")";
  // Page rounding and allocator headers make a few percent either way.
  if (coverage.share > 1.1) {
    out << "; over 100 %: traced blocks not all touched, or in memory resident before";
  }
  out << "\n";
}

void render_unwind(const model::UnwindSummary& unwind, std::ostream& out) {
  size_t by_table = 0, by_frame_pointer = 0, by_nothing = 0;
  for (const auto& module : unwind.modules) {
    if (module.method == "cfi") {
      ++by_table;
    } else if (module.method == "frame_pointers") {
      ++by_frame_pointer;
    } else {
      ++by_nothing;
    }
  }
  out << "Stacks (--unwind " << unwind.mode << "): " << with_thousands(unwind.stacks)
      << " captured, " << with_thousands(unwind.truncated_stacks) << " truncated";
  if (!unwind.truncated_by_reason.empty()) {
    out << " (";
    const char* separator = "";
    for (const auto& [reason, count] : unwind.truncated_by_reason) {
      out << separator << reason << " " << with_thousands(count);
      separator = ", ";
    }
    out << ")";
  }
  if (unwind.mode != "fp") {
    out << "; modules by CFI table " << by_table << ", by frame pointers " << by_frame_pointer;
    if (by_nothing) out << ", not unwound " << by_nothing;
    out << "; " << with_thousands(unwind.table_rows) << " table rows ("
        << human_bytes(unwind.table_bytes) << ")";
  }
  if (uint64_t segments = unwind.python_segments_walked + unwind.python_segments_reused) {
    out << "; Python walks' C frames below the innermost eval loop reused "
        << with_thousands(unwind.python_segments_reused) << " times of "
        << with_thousands(segments);
  }
  out << "\n";
}

void render_stack(const model::LeakSite& site, std::ostream& out) {
  size_t function_width = 0, location_width = 0;
  std::vector<std::string> locations;
  for (const auto& frame : site.stack) {
    function_width = std::max(function_width, frame_function(frame).size());
    std::string location;
    if (frame.file) {
      location = base_name(*frame.file) + (frame.line ? ":" + std::to_string(*frame.line) : "");
    }
    location_width = std::max(location_width, location.size());
    locations.push_back(std::move(location));
  }
  function_width = std::min<size_t>(function_width, 60);
  size_t index = 0;
  for (size_t i = 0; i < site.stack.size(); ++i) {
    const auto& frame = site.stack[i];
    std::string number = frame.inlined ? "  ." : "#" + std::to_string(index++);
    out << "      " << pad(number, 4) << pad(frame_function(frame), function_width) << "  "
        << pad(locations[i], location_width) << "  " << base_name(frame.module) << "+"
        << hex(frame.offset) << "\n";
  }
  if (site.stack.empty()) out << "      (no stack)\n";
  if (site.stack_truncated) {
    out << "      ... outer callers unknown: " << truncation_text(site.stack_truncation_reason)
        << "\n";
  }
}

// "+1,200 objects/min", signed.
std::string per_minute(double per_s, const std::string& unit) {
  double per_min = per_s * 60;
  return (per_min >= 0 ? "+" : "-") +
         with_thousands(static_cast<uint64_t>(std::llround(std::fabs(per_min)))) + " " + unit +
         "/min";
}

std::string signed_bytes(int64_t bytes) {
  return bytes < 0 ? "-" + human_bytes(static_cast<uint64_t>(-bytes))
                   : human_bytes(static_cast<uint64_t>(bytes));
}

// "  pid 4242  Session   +1,200 objects/min   2,000 objects   109.4 KiB", growing first; from
// the tracked objects, their bytes' growth too.
// "~" before a type's bytes: an estimate, sized by estimate (PythonType::sizing) or, with
// `scaled` (Python objects seen part of the time), scaled.
void render_python_types(const std::vector<model::PythonType>& types, uint32_t top, bool scaled,
                         std::ostream& out) {
  bool from_objects = !types.empty() && types.front().source == "objects";
  out << (from_objects ? "Python objects by type (live at this report; growth over the run), "
                         "growing first:\n"
                       : "Python objects by type (made minus freed since attach), growing "
                         "first:\n");
  if (types.empty()) out << "  (none counted yet)\n";
  size_t width = 0;
  for (size_t i = 0; i < types.size() && i < top; ++i)
    width = std::max(width, types[i].type.size());
  for (size_t i = 0; i < types.size() && i < top; ++i) {
    const auto& type = types[i];
    std::string growth = per_minute(type.growth_objects_per_s, "objects");
    if (type.source == "objects") {
      double per_min = type.growth_bytes_per_s * 60;
      growth += std::string("  ") + (per_min >= 0 ? "+" : "-") +
                human_bytes(static_cast<uint64_t>(std::llround(std::fabs(per_min)))) + "/min";
    }
    std::string objects =
        (type.outstanding_objects < 0 ? "-" : "") +
        with_thousands(static_cast<uint64_t>(std::llabs(type.outstanding_objects))) + " objects";
    out << "  pid " << type.pid << "  " << pad(type.type, width) << "  "
        << pad(growth, from_objects ? 36 : 22) << pad(objects, 18)
        << (scaled || type.sized_by_estimate() ? "~" : "") << signed_bytes(type.outstanding_bytes)
        << "\n";
  }
  if (types.size() > top) {
    out << "  ... and " << types.size() - top << " more type"
        << (types.size() - top == 1 ? "" : "s") << "\n";
  }
  out << "\n";
}

// "    by type: Record 10,000 (546.9 KiB) · str 10,000 (1.0 MiB) · ...", most bytes first;
// "~": scaled as the site is, or sized by estimate.
void render_site_types(const model::LeakSite& site, std::ostream& out) {
  constexpr size_t kShown = 6;
  out << "    by type:";
  for (size_t i = 0; i < site.python_types.size() && i < kShown; ++i) {
    const auto& type = site.python_types[i];
    const char* count_about = site.estimated ? "~" : "";
    const char* bytes_about = site.estimated || type.sized_by_estimate() ? "~" : "";
    out << (i ? " · " : " ") << type.type << " " << count_about
        << with_thousands(static_cast<uint64_t>(std::max<int64_t>(0, type.outstanding_objects)))
        << " (" << bytes_about << signed_bytes(type.outstanding_bytes) << ")";
  }
  if (site.python_types.size() > kShown) {
    out << " · " << site.python_types.size() - kShown << " more types";
  }
  out << "\n";
}

// Sites that freed all they allocated are no leak: one line, with the biggest, so that the
// reader knows the JSON and pprof reports hold them (their allocations count in alloc_space).
void render_freed_sites(const model::Report& report, std::ostream& out) {
  uint64_t sites = report.freed_sites.size() + report.freed_omitted.sites;
  if (sites == 0) return;
  uint64_t bytes = report.freed_omitted.bytes, allocations = report.freed_omitted.allocations;
  // A sum with an estimate in it is an estimate: "~", as on the sites.
  bool estimated = report.freed_omitted.estimated;
  for (const auto& site : report.freed_sites) {
    bytes += site.total_allocated_bytes;
    allocations += site.total_allocations;
    estimated = estimated || site.estimated;
  }
  const char* about = estimated ? "~" : "";
  out << with_thousands(sites) << (sites == 1 ? " site" : " sites") << " freed all "
      << (sites == 1 ? "it" : "they") << " allocated: " << about << human_bytes(bytes) << " in "
      << about << with_thousands(allocations) << (allocations == 1 ? " call" : " calls");
  if (!report.freed_sites.empty()) {
    // Named by its innermost frame, inlined or not: the code that called the allocator.
    const auto& biggest = report.freed_sites.front();
    if (!biggest.stack.empty()) {
      out << ", the most (" << (biggest.estimated ? "~" : "")
          << human_bytes(biggest.total_allocated_bytes) << ") from "
          << frame_name(biggest.stack.front()) << " in pid " << biggest.pid;
    }
  }
  out << " (the JSON and pprof reports list them)\n\n";
}

// The processes that exited before the report and are not listed one by one: a launched
// command's short-lived children can be dozens (a pyenv shim runs some thirty bash and readlink
// helpers before it executes python3, a build its compilers), and listed each they bury the
// program the user asked about. Those that left the most outstanding are listed; the others
// (none when kMaxExitedListed or fewer exited) are summed on one line. JSON lists each.
constexpr size_t kMaxExitedListed = 5;

std::set<const model::Target*> exited_to_sum(const model::Report& report) {
  std::vector<const model::Target*> exited;
  for (const auto& target : report.targets) {
    if (target.exit) exited.push_back(&target);
  }
  if (exited.size() <= kMaxExitedListed) return {};
  std::stable_sort(exited.begin(), exited.end(), [](const auto* a, const auto* b) {
    return a->exit->outstanding_bytes > b->exit->outstanding_bytes;
  });
  return {exited.begin() + kMaxExitedListed, exited.end()};
}

// "  ... 26 more processes exited earlier (bash 21, readlink 3, env 2): 187,460 B (183.1 KiB)
// outstanding at their exits in 1,234 allocations; the JSON report lists each"
void render_summed_exits(const std::set<const model::Target*>& summed, std::ostream& out) {
  if (summed.empty()) return;
  std::map<std::string, size_t> by_name;
  uint64_t bytes = 0, allocations = 0;
  for (const auto* target : summed) {
    ++by_name[target->comm.empty() ? "?" : target->comm];
    bytes += target->exit->outstanding_bytes;
    allocations += target->exit->outstanding_allocations;
  }
  std::vector<std::pair<std::string, size_t>> names(by_name.begin(), by_name.end());
  std::stable_sort(names.begin(), names.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  constexpr size_t kNamesShown = 4;
  out << "  ... " << with_thousands(summed.size()) << " more processes exited earlier (";
  for (size_t i = 0; i < names.size() && i < kNamesShown; ++i) {
    out << (i ? ", " : "") << names[i].first << " " << with_thousands(names[i].second);
  }
  if (names.size() > kNamesShown) out << ", +" << names.size() - kNamesShown << " more names";
  out << "): " << bytes_with_human(bytes) << " outstanding at their exits in "
      << with_thousands(allocations) << (allocations == 1 ? " allocation" : " allocations")
      << "; the JSON report lists each\n";
}

}  // namespace

void render_text(const model::Report& report, std::ostream& out) {
  out << "memtrail leaks: " << (report.final ? "final report" : "interval report") << " after "
      << human_duration(report.duration_s) << " of tracing ("
      << iso8601_utc(report.end_time_unix_ms) << ")\n";
  auto summed_exits = exited_to_sum(report);
  for (const auto& target : report.targets) {
    if (summed_exits.count(&target)) continue;
    out << "  pid " << target.pid << " " << target.comm;
    if (!target.allocator.empty()) {
      out << "  allocator " << target.allocator << " " << target.allocator_module;
    } else if (!target.allocator_module.empty()) {
      out << "  allocator " << target.allocator_module;
    }
    if (target.parent_pid) out << "  forked by pid " << *target.parent_pid;
    if (!target.cgroup.empty() && target.cgroup != "/") out << "  cgroup " << target.cgroup;
    if (target.python) {
      out << "  CPython " << target.python->version
          << (target.python->frames ? "" : " (native frames only)");
    }
    if (target.exited) out << "  [exited]";
    out << "\n";
    if (target.exit) {
      const auto& exit = *target.exit;
      out << "    exited after " << human_duration(exit.after_s) << " with "
          << with_thousands(exit.outstanding_bytes) << " B outstanding in "
          << with_thousands(exit.outstanding_allocations) << " allocations at "
          << with_thousands(exit.sites) << (exit.sites == 1 ? " site" : " sites")
          << " (shown as they were at its exit; its " << with_thousands(exit.purged_blocks)
          << " blocks were removed from memtrail's table)\n";
    }
    // The other probed modules (libc's reallocarray under jemalloc, libstdc++, --allocator).
    for (const auto& allocator : target.allocators) {
      if (allocator.path == target.allocator_module) continue;
      out << "    also traced: " << allocator.name << " " << allocator.path << " (";
      for (size_t i = 0; i < allocator.functions.size(); ++i) {
        if (i == 4) {
          out << ", +" << allocator.functions.size() - 4 << " more";
          break;
        }
        out << (i ? ", " : "") << allocator.functions[i];
      }
      out << ")\n";
    }
    for (const auto& untraced : target.untraced_allocators) {
      out << "    not traced: " << untraced.name << " " << untraced.path
          << (untraced.expected ? " (shadowed, as expected)" : "") << "\n";
    }
    if (target.losses.any()) render_losses(target.losses, out);
    if (target.untracked_frees > 0) {  // --sample-rate: no loss, so not among the losses
      out << "    not tracked (no loss): " << with_thousands(target.untracked_frees)
          << (target.traced_from_start
                  ? " frees of blocks the sampler passed over\n"
                  : " frees of blocks not tracked (unsampled, or from before attach)\n");
    }
    if (target.break_growth_bytes && *target.break_growth_bytes != 0) {
      int64_t growth = *target.break_growth_bytes;
      out << "    heap break: " << (growth > 0 ? "+" : "-")
          << human_bytes(static_cast<uint64_t>(growth > 0 ? growth : -growth))
          << " since attach (brk; malloc's main heap included)\n";
    }
    if (target.memory && target.memory->assessed) {
      out << "    memory: " << human_bytes(static_cast<uint64_t>(target.memory->rss_anon_bytes))
          << " private; " << target.memory->reason << "\n";
    }
    if (target.memory && target.memory->coverage) render_coverage(*target.memory->coverage, out);
  }
  render_summed_exits(summed_exits, out);
  const auto& folded = report.folded_exits;
  if (folded.nothing_outstanding > 0) {
    out << "  " << with_thousands(folded.nothing_outstanding)
        << " short-lived processes exited with nothing outstanding (not listed)\n";
  }
  if (folded.over_cap > 0) {
    out << "  " << with_thousands(folded.over_cap) << " older exited processes not listed, with "
        << human_bytes(folded.over_cap_outstanding_bytes) << " outstanding at their exits\n";
  }
  for (const auto& failure : report.attach_failures) {
    out << "  could not probe " << failure.path << ": " << failure.reason << " ("
        << with_thousands(failure.failures) << (failure.failures == 1 ? " attempt" : " attempts")
        << " failed; " << with_thousands(failure.processes)
        << (failure.processes == 1 ? " process" : " processes") << " left untraced meanwhile"
        << (failure.attached ? "; probed at a later attempt" : "") << ")\n";
  }
  out << "\n";

  size_t shown = std::min<size_t>(report.top, report.leaks.size());
  if (shown == 0) {
    out << "No outstanding allocations" << (report.min_age_s > 0 ? " old enough to show" : "")
        << ".\n";
  } else {
    bool assessed = !report.leaks.empty() && report.leaks.front().growth.has_value();
    out << "Top " << shown << " of " << with_thousands(report.totals.sites)
        << (assessed ? " allocation sites, leaks first, by growth:\n\n"
                     : " allocation sites by outstanding bytes:\n\n");
  }
  // Several processes (--all, or -p given twice): the sites by process, the process holding the
  // most first; each process's sites in their rank.
  std::vector<size_t> order(shown);
  std::iota(order.begin(), order.end(), 0);
  std::unordered_map<uint32_t, size_t> process_rank;
  {
    std::vector<const model::Target*> ranked;
    for (const auto& target : report.targets) ranked.push_back(&target);
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto* a, const auto* b) {
      return a->outstanding_bytes > b->outstanding_bytes;
    });
    for (size_t rank = 0; rank < ranked.size(); ++rank) process_rank[ranked[rank]->pid] = rank;
  }
  auto rank_of = [&](uint32_t pid) {
    auto it = process_rank.find(pid);
    return it == process_rank.end() ? process_rank.size() : it->second;
  };
  std::set<uint32_t> pids_shown;
  for (size_t i = 0; i < shown; ++i) pids_shown.insert(report.leaks[i].pid);
  bool grouped = pids_shown.size() > 1;
  if (grouped) {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return rank_of(report.leaks[a].pid) < rank_of(report.leaks[b].pid);
    });
  }
  uint32_t group_pid = 0;
  for (size_t position = 0; position < shown; ++position) {
    size_t i = order[position];
    const auto& site = report.leaks[i];
    if (grouped && (position == 0 || site.pid != group_pid)) {
      group_pid = site.pid;
      out << "== pid " << site.pid;
      for (const auto& target : report.targets) {
        if (target.pid != site.pid) continue;
        out << " " << target.comm << ": " << human_bytes(target.outstanding_bytes)
            << " outstanding in " << with_thousands(target.sites) << " site"
            << (target.sites == 1 ? "" : "s");
        if (!target.cgroup.empty() && target.cgroup != "/") out << ", cgroup " << target.cgroup;
      }
      out << "\n\n";
    }
    // "~": estimated (Python objects seen part of the time, scaled: see the notes); its bytes
    // also when some of its objects are of a type sized by estimate.
    const char* about = site.estimated ? "~" : "";
    const char* bytes_about = site.estimated || site.sized_by_estimate() ? "~" : "";
    bool objects = site.kind == "python_objects";
    out << "#" << (i + 1) << "  " << bytes_about << bytes_with_human(site.outstanding_bytes)
        << " outstanding in " << about << with_thousands(site.outstanding_allocations);
    if (objects) {
      out << " Python object" << (site.outstanding_allocations == 1 ? "" : "s");
    } else {
      out << " allocation" << (site.outstanding_allocations == 1 ? "" : "s") << " from "
          << site.allocator;
    }
    out << "  pid " << site.pid << "  oldest " << human_duration(site.oldest_age_s)
        << (site.estimated ? "  (estimated)" : "") << "\n";
    if (site.suppressed) {
      out << "    SUPPRESSED: " << *site.suppressed << " (kept on purpose)";
      if (site.growth) out << "; " << site.growth->verdict << ": " << site.growth->reason;
      out << "\n";
    } else if (site.growth) {
      std::string verdict = site.growth->verdict;
      std::transform(verdict.begin(), verdict.end(), verdict.begin(),
                     [](unsigned char c) { return c == '_' ? ' ' : std::toupper(c); });
      out << "    " << verdict << ": " << site.growth->reason << "\n";
    }
    if (objects) {
      // Sizes are read at each report, not at creation: no bytes allocated to say.
      out << "    " << about << with_thousands(site.total_allocations) << " created since attach, "
          << about << with_thousands(site.freed_allocations) << " of them gone\n";
      if (!site.python_types.empty()) render_site_types(site, out);
    } else {
      out << "    " << about << with_thousands(site.total_allocated_bytes) << " B allocated in "
          << about << with_thousands(site.total_allocations) << " calls since attach\n";
    }
    if (site.mismatched_frees > 0) {
      out << "    MISMATCHED: " << with_thousands(site.mismatched_frees) << " of its blocks "
          << (site.mismatched_frees == 1 ? "was" : "were")
          << " released by a function that does not pair with " << site.allocator
          << " (new/free, malloc/delete, new[]/delete)\n";
    }
    render_stack(site, out);
    out << "\n";
  }
  // Not for a run with no CPython process: an empty section there tells nothing.
  bool any_python =
      std::any_of(report.targets.begin(), report.targets.end(),
                  [](const model::Target& target) { return target.python.has_value(); });
  if (report.python_types && (any_python || !report.python_types->empty())) {
    render_python_types(*report.python_types, report.top,
                        report.python_objects && !report.python_objects->exact, out);
  }
  render_freed_sites(report, out);

  const auto& totals = report.totals;
  // The calls and frees are counted; what is outstanding includes scaled Python objects
  // when they were seen part of the time.
  // Their bytes are estimates too when some Python objects are of a type sized by estimate.
  const char* about = totals.estimated ? "~" : "";
  bool sized_by_estimate =
      report.python_types &&
      std::any_of(report.python_types->begin(), report.python_types->end(),
                  [](const model::PythonType& type) { return type.sized_by_estimate(); });
  const char* bytes_about = totals.estimated || sized_by_estimate ? "~" : "";
  out << "Totals: " << with_thousands(totals.allocations) << " allocations, "
      << with_thousands(totals.frees) << " frees, " << about
      << with_thousands(totals.outstanding_allocations) << " outstanding (" << bytes_about
      << human_bytes(totals.outstanding_bytes) << "), " << with_thousands(totals.unmatched_frees)
      << " unmatched frees, " << with_thousands(totals.drops) << " drops, "
      << with_thousands(totals.failed_calls) << " failed calls";
  if (totals.untracked_frees > 0) {
    out << ", " << with_thousands(totals.untracked_frees) << " frees of untracked blocks";
  }
  out << "\n";
  if (report.unwind) render_unwind(*report.unwind, out);
  for (const auto& note : report.notes) out << "Note: " << note << "\n";
  out << std::flush;
}

}  // namespace memtrail::report
