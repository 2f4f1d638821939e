// SPDX-License-Identifier: Apache-2.0
// --python-objects on: attaches and detaches the object probes on a duty cycle, and says which
// share of each process's objects they saw.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "aggregator/object_windows.h"
#include "model/report.h"
#include "session/config.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::session {

// Drives the tracer's object probes through the duty cycle (exact: never detached) and keeps,
// for each process that got them, the work its attached windows covered.
class ObjectWindows {
 public:
  ObjectWindows(tracer::AllocTracer& tracer, aggregator::DutyCycle cycle)
      : tracer_(tracer), cycle_(cycle) {}

  // The run's clock starts: the probes are attached or not as the cycle says for time 0 (not
  // when the run launches a command: its first window opens one period late).
  void start(Clock::time_point start);
  // Switches the probes if the cycle says so at `now`; at the end of an attached window, the
  // objects recorded in it and the live ones no content identifies are read, and the dead
  // ones removed (see AllocTracer::sweep_python_objects). Returns
  // the time of the next switch (time_point::max() when exact or not started).
  Clock::time_point tick(Clock::time_point now);
  // Whether a process placed now is measured from now on (exact, or a process traced by -p,
  // placed before the run starts), or from the next window's start, its object probes
  // attached only then (AllocTracer::attach_python_objects' at_next_attach): one placed while
  // the run goes on, and every one in a run that launches a command (its first window late).
  bool measures_from_now() const {
    return cycle_.exact() || (!start_ && cycle_.first_window_s <= 0);
  }
  // Process `pid` got object probes (attached now, or at the next window: see
  // measures_from_now()), at `creation_addresses` in its address space.
  void add_process(uint32_t pid, std::unordered_set<uint64_t> creation_addresses);
  // It exited: its share stops growing (it creates nothing more).
  void process_exited(uint32_t pid);
  // It exited and its report is done.
  void forget(uint32_t pid) {
    processes_.erase(pid);
    exited_.erase(pid);
    waiting_.erase(pid);
    creation_sites_.erase(pid);
    share_.forget(pid);
    if (counted_.erase(pid)) tracer_.stop_counting_allocations(pid);
  }

  // For each process with object probes, the share of its objects they saw, and what it was
  // measured by; empty when exact. Not those whose first window is to come (before_first_window).
  std::unordered_map<uint32_t, aggregator::ObservedShare::Share> shares() const;
  // The processes with object probes and no window yet: their first is to come, or they ended
  // before it. None of their objects was seen.
  std::vector<uint32_t> before_first_window() const;
  // The same, the fractions only.
  std::unordered_map<uint32_t, double> observed_shares() const;
  // Where each process's objects are created (aggregator::Accumulator's creation sites).
  const std::unordered_map<uint32_t, std::unordered_set<uint64_t>>& creation_sites() const {
    return creation_sites_;
  }
  // How the probes ran, with the share over all the processes; absent without object probes.
  std::optional<model::PythonObjectsCoverage> coverage() const;

 private:
  void switch_to(bool attached);
  double clock_s() const;  // the steady clock, in seconds
  // Its work now: the clock, and its allocations when they are counted.
  aggregator::WorkReading work(uint32_t pid, double clock_s) const;
  std::optional<aggregator::WorkReading> reading(uint32_t pid) const;  // none once it exited

  tracer::AllocTracer& tracer_;
  aggregator::DutyCycle cycle_;
  aggregator::ObservedShare share_;
  std::unordered_set<uint32_t> processes_;  // pids with object probes
  std::unordered_set<uint32_t> exited_;     // of those, the ones that exited
  std::unordered_set<uint32_t> counted_;    // of those, the ones whose allocations are counted
  std::unordered_set<uint32_t> waiting_;    // of those, the ones whose first window is to come
  std::unordered_map<uint32_t, std::unordered_set<uint64_t>> creation_sites_;
  std::optional<Clock::time_point> start_;
};

}  // namespace memtrail::session
