// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the object probes' duty cycle, and the share of objects it saw.
#include "aggregator/object_windows.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "common/error.h"

namespace memtrail::aggregator {

bool DutyCycle::attached_at(double t_s) const {
  if (exact()) return true;
  double since_first = t_s - std::max(first_window_s, 0.0);
  if (attached_share <= 0 || since_first < 0) return false;
  double phase = since_first - std::floor(since_first / period_s) * period_s;
  return phase < attached_share * period_s;
}

double DutyCycle::next_switch_s(double t_s) const {
  if (exact() || attached_share <= 0) return std::numeric_limits<double>::infinity();
  double first = std::max(first_window_s, 0.0);
  if (t_s < first) return first;
  double start = first + std::floor((t_s - first) / period_s) * period_s;
  double close = start + attached_share * period_s;
  return t_s < close ? close : start + period_s;
}

uint32_t NewObjectRing::entries_for(const DutyCycle& cycle, uint32_t cpus) {
  if (cycle.exact()) return 1;
  double window_s = std::max(cycle.attached_share, 0.0) * cycle.period_s + kCloseDelayS;
  double most = std::max(cpus, 1u) * window_s * kMaxCreationsPerCpuS;
  uint32_t entries = kMinRingEntries;
  while (entries < kMaxRingEntries && entries < most) entries *= 2;
  return entries;
}

std::optional<uint32_t> NewObjectRing::override_from(const char* text) {
  if (!text || !*text) return std::nullopt;
  constexpr uint64_t kMost = uint64_t{1} << 24;
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || !std::isdigit(static_cast<unsigned char>(*text)) ||
      value < 16 || value > kMost || (value & (value - 1)) != 0) {
    throw Error(std::string("MEMTRAIL_PYTHON_LOG_ENTRIES=") + text +
                    " is not a power of two from 16 to " + std::to_string(kMost),
                "unset it for a ring sized by the duty cycle and the CPUs, or give e.g. 65536");
  }
  return static_cast<uint32_t>(value);
}

const char* share_basis_name(ShareBasis basis) {
  return basis == ShareBasis::kAllocations ? "allocations" : "time";
}

void ObservedShare::Meter::start(double at, bool attached) {
  base = last = at;
  observed = 0;
  window_start.reset();
  if (attached) window_start = at;
}

void ObservedShare::Meter::switched(bool attached, double at) {
  // Neither the clock nor a count goes back; a reading that does is clamped rather than
  // trusted.
  at = std::max(at, last);
  last = at;
  if (attached) {
    if (!window_start) window_start = at;
    return;
  }
  if (window_start) observed += at - *window_start;
  window_start.reset();
}

std::pair<double, double> ObservedShare::Meter::seen(std::optional<double> now) const {
  double at = std::max(now.value_or(last), last);
  double in_windows = observed;
  if (window_start) in_windows += at - *window_start;
  return {in_windows, at - base};
}

void ObservedShare::add_process(uint32_t pid, WorkReading reading, bool attached) {
  Process process;
  process.time.start(reading.clock_s, attached);
  if (reading.allocations) {
    process.allocations.emplace();
    process.allocations->start(static_cast<double>(*reading.allocations), attached);
  }
  processes_[pid] = process;
}

void ObservedShare::switched(uint32_t pid, bool attached, WorkReading reading) {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return;
  Process& process = it->second;
  process.time.switched(attached, reading.clock_s);
  // A reading without the count (it could not be read) leaves the count's window as it was.
  if (process.allocations && reading.allocations) {
    process.allocations->switched(attached, static_cast<double>(*reading.allocations));
  }
}

ObservedShare::Sums ObservedShare::sums(uint32_t pid, std::optional<WorkReading> reading) const {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return {};
  const Process& process = it->second;
  if (process.allocations) {
    std::optional<double> now;
    if (reading && reading->allocations) now = static_cast<double>(*reading->allocations);
    auto [observed, total] = process.allocations->seen(now);
    if (observed >= kMinAllocationsSeen) return {observed, total, ShareBasis::kAllocations};
  }
  std::optional<double> now;
  if (reading) now = reading->clock_s;
  auto [observed, total] = process.time.seen(now);
  return {observed, total, ShareBasis::kTime};
}

std::optional<ObservedShare::Share> ObservedShare::share(uint32_t pid,
                                                         std::optional<WorkReading> reading) const {
  if (!knows(pid)) return std::nullopt;
  Sums seen = sums(pid, reading);
  if (seen.total <= 0) return Share{1.0, seen.basis};
  return Share{std::clamp(seen.observed / seen.total, 0.0, 1.0), seen.basis};
}

double scale_to_whole(double observed, double fraction) {
  return fraction > 0 ? observed / fraction : 0;
}

}  // namespace memtrail::aggregator
