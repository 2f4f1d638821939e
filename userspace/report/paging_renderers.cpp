// SPDX-License-Identifier: Apache-2.0
// Render a paging report as text for people and as memtrail.paging/1 JSON for tools.
#include "report/paging_renderers.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "common/format.h"
#include "common/version.h"

namespace memtrail::report {
namespace {

using model::PagingVerdict;
using model::ProcessRole;
using nlohmann::ordered_json;

constexpr const char* kPagingSchema = "memtrail.paging/1";

std::string upper(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

std::string number(double value, const char* format = "%.1f") {
  char text[48];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

// 45712 -> "45.7k"
std::string count(double value) {
  if (value >= 1e6) return number(value / 1e6) + "M";
  if (value >= 1e4) return number(value / 1e3) + "k";
  return number(value, "%.0f");
}

std::string pad(std::string text, size_t width) {
  if (text.size() < width) text.append(width - text.size(), ' ');
  return text;
}

std::string pad_left(std::string text, size_t width) {
  if (text.size() < width) text.insert(0, width - text.size(), ' ');
  return text;
}

std::string clock_time(int64_t unix_ms) {
  std::string iso = iso8601_utc(unix_ms);  // 2026-11-24T20:31:05.123Z
  return iso.size() >= 19 ? iso.substr(11, 8) : iso;
}

std::string psi_text(const model::ScopeInterval& interval) {
  if (!interval.psi_some_pct) return "PSI n/a";
  return "PSI some " + number(*interval.psi_some_pct) + "% full " + number(*interval.psi_full_pct) +
         "%";
}

// The figures of one interval of a scope, on two lines.
void render_scope_interval(const model::ScopeInterval& interval, bool host, std::ostream& out) {
  out << "  " << psi_text(interval) << "  faults " << count(interval.minor_faults_per_s)
      << " minor/s " << count(interval.major_faults_per_s) << " major/s  swap-in "
      << (interval.swapin_pages_per_s ? count(*interval.swapin_pages_per_s) + " pg/s" : "n/a");
  if (interval.swapout_pages_per_s)
    out << " out " << count(*interval.swapout_pages_per_s) << " pg/s";
  if (interval.zswapin_pages_per_s > 0)
    out << "  zswap-in " << count(interval.zswapin_pages_per_s) << " pg/s";
  out << "\n  refaults anon " << count(interval.refault_anon_per_s) << "/s file "
      << count(interval.refault_file_per_s) << "/s (turnover "
      << number(interval.turnover_per_s, "%.2f") << "x/s)  reclaim stall: memcg "
      << number(interval.memcg_reclaim_stall, "%.2f") << " direct "
      << number(interval.direct_reclaim_stall, "%.2f") << " s/s";
  if (host) {
    out << "  scanned: kswapd " << count(interval.kswapd_scan_pages_per_s) << " direct "
        << count(interval.direct_scan_pages_per_s) << " pg/s";
  }
  out << "\n  memory " << human_bytes(interval.usage_bytes) << " used of "
      << human_bytes(interval.memory_bytes) << " (" << human_bytes(interval.available_bytes)
      << " available)  swap " << human_bytes(interval.swap_used_bytes);
  if (host) out << " of " << human_bytes(interval.swap_total_bytes);
  out << "  OOM kills " << interval.oom_kills << "\n";
}

void render_verdict_line(const std::string& scope, const model::ScopeInterval& interval,
                         std::ostream& out) {
  out << scope << ": " << upper(model::paging_verdict_name(interval.verdict));
  if (interval.verdict != PagingVerdict::kOk && !interval.kind.empty()) {
    out << " (" << interval.kind << ")";
  }
  out << "  " << interval.reason << "\n";
}

std::string cgroup_title(const model::CgroupReport& cgroup) {
  return "memory cgroup " + cgroup.path + " (v" + std::to_string(cgroup.version) + ", limit " +
         (cgroup.limit_bytes ? human_bytes(*cgroup.limit_bytes) : std::string("none")) + ")";
}

void render_processes(const model::PagingReport& report, std::ostream& out) {
  bool any_culprit = false, any_victim = false, any_other = false;
  for (const auto& p : report.processes) {
    any_culprit |= p.role == ProcessRole::kCulprit;
    any_victim |= p.role == ProcessRole::kVictim;
    any_other |= p.role == ProcessRole::kNone;
  }
  auto name = [](const model::ProcessReport& p) {
    return pad(p.comm + (p.exited ? " (exited)" : ""), 18);
  };
  if (any_culprit) {
    out << "\nCULPRITS (footprint grows while memory is short)\n  " << pad("pid", 8)
        << pad("comm", 18) << pad_left("growth", 12) << pad_left("footprint", 12)
        << pad_left("share", 8) << pad_left("swap", 11) << pad_left("majflt/s", 10) << "  next\n";
    for (const auto& p : report.processes) {
      if (p.role != ProcessRole::kCulprit) continue;
      out << "  " << pad(std::to_string(p.pid), 8) << name(p)
          << pad_left(
                 "+" + human_bytes(static_cast<uint64_t>(p.footprint_growth_bytes_per_s)) + "/s",
                 12)
          << pad_left(human_bytes(p.footprint_bytes), 12)
          << pad_left(number(100 * p.scope_share, "%.0f") + "%", 8)
          << pad_left(human_bytes(p.swap_bytes), 11) << pad_left(count(p.major_faults_per_s), 10)
          << "  " << p.next_command << "\n";
      for (const auto& line : p.evidence) out << "        - " << line << "\n";
    }
  }
  if (any_victim) {
    out << "\nVICTIMS (stall on faults and reclaim while not growing)\n  " << pad("pid", 8)
        << pad("comm", 18) << pad_left("stalled", 9) << pad_left("majflt/s", 10)
        << pad_left("fault wait", 12) << pad_left("reclaim", 10) << pad_left("refaults", 10)
        << pad_left("footprint", 12) << "\n";
    for (const auto& p : report.processes) {
      if (p.role != ProcessRole::kVictim) continue;
      std::string wait =
          p.timed_major_faults
              ? number(1e3 * p.fault_wait_s / static_cast<double>(p.timed_major_faults), "%.2f") +
                    " ms"
              : "-";
      out << "  " << pad(std::to_string(p.pid), 8) << name(p)
          << pad_left(number(100 * p.stall_share, "%.0f") + "%", 9)
          << pad_left(count(p.major_faults_per_s), 10) << pad_left(wait, 12)
          << pad_left(number(p.reclaim_stall_s, "%.2f") + " s", 10)
          << pad_left(count(static_cast<double>(p.refault_anon + p.refault_file)), 10)
          << pad_left(human_bytes(p.footprint_bytes), 12) << "\n";
      for (const auto& line : p.evidence) out << "        - " << line << "\n";
    }
  }
  if (any_other) {
    out << "\nOTHER PROCESSES WITH PAGING ACTIVITY\n  " << pad("pid", 8) << pad("comm", 18)
        << pad_left("majflt/s", 10) << pad_left("minflt/s", 10) << pad_left("reclaim", 10)
        << pad_left("footprint", 12) << pad_left("growth", 12) << "  cgroup\n";
    for (const auto& p : report.processes) {
      if (p.role != ProcessRole::kNone) continue;
      out << "  " << pad(std::to_string(p.pid), 8) << name(p)
          << pad_left(count(p.major_faults_per_s), 10) << pad_left(count(p.minor_faults_per_s), 10)
          << pad_left(number(p.reclaim_stall_s, "%.2f") + " s", 10)
          << pad_left(human_bytes(p.footprint_bytes), 12)
          << pad_left((p.footprint_growth_bytes >= 0 ? "+" : "-") +
                          human_bytes(static_cast<uint64_t>(std::abs(p.footprint_growth_bytes))),
                      12)
          << "  " << p.cgroup << "\n";
    }
  }
  if (report.processes.empty()) out << "\nno process faulted, reclaimed or grew notably\n";
  if (report.processes_omitted) {
    out << "  (" << report.processes_omitted << " more processes with paging activity: --top)\n";
  }
}

void render_footer(const model::PagingReport& report, std::ostream& out) {
  for (const auto& kill : report.oom_kills) {
    out << "OOM kill at +" << human_duration(kill.t_s) << ": pid " << kill.pid << " (" << kill.comm
        << ")" << (kill.cgroup.empty() ? "" : " in " + kill.cgroup) << ", anon "
        << human_bytes(kill.anon_rss_bytes) << ", file " << human_bytes(kill.file_rss_bytes)
        << ", shmem " << human_bytes(kill.shmem_rss_bytes) << "\n";
  }
  const auto& c = report.counters;
  if (c.processes_not_tracked || c.oom_kills_not_recorded || c.cgroups_not_tracked ||
      c.stalls_not_timed) {
    out << "NOT RECORDED: " << c.processes_not_tracked
        << " events of processes beyond --max-processes, " << c.oom_kills_not_recorded
        << " OOM victims, " << c.cgroups_not_tracked << " cgroup swap-in events, "
        << c.stalls_not_timed << " stalls without thread storage\n";
  }
  out << "deep hooks (fault timing, refaults, swap-ins per process) attached for "
      << human_duration(report.deep_s) << " of " << human_duration(report.duration_s) << "\n";
  for (const auto& source : report.sources) out << "source: " << source << "\n";
}

ordered_json optional_number(const std::optional<double>& value) {
  return value ? ordered_json(*value) : ordered_json(nullptr);
}

ordered_json interval_json(const model::ScopeInterval& i) {
  return {{"t_s", i.t_s},
          {"duration_s", i.duration_s},
          {"time", iso8601_utc(i.unix_ms)},
          {"verdict", model::paging_verdict_name(i.verdict)},
          {"kind", i.kind},
          {"memcg_limited", i.memcg_limited},
          {"reason", i.reason},
          {"psi_some_pct", optional_number(i.psi_some_pct)},
          {"psi_full_pct", optional_number(i.psi_full_pct)},
          {"major_faults_per_s", i.major_faults_per_s},
          {"minor_faults_per_s", i.minor_faults_per_s},
          {"swapin_pages_per_s", optional_number(i.swapin_pages_per_s)},
          {"swapout_pages_per_s", optional_number(i.swapout_pages_per_s)},
          {"zswapin_pages_per_s", i.zswapin_pages_per_s},
          {"refault_anon_per_s", i.refault_anon_per_s},
          {"refault_file_per_s", i.refault_file_per_s},
          {"restore_per_s", i.restore_per_s},
          {"turnover_per_s", i.turnover_per_s},
          {"direct_reclaim_stall", i.direct_reclaim_stall},
          {"memcg_reclaim_stall", i.memcg_reclaim_stall},
          {"kswapd_scan_pages_per_s", i.kswapd_scan_pages_per_s},
          {"direct_scan_pages_per_s", i.direct_scan_pages_per_s},
          {"memory_bytes", i.memory_bytes},
          {"usage_bytes", i.usage_bytes},
          {"available_bytes", i.available_bytes},
          {"swap_used_bytes", i.swap_used_bytes},
          {"swap_total_bytes", i.swap_total_bytes},
          {"oom_kills", i.oom_kills}};
}

}  // namespace

void render_paging_interval(const model::PagingReport& report, std::ostream& out) {
  if (report.host.empty()) return;
  const auto& host = report.host.back();
  out << "memtrail paging  " << clock_time(host.unix_ms) << "  +" << human_duration(host.t_s)
      << "  interval " << number(host.duration_s) << "s\n";
  render_verdict_line("host", host, out);
  render_scope_interval(host, true, out);
  for (const auto& cgroup : report.cgroups) {
    if (cgroup.intervals.empty()) continue;
    const auto& latest = cgroup.intervals.back();
    if (latest.t_s != host.t_s) continue;  // vanished cgroup
    render_verdict_line(cgroup_title(cgroup), latest, out);
    if (latest.verdict != PagingVerdict::kOk || !report.cgroup_filter.empty()) {
      render_scope_interval(latest, false, out);
    }
  }
  render_processes(report, out);
  out << "\n";
}

void render_paging_summary(const model::PagingReport& report, std::ostream& out) {
  out << "memtrail paging report: " << human_duration(report.duration_s) << " from "
      << iso8601_utc(report.started_unix_ms) << ", " << report.host.size() << " intervals\n";
  out << "VERDICT: " << upper(model::paging_verdict_name(report.verdict));
  if (report.verdict != PagingVerdict::kOk) {
    out << " in "
        << (report.verdict_scope == "host" ? std::string("the host")
                                           : "memory cgroup " + report.verdict_scope);
  }
  out << "\n  " << report.verdict_reason << "\n";
  auto worst = [](const std::vector<model::ScopeInterval>& intervals) {
    const model::ScopeInterval* worst_interval = nullptr;
    for (const auto& interval : intervals) {
      if (!worst_interval || interval.verdict > worst_interval->verdict ||
          (interval.verdict == worst_interval->verdict &&
           interval.psi_some_pct.value_or(0) > worst_interval->psi_some_pct.value_or(0))) {
        worst_interval = &interval;
      }
    }
    return worst_interval;
  };
  if (const auto* interval = worst(report.host)) {
    out << "\n";
    render_verdict_line("host, worst interval (+" + human_duration(interval->t_s) + ")", *interval,
                        out);
    render_scope_interval(*interval, true, out);
  }
  for (const auto& cgroup : report.cgroups) {
    if (const auto* interval = worst(cgroup.intervals)) {
      size_t thrashing = static_cast<size_t>(
          std::count_if(cgroup.intervals.begin(), cgroup.intervals.end(),
                        [](const auto& i) { return i.verdict == PagingVerdict::kThrashing; }));
      out << "\n"
          << cgroup_title(cgroup) << ": " << upper(model::paging_verdict_name(cgroup.verdict))
          << " (thrashing in " << thrashing << " of " << cgroup.intervals.size()
          << " intervals), worst at +" << human_duration(interval->t_s) << ":\n  "
          << interval->reason << "\n";
      render_scope_interval(*interval, false, out);
    }
  }
  render_processes(report, out);
  out << "\n";
  render_footer(report, out);
}

nlohmann::ordered_json paging_json(const model::PagingReport& report) {
  ordered_json json;
  json["schema"] = kPagingSchema;
  json["tool"] = {{"name", "memtrail"}, {"version", kVersion}};
  json["host"] = report.host_name;
  json["kernel"] = report.kernel;
  json["started_at"] = iso8601_utc(report.started_unix_ms);
  json["ended_at"] =
      iso8601_utc(report.started_unix_ms + static_cast<int64_t>(report.duration_s * 1000));
  json["options"] = {{"interval_s", report.options.interval_s},
                     {"deep", report.options.deep},
                     {"top", report.options.top},
                     {"max_processes", report.options.max_processes}};
  json["duration_s"] = report.duration_s;
  json["interval_s"] = report.interval_s;
  json["cgroup_filter"] =
      report.cgroup_filter.empty() ? ordered_json(nullptr) : ordered_json(report.cgroup_filter);
  json["verdict"] = model::paging_verdict_name(report.verdict);
  json["verdict_scope"] = report.verdict_scope;
  json["verdict_reason"] = report.verdict_reason;
  json["intervals"] = ordered_json::array();
  for (const auto& interval : report.host) json["intervals"].push_back(interval_json(interval));
  json["cgroups"] = ordered_json::array();
  for (const auto& cgroup : report.cgroups) {
    ordered_json entry = {{"path", cgroup.path},
                          {"id", cgroup.id},
                          {"cgroup_version", cgroup.version},
                          {"limit_bytes", cgroup.limit_bytes ? ordered_json(*cgroup.limit_bytes)
                                                             : ordered_json(nullptr)},
                          {"verdict", model::paging_verdict_name(cgroup.verdict)},
                          {"reason", cgroup.reason},
                          {"intervals", ordered_json::array()}};
    for (const auto& interval : cgroup.intervals)
      entry["intervals"].push_back(interval_json(interval));
    json["cgroups"].push_back(std::move(entry));
  }
  json["processes"] = ordered_json::array();
  for (const auto& p : report.processes) {
    json["processes"].push_back(
        {{"pid", p.pid},
         {"comm", p.comm},
         {"cgroup", p.cgroup},
         {"role", model::process_role_name(p.role)},
         {"exited", p.exited},
         {"major_faults", p.major_faults},
         {"minor_faults", p.minor_faults},
         {"swapins", p.swapins},
         {"refaults", p.refault_anon + p.refault_file},
         {"refault_anon", p.refault_anon},
         {"refault_file", p.refault_file},
         {"reclaim_stall_s", p.reclaim_stall_s},
         {"fault_wait_s", p.fault_wait_s},
         {"timed_major_faults", p.timed_major_faults},
         {"stall_share", p.stall_share},
         {"major_faults_per_s", p.major_faults_per_s},
         {"minor_faults_per_s", p.minor_faults_per_s},
         {"observed_s", p.observed_s},
         {"rss_bytes", p.rss_bytes},
         {"swap_bytes", p.swap_bytes},
         {"footprint_bytes", p.footprint_bytes},
         {"footprint_growth_bytes", p.footprint_growth_bytes},
         {"footprint_growth_bytes_per_s", p.footprint_growth_bytes_per_s},
         {"scope_share", p.scope_share},
         {"evidence", p.evidence},
         {"next_command",
          p.next_command.empty() ? ordered_json(nullptr) : ordered_json(p.next_command)}});
  }
  json["processes_omitted"] = report.processes_omitted;
  json["oom_kills"] = ordered_json::array();
  for (const auto& kill : report.oom_kills) {
    json["oom_kills"].push_back({{"pid", kill.pid},
                                 {"comm", kill.comm},
                                 {"cgroup", kill.cgroup},
                                 {"cgroup_id", kill.memcg_id},
                                 {"t_s", kill.t_s},
                                 {"anon_rss_bytes", kill.anon_rss_bytes},
                                 {"file_rss_bytes", kill.file_rss_bytes},
                                 {"shmem_rss_bytes", kill.shmem_rss_bytes}});
  }
  const auto& c = report.counters;
  json["not_recorded"] = {{"process_events", c.processes_not_tracked},
                          {"oom_kills", c.oom_kills_not_recorded},
                          {"cgroup_swapin_events", c.cgroups_not_tracked},
                          {"untimed_stalls", c.stalls_not_timed}};
  json["deep_s"] = report.deep_s;
  json["sources"] = report.sources;
  return json;
}

}  // namespace memtrail::report
