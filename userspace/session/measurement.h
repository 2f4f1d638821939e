// SPDX-License-Identifier: Apache-2.0
// Readings of the maps over a session: sites summed and ranked, and the histories behind the
// growth verdicts.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "aggregator/aggregator.h"
#include "aggregator/growth.h"
#include "model/report.h"
#include "model/snapshot.h"
#include "python/cpython.h"
#include "session/code_maps.h"
#include "session/config.h"
#include "session/targets.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// What memtrail traces of each process now, in bytes: the one place that sums it, read by the
// private-memory comparison and the coverage statement ("traced: N % of RssAnon growth").
// Everything outstanding at the process's sites counts (blocks older than --min-age): its
// allocators' blocks, and with --mmap its own mappings and break. Whatever else comes to be
// traced per process (CPython's objects) must be added here to count as explained.
std::unordered_map<uint32_t, double> traced_bytes_by_process(
    const aggregator::Aggregate& aggregate);

// Each recorded reading adds a point to every site's history, to each live target's private
// memory history and (--python-types) to each CPython type's; a site's verdict is scored on
// its history. A report is built from the last reading and these histories. The histories
// promise one point per interval: only the interval readings (and the final one) are
// recorded, never the extra readings of exit reports, which would dilute the verdicts.
class Measurement {
 public:
  // One reading of the maps: the sites summed, scored and ranked, and how long each took.
  struct Reading {
    model::Snapshot snapshot;
    aggregator::Aggregate aggregate;
    // Python objects by type, per site and process (--python-objects on; else empty).
    aggregator::PythonTypeTotals python_types;
    double read_ms = 0, ranked_ms = 0;
  };

  Measurement(const SessionConfig& config, tracer::AllocTracer& tracer, const Targets& targets,
              const CodeMaps& code_maps)
      : config_(config), tracer_(tracer), targets_(targets), code_maps_(code_maps) {}
  Measurement(const Measurement&) = delete;
  Measurement& operator=(const Measurement&) = delete;

  // Reads the maps; points are timed from `start`, when tracing started. `record`: add the
  // reading to the histories (false: score the sites on the histories as they are).
  Reading measure(Clock::time_point start, bool record = true);

  // The private memory of process `pid` over the run next to what its traced allocations
  // hold, assessed for growth; nullopt before its first point.
  std::optional<model::ProcessMemory> process_memory(uint32_t pid) const;
  const aggregator::GrowthHistory& history() const { return history_; }
  // Process `pid` exited and its summary is kept: its series go (sites and private memory).
  void forget_process(uint32_t pid) {
    history_.forget_process(pid);
    process_memory_.forget_process(pid);
    python_type_history_.forget_process(pid);
  }
  // --python-objects on: the Python objects' types over the run.
  const aggregator::PythonTypeHistory& python_type_history() const { return python_type_history_; }
  // --python-types: every type seen, fastest growing first.
  std::vector<model::PythonType> python_types() const { return python_types_.report(); }

 private:
  void record_process_memory(double t_s, const aggregator::Aggregate& aggregate);

  const SessionConfig& config_;
  tracer::AllocTracer& tracer_;
  const Targets& targets_;
  const CodeMaps& code_maps_;
  aggregator::GrowthHistory history_;
  aggregator::ProcessMemoryHistory process_memory_;
  python::TypeTracker python_types_;                   // --python-types (allocator probes)
  aggregator::PythonTypeHistory python_type_history_;  // --python-objects on
};

}  // namespace memtrail::session
