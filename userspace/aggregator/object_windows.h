// SPDX-License-Identifier: Apache-2.0
// --python-objects on: the object probes' duty cycle, and the share of objects it saw.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>

namespace memtrail::aggregator {

// A trap on every object created costs microseconds: --python-objects on attaches the object
// probes for part of each period only (exact: all the time). Times are seconds since the run
// started; the first window opens at first_window_s (0 unless the run launches a command: see
// session::ObjectWindows::start).
struct DutyCycle {
  double attached_share = 1;  // of each period; 1: always attached (--python-objects exact)
  double period_s = 1;
  double first_window_s = 0;  // detached before it
  bool exact() const { return attached_share >= 1; }
  // Attached at time t: during [first + k * period, first + (k + attached_share) * period).
  bool attached_at(double t_s) const;
  // The first time after t at which attached_at(t) changes; infinity when exact.
  double next_switch_s(double t_s) const;
};

// The ring of objects recorded in an attached window (BPF map python_new_objects), read at the
// window's close so that the close reads those objects rather than the whole table; a window
// that records more than it holds is closed by a read of the whole table (whole_table_sweeps).
// Sized for what a window can record: every CPU creating objects at kMaxCreationsPerCpuS
// throughout the window, its close's delay included, as a power of two (the BPF program masks
// its index) within [kMinRingEntries, kMaxRingEntries]. One entry when exact: no window closes.
struct NewObjectRing {
  // Each creation traps and runs the record program, which walks the stack: 2.3-3.1 us a
  // creation measured by default, 1.5-2.0 us with --unwind fp (bench/RESULTS.md, README
  // Python). A CPU creates at most one object every 2 us while the probes are in.
  static constexpr double kMaxCreationsPerCpuS = 500'000;
  // The probes record past the window's planned end until their links are closed: the
  // session's next tick, then one kernel grace period (tens of milliseconds) per process.
  static constexpr double kCloseDelayS = 0.1;
  static constexpr uint32_t kMinRingEntries = 1u << 12;
  static constexpr uint32_t kMaxRingEntries = 1u << 21;  // 16 bytes each: 32 MiB
  static uint32_t entries_for(const DutyCycle& cycle, uint32_t cpus);
  // MEMTRAIL_PYTHON_LOG_ENTRIES, the override: a power of two within [16, 2^24]; nullopt for
  // null or empty, memtrail::Error otherwise.
  static std::optional<uint32_t> override_from(const char* text);
};

// A reading of a process's work at one instant: the clock (seconds), and the allocations the
// allocator probes counted for it so far, when they are counted.
struct WorkReading {
  double clock_s = 0;
  std::optional<uint64_t> allocations = std::nullopt;
};

// What a share was measured by: the process's allocations, or the time.
enum class ShareBasis { kAllocations, kTime };
const char* share_basis_name(ShareBasis basis);  // "allocations", "time"

// Which share of each process's object creations the attached windows saw, measured by the
// work the process did inside them over all it did since its probes were placed. The work is
// its allocations (malloc and the rest, as the allocator probes record them): those probes
// stay attached and cost the same in and out of the windows, so a process that slows 50-80x
// under the object traps makes as few allocations as objects while attached, and the share
// stays right (bench/python_objects.py: the share of time was 11x too high on a request
// handler). It assumes allocations come at the same pace as objects, as they do in a process
// doing the same kind of work throughout. A process that made fewer than
// kMinAllocationsSeen allocations inside the windows (a loop of small objects alone calls
// malloc almost never: pymalloc serves them) gets the share of time instead: the time inside
// the windows over the time since the placement, right for a process that creates objects at
// its own pace probed or not (a service waiting for its requests), too high for a busy one.
// A process's own CPU time cannot serve: the user time the kernel reports is split from the run
// time by tick samples and held still rather than let go back, and under a trap on every object
// it stood still for seconds (measured).
class ObservedShare {
 public:
  // With 100 allocations seen, a share counted from allocations that come independently is
  // known to about +-10 % (the square root of the count seen); fewer, and time is the basis.
  static constexpr double kMinAllocationsSeen = 100;

  // Process `pid` got its object probes at `reading`, attached now or not (then they wait
  // for the next window). Without allocations in the reading, its share is of time.
  void add_process(uint32_t pid, WorkReading reading, bool attached);
  // The probes were attached (true) or detached (false) at `reading`. Unknown pids are ignored.
  void switched(uint32_t pid, bool attached, WorkReading reading);
  struct Share {
    double fraction = 1;
    ShareBasis basis = ShareBasis::kTime;
  };
  // The share seen, with `reading` the one now (nullopt: the process exited, its last reading
  // stands). 1 while no work was done since its probes were placed. nullopt for a pid never
  // added.
  std::optional<Share> share(uint32_t pid, std::optional<WorkReading> reading) const;
  std::optional<double> fraction(uint32_t pid, std::optional<WorkReading> reading) const {
    auto seen = share(pid, reading);
    return seen ? std::optional<double>(seen->fraction) : std::nullopt;
  }
  // For a report-level share over processes: the work seen and the work since the placement,
  // in the unit of the basis share() uses for this process (allocations or seconds).
  struct Sums {
    double observed = 0, total = 0;
    ShareBasis basis = ShareBasis::kTime;
  };
  Sums sums(uint32_t pid, std::optional<WorkReading> reading) const;
  bool knows(uint32_t pid) const { return processes_.count(pid) != 0; }
  void forget(uint32_t pid) { processes_.erase(pid); }

 private:
  // One measure of work (seconds, or allocations): what the attached windows saw of it.
  struct Meter {
    double base = 0;                     // the reading when the probes were placed
    double observed = 0;                 // in closed attached windows
    std::optional<double> window_start;  // the open attached window's start
    double last = 0;                     // the latest reading
    void start(double at, bool attached);
    void switched(bool attached, double at);
    std::pair<double, double> seen(std::optional<double> now) const;  // observed, total
  };
  struct Process {
    Meter time;
    std::optional<Meter> allocations;  // absent when not counted
  };
  std::unordered_map<uint32_t, Process> processes_;
};

// A count or byte total seen in `fraction` of the work, scaled to the whole: observed / fraction;
// 0 when nothing was seen (fraction 0 sees nothing).
double scale_to_whole(double observed, double fraction);

}  // namespace memtrail::aggregator
