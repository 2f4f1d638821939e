// SPDX-License-Identifier: Apache-2.0
// Read a saved JSON report back into the report model.
#include "report/json_reader.h"

#include <cerrno>
#include <fstream>

#include "common/error.h"
#include "report/json_report.h"

namespace memtrail::report {
namespace {

using nlohmann::json;

template <typename T>
std::optional<T> optional_field(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return std::nullopt;
  return it->get<T>();
}

int64_t unix_ms_of(const std::string& iso8601) {
  // "2026-11-24T20:31:05.123Z", as iso8601_utc writes it.
  std::tm time{};
  int milliseconds = 0;
  if (sscanf(iso8601.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &time.tm_year, &time.tm_mon, &time.tm_mday,
             &time.tm_hour, &time.tm_min, &time.tm_sec, &milliseconds) != 7) {
    throw Error("bad time \"" + iso8601 + "\": expected 2026-11-24T20:31:05.123Z");
  }
  time.tm_year -= 1900;
  time.tm_mon -= 1;
  return static_cast<int64_t>(timegm(&time)) * 1000 + milliseconds;
}

model::Frame frame_from(const json& object) {
  model::Frame frame;
  frame.address = object.at("address").get<uint64_t>();
  frame.module = object.at("module").get<std::string>();
  frame.offset = object.at("offset").get<uint64_t>();
  frame.function = optional_field<std::string>(object, "function");
  frame.file = optional_field<std::string>(object, "file");
  frame.line = optional_field<uint32_t>(object, "line");
  frame.inlined = object.value("inlined", false);
  frame.python = object.value("language", std::string("native")) == "python";
  return frame;
}

model::UnwindSummary unwind_from(const json& object) {
  model::UnwindSummary unwind;
  unwind.mode = object.at("mode").get<std::string>();
  unwind.stacks = object.at("stacks").get<uint64_t>();
  unwind.stacks_using_tables = object.at("stacks_using_tables").get<uint64_t>();
  unwind.truncated_stacks = object.at("truncated_stacks").get<uint64_t>();
  unwind.truncated_by_reason =
      object.at("truncated_by_reason").get<std::map<std::string, uint64_t>>();
  unwind.table_rows = object.at("table_rows").get<uint64_t>();
  unwind.table_bytes = object.at("table_bytes").get<uint64_t>();
  unwind.table_capacity_rows = object.at("table_capacity_rows").get<uint64_t>();
  unwind.mappings_beyond_limit = object.at("mappings_beyond_limit").get<uint64_t>();
  for (const auto& module : object.at("modules")) {
    unwind.modules.push_back({module.at("path").get<std::string>(),
                              module.at("method").get<std::string>(),
                              module.at("reason").get<std::string>(),
                              module.at("rows").get<uint64_t>()});
  }
  return unwind;
}

model::LeakSite site_from(const json& object) {
  model::LeakSite site;
  site.pid = object.at("pid").get<uint32_t>();
  site.allocator = object.at("allocator").get<std::string>();
  site.outstanding_bytes = object.at("outstanding_bytes").get<uint64_t>();
  site.outstanding_allocations = object.at("outstanding_allocations").get<uint64_t>();
  site.total_allocated_bytes = object.at("total_allocated_bytes").get<uint64_t>();
  site.total_allocations = object.at("total_allocations").get<uint64_t>();
  // Absent before it was counted apart: what the site's blocks then said.
  site.freed_allocations = object.value(
      "freed_allocations", site.total_allocations > site.outstanding_allocations
                               ? site.total_allocations - site.outstanding_allocations
                               : uint64_t{0});
  site.oldest_age_s = object.at("oldest_age_s").get<double>();
  site.stack_truncated = object.at("stack_truncated").get<bool>();
  site.stack_truncation_reason = object.value("stack_truncation_reason", std::string());
  for (const auto& frame : object.at("stack")) site.stack.push_back(frame_from(frame));
  if (object.contains("verdict")) {
    const json& growth_json = object.at("growth");
    model::Growth growth;
    growth.verdict = object.at("verdict").get<std::string>();
    growth.bytes_per_s = object.at("growth_bytes_per_s").get<double>();
    growth.reason = growth_json.at("reason").get<std::string>();
    growth.r_squared = growth_json.at("r_squared").get<double>();
    growth.grew_share = growth_json.at("grew_share").get<double>();
    growth.points = growth_json.at("points").get<size_t>();
    growth.span_s = growth_json.at("span_s").get<double>();
    growth.freed_any = growth_json.at("freed_any").get<bool>();
    growth.median_age_s = growth_json.value("median_age_s", 0.0);
    for (const auto& point : growth_json.at("series")) {
      growth.series.push_back(
          {point.at(0).get<double>(), point.at(1).get<double>(), point.at(2).get<double>()});
    }
    site.growth = std::move(growth);
  }
  site.suppressed = optional_field<std::string>(object, "suppressed");
  site.mismatched_frees = object.value("mismatched_frees", uint64_t{0});
  return site;
}

}  // namespace

model::Report from_json(const json& document) {
  if (!document.is_object() || !document.contains("schema")) {
    throw Error("not a memtrail report: no \"schema\" field");
  }
  std::string schema = document.at("schema").get<std::string>();
  if (schema != kLeaksSchemaV1 && schema != kLeaksSchemaV2) {
    throw Error("unsupported report version \"" + schema + "\" (this memtrail reads " +
                    kLeaksSchemaV1 + " and " + kLeaksSchemaV2 + ")",
                "convert it with the memtrail version that wrote it");
  }
  try {
    model::Report report;
    report.tool_version = document.at("tool").at("version").get<std::string>();
    report.host = document.at("host").get<std::string>();
    report.kernel = document.at("kernel").get<std::string>();
    report.start_time_unix_ms = unix_ms_of(document.at("start_time").get<std::string>());
    report.end_time_unix_ms = unix_ms_of(document.at("end_time").get<std::string>());
    report.duration_s = document.at("duration_s").get<double>();
    const json& options = document.at("options");
    report.min_age_s = options.at("min_age_s").get<double>();
    report.top = options.at("top").get<uint32_t>();
    report.sample_rate = options.value("sample_rate", uint64_t{0});
    report.final = true;
    for (const auto& target_json : document.at("targets")) {
      model::Target target;
      target.pid = target_json.at("pid").get<uint32_t>();
      target.comm = target_json.at("comm").get<std::string>();
      target.cmdline = target_json.at("cmdline").get<std::vector<std::string>>();
      target.exe = target_json.at("exe").get<std::string>();
      target.allocator_module = target_json.at("allocator_module").get<std::string>();
      target.exited = target_json.at("exited").get<bool>();
      // Absent from reports written before allocator detection (memtrail.leaks/1 too).
      target.allocator = target_json.value("allocator", std::string());
      for (const auto& allocator : target_json.value("allocators", json::array())) {
        target.allocators.push_back(
            {allocator.at("name").get<std::string>(), allocator.at("path").get<std::string>(),
             allocator.at("functions").get<std::vector<std::string>>(),
             allocator.value("note", std::string())});
      }
      for (const auto& allocator : target_json.value("untraced_allocators", json::array())) {
        target.untraced_allocators.push_back(
            {allocator.at("name").get<std::string>(), allocator.at("path").get<std::string>(),
             allocator.at("reason").get<std::string>(), allocator.value("expected", false)});
      }
      if (target_json.contains("losses")) {  // absent before per-process losses
        const json& lost = target_json.at("losses");
        target.losses = {lost.at("drops").get<uint64_t>(), lost.at("stack_failures").get<uint64_t>(),
                         lost.at("site_drops").get<uint64_t>(),
                         lost.at("missed_entries").get<uint64_t>(),
                         lost.at("unmatched_frees").get<uint64_t>(),
                         lost.value("region_events_lost", uint64_t{0})};
      }
      target.cgroup = target_json.value("cgroup", std::string());
      target.traced_from_start = target_json.value("traced_from_start", false);
      target.untracked_frees = target_json.value("untracked_frees", uint64_t{0});
      if (target_json.contains("python")) {
        const auto& python = target_json.at("python");
        target.python = model::PythonRuntime{python.at("version").get<std::string>(),
                                             python.at("module").get<std::string>(),
                                             python.at("frames").get<bool>(),
                                             python.value("reason", std::string())};
      }
      target.outstanding_bytes = target_json.value("outstanding_bytes", uint64_t{0});
      target.sites = target_json.value("sites", uint64_t{0});
      if (target_json.contains("parent_pid")) {
        target.parent_pid = target_json.at("parent_pid").get<uint32_t>();
      }
      if (target_json.contains("break_growth_bytes")) {
        target.break_growth_bytes = target_json.at("break_growth_bytes").get<int64_t>();
      }
      if (target_json.contains("exit")) {
        const json& exit = target_json.at("exit");
        target.exit = model::ExitSummary{exit.at("after_s").get<double>(),
                                         exit.at("outstanding_bytes").get<uint64_t>(),
                                         exit.at("outstanding_allocations").get<uint64_t>(),
                                         exit.at("sites").get<uint64_t>(),
                                         exit.at("purged_blocks").get<uint64_t>()};
      }
      if (target_json.contains("memory")) {
        const json& memory_json = target_json.at("memory");
        model::ProcessMemory memory;
        memory.rss_anon_bytes = memory_json.at("rss_anon_bytes").get<double>();
        memory.assessed = memory_json.at("assessed").get<bool>();
        memory.rss_bytes_per_s = memory_json.at("rss_growth_bytes_per_s").get<double>();
        memory.traced_bytes_per_s = memory_json.at("traced_growth_bytes_per_s").get<double>();
        memory.untraced_growth = memory_json.at("untraced_growth").get<bool>();
        memory.reason = memory_json.at("reason").get<std::string>();
        for (const auto& point : memory_json.at("series")) {
          memory.series.push_back(
              {point.at(0).get<double>(), point.at(1).get<double>(), point.at(2).get<double>()});
        }
        target.memory = std::move(memory);
      }
      report.targets.push_back(std::move(target));
    }
    const json& totals = document.at("totals");
    report.totals.allocations = totals.at("allocations").get<uint64_t>();
    report.totals.frees = totals.at("frees").get<uint64_t>();
    report.totals.outstanding_bytes = totals.at("outstanding_bytes").get<uint64_t>();
    report.totals.outstanding_allocations = totals.at("outstanding_allocations").get<uint64_t>();
    report.totals.unmatched_frees = totals.at("unmatched_frees").get<uint64_t>();
    report.totals.untracked_frees = totals.value("untracked_frees", uint64_t{0});
    report.totals.exact = totals.value("exact", false);
    report.totals.drops = totals.at("drops").get<uint64_t>();
    report.totals.failed_calls = totals.at("failed_calls").get<uint64_t>();
    report.totals.stack_failures = totals.value("stack_failures", uint64_t{0});
    report.totals.site_drops = totals.value("site_drops", uint64_t{0});
    report.totals.unsampled_allocations = totals.value("unsampled_allocations", uint64_t{0});
    report.totals.mismatched_frees = totals.value("mismatched_frees", uint64_t{0});
    report.totals.region_events_lost = totals.value("region_events_lost", uint64_t{0});
    for (const auto& site : document.at("leaks")) report.leaks.push_back(site_from(site));
    report.totals.sites = report.leaks.size();
    report.notes = document.at("notes").get<std::vector<std::string>>();
    if (document.contains("unwind")) report.unwind = unwind_from(document.at("unwind"));
    if (document.contains("attach_failures")) {
      for (const auto& entry : document.at("attach_failures")) {
        model::AttachFailure failure;
        failure.path = entry.at("path").get<std::string>();
        failure.reason = entry.at("reason").get<std::string>();
        failure.failures = entry.at("failures").get<uint64_t>();
        failure.processes = entry.at("processes").get<uint64_t>();
        failure.attached = entry.at("attached").get<bool>();
        report.attach_failures.push_back(std::move(failure));
      }
    }
    if (document.contains("folded_exits")) {
      const json& folded = document.at("folded_exits");
      report.folded_exits.nothing_outstanding = folded.at("nothing_outstanding").get<uint64_t>();
      report.folded_exits.over_cap = folded.at("over_cap").get<uint64_t>();
      report.folded_exits.over_cap_outstanding_bytes =
          folded.at("over_cap_outstanding_bytes").get<uint64_t>();
    }
    if (document.contains("python_types")) {
      std::vector<model::PythonType> types;
      for (const auto& entry : document.at("python_types")) {
        model::PythonType type;
        type.pid = entry.at("pid").get<uint32_t>();
        type.type = entry.at("type").get<std::string>();
        type.outstanding_objects = entry.at("outstanding_objects").get<int64_t>();
        type.outstanding_bytes = entry.at("outstanding_bytes").get<int64_t>();
        type.growth_objects_per_s = entry.at("growth_objects_per_s").get<double>();
        type.made = entry.value("made", uint64_t{0});
        type.freed = entry.value("freed", uint64_t{0});
        types.push_back(std::move(type));
      }
      report.python_types = std::move(types);
    }
    return report;
  } catch (const json::exception& error) {
    throw Error(std::string("malformed memtrail report: ") + error.what());
  }
}

model::Report read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    int error_number = errno;
    throw Error(errno_message("read report " + path, error_number),
                "give the path of a file written by memtrail leaks --json");
  }
  try {
    return from_json(json::parse(in));
  } catch (const json::parse_error& error) {
    throw Error(path + ": not JSON (" + error.what() + ")",
                "give the path of a file written by memtrail leaks --json");
  } catch (const Error& error) {
    throw Error(path + ": " + error.what(), error.hint());
  }
}

}  // namespace memtrail::report
