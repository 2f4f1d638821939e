// SPDX-License-Identifier: Apache-2.0
// The sites of continuously traced targets (--trace) as Prometheus metrics.
#include "serve/traced_sites.h"

#include <cstdio>

namespace memtrail::serve {
namespace {

std::string base_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void hash_bytes(uint64_t& hash, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= 1099511628211ull;  // FNV-1a
  }
}

const char* const kSiteVerdicts[] = {"leak", "suspect", "steady", "transient", "too_short"};

}  // namespace

std::string stable_site_id(const model::LeakSite& site) {
  uint64_t hash = 14695981039346656037ull;
  for (const auto& frame : site.stack) {
    if (frame.module.empty() || frame.module == "[unknown]") {
      std::string name = frame.function.value_or("?");
      hash_bytes(hash, name.data(), name.size());
    } else {
      std::string module = base_name(frame.module);
      hash_bytes(hash, module.data(), module.size());
      hash_bytes(hash, &frame.offset, sizeof frame.offset);
    }
    hash_bytes(hash, "|", 1);
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

std::string innermost_function(const model::LeakSite& site) {
  if (site.stack.empty()) return "[unknown]";
  const auto& frame = site.stack.front();
  if (frame.function) return *frame.function;
  char offset[32];
  std::snprintf(offset, sizeof offset, "+0x%llx", static_cast<unsigned long long>(frame.offset));
  return base_name(frame.module) + offset;
}

void render_traced_sites(const std::vector<TracedTarget>& targets, MetricsText& out) {
  auto comm_of = [](const model::Report& report, uint32_t pid) {
    for (const auto& target : report.targets) {
      if (target.pid == pid) return target.comm;
    }
    return std::string();
  };
  struct Row {
    Labels labels;
    const model::LeakSite* site;
  };
  std::vector<Row> rows;
  for (const auto& target : targets) {
    for (const auto& site : target.report.leaks) {
      rows.push_back({{{"target", target.selector},
                       {"pid", std::to_string(site.pid)},
                       {"comm", comm_of(target.report, site.pid)},
                       {"site", stable_site_id(site)},
                       {"function", innermost_function(site)}},
                      &site});
    }
  }
  out.family("memtrail_trace_target_up", "gauge",
             "1 while a --trace target's session is tracing, 0 while it starts or after it "
             "failed.");
  for (const auto& target : targets) {
    out.sample("memtrail_trace_target_up", {{"target", target.selector}}, target.running ? 1 : 0);
  }
  auto site_labels = [](const auto& row) { return row.labels; };
  out.family_of("memtrail_site_outstanding_bytes", "gauge",
                "Bytes a traced allocation site holds (allocated, not freed).", rows, site_labels,
                [](const auto& row) -> std::optional<double> {
                  return static_cast<double>(row.site->outstanding_bytes);
                });
  out.family_of("memtrail_site_outstanding_allocations", "gauge",
                "Blocks a traced allocation site holds.", rows, site_labels,
                [](const auto& row) -> std::optional<double> {
                  return static_cast<double>(row.site->outstanding_allocations);
                });
  out.family_of("memtrail_site_allocated_bytes_total", "counter",
                "Bytes a traced allocation site has allocated since tracing began.", rows,
                site_labels, [](const auto& row) -> std::optional<double> {
                  return static_cast<double>(row.site->total_allocated_bytes);
                });
  out.family_of("memtrail_site_growth_bytes_per_second", "gauge",
                "Slope of a traced site's outstanding bytes over the run.", rows, site_labels,
                [](const auto& row) -> std::optional<double> {
                  return row.site->growth ? row.site->growth->bytes_per_s : 0;
                });
  out.family("memtrail_site_verdict", "gauge",
             "1 for a traced site's growth verdict (leak, suspect, steady, transient, "
             "too_short), 0 for the others.");
  for (const auto& row : rows) {
    Labels labels = row.labels;
    labels.emplace_back("verdict", "");
    std::string verdict = row.site->growth ? row.site->growth->verdict : "too_short";
    for (const char* candidate : kSiteVerdicts) {
      labels.back().second = candidate;
      out.sample("memtrail_site_verdict", labels, verdict == candidate ? 1 : 0);
    }
  }
  out.family("memtrail_trace_sites_folded", "gauge",
             "Sites of a --trace target with outstanding memory but no series (past --max-sites).");
  for (const auto& target : targets) {
    uint64_t shown = target.report.leaks.size();
    uint64_t all = target.report.totals.sites;
    out.sample("memtrail_trace_sites_folded", {{"target", target.selector}},
               static_cast<double>(all > shown ? all - shown : 0));
  }
  out.family("memtrail_trace_lost_events_total", "counter",
             "Allocator events a --trace target's tracer could not track, by reason (table full, "
             "stack not captured, site table full, region events lost).");
  for (const auto& target : targets) {
    const auto& totals = target.report.totals;
    for (auto [reason, count] :
         {std::pair{"table_full", totals.drops}, std::pair{"stack_failed", totals.stack_failures},
          std::pair{"site_table_full", totals.site_drops},
          std::pair{"region_events_lost", totals.region_events_lost}}) {
      out.sample("memtrail_trace_lost_events_total",
                 {{"target", target.selector}, {"reason", reason}}, static_cast<double>(count));
    }
  }
}

}  // namespace memtrail::serve
