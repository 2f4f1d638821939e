// SPDX-License-Identifier: Apache-2.0
// One reading of the maps, recorded into the session's histories.
#include "session/measurement.h"

#include <unordered_map>
#include <unordered_set>

#include "common/clock.h"
#include "inspect/process.h"

namespace memtrail::session {

Measurement::Reading Measurement::measure(Clock::time_point start, bool record) {
  auto started = Clock::now();
  Reading reading;
  // The allocations stream into the aggregator as they are read: at no point are millions of
  // them copied into memtrail's memory.
  aggregator::Accumulator accumulator(ns_from_seconds(config_.min_age_s),
                                      config_.tracer.sample_rate);
  accumulator.set_object_shares(code_maps_.object_windows().observed_shares());
  accumulator.set_object_creation_sites(&code_maps_.object_windows().creation_sites());
  reading.snapshot = tracer_.snapshot(&accumulator);
  auto read = Clock::now();
  reading.aggregate = std::move(accumulator).finish(reading.snapshot.sites);
  double t_s = std::chrono::duration<double>(read - start).count();
  if (config_.tracer.python_objects) {
    const auto& objects = code_maps_.python_objects();
    reading.python_types = aggregator::python_type_totals(
        reading.aggregate,
        [&objects](uint32_t pid, uint64_t type) { return objects.type_name(pid, type); },
        [&objects](uint32_t pid, uint64_t type) { return objects.sized_exactly(pid, type); });
  }
  if (record) {
    history_.record(t_s, reading.aggregate);
    // Sites of processes that are not (or no longer) targets: children gone before they could
    // be followed, programs not picked yet. Their series would otherwise stay for the whole
    // run, filling the cap.
    std::unordered_set<uint32_t> traced;
    for (const auto& process : targets_) traced.insert(process.info.pid);
    history_.keep_processes([&traced](uint32_t pid) { return traced.count(pid) != 0; });
    record_process_memory(t_s, reading.aggregate);
    if (config_.tracer.python_objects) python_type_history_.record(t_s, reading.python_types);
    if (config_.python_types) {
      python_types_.record(t_s, reading.snapshot.python_types,
                           code_maps_.python_naming().interpreters);
    }
  }
  aggregator::assess_sites(reading.aggregate, history_, config_.interval_s,
                           reading.snapshot.taken_at_ns);
  auto ranked = Clock::now();
  reading.read_ms = std::chrono::duration<double, std::milli>(read - started).count();
  reading.ranked_ms = std::chrono::duration<double, std::milli>(ranked - read).count();
  return reading;
}

std::unordered_map<uint32_t, double> traced_bytes_by_process(
    const aggregator::Aggregate& aggregate) {
  std::unordered_map<uint32_t, double> traced;  // one pass over the sites
  for (const auto& site : aggregate.sites) {
    traced[site.pid] += static_cast<double>(site.outstanding_bytes);
  }
  return traced;
}

// Each live target's private memory next to what its traced allocations hold.
void Measurement::record_process_memory(double t_s, const aggregator::Aggregate& aggregate) {
  auto traced_by_pid = traced_bytes_by_process(aggregate);
  for (const auto& process : targets_) {
    if (process.info.exited) continue;
    auto rss = inspect::read_private_memory(process.info.pid);
    if (!rss) continue;
    process_memory_.record(process.info.pid,
                           {t_s, static_cast<double>(*rss), traced_by_pid[process.info.pid]});
  }
}

std::optional<model::ProcessMemory> Measurement::process_memory(uint32_t pid) const {
  const auto* series = process_memory_.series(pid);
  if (!series || series->empty()) return std::nullopt;
  auto growth = aggregator::assess_process_memory(*series, config_.interval_s);
  model::ProcessMemory memory;
  memory.rss_anon_bytes = series->back().rss_bytes;
  memory.assessed = growth.assessed;
  memory.rss_bytes_per_s = growth.rss_bytes_per_s;
  memory.traced_bytes_per_s = growth.traced_bytes_per_s;
  memory.untraced_growth = growth.untraced_growth;
  memory.reason = growth.reason;
  for (const auto& point : *series) {
    memory.series.push_back({point.t_s, point.rss_bytes, point.traced_bytes});
  }
  auto coverage = aggregator::assess_coverage(*series, config_.interval_s);
  memory.coverage = model::ProcessMemory::Coverage{
      coverage.assessed, coverage.span_s, coverage.rss_growth_bytes, coverage.traced_growth_bytes,
      coverage.share,    coverage.reason};
  return memory;
}

}  // namespace memtrail::session
