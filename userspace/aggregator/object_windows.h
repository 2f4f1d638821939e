// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the object probes' duty cycle, and the share of objects it saw.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>

namespace memtrail::aggregator {

// A trap on every object created costs microseconds: --python-objects on attaches the object
// probes for part of each period only (exact: all the time). Times are seconds since the run
// started; the first window opens at 0.
struct DutyCycle {
  double attached_share = 1;  // of each period; 1: always attached (--python-objects exact)
  double period_s = 1;
  bool exact() const { return attached_share >= 1; }
  // Attached at time t: during [k * period, (k + attached_share) * period).
  bool attached_at(double t_s) const;
  // The first time after t at which attached_at(t) changes; infinity when exact.
  double next_switch_s(double t_s) const;
};

// Which share of each process's object creations the attached windows saw, measured on a clock:
// the share of the time since its probes were placed that fell inside attached windows.
// memtrail reads the wall clock (session::ObjectWindows); a process's own CPU time cannot
// serve: the user time the kernel reports is split from the run time by tick samples and held
// still rather than let go back, and under a trap on every object it stood still for seconds
// (measured). The share is right when the process creates objects at the same rate with and
// without the probes (a service waiting for its requests); a busy process slows under the
// traps and creates fewer objects while attached: its share is overstated, and the estimates
// scaled by it are low (bench/python_objects.py measures by how much).
class ObservedShare {
 public:
  // Process `pid` got its object probes at clock reading `clock_s`, attached now or not (then
  // they wait for the next window).
  void add_process(uint32_t pid, double clock_s, bool attached);
  // The probes were attached (true) or detached (false) at `clock_s`. Unknown pids are ignored.
  void switched(uint32_t pid, bool attached, double clock_s);
  // The share seen, with `clock_s` the reading now (nullopt: the process exited, its last
  // reading stands). 1 while no time has passed since its probes were placed. nullopt for a
  // pid never added.
  std::optional<double> fraction(uint32_t pid, std::optional<double> clock_s) const;
  // For a report-level share over processes: seconds seen and seconds since the placement.
  struct Sums {
    double observed_s = 0, total_s = 0;
  };
  Sums sums(uint32_t pid, std::optional<double> clock_s) const;
  bool knows(uint32_t pid) const { return processes_.count(pid) != 0; }
  void forget(uint32_t pid) { processes_.erase(pid); }

 private:
  struct Process {
    double base_s = 0;                     // the clock when the probes were placed
    double observed_s = 0;                 // in closed attached windows
    std::optional<double> window_start_s;  // the open attached window's start
    double last_s = 0;                     // the latest reading
  };
  std::unordered_map<uint32_t, Process> processes_;
};

// A count or byte total seen in `fraction` of the work, scaled to the whole: observed / fraction;
// 0 when nothing was seen (fraction 0 sees nothing).
double scale_to_whole(double observed, double fraction);

}  // namespace memtrail::aggregator
