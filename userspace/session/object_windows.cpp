// SPDX-License-Identifier: Apache-2.0
// --python-objects on: attaches and detaches the object probes on a duty cycle, and says which
// share of each process's objects they saw.
#include "session/object_windows.h"

#include <chrono>
#include <cmath>

namespace memtrail::session {

double ObjectWindows::clock_s() const {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

std::optional<double> ObjectWindows::reading(uint32_t pid) const {
  if (exited_.count(pid)) return std::nullopt;  // its last reading, at the exit, stands
  return clock_s();
}

void ObjectWindows::process_exited(uint32_t pid) {
  if (!processes_.count(pid) || exited_.count(pid)) return;
  share_.switched(pid, false, clock_s());  // it creates nothing more: its window closes
  exited_.insert(pid);
}

void ObjectWindows::start(Clock::time_point start) {
  start_ = start;
  if (!cycle_.exact()) switch_to(cycle_.attached_at(0));
}

Clock::time_point ObjectWindows::tick(Clock::time_point now) {
  if (!start_ || cycle_.exact()) return Clock::time_point::max();
  double t_s = std::chrono::duration<double>(now - *start_).count();
  bool attached = cycle_.attached_at(t_s);
  if (attached != tracer_.python_objects_attached()) switch_to(attached);
  double next_s = cycle_.next_switch_s(t_s);
  if (!std::isfinite(next_s)) return Clock::time_point::max();
  return *start_ +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(next_s));
}

void ObjectWindows::switch_to(bool attached) {
  // A window counts from when the probes are in (after the attach) until they start coming
  // out (before the detach): closing the links waits for the kernel's grace periods, tens of
  // milliseconds during which the process runs without traps, and sees few objects.
  if (attached) tracer_.set_python_objects_attached(true);
  double now_s = clock_s();
  for (uint32_t pid : processes_) share_.switched(pid, attached, now_s);
  if (attached) return;
  tracer_.set_python_objects_attached(false);
  tracer_.sweep_python_objects();
}

void ObjectWindows::add_process(uint32_t pid) {
  processes_.insert(pid);
  if (cycle_.exact()) return;
  share_.add_process(pid, clock_s(), tracer_.python_objects_attached());
}

std::unordered_map<uint32_t, double> ObjectWindows::observed_shares() const {
  std::unordered_map<uint32_t, double> shares;
  if (cycle_.exact()) return shares;
  for (uint32_t pid : processes_) {
    if (auto share = share_.fraction(pid, reading(pid))) shares[pid] = *share;
  }
  return shares;
}

std::optional<model::PythonObjectsCoverage> ObjectWindows::coverage() const {
  if (processes_.empty()) return std::nullopt;
  model::PythonObjectsCoverage coverage;
  coverage.exact = cycle_.exact();
  coverage.attached_share = cycle_.attached_share;
  coverage.period_s = cycle_.exact() ? 0 : cycle_.period_s;
  if (coverage.exact) return coverage;
  aggregator::ObservedShare::Sums all;
  for (uint32_t pid : processes_) {
    auto sums = share_.sums(pid, reading(pid));
    all.observed_s += sums.observed_s;
    all.total_s += sums.total_s;
  }
  coverage.observed_fraction = all.total_s > 0 ? all.observed_s / all.total_s : 1.0;
  return coverage;
}

}  // namespace memtrail::session
