// SPDX-License-Identifier: Apache-2.0
// Render a leak report as versioned JSON for tools.
#include "report/json_report.h"

#include <algorithm>

#include "common/format.h"
#include "common/output_file.h"

namespace memtrail::report {
namespace {

using nlohmann::ordered_json;

template <typename T>
ordered_json optional_value(const std::optional<T>& value) {
  return value ? ordered_json(*value) : ordered_json(nullptr);
}

ordered_json frame_json(const model::Frame& frame) {
  return {{"address", frame.address},
          {"module", frame.module},
          {"offset", frame.offset},
          {"function", optional_value(frame.function)},
          {"file", optional_value(frame.file)},
          {"line", optional_value(frame.line)},
          {"inlined", frame.inlined},
          {"language", frame.python ? "python" : "native"}};
}

ordered_json unwind_json(const model::UnwindSummary& unwind) {
  ordered_json modules = ordered_json::array();
  for (const auto& module : unwind.modules) {
    modules.push_back({{"path", module.path},
                       {"method", module.method},
                       {"rows", module.rows},
                       {"reason", module.reason}});
  }
  ordered_json reasons = ordered_json::object();
  for (const auto& [reason, count] : unwind.truncated_by_reason) reasons[reason] = count;
  return {{"mode", unwind.mode},
          {"stacks", unwind.stacks},
          {"stacks_using_tables", unwind.stacks_using_tables},
          {"truncated_stacks", unwind.truncated_stacks},
          {"truncated_by_reason", std::move(reasons)},
          {"table_rows", unwind.table_rows},
          {"table_bytes", unwind.table_bytes},
          {"table_capacity_rows", unwind.table_capacity_rows},
          {"mappings_beyond_limit", unwind.mappings_beyond_limit},
          {"python_segments_walked", unwind.python_segments_walked},
          {"python_segments_reused", unwind.python_segments_reused},
          {"modules", std::move(modules)}};
}

// A type's figures; `pid` and the allocator probes' counts only where they say something.
ordered_json python_type_json(const model::PythonType& type, bool with_pid) {
  ordered_json entry = ordered_json::object();
  if (with_pid) entry["pid"] = type.pid;
  entry["type"] = type.type;
  entry["outstanding_objects"] = type.outstanding_objects;
  entry["outstanding_bytes"] = type.outstanding_bytes;
  // Said for every type, exact ones too: a reader tells "exact" from a report that does not say.
  if (!type.sizing.empty()) entry["sizing"] = type.sizing;
  entry["growth_objects_per_s"] = type.growth_objects_per_s;
  if (type.source == "objects") {
    entry["growth_bytes_per_s"] = type.growth_bytes_per_s;
  } else {
    entry["made"] = type.made;
    entry["freed"] = type.freed;
  }
  if (with_pid) entry["source"] = type.source;
  return entry;
}

}  // namespace

ordered_json to_json(const model::Report& report, double interval_s, int version) {
  ordered_json targets = ordered_json::array();
  for (const auto& target : report.targets) {
    ordered_json entry = {{"pid", target.pid},
                          {"comm", target.comm},
                          {"cmdline", target.cmdline},
                          {"exe", target.exe},
                          {"allocator_module", target.allocator_module},
                          {"exited", target.exited}};
    if (version >= 2) {
      ordered_json allocators = ordered_json::array();
      for (const auto& allocator : target.allocators) {
        allocators.push_back({{"name", allocator.name},
                              {"path", allocator.path},
                              {"functions", allocator.functions},
                              {"note", allocator.note}});
      }
      ordered_json untraced = ordered_json::array();
      for (const auto& allocator : target.untraced_allocators) {
        untraced.push_back({{"name", allocator.name},
                            {"path", allocator.path},
                            {"reason", allocator.reason},
                            {"expected", allocator.expected}});
      }
      entry["allocator"] = target.allocator;
      entry["allocators"] = std::move(allocators);
      entry["untraced_allocators"] = std::move(untraced);
      const auto& lost = target.losses;
      entry["losses"] = {{"drops", lost.drops},
                         {"stack_failures", lost.stack_failures},
                         {"site_drops", lost.site_drops},
                         {"missed_entries", lost.missed_entries},
                         {"unmatched_frees", lost.unmatched_frees},
                         {"region_events_lost", lost.region_events_lost}};
      if (target.break_growth_bytes) entry["break_growth_bytes"] = *target.break_growth_bytes;
      if (target.parent_pid) entry["parent_pid"] = *target.parent_pid;
      if (!target.cgroup.empty()) entry["cgroup"] = target.cgroup;
      entry["traced_from_start"] = target.traced_from_start;
      entry["untracked_frees"] = target.untracked_frees;
      if (target.python) {
        entry["python"] = {{"version", target.python->version},
                           {"module", target.python->module},
                           {"frames", target.python->frames},
                           {"reason", target.python->reason}};
      }
      entry["outstanding_bytes"] = target.outstanding_bytes;
      entry["sites"] = target.sites;
      if (target.python_objects_observed_fraction) {
        entry["python_objects_observed_fraction"] = *target.python_objects_observed_fraction;
        if (!target.python_objects_share_basis.empty()) {
          entry["python_objects_share_basis"] = target.python_objects_share_basis;
        }
      }
      if (!target.mappings.empty()) {
        ordered_json mappings = ordered_json::array();
        for (const auto& file : target.mappings) {
          mappings.push_back({{"path", file.path},
                              {"start", file.start},
                              {"limit", file.limit},
                              {"file_offset", file.file_offset}});
        }
        entry["mappings"] = std::move(mappings);
      }
      if (target.exit) {
        entry["exit"] = {{"after_s", target.exit->after_s},
                         {"outstanding_bytes", target.exit->outstanding_bytes},
                         {"outstanding_allocations", target.exit->outstanding_allocations},
                         {"sites", target.exit->sites},
                         {"purged_blocks", target.exit->purged_blocks}};
      }
    }
    if (target.memory && version >= 2) {
      const auto& memory = *target.memory;
      ordered_json series = ordered_json::array();
      for (const auto& point : memory.series) {
        series.push_back({point.t_s, point.rss_anon_bytes, point.traced_bytes});
      }
      entry["memory"] = {{"rss_anon_bytes", memory.rss_anon_bytes},
                         {"assessed", memory.assessed},
                         {"rss_growth_bytes_per_s", memory.rss_bytes_per_s},
                         {"traced_growth_bytes_per_s", memory.traced_bytes_per_s},
                         {"untraced_growth", memory.untraced_growth},
                         {"reason", memory.reason},
                         {"series", std::move(series)}};
      if (memory.coverage) {
        const auto& coverage = *memory.coverage;
        entry["memory"]["coverage"] = {{"assessed", coverage.assessed},
                                       {"share", coverage.share},
                                       {"rss_anon_growth_bytes", coverage.rss_anon_growth_bytes},
                                       {"traced_growth_bytes", coverage.traced_growth_bytes},
                                       {"span_s", coverage.span_s},
                                       {"reason", coverage.reason}};
      }
    }
    targets.push_back(std::move(entry));
  }
  // Version 1 readers expect the sites ranked by outstanding bytes (then count, as before).
  std::vector<const model::LeakSite*> sites;
  for (const auto& site : report.leaks) sites.push_back(&site);
  if (version == 1) {
    std::stable_sort(sites.begin(), sites.end(), [](const auto* a, const auto* b) {
      if (a->outstanding_bytes != b->outstanding_bytes) {
        return a->outstanding_bytes > b->outstanding_bytes;
      }
      return a->outstanding_allocations > b->outstanding_allocations;
    });
  }
  ordered_json leaks = ordered_json::array();
  for (const auto* site_pointer : sites) {
    const model::LeakSite& site = *site_pointer;
    ordered_json stack = ordered_json::array();
    for (const auto& frame : site.stack) stack.push_back(frame_json(frame));
    ordered_json entry = {{"pid", site.pid},
                          {"allocator", site.allocator},
                          {"outstanding_bytes", site.outstanding_bytes},
                          {"outstanding_allocations", site.outstanding_allocations},
                          {"total_allocated_bytes", site.total_allocated_bytes},
                          {"total_allocations", site.total_allocations},
                          {"oldest_age_s", site.oldest_age_s},
                          {"stack_truncated", site.stack_truncated},
                          {"stack", std::move(stack)}};
    if (version >= 2) entry["freed_allocations"] = site.freed_allocations;
    if (version >= 2 && site.estimated) entry["estimated"] = true;
    if (version >= 2 && !site.kind.empty()) entry["kind"] = site.kind;
    if (version >= 2 && !site.python_types.empty()) {
      ordered_json types = ordered_json::array();
      for (const auto& type : site.python_types) types.push_back(python_type_json(type, false));
      entry["python_types"] = std::move(types);
    }
    if (version >= 2 && !site.stack_truncation_reason.empty()) {
      entry["stack_truncation_reason"] = site.stack_truncation_reason;
    }
    if (site.growth && version >= 2) {
      const auto& growth = *site.growth;
      ordered_json series = ordered_json::array();
      for (const auto& point : growth.series) {
        series.push_back({point.t_s, point.bytes, point.allocations});
      }
      entry["verdict"] = growth.verdict;
      entry["growth_bytes_per_s"] = growth.bytes_per_s;
      entry["growth"] = {{"reason", growth.reason},
                         {"r_squared", growth.r_squared},
                         {"grew_share", growth.grew_share},
                         {"points", growth.points},
                         {"span_s", growth.span_s},
                         {"freed_any", growth.freed_any},
                         {"median_age_s", growth.median_age_s},
                         {"series", std::move(series)}};
      if (site.suppressed) entry["suppressed"] = *site.suppressed;
      entry["mismatched_frees"] = site.mismatched_frees;
    }
    leaks.push_back(std::move(entry));
  }
  const auto& totals = report.totals;
  ordered_json json = {{"schema", version == 1 ? kLeaksSchemaV1 : kLeaksSchemaV2},
                       {"tool", {{"name", "memtrail"}, {"version", report.tool_version}}},
                       {"host", report.host},
                       {"kernel", report.kernel},
                       {"start_time", iso8601_utc(report.start_time_unix_ms)},
                       {"end_time", iso8601_utc(report.end_time_unix_ms)},
                       {"duration_s", report.duration_s},
                       {"options",
                        {{"min_age_s", report.min_age_s},
                         {"top", report.top},
                         {"interval_s", interval_s},
                         {"sample_rate", report.sample_rate}}},
                       {"targets", std::move(targets)},
                       {"totals",
                        {{"allocations", totals.allocations},
                         {"frees", totals.frees},
                         {"outstanding_bytes", totals.outstanding_bytes},
                         {"outstanding_allocations", totals.outstanding_allocations},
                         {"unmatched_frees", totals.unmatched_frees},
                         {"drops", totals.drops},
                         {"failed_calls", totals.failed_calls},
                         {"stack_failures", totals.stack_failures},
                         {"site_drops", totals.site_drops},
                         {"unsampled_allocations", totals.unsampled_allocations},
                         {"mismatched_frees", totals.mismatched_frees},
                         {"usable_size_allocations", totals.usable_size_allocations}}},
                       {"leaks", std::move(leaks)},
                       {"notes", report.notes}};
  if (version >= 2) {
    json["totals"]["region_events_lost"] = totals.region_events_lost;
    ordered_json failures = ordered_json::array();
    for (const auto& failure : report.attach_failures) {
      failures.push_back({{"path", failure.path},
                          {"reason", failure.reason},
                          {"failures", failure.failures},
                          {"processes", failure.processes},
                          {"attached", failure.attached}});
    }
    json["attach_failures"] = std::move(failures);
    json["folded_exits"] = {
        {"nothing_outstanding", report.folded_exits.nothing_outstanding},
        {"over_cap", report.folded_exits.over_cap},
        {"over_cap_outstanding_bytes", report.folded_exits.over_cap_outstanding_bytes}};
    ordered_json freed = ordered_json::array();
    for (const auto& site : report.freed_sites) {
      ordered_json stack = ordered_json::array();
      for (const auto& frame : site.stack) stack.push_back(frame_json(frame));
      ordered_json entry = {{"pid", site.pid},
                            {"total_allocated_bytes", site.total_allocated_bytes},
                            {"total_allocations", site.total_allocations},
                            {"mismatched_frees", site.mismatched_frees},
                            {"stack_truncated", site.stack_truncated}};
      if (!site.stack_truncation_reason.empty()) {
        entry["stack_truncation_reason"] = site.stack_truncation_reason;
      }
      entry["stack"] = std::move(stack);
      if (site.suppressed) entry["suppressed"] = *site.suppressed;
      // Python objects (their kind known by where the site starts), estimated as live ones.
      if (!site.allocator.empty()) entry["allocator"] = site.allocator;
      if (!site.kind.empty()) entry["kind"] = site.kind;
      if (site.estimated) entry["estimated"] = true;
      freed.push_back(std::move(entry));
    }
    json["freed_sites"] = std::move(freed);
    json["freed_sites_omitted"] = {{"sites", report.freed_omitted.sites},
                                   {"allocations", report.freed_omitted.allocations},
                                   {"bytes", report.freed_omitted.bytes}};
    // Only when true, as on the sites: scaled Python objects are in the sums.
    if (report.freed_omitted.estimated) json["freed_sites_omitted"]["estimated"] = true;
    json["totals"]["untracked_frees"] = totals.untracked_frees;
    json["totals"]["exact"] = totals.exact;
    if (totals.estimated) json["totals"]["estimated"] = true;
  }
  if (report.unwind && version >= 2) json["unwind"] = unwind_json(*report.unwind);
  if (report.python_objects && version >= 2) {
    const auto& objects = *report.python_objects;
    json["python_objects"] = {{"mode", objects.exact ? "exact" : "duty_cycle"},
                              {"attached_share", objects.attached_share},
                              {"period_s", objects.period_s},
                              {"observed_fraction", objects.observed_fraction},
                              {"share_basis", objects.share_basis},
                              {"recorded", objects.recorded},
                              {"untyped", objects.untyped},
                              {"found_dead", objects.found_dead},
                              {"found_replaced", objects.found_replaced},
                              {"at_risk", objects.at_risk},
                              {"window_sweeps", objects.window_sweeps},
                              {"sweep_objects_read", objects.sweep_objects_read},
                              {"whole_table_sweeps", objects.whole_table_sweeps},
                              {"sweep_seconds", objects.sweep_seconds},
                              {"unwatched", objects.unwatched}};
    if (!objects.before_first_window.empty()) {
      json["python_objects"]["before_first_window"] = objects.before_first_window;
    }
  }
  if (report.python_types && version >= 2) {
    ordered_json types = ordered_json::array();
    for (const auto& type : *report.python_types) types.push_back(python_type_json(type, true));
    json["python_types"] = std::move(types);
  }
  return json;
}

std::string json_text(const ordered_json& json) {
  return json.dump(2, ' ', false, ordered_json::error_handler_t::replace) + "\n";
}

void write_json_file(const ordered_json& json, const std::string& path) {
  write_output_file(json_text(json), path);
}

}  // namespace memtrail::report
