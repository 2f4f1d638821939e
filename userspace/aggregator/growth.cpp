// SPDX-License-Identifier: Apache-2.0
// Leak verdicts from growth over time.
#include "aggregator/growth.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "aggregator/aggregator.h"
#include "common/format.h"

namespace memtrail::aggregator {
namespace {

// A verdict needs this many points, over at least this many intervals, less a tolerance for
// timing jitter (readings late by scheduling and reading time, or a final one early): half an
// interval, so that 4 readings one interval apart always qualify, whatever their jitter.
constexpr size_t kMinPoints = 4;
constexpr double kMinIntervals = 3;
constexpr double kJitterIntervals = 0.5;

bool enough_history(size_t points, double span_s, double interval_s) {
  return points >= kMinPoints && span_s >= (kMinIntervals - kJitterIntervals) * interval_s;
}
// A least-squares line this good, and growth in this share of the intervals, is "steady".
constexpr double kSteadyFit = 0.8;
constexpr double kSteadyGrowShare = 0.5;
// A plateau: over the last half of the series, the site moved by less than this share of its
// peak.
constexpr double kPlateauShare = 0.05;
// Private memory growth below this is not worth a flag.
constexpr double kUntracedGrowthMin = 1 << 20;

uint64_t site_key(uint32_t pid, int32_t site_id) {
  return (static_cast<uint64_t>(pid) << 32) | static_cast<uint32_t>(site_id);
}

struct Fit {
  double slope = 0, r_squared = 0;
};

// Least squares of value(point) over time.
template <typename Point, typename Value>
Fit fit_line(const std::vector<Point>& series, Value value) {
  double n = static_cast<double>(series.size());
  if (series.empty()) return {};
  double mean_t = 0, mean_b = 0;
  for (const auto& point : series) {
    mean_t += point.t_s;
    mean_b += value(point);
  }
  mean_t /= n;
  mean_b /= n;
  double stt = 0, sbb = 0, stb = 0;
  for (const auto& point : series) {
    double dt = point.t_s - mean_t, db = value(point) - mean_b;
    stt += dt * dt;
    sbb += db * db;
    stb += dt * db;
  }
  Fit fit;
  if (stt > 0) fit.slope = stb / stt;
  // A flat series fits a flat line perfectly, but says nothing about growth: R² 0 then.
  if (stt > 0 && sbb > 0) fit.r_squared = (stb * stb) / (stt * sbb);
  return fit;
}

// Keeps every other point once `max_points` is reached: the whole span, at half the
// resolution.
template <typename Point>
void append_bounded(std::vector<Point>& series, const Point& point, size_t max_points) {
  if (series.size() >= max_points) {
    size_t kept = 0;
    for (size_t i = 0; i < series.size(); i += 2) series[kept++] = series[i];
    series.resize(kept);
  }
  series.push_back(point);
}

std::string rate_text(double bytes_per_s) {
  double per_minute = bytes_per_s * 60;
  std::string text = per_minute < 0 ? "-" : "+";
  return text + human_bytes(static_cast<uint64_t>(std::llround(std::fabs(per_minute)))) + "/min";
}

std::string format(const char* pattern, double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), pattern, value);
  return buffer;
}

}  // namespace

const char* verdict_name(Verdict verdict) {
  switch (verdict) {
    case Verdict::kLeak:
      return "leak";
    case Verdict::kSuspect:
      return "suspect";
    case Verdict::kSteady:
      return "steady";
    case Verdict::kTransient:
      return "transient";
    case Verdict::kTooShort:
      return "too_short";
  }
  return "too_short";
}

GrowthAssessment assess_growth(const std::vector<GrowthPoint>& series, const SiteNow& now,
                               double interval_s) {
  GrowthAssessment result;
  result.points = series.size();
  result.span_s = series.size() >= 2 ? series.back().t_s - series.front().t_s : 0;
  result.freed_any = now.freed_allocations > 0;
  result.oldest_age_s = now.oldest_age_s;
  result.median_age_s = now.median_age_s;
  std::string freed_text = with_thousands(now.freed_allocations) + " of " +
                           with_thousands(now.total_allocations) + " freed";
  if (!enough_history(series.size(), result.span_s, interval_s)) {
    result.verdict = Verdict::kTooShort;
    result.reason = "too little history for a verdict: " + std::to_string(series.size()) +
                    " samples over " + human_duration(result.span_s) + " (needs " +
                    std::to_string(kMinPoints) + " over " +
                    human_duration(kMinIntervals * interval_s) + ")";
    return result;
  }
  Fit fit = fit_line(series, [](const GrowthPoint& point) { return point.bytes; });
  result.growth_bytes_per_s = fit.slope;
  result.r_squared = fit.r_squared;
  size_t grew = 0;
  for (size_t i = 1; i < series.size(); ++i) grew += series[i].bytes > series[i - 1].bytes;
  result.grew_share = static_cast<double>(grew) / static_cast<double>(series.size() - 1);

  double peak = 0;
  for (const auto& point : series) peak = std::max(peak, point.bytes);
  const auto& last = series.back();
  const auto& middle = series[series.size() / 2];
  double late_change = std::fabs(last.bytes - middle.bytes);
  double net_growth = last.bytes - series.front().bytes;
  std::string over = " for " + human_duration(result.span_s);
  std::string fit_text = ", R² " + format("%.2f", fit.r_squared);
  std::string oldest = ", oldest " + human_duration(now.oldest_age_s);
  std::string ages = oldest + ", median age " + human_duration(now.median_age_s);

  if (result.freed_any && now.oldest_age_s < std::max(2 * interval_s, 0.25 * result.span_s)) {
    result.verdict = Verdict::kTransient;
    result.reason =
        "blocks are freed soon: oldest " + human_duration(now.oldest_age_s) + ", " + freed_text;
  } else if (fit.slope > 0 && fit.r_squared >= kSteadyFit &&
             result.grew_share >= kSteadyGrowShare && net_growth > 0 &&
             now.oldest_age_s >= 0.5 * result.span_s) {
    // Steady growth while the oldest blocks stay: the signature of a leak. Frees elsewhere in
    // the site (a leak of some of its blocks) keep it a leak, and the reason says so.
    result.verdict = Verdict::kLeak;
    result.reason = rate_text(fit.slope) + over + fit_text + ages + ", " + freed_text;
  } else if (peak > 0 && late_change <= kPlateauShare * peak) {
    result.verdict = Verdict::kSteady;
    result.reason = "flat at " + human_bytes(static_cast<uint64_t>(std::llround(last.bytes))) +
                    " for the last " + human_duration(last.t_s - middle.t_s) + " (peak " +
                    human_bytes(static_cast<uint64_t>(std::llround(peak))) + ")" + oldest;
  } else if (net_growth > 0 && fit.slope > 0) {
    result.verdict = Verdict::kSuspect;
    result.reason = rate_text(fit.slope) + over + " but unsteadily" + fit_text + ", grew in " +
                    format("%.0f", result.grew_share * 100) + " % of intervals" + ages + ", " +
                    freed_text;
  } else {
    result.verdict = Verdict::kSteady;
    result.reason = "not growing: " + rate_text(fit.slope) + over + oldest;
  }
  return result;
}

void GrowthHistory::record(double t_s, const Aggregate& aggregate) {
  auto append = [&](std::vector<GrowthPoint>& series, GrowthPoint point) {
    append_bounded(series, point, max_points_);
  };
  std::unordered_map<uint64_t, bool> seen;
  for (const auto& site : aggregate.sites) {
    uint64_t key = site_key(site.pid, site.site_id);
    auto it = series_.find(key);
    if (it == series_.end()) {
      if (series_.size() >= max_sites_) {
        ++sites_not_followed_;
        continue;
      }
      it = series_.emplace(key, std::vector<GrowthPoint>{}).first;
    }
    append(it->second, {t_s, static_cast<double>(site.outstanding_bytes),
                        static_cast<double>(site.outstanding_allocations)});
    seen[key] = true;
  }
  for (auto& [key, series] : series_) {
    if (!seen.count(key)) append(series, {t_s, 0, 0});
  }
}

const std::vector<GrowthPoint>* GrowthHistory::series(uint32_t pid, int32_t site_id) const {
  auto it = series_.find(site_key(pid, site_id));
  return it == series_.end() ? nullptr : &it->second;
}

void GrowthHistory::forget_process(uint32_t pid) {
  std::erase_if(series_, [pid](const auto& entry) { return (entry.first >> 32) == pid; });
}

PythonTypeTotals python_type_totals(const Aggregate& aggregate,
                                    const std::function<std::string(uint32_t, uint64_t)>& name,
                                    const std::function<bool(uint32_t, uint64_t)>& exact) {
  PythonTypeTotals totals;
  for (const auto& site : aggregate.sites) {
    for (const auto& sum : site.python_types) {
      std::string type = name(site.pid, sum.type);
      bool estimate = !exact(site.pid, sum.type);
      for (auto key : {PythonTypeKey{site.pid, site.site_id, type},
                       PythonTypeKey{site.pid, std::nullopt, type}}) {
        auto& amount = totals[key];
        amount.objects += sum.objects;
        amount.bytes += sum.bytes;
        amount.sized_by_estimate = amount.sized_by_estimate || estimate;
      }
    }
  }
  return totals;
}

void PythonTypeHistory::record(double t_s, const PythonTypeTotals& totals) {
  for (const auto& [key, amount] : totals) {
    auto it = series_.find(key);
    if (it == series_.end()) {
      if (series_.size() >= max_series_) {
        ++series_not_followed_;
        continue;
      }
      it = series_.emplace(key, std::vector<GrowthPoint>{}).first;
    }
    append_bounded(
        it->second,
        GrowthPoint{t_s, static_cast<double>(amount.bytes), static_cast<double>(amount.objects)},
        max_points_);
  }
  for (auto& [key, series] : series_) {
    if (!totals.count(key)) append_bounded(series, GrowthPoint{t_s, 0, 0}, max_points_);
  }
}

std::optional<PythonTypeHistory::Growth> PythonTypeHistory::growth(const PythonTypeKey& key) const {
  auto it = series_.find(key);
  if (it == series_.end()) return std::nullopt;
  Growth growth;
  growth.points = it->second.size();
  if (growth.points < 2) return growth;
  growth.bytes_per_s =
      fit_line(it->second, [](const GrowthPoint& point) { return point.bytes; }).slope;
  growth.objects_per_s =
      fit_line(it->second, [](const GrowthPoint& point) { return point.allocations; }).slope;
  return growth;
}

void PythonTypeHistory::forget_process(uint32_t pid) {
  std::erase_if(series_, [pid](const auto& entry) { return entry.first.pid == pid; });
}

double median_age_s(const std::array<uint32_t, SiteSummary::kAgeBuckets>& histogram) {
  uint64_t blocks = 0;
  for (uint32_t count : histogram) blocks += count;
  if (blocks == 0) return 0;
  uint64_t seen = 0;
  for (size_t bucket = 0; bucket < histogram.size(); ++bucket) {
    seen += histogram[bucket];
    if (seen * 2 >= blocks) {
      // The middle of the bucket [2^(b-1), 2^b) on a log scale; bucket 0 is under a second.
      return bucket == 0 ? 0.5 : std::ldexp(1.0, static_cast<int>(bucket) - 1) * std::sqrt(2.0);
    }
  }
  return 0;
}

void assess_sites(Aggregate& aggregate, const GrowthHistory& history, double interval_s,
                  uint64_t taken_at_ns) {
  static const std::vector<GrowthPoint> kNoHistory;
  for (auto& site : aggregate.sites) {
    const auto* series = history.series(site.pid, site.site_id);
    SiteNow now;
    now.oldest_age_s = taken_at_ns > site.oldest_timestamp_ns
                           ? static_cast<double>(taken_at_ns - site.oldest_timestamp_ns) / 1e9
                           : 0;
    now.outstanding_allocations = site.outstanding_allocations;
    now.total_allocations = site.total_allocations;
    now.freed_allocations = site.freed_allocations;
    now.median_age_s = median_age_s(site.age_histogram);
    site.growth = assess_growth(series ? *series : kNoHistory, now, interval_s);
  }
  // Ranked through plain keys: by verdict, then growth, then outstanding bytes.
  struct Rank {
    int verdict;
    double growth;
    uint64_t bytes;
    size_t index;
  };
  std::vector<Rank> ranks;
  ranks.reserve(aggregate.sites.size());
  for (size_t i = 0; i < aggregate.sites.size(); ++i) {
    const auto& site = aggregate.sites[i];
    ranks.push_back({static_cast<int>(site.growth->verdict), site.growth->growth_bytes_per_s,
                     site.outstanding_bytes, i});
  }
  std::stable_sort(ranks.begin(), ranks.end(), [](const Rank& a, const Rank& b) {
    if (a.verdict != b.verdict) return a.verdict < b.verdict;
    if (a.growth != b.growth) return a.growth > b.growth;
    return a.bytes > b.bytes;
  });
  std::vector<SiteSummary> ranked;
  ranked.reserve(ranks.size());
  for (const auto& rank : ranks) ranked.push_back(std::move(aggregate.sites[rank.index]));
  aggregate.sites = std::move(ranked);
}

void ProcessMemoryHistory::record(uint32_t pid, const ProcessMemoryPoint& point) {
  append_bounded(series_[pid], point, max_points_);
}

const std::vector<ProcessMemoryPoint>* ProcessMemoryHistory::series(uint32_t pid) const {
  auto it = series_.find(pid);
  return it == series_.end() ? nullptr : &it->second;
}

ProcessGrowth assess_process_memory(const std::vector<ProcessMemoryPoint>& series,
                                    double interval_s) {
  ProcessGrowth result;
  double span = series.size() >= 2 ? series.back().t_s - series.front().t_s : 0;
  if (!enough_history(series.size(), span, interval_s)) {
    result.reason = "too little history to compare";
    return result;
  }
  result.assessed = true;
  result.rss_bytes_per_s =
      fit_line(series, [](const ProcessMemoryPoint& point) { return point.rss_bytes; }).slope;
  result.traced_bytes_per_s =
      fit_line(series, [](const ProcessMemoryPoint& point) { return point.traced_bytes; }).slope;
  double rss_growth = result.rss_bytes_per_s * span;
  double untraced = (result.rss_bytes_per_s - std::max(result.traced_bytes_per_s, 0.0)) * span;
  // Flagged when private memory grew by at least 1 MiB, and by more than twice what the traced
  // allocations explain: page rounding and allocator overhead stay well below that.
  result.untraced_growth = rss_growth >= kUntracedGrowthMin && untraced > 0.5 * rss_growth;
  result.reason = "private memory (RssAnon) " + rate_text(result.rss_bytes_per_s) +
                  ", traced allocations " + rate_text(result.traced_bytes_per_s) +
                  (result.untraced_growth ? ": growth outside the traced allocators (direct "
                                            "mmap, another allocator, or allocator caches)"
                                          : "");
  return result;
}

MemoryCoverage assess_coverage(const std::vector<ProcessMemoryPoint>& series, double interval_s) {
  MemoryCoverage result;
  result.span_s = series.size() >= 2 ? series.back().t_s - series.front().t_s : 0;
  std::string over = format(" over %.1fs", result.span_s);
  if (!enough_history(series.size(), result.span_s, interval_s)) {
    result.reason = "too short a history: " + std::to_string(series.size()) + " readings" + over +
                    " (" + std::to_string(kMinPoints) + " over " + format("%.0f", kMinIntervals) +
                    " intervals needed)";
    return result;
  }
  result.rss_growth_bytes =
      fit_line(series, [](const ProcessMemoryPoint& point) { return point.rss_bytes; }).slope *
      result.span_s;
  result.traced_growth_bytes =
      fit_line(series, [](const ProcessMemoryPoint& point) { return point.traced_bytes; }).slope *
      result.span_s;
  if (result.rss_growth_bytes < kCoverageGrowthMin) {
    auto size =
        human_bytes(static_cast<uint64_t>(std::llround(std::fabs(result.rss_growth_bytes))));
    result.reason = (result.rss_growth_bytes < 0 ? "RssAnon shrank by " + size
                                                 : "RssAnon grew by only " + size) +
                    over + " (less than " + human_bytes(static_cast<uint64_t>(kCoverageGrowthMin)) +
                    "): no growth to explain";
    return result;
  }
  result.assessed = true;
  result.share = std::max(result.traced_growth_bytes, 0.0) / result.rss_growth_bytes;
  return result;
}

}  // namespace memtrail::aggregator
