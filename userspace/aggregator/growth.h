// SPDX-License-Identifier: Apache-2.0
// Leak verdicts from growth over time: each interval's outstanding memory per site goes into a
// bounded time series, and each site is scored on how steadily it grows.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace memtrail::aggregator {

struct Aggregate;

struct GrowthPoint {
  double t_s = 0;  // seconds since tracing started
  double bytes = 0;
  double allocations = 0;
};

// Ordered by how much the reader should care: leaks first.
enum class Verdict {
  kLeak,       // grows steadily and keeps its old blocks
  kSuspect,    // grows, but unsteadily, or while also freeing old blocks
  kSteady,     // has stopped growing: a bounded cache or pool, start-up memory
  kTransient,  // its blocks are freed soon after they are allocated
  kTooShort,   // too little history to tell
};

const char* verdict_name(Verdict verdict);  // "leak", "suspect", ... as in the JSON

struct GrowthAssessment {
  Verdict verdict = Verdict::kTooShort;
  double growth_bytes_per_s = 0;  // slope of a least-squares line through the series
  double r_squared = 0;           // how well that line fits (1: perfectly steady)
  double grew_share = 0;          // share of intervals in which the site grew
  size_t points = 0;
  double span_s = 0;       // time the series covers
  bool freed_any = false;  // some block of the site has been freed since attach
  double oldest_age_s = 0;
  double median_age_s = 0;  // of the outstanding blocks (to a factor of 2: log buckets)
  std::string reason;       // e.g. "+1.2 MiB/min for 5m0s, R² 0.98, oldest 4m10s, 0 freed"
};

// What a site looks like now, besides its series.
struct SiteNow {
  double oldest_age_s = 0;
  double median_age_s = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t total_allocations = 0;  // since attach
  uint64_t freed_allocations = 0;  // of those (SiteSummary::freed_allocations)
};

// Scores one site's series. `interval_s`: the sampling interval, which sets how much history a
// verdict needs (4 points over at least 3 intervals, less half an interval: readings come late
// by scheduling and reading time, and a last reading may come early, at the end of the run)
// and what counts as "freed soon".
GrowthAssessment assess_growth(const std::vector<GrowthPoint>& series, const SiteNow& now,
                               double interval_s);

// Per-site series of outstanding memory, one point per interval. Bounded: a series longer than
// `max_points` keeps every other point (the whole span at half the resolution), and at most
// `max_sites` sites are followed (later ones get kTooShort, and are counted).
class GrowthHistory {
 public:
  explicit GrowthHistory(size_t max_points = 240, size_t max_sites = 20000)
      : max_points_(max_points), max_sites_(max_sites) {}

  // Adds a point for every site of `aggregate`, and a zero for every followed site that has no
  // outstanding memory any more.
  void record(double t_s, const Aggregate& aggregate);
  const std::vector<GrowthPoint>* series(uint32_t pid, int32_t site_id) const;
  size_t sites_not_followed() const { return sites_not_followed_; }
  // Drops the series of process `pid` (it exited and its summary is kept): the sites of a
  // dead process must not fill the cap, nor pass to a process reusing its pid.
  void forget_process(uint32_t pid);
  // Drops the series of every process `keep` says no to (not traced, or gone).
  template <typename Keep>
  void keep_processes(Keep keep) {
    std::erase_if(series_, [&](const auto& entry) {
      return !keep(static_cast<uint32_t>(entry.first >> 32));
    });
  }

 private:
  size_t max_points_, max_sites_;
  size_t sites_not_followed_ = 0;
  std::unordered_map<uint64_t, std::vector<GrowthPoint>> series_;
};

// Python objects of one type name: of one site, or of a whole process (no site).
struct PythonTypeKey {
  uint32_t pid = 0;
  std::optional<int32_t> site_id;  // nullopt: every site of the process
  std::string type;                // tp_name
  bool operator<(const PythonTypeKey& other) const {
    if (pid != other.pid) return pid < other.pid;
    if (site_id != other.site_id) return site_id < other.site_id;
    return type < other.type;
  }
};
struct PythonTypeAmount {
  uint64_t objects = 0, bytes = 0;
  // Some of those bytes are estimates: a type of that name whose size is not sys.getsizeof's
  // (python::TypeFacts::exact false).
  bool sized_by_estimate = false;
};
using PythonTypeTotals = std::map<PythonTypeKey, PythonTypeAmount>;

// The Python objects of `aggregate`'s sites (SiteSummary::python_types) by type name, per site
// and per process; `name` names a type of a process (types of one name add up), `exact` says
// whether its objects' sizes are sys.getsizeof's (false: estimates, which mark the sum).
PythonTypeTotals python_type_totals(const Aggregate& aggregate,
                                    const std::function<std::string(uint32_t, uint64_t)>& name,
                                    const std::function<bool(uint32_t, uint64_t)>& exact);

// How the Python objects of each type grew over the run: one point per interval, per site and
// per process, as GrowthHistory keeps them for sites (bounded the same way), and least-squares
// slopes of objects and bytes through them. A type gone from a site gets a 0 point.
class PythonTypeHistory {
 public:
  explicit PythonTypeHistory(size_t max_points = 240, size_t max_series = 20000)
      : max_points_(max_points), max_series_(max_series) {}
  void record(double t_s, const PythonTypeTotals& totals);
  struct Growth {
    double objects_per_s = 0, bytes_per_s = 0;
    size_t points = 0;
  };
  // nullopt: not followed (too many series) or never seen.
  std::optional<Growth> growth(const PythonTypeKey& key) const;
  size_t series_not_followed() const { return series_not_followed_; }
  void forget_process(uint32_t pid);

 private:
  size_t max_points_, max_series_;
  size_t series_not_followed_ = 0;
  std::map<PythonTypeKey, std::vector<GrowthPoint>> series_;  // bytes, allocations: objects
};

// A traced process's private memory (RssAnon: heap, anonymous mappings) next to the memory its
// traced allocations hold, each interval: does the traced heap explain the growth?
struct ProcessMemoryPoint {
  double t_s = 0;
  double rss_bytes = 0;
  double traced_bytes = 0;
};

class ProcessMemoryHistory {
 public:
  explicit ProcessMemoryHistory(size_t max_points = 240) : max_points_(max_points) {}
  void record(uint32_t pid, const ProcessMemoryPoint& point);
  const std::vector<ProcessMemoryPoint>* series(uint32_t pid) const;
  void forget_process(uint32_t pid) { series_.erase(pid); }

 private:
  size_t max_points_;
  std::unordered_map<uint32_t, std::vector<ProcessMemoryPoint>> series_;
};

struct ProcessGrowth {
  bool assessed = false;  // enough history to compare
  double rss_bytes_per_s = 0;
  double traced_bytes_per_s = 0;
  bool untraced_growth = false;  // private memory grows beyond what traced allocations explain
  std::string reason;
};

ProcessGrowth assess_process_memory(const std::vector<ProcessMemoryPoint>& series,
                                    double interval_s);

// Which share of a process's private memory growth its traced blocks explain. Growth over the
// run is the least-squares slope through the readings times the span from the first reading to
// the last (every reading counts, not only the two ends), for RssAnon and for the traced bytes
// alike; the share is traced growth / RssAnon growth. Said only when the history is long enough (as
// a verdict's) and RssAnon grew by at least kCoverageGrowthMin: below that, page and arena
// granularity make any share meaningless, and `reason` says so instead.
struct MemoryCoverage {
  bool assessed = false;
  double span_s = 0;               // first reading to last
  double rss_growth_bytes = 0;     // fitted RssAnon growth over the span
  double traced_growth_bytes = 0;  // fitted traced growth over the span (may be negative)
  // traced / RssAnon growth, 0 when traced bytes shrank; above 1 when traced blocks are not all
  // resident or reuse memory that was resident already.
  double share = 0;
  std::string reason;  // why it is not assessed
};

inline constexpr double kCoverageGrowthMin = 256 << 10;

MemoryCoverage assess_coverage(const std::vector<ProcessMemoryPoint>& series, double interval_s);

// The median age of a site's outstanding blocks from its age histogram (SiteSummary), to a
// factor of 2.
double median_age_s(const std::array<uint32_t, 24>& histogram);

// Scores every site of `aggregate` from `history` and re-ranks them: by verdict, then growth,
// then outstanding bytes.
void assess_sites(Aggregate& aggregate, const GrowthHistory& history, double interval_s,
                  uint64_t taken_at_ns);

}  // namespace memtrail::aggregator
