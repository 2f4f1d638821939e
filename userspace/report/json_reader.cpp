// SPDX-License-Identifier: Apache-2.0
// Read a saved JSON report back into the report model.
#include "report/json_reader.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <fstream>
#include <limits>
#include <type_traits>

#include "common/error.h"
#include "report/json_report.h"

namespace memtrail::report {
namespace {

using nlohmann::json;

// `value` as a whole number of type T, or an Error naming `name`. The JSON library would
// convert 1e308 or -1 to some other number without a word, and a report then shows 0 B or
// 16 EiB: a number out of range is refused, not rendered wrong.
template <typename T>
T whole_number(const json& value, const char* name) {
  static_assert(std::is_integral_v<T>);
  using Limits = std::numeric_limits<T>;
  if (value.is_number_unsigned()) {
    uint64_t number = value.get<uint64_t>();
    if (number <= static_cast<uint64_t>(Limits::max())) return static_cast<T>(number);
  } else if (value.is_number_integer()) {  // negative
    int64_t number = value.get<int64_t>();
    if (Limits::is_signed && number >= static_cast<int64_t>(Limits::min())) {
      return static_cast<T>(number);
    }
  } else if (value.is_number_float()) {
    // 3000.0 from another tool is 3000; the range check comes before the conversion, which
    // is undefined for a double beyond T. max() + 1 is a power of two, exact as a double.
    double number = value.get<double>();
    if (number == std::floor(number) && number >= static_cast<double>(Limits::min()) &&
        number < static_cast<double>(Limits::max()) + 1.0) {
      return static_cast<T>(number);
    }
  } else {
    throw Error(std::string(name) + " is " + value.type_name() + ", not a number");
  }
  throw Error(std::string(name) + " is " + value.dump() + ", not a whole number from " +
              std::to_string(Limits::min()) + " to " + std::to_string(Limits::max()));
}

template <typename T>
T whole(const json& object, const char* name) {
  return whole_number<T>(object.at(name), name);
}

template <typename T>
T whole_or(const json& object, const char* name, T fallback) {
  auto it = object.find(name);
  if (it == object.end()) return fallback;
  return whole_number<T>(*it, name);
}

template <typename T>
std::optional<T> optional_field(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if constexpr (std::is_integral_v<T>) {
    return whole_number<T>(*it, name);
  } else {
    return it->get<T>();
  }
}

// What is wrong, in words, without the JSON library's "[json.exception.type_error.302]".
std::string describe(const json::exception& error) {
  std::string message = error.what();
  size_t bracket = message.find("] ");
  if (message.rfind("[json.exception.", 0) == 0 && bracket != std::string::npos) {
    message = message.substr(bracket + 2);
  }
  // out_of_range.403: "key 'stack' not found"
  if (error.id == 403 && message.rfind("key '", 0) == 0) {
    size_t end = message.find('\'', 5);
    if (end != std::string::npos) return "field '" + message.substr(5, end - 5) + "' is missing";
  }
  if (error.id == 302) return "a value has the wrong type (" + message + ")";
  return message;
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
  frame.address = whole<uint64_t>(object, "address");
  frame.module = object.at("module").get<std::string>();
  frame.offset = whole<uint64_t>(object, "offset");
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
  unwind.stacks = whole<uint64_t>(object, "stacks");
  unwind.stacks_using_tables = whole<uint64_t>(object, "stacks_using_tables");
  unwind.truncated_stacks = whole<uint64_t>(object, "truncated_stacks");
  unwind.truncated_by_reason =
      object.at("truncated_by_reason").get<std::map<std::string, uint64_t>>();
  unwind.table_rows = whole<uint64_t>(object, "table_rows");
  unwind.table_bytes = whole<uint64_t>(object, "table_bytes");
  unwind.table_capacity_rows = whole<uint64_t>(object, "table_capacity_rows");
  unwind.mappings_beyond_limit = whole<uint64_t>(object, "mappings_beyond_limit");
  // Since 2026-12-07 (optional: absent in earlier reports).
  unwind.python_segments_walked = object.value("python_segments_walked", uint64_t{0});
  unwind.python_segments_reused = object.value("python_segments_reused", uint64_t{0});
  for (const auto& module : object.at("modules")) {
    unwind.modules.push_back(
        {module.at("path").get<std::string>(), module.at("method").get<std::string>(),
         module.at("reason").get<std::string>(), whole<uint64_t>(module, "rows")});
  }
  return unwind;
}

model::LeakSite site_from(const json& object) {
  model::LeakSite site;
  site.pid = whole<uint32_t>(object, "pid");
  site.allocator = object.at("allocator").get<std::string>();
  site.outstanding_bytes = whole<uint64_t>(object, "outstanding_bytes");
  site.outstanding_allocations = whole<uint64_t>(object, "outstanding_allocations");
  site.total_allocated_bytes = whole<uint64_t>(object, "total_allocated_bytes");
  site.total_allocations = whole<uint64_t>(object, "total_allocations");
  // Absent before it was counted apart: what the site's blocks then said.
  site.freed_allocations =
      whole_or<uint64_t>(object, "freed_allocations",
                         site.total_allocations > site.outstanding_allocations
                             ? site.total_allocations - site.outstanding_allocations
                             : uint64_t{0});
  site.oldest_age_s = object.at("oldest_age_s").get<double>();
  site.stack_truncated = object.at("stack_truncated").get<bool>();
  site.stack_truncation_reason = object.value("stack_truncation_reason", std::string());
  site.estimated = object.value("estimated", false);
  for (const auto& frame : object.at("stack")) site.stack.push_back(frame_from(frame));
  if (object.contains("verdict")) {
    const json& growth_json = object.at("growth");
    model::Growth growth;
    growth.verdict = object.at("verdict").get<std::string>();
    growth.bytes_per_s = object.at("growth_bytes_per_s").get<double>();
    growth.reason = growth_json.at("reason").get<std::string>();
    growth.r_squared = growth_json.at("r_squared").get<double>();
    growth.grew_share = growth_json.at("grew_share").get<double>();
    growth.points = whole<size_t>(growth_json, "points");
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
  site.mismatched_frees = whole_or<uint64_t>(object, "mismatched_frees", 0);
  // Absent from reports written before sites said their kind.
  site.kind = object.value("kind", std::string());
  for (const auto& entry : object.value("python_types", json::array())) {
    model::PythonType type;
    type.pid = site.pid;
    type.type = entry.at("type").get<std::string>();
    type.outstanding_objects = whole<int64_t>(entry, "outstanding_objects");
    type.outstanding_bytes = whole<int64_t>(entry, "outstanding_bytes");
    type.growth_objects_per_s = entry.value("growth_objects_per_s", 0.0);
    type.growth_bytes_per_s = entry.value("growth_bytes_per_s", 0.0);
    type.source = "objects";
    // Absent from reports written before types said how they were sized.
    type.sizing = entry.value("sizing", std::string());
    site.python_types.push_back(std::move(type));
  }
  return site;
}

}  // namespace

model::Report from_json(const json& document) {
  if (!document.is_object()) {
    throw Error(std::string("not a memtrail.leaks report: it holds a JSON ") +
                document.type_name() + ", not an object");
  }
  auto schema_field = document.find("schema");
  if (schema_field == document.end() || !schema_field->is_string()) {
    throw Error("not a memtrail.leaks report: it has no \"schema\" naming one");
  }
  std::string schema = schema_field->get<std::string>();
  if (schema != kLeaksSchemaV1 && schema != kLeaksSchemaV2) {
    if (schema.rfind("memtrail.leaks/", 0) == 0) {
      throw Error("a " + schema + " report; this memtrail reads " + kLeaksSchemaV1 + " and " +
                      kLeaksSchemaV2,
                  "render it with the memtrail version that wrote it");
    }
    throw Error("not a memtrail.leaks report: its schema is \"" + schema + "\"" +
                (schema.rfind("memtrail.paging/", 0) == 0
                     ? " (memtrail paging --json); memtrail report reads memtrail leaks --json"
                     : ""));
  }
  // The part being read, named in an error: "leaks[3]", "totals".
  std::string where = "the top level";
  try {
    model::Report report;
    report.tool_version = document.at("tool").at("version").get<std::string>();
    report.host = document.at("host").get<std::string>();
    report.kernel = document.at("kernel").get<std::string>();
    report.start_time_unix_ms = unix_ms_of(document.at("start_time").get<std::string>());
    report.end_time_unix_ms = unix_ms_of(document.at("end_time").get<std::string>());
    report.duration_s = document.at("duration_s").get<double>();
    where = "options";
    const json& options = document.at("options");
    report.min_age_s = options.at("min_age_s").get<double>();
    report.top = whole<uint32_t>(options, "top");
    report.sample_rate = whole_or<uint64_t>(options, "sample_rate", 0);
    report.final = true;
    for (const auto& target_json : document.at("targets")) {
      where = "targets[" + std::to_string(report.targets.size()) + "]";
      model::Target target;
      target.pid = whole<uint32_t>(target_json, "pid");
      target.comm = target_json.at("comm").get<std::string>();
      target.cmdline = target_json.at("cmdline").get<std::vector<std::string>>();
      target.exe = target_json.at("exe").get<std::string>();
      target.allocator_module = target_json.at("allocator_module").get<std::string>();
      target.exited = target_json.at("exited").get<bool>();
      // Absent from reports written before allocator detection (memtrail.leaks/1 too).
      target.allocator = target_json.value("allocator", std::string());
      for (const auto& allocator : target_json.value("allocators", json::array())) {
        target.allocators.push_back({allocator.at("name").get<std::string>(),
                                     allocator.at("path").get<std::string>(),
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
        target.losses = {whole<uint64_t>(lost, "drops"),
                         whole<uint64_t>(lost, "stack_failures"),
                         whole<uint64_t>(lost, "site_drops"),
                         whole<uint64_t>(lost, "missed_entries"),
                         whole<uint64_t>(lost, "unmatched_frees"),
                         whole_or<uint64_t>(lost, "region_events_lost", 0)};
      }
      target.cgroup = target_json.value("cgroup", std::string());
      target.traced_from_start = target_json.value("traced_from_start", false);
      target.untracked_frees = whole_or<uint64_t>(target_json, "untracked_frees", 0);
      if (target_json.contains("python")) {
        const auto& python = target_json.at("python");
        target.python = model::PythonRuntime{
            python.at("version").get<std::string>(), python.at("module").get<std::string>(),
            python.at("frames").get<bool>(), python.value("reason", std::string())};
      }
      target.outstanding_bytes = whole_or<uint64_t>(target_json, "outstanding_bytes", 0);
      target.sites = whole_or<uint64_t>(target_json, "sites", 0);
      target.python_objects_observed_fraction =
          optional_field<double>(target_json, "python_objects_observed_fraction");
      // Absent in reports from before it was said: those measured by time.
      if (target.python_objects_observed_fraction) {
        target.python_objects_share_basis =
            target_json.value("python_objects_share_basis", std::string("time"));
      }
      if (target_json.contains("parent_pid")) {
        target.parent_pid = whole<uint32_t>(target_json, "parent_pid");
      }
      if (target_json.contains("break_growth_bytes")) {
        target.break_growth_bytes = whole<int64_t>(target_json, "break_growth_bytes");
      }
      for (const auto& file : target_json.value("mappings", json::array())) {
        target.mappings.push_back({file.at("path").get<std::string>(),
                                   whole<uint64_t>(file, "start"), whole<uint64_t>(file, "limit"),
                                   whole<uint64_t>(file, "file_offset")});
      }
      if (target_json.contains("exit")) {
        const json& exit = target_json.at("exit");
        target.exit = model::ExitSummary{
            exit.at("after_s").get<double>(), whole<uint64_t>(exit, "outstanding_bytes"),
            whole<uint64_t>(exit, "outstanding_allocations"), whole<uint64_t>(exit, "sites"),
            whole<uint64_t>(exit, "purged_blocks")};
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
        if (memory_json.contains("coverage")) {  // absent before memtrail said it
          const json& coverage = memory_json.at("coverage");
          memory.coverage =
              model::ProcessMemory::Coverage{coverage.at("assessed").get<bool>(),
                                             coverage.at("span_s").get<double>(),
                                             coverage.at("rss_anon_growth_bytes").get<double>(),
                                             coverage.at("traced_growth_bytes").get<double>(),
                                             coverage.at("share").get<double>(),
                                             coverage.at("reason").get<std::string>()};
        }
        target.memory = std::move(memory);
      }
      report.targets.push_back(std::move(target));
    }
    where = "totals";
    const json& totals = document.at("totals");
    report.totals.allocations = whole<uint64_t>(totals, "allocations");
    report.totals.frees = whole<uint64_t>(totals, "frees");
    report.totals.outstanding_bytes = whole<uint64_t>(totals, "outstanding_bytes");
    report.totals.outstanding_allocations = whole<uint64_t>(totals, "outstanding_allocations");
    report.totals.unmatched_frees = whole<uint64_t>(totals, "unmatched_frees");
    report.totals.untracked_frees = whole_or<uint64_t>(totals, "untracked_frees", 0);
    report.totals.exact = totals.value("exact", false);
    report.totals.estimated = totals.value("estimated", false);
    report.totals.drops = whole<uint64_t>(totals, "drops");
    report.totals.failed_calls = whole<uint64_t>(totals, "failed_calls");
    report.totals.stack_failures = whole_or<uint64_t>(totals, "stack_failures", 0);
    report.totals.site_drops = whole_or<uint64_t>(totals, "site_drops", 0);
    report.totals.unsampled_allocations = whole_or<uint64_t>(totals, "unsampled_allocations", 0);
    report.totals.mismatched_frees = whole_or<uint64_t>(totals, "mismatched_frees", 0);
    report.totals.usable_size_allocations =
        whole_or<uint64_t>(totals, "usable_size_allocations", 0);
    report.totals.region_events_lost = whole_or<uint64_t>(totals, "region_events_lost", 0);
    for (const auto& site : document.at("leaks")) {
      where = "leaks[" + std::to_string(report.leaks.size()) + "]";
      report.leaks.push_back(site_from(site));
    }
    where = "the top level";
    report.totals.sites = report.leaks.size();
    report.notes = document.at("notes").get<std::vector<std::string>>();
    where = "unwind";
    if (document.contains("unwind")) report.unwind = unwind_from(document.at("unwind"));
    if (document.contains("attach_failures")) {
      for (const auto& entry : document.at("attach_failures")) {
        model::AttachFailure failure;
        failure.path = entry.at("path").get<std::string>();
        failure.reason = entry.at("reason").get<std::string>();
        failure.failures = whole<uint64_t>(entry, "failures");
        failure.processes = whole<uint64_t>(entry, "processes");
        failure.attached = entry.at("attached").get<bool>();
        report.attach_failures.push_back(std::move(failure));
      }
    }
    if (document.contains("folded_exits")) {
      const json& folded = document.at("folded_exits");
      report.folded_exits.nothing_outstanding = whole<uint64_t>(folded, "nothing_outstanding");
      report.folded_exits.over_cap = whole<uint64_t>(folded, "over_cap");
      report.folded_exits.over_cap_outstanding_bytes =
          whole<uint64_t>(folded, "over_cap_outstanding_bytes");
    }
    // Absent before sites that freed everything were kept.
    for (const auto& entry : document.value("freed_sites", json::array())) {
      where = "freed_sites[" + std::to_string(report.freed_sites.size()) + "]";
      model::LeakSite site;
      site.pid = whole<uint32_t>(entry, "pid");
      site.total_allocated_bytes = whole<uint64_t>(entry, "total_allocated_bytes");
      site.total_allocations = whole<uint64_t>(entry, "total_allocations");
      site.freed_allocations = site.total_allocations;
      site.mismatched_frees = whole_or<uint64_t>(entry, "mismatched_frees", 0);
      site.stack_truncated = entry.at("stack_truncated").get<bool>();
      site.stack_truncation_reason = entry.value("stack_truncation_reason", std::string());
      for (const auto& frame : entry.at("stack")) site.stack.push_back(frame_from(frame));
      site.suppressed = optional_field<std::string>(entry, "suppressed");
      // Absent for native sites, and in reports from before object sites said so.
      site.allocator = entry.value("allocator", std::string());
      site.kind = entry.value("kind", std::string());
      site.estimated = entry.value("estimated", false);
      report.freed_sites.push_back(std::move(site));
    }
    if (document.contains("freed_sites_omitted")) {
      where = "freed_sites_omitted";
      const json& omitted = document.at("freed_sites_omitted");
      report.freed_omitted = {whole<uint64_t>(omitted, "sites"),
                              whole<uint64_t>(omitted, "allocations"),
                              whole<uint64_t>(omitted, "bytes"), omitted.value("estimated", false)};
    }
    if (document.contains("python_objects")) {
      where = "python_objects";
      const json& objects = document.at("python_objects");
      model::PythonObjectsCoverage coverage;
      coverage.exact = objects.at("mode").get<std::string>() == "exact";
      coverage.attached_share = objects.at("attached_share").get<double>();
      coverage.period_s = objects.at("period_s").get<double>();
      coverage.observed_fraction = objects.at("observed_fraction").get<double>();
      coverage.share_basis = objects.value("share_basis", std::string("time"));
      // Absent in reports from before they were said.
      coverage.recorded = objects.value("recorded", uint64_t{0});
      coverage.untyped = objects.value("untyped", uint64_t{0});
      coverage.found_dead = objects.value("found_dead", uint64_t{0});
      coverage.found_replaced = objects.value("found_replaced", uint64_t{0});
      coverage.at_risk = objects.value("at_risk", uint64_t{0});
      coverage.window_sweeps = objects.value("window_sweeps", uint64_t{0});
      coverage.sweep_objects_read = objects.value("sweep_objects_read", uint64_t{0});
      coverage.whole_table_sweeps = objects.value("whole_table_sweeps", uint64_t{0});
      coverage.sweep_seconds = objects.value("sweep_seconds", 0.0);
      coverage.unwatched = objects.value("unwatched", uint64_t{0});
      coverage.before_first_window = objects.value("before_first_window", std::vector<uint32_t>{});
      report.python_objects = coverage;
    }
    if (document.contains("python_types")) {
      std::vector<model::PythonType> types;
      for (const auto& entry : document.at("python_types")) {
        where = "python_types[" + std::to_string(types.size()) + "]";
        model::PythonType type;
        type.pid = whole<uint32_t>(entry, "pid");
        type.type = entry.at("type").get<std::string>();
        type.outstanding_objects = whole<int64_t>(entry, "outstanding_objects");
        type.outstanding_bytes = whole<int64_t>(entry, "outstanding_bytes");
        type.growth_objects_per_s = entry.at("growth_objects_per_s").get<double>();
        type.made = whole_or<uint64_t>(entry, "made", 0);
        type.freed = whole_or<uint64_t>(entry, "freed", 0);
        type.growth_bytes_per_s = entry.value("growth_bytes_per_s", 0.0);
        // Absent before object tracking: the allocator probes' counts.
        type.source = entry.value("source", std::string("allocator_probes"));
        // Absent from reports written before types said how they were sized.
        type.sizing = entry.value("sizing", std::string());
        types.push_back(std::move(type));
      }
      report.python_types = std::move(types);
    }
    return report;
  } catch (const json::exception& error) {
    throw Error("not a valid memtrail.leaks report: " + where + ": " + describe(error));
  } catch (const Error& error) {
    throw Error("not a valid memtrail.leaks report: " + where + ": " + error.what());
  }
}

model::Report read_json_file(const std::string& path) {
  // One line each, naming the file: what the JSON library says is for its own developers.
  struct stat info {};
  bool found = ::stat(path.c_str(), &info) == 0;
  if (found && S_ISDIR(info.st_mode)) {
    throw Error(path + " is not a memtrail.leaks report: it is a directory");
  }
  std::ifstream in(path);
  if (!in) {
    int error_number = errno;
    throw Error(errno_message("read report " + path, error_number),
                "give the path of a file written by memtrail leaks --json");
  }
  json document;
  try {
    document = json::parse(in);
  } catch (const json::parse_error& error) {
    if (in.bad()) throw Error("read report " + path + " failed");
    bool empty = found && S_ISREG(info.st_mode) && info.st_size == 0;
    throw Error(path + " is not a memtrail.leaks report: " +
                (empty ? std::string("it is empty")
                       : "not JSON (syntax error at byte " + std::to_string(error.byte) + ")"));
  }
  try {
    return from_json(document);
  } catch (const Error& error) {
    throw Error(path + " is " + error.what(), error.hint());
  }
}

}  // namespace memtrail::report
