// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the object probes' duty cycle, and the share of objects it saw.
#include "aggregator/object_windows.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace memtrail::aggregator {

bool DutyCycle::attached_at(double t_s) const {
  if (exact()) return true;
  if (attached_share <= 0 || t_s < 0) return false;
  double phase = t_s - std::floor(t_s / period_s) * period_s;
  return phase < attached_share * period_s;
}

double DutyCycle::next_switch_s(double t_s) const {
  if (exact() || attached_share <= 0) return std::numeric_limits<double>::infinity();
  double start = std::floor(std::max(t_s, 0.0) / period_s) * period_s;
  double close = start + attached_share * period_s;
  return t_s < close ? close : start + period_s;
}

void ObservedShare::add_process(uint32_t pid, double clock_s, bool attached) {
  Process process;
  process.base_s = clock_s;
  process.last_s = clock_s;
  if (attached) process.window_start_s = clock_s;
  processes_[pid] = process;
}

void ObservedShare::switched(uint32_t pid, bool attached, double clock_s) {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return;
  Process& process = it->second;
  // The clock never goes back; a reading that does is clamped rather than trusted.
  clock_s = std::max(clock_s, process.last_s);
  process.last_s = clock_s;
  if (attached) {
    if (!process.window_start_s) process.window_start_s = clock_s;
    return;
  }
  if (process.window_start_s) process.observed_s += clock_s - *process.window_start_s;
  process.window_start_s.reset();
}

ObservedShare::Sums ObservedShare::sums(uint32_t pid, std::optional<double> clock_s) const {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return {};
  const Process& process = it->second;
  double now = std::max(clock_s.value_or(process.last_s), process.last_s);
  double observed = process.observed_s;
  if (process.window_start_s) observed += now - *process.window_start_s;
  return {observed, now - process.base_s};
}

std::optional<double> ObservedShare::fraction(uint32_t pid, std::optional<double> clock_s) const {
  if (!knows(pid)) return std::nullopt;
  Sums seen = sums(pid, clock_s);
  if (seen.total_s <= 0) return 1.0;
  return std::clamp(seen.observed_s / seen.total_s, 0.0, 1.0);
}

double scale_to_whole(double observed, double fraction) {
  return fraction > 0 ? observed / fraction : 0;
}

}  // namespace memtrail::aggregator
