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

// Which share of each process's object creations the attached windows saw. A process creates
// objects as it runs its own code, so the share is its user CPU time inside attached windows
// over its user CPU time since its probes were placed. User time, not all of it: the traps and
// the BPF programs run in the kernel, and slow the process only while attached; counting them
// would make the windows look bigger than the work they saw. Exact when the process creates
// objects at a steady rate per unit of its CPU time; an estimate otherwise (and the kernel
// samples user and system time at its tick: short runs are noisier).
class ObservedShare {
 public:
  // Process `pid` got its object probes with `user_cpu_s` of user CPU time used so far, and
  // they are attached now or not (they wait for the next window).
  void add_process(uint32_t pid, double user_cpu_s, bool attached);
  // The probes of every process were attached (true) or detached (false); `user_cpu_s` is this
  // process's user CPU time at that moment. Unknown pids are ignored.
  void switched(uint32_t pid, bool attached, double user_cpu_s);
  // The share seen, with `user_cpu_s` its user CPU time now (nullopt: it could not be read, e.g.
  // it exited: the last reading stands). 1 while it has used no CPU time since its probes
  // were placed (it can have created nothing unseen). nullopt for a pid never added.
  std::optional<double> fraction(uint32_t pid, std::optional<double> user_cpu_s) const;
  // Sums over the processes, for a report-level share: seen and total user CPU seconds.
  struct Sums {
    double observed_s = 0, total_s = 0;
  };
  Sums sums(uint32_t pid, std::optional<double> user_cpu_s) const;
  bool knows(uint32_t pid) const { return processes_.count(pid) != 0; }
  void forget(uint32_t pid) { processes_.erase(pid); }

 private:
  struct Process {
    double base_s = 0;                     // user CPU time when the probes were placed
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
