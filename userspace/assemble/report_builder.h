// SPDX-License-Identifier: Apache-2.0
// The assemble stage: the report model from a snapshot, its aggregate, the symbolizer and the
// live CPython processes (their code objects are read to name Python frames); the renderers in
// report/ take it from there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <unordered_map>
#include <vector>

#include "aggregator/aggregator.h"
#include "assemble/suppressions.h"
#include "model/report.h"
#include "model/snapshot.h"
#include "python/cpython.h"
#include "symbolizer/symbolizer.h"

namespace memtrail::assemble {

// What names the Python frames of CPython processes' stacks.
struct PythonNaming {
  python::FramesMode mode = python::FramesMode::kMixed;
  python::CodeReader* reader = nullptr;
  std::unordered_map<uint32_t, python::Interpreter> interpreters;  // walked processes, by pid
};

struct ReportContext {
  std::vector<model::Target> targets;
  int64_t start_unix_ms = 0;
  int64_t end_unix_ms = 0;
  double duration_s = 0;
  double min_age_s = 0;
  uint64_t sample_rate = 0;
  uint32_t top = 10;
  bool final = false;
  uint32_t max_outstanding_allocations = 0;            // the map's size, for the note on drops
  const aggregator::GrowthHistory* history = nullptr;  // the series behind verdicts, if any
  const Suppressions* suppressions = nullptr;          // sites kept on purpose: marked, ranked last
  // Mode and modules of the stack walker; the builder adds the stack counts. Absent: none.
  std::optional<model::UnwindSummary> unwind;
  const PythonNaming* python = nullptr;  // absent: stacks stay native
  uint64_t children_missed = 0;  // forked children that exited before they could be followed
  // --python-objects: how the probes ran; with a duty cycle, the targets carry their shares.
  std::optional<model::PythonObjectsCoverage> python_objects;
  std::optional<std::vector<model::PythonType>> python_types;  // --python-types (allocator probes)
  // Python objects by type (--python-objects on): this reading's totals, their history over the
  // run and the types' names. Without totals (object tracking off) sites show no types.
  const aggregator::PythonTypeTotals* python_object_types = nullptr;
  const aggregator::PythonTypeHistory* python_type_history = nullptr;
  std::function<std::string(uint32_t pid, uint64_t type)> python_type_name;
  // Whether the type's objects are sized as sys.getsizeof does (else estimates); absent: not.
  std::function<bool(uint32_t pid, uint64_t type)> python_type_exact;
};

// Builds the report with the first `max_sites` ranked sites symbolized (all of them for the
// JSON file; the top N for a text interval), and as many of the sites that freed everything
// (at most model::Report::kMaxFreedSites; the others counted). Suppressed sites keep their rank
// among themselves, after all others.
model::Report build_report(const model::Snapshot& snapshot, const aggregator::Aggregate& aggregate,
                           symbolizer::Symbolizer& symbolizer, const ReportContext& context,
                           size_t max_sites);

// Adds sites that freed everything (those kept for processes that exited earlier) and what
// was counted instead of listed, keeping at most model::Report::kMaxFreedSites in the report,
// the most allocated bytes first; the others are counted in report.freed_omitted.
void add_freed_sites(model::Report& report, const std::vector<model::LeakSite>& sites,
                     const model::FreedSitesOmitted& omitted);

// What `sites` allocated, counted as omitted sites (a process whose freed sites are let go).
void count_omitted(model::FreedSitesOmitted& omitted, const std::vector<model::LeakSite>& sites);

}  // namespace memtrail::assemble
