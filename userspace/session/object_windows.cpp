// SPDX-License-Identifier: Apache-2.0
// --python-objects on: attaches and detaches the object probes on a duty cycle, and says which
// share of each process's objects they saw.
#include "session/object_windows.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

namespace memtrail::session {

double ObjectWindows::clock_s() const {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

aggregator::WorkReading ObjectWindows::work(uint32_t pid, double clock_s) const {
  return {clock_s, counted_.count(pid) ? tracer_.allocations_counted(pid) : std::nullopt};
}

std::optional<aggregator::WorkReading> ObjectWindows::reading(uint32_t pid) const {
  if (exited_.count(pid)) return std::nullopt;  // its last reading, at the exit, stands
  return work(pid, clock_s());
}

void ObjectWindows::process_exited(uint32_t pid) {
  if (!processes_.count(pid) || exited_.count(pid)) return;
  share_.switched(pid, false, work(pid, clock_s()));  // it creates nothing more: its window closes
  exited_.insert(pid);
}

void ObjectWindows::start(Clock::time_point start) {
  start_ = start;
  if (cycle_.exact()) return;
  if (cycle_.attached_at(0)) {
    switch_to(true);
  } else {
    // A late first window (a launched command): every process waits for it, and no window
    // was open, so none closes.
    tracer_.set_python_objects_attached(false);
  }
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
  // milliseconds during which the process runs without traps, and sees few objects. Its close
  // reads its objects while the probes are in (see AllocTracer::sweep_python_objects): that
  // time is the window's.
  if (attached) {
    tracer_.set_python_objects_attached(true);
  } else {
    tracer_.sweep_python_objects();
  }
  double now_s = clock_s();
  for (uint32_t pid : processes_) {
    if (exited_.count(pid)) continue;
    if (attached && waiting_.erase(pid)) {
      share_.add_process(pid, work(pid, now_s), true);  // its first window: see add_process
    } else {
      share_.switched(pid, attached, work(pid, now_s));
    }
  }
  if (!attached) tracer_.set_python_objects_attached(false);
}

void ObjectWindows::add_process(uint32_t pid, std::unordered_set<uint64_t> creation_addresses) {
  processes_.insert(pid);
  creation_sites_[pid] = std::move(creation_addresses);
  if (cycle_.exact()) return;
  // Its allocations are the work its share is measured by; uncounted, the time is.
  if (tracer_.count_allocations(pid)) counted_.insert(pid);
  if (measures_from_now()) {
    // Placed before the run starts (traced by -p): its first window is the run's first.
    share_.add_process(pid, work(pid, clock_s()), tracer_.python_objects_attached());
    return;
  }
  // Placed while the run goes on (or before a run that launches a command starts: its first
  // window opens one period late), it is measured from the next window's start, probes and
  // share alike, like every process in every window. Such a process is mostly one starting: a
  // launched command held at its exec, a program started under --all. Its start-up
  // (the interpreter's initialisation, its imports) allocates in a burst unlike its steady
  // work; counted from its placement, inside the window then open, a launched steady keeper's
  // share came out 46 % at a 10 % duty cycle, and its estimates a fifth of the truth. Probed
  // from its placement but measured from the next window, the objects seen before would be
  // scaled as if a share of them: so neither. Counting its work from the placement with its
  // probes waiting (the window then open left out) would put the burst in the total alone,
  // and scale estimates up by as much. What it creates before its first window is not seen,
  // as what a process traced by -p created before memtrail attached.
  waiting_.insert(pid);
}

std::unordered_map<uint32_t, aggregator::ObservedShare::Share> ObjectWindows::shares() const {
  std::unordered_map<uint32_t, aggregator::ObservedShare::Share> shares;
  if (cycle_.exact()) return shares;
  for (uint32_t pid : processes_) {
    if (auto share = share_.share(pid, reading(pid))) shares[pid] = *share;
  }
  return shares;
}

std::vector<uint32_t> ObjectWindows::before_first_window() const {
  std::vector<uint32_t> pids;
  if (cycle_.exact()) return pids;
  for (uint32_t pid : processes_) {
    if (!share_.knows(pid)) pids.push_back(pid);
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

std::unordered_map<uint32_t, double> ObjectWindows::observed_shares() const {
  std::unordered_map<uint32_t, double> fractions;
  for (const auto& [pid, share] : shares()) fractions[pid] = share.fraction;
  return fractions;
}

std::optional<model::PythonObjectsCoverage> ObjectWindows::coverage() const {
  if (processes_.empty()) return std::nullopt;
  model::PythonObjectsCoverage coverage;
  coverage.exact = cycle_.exact();
  coverage.attached_share = cycle_.attached_share;
  coverage.period_s = cycle_.exact() ? 0 : cycle_.period_s;
  if (coverage.exact) return coverage;
  // Over the processes, each basis summed apart (allocations and seconds do not add up); when
  // their bases differ, the mean of their shares.
  std::optional<aggregator::ShareBasis> basis;
  bool mixed = false;
  double observed = 0, total = 0, shares_sum = 0;
  size_t measured = 0;
  for (uint32_t pid : processes_) {
    if (!share_.knows(pid)) continue;  // its first window is to come: nothing seen, nothing due
    ++measured;
    auto sums = share_.sums(pid, reading(pid));
    if (basis && *basis != sums.basis) mixed = true;
    basis = sums.basis;
    observed += sums.observed;
    total += sums.total;
    shares_sum += sums.total > 0 ? std::clamp(sums.observed / sums.total, 0.0, 1.0) : 1.0;
  }
  coverage.before_first_window = before_first_window();
  if (!basis) {  // none measured yet: nothing seen, nothing scaled
    coverage.observed_fraction = 0;
    coverage.share_basis = "none";
    return coverage;
  }
  if (mixed) {
    coverage.share_basis = "mixed";
    coverage.observed_fraction = shares_sum / static_cast<double>(measured);
  } else {
    coverage.share_basis = aggregator::share_basis_name(*basis);
    coverage.observed_fraction = total > 0 ? std::clamp(observed / total, 0.0, 1.0) : 1.0;
  }
  return coverage;
}

}  // namespace memtrail::session
