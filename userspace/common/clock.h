// SPDX-License-Identifier: Apache-2.0
// The clocks memtrail compares: CLOCK_MONOTONIC (the BPF programs' bpf_ktime_get_ns) and the
// wall clock reports are stamped with.
#pragma once

#include <chrono>
#include <cstdint>

namespace memtrail {

// The longest span memtrail converts from seconds: 100 years, beyond any run, and small enough
// that a time point of a clock counted from boot plus it stays far inside the clock's 64-bit
// nanoseconds.
inline constexpr double kLongestSeconds = 100.0 * 365 * 24 * 3600;

// `seconds` (an option's value, or a value computed from one) as a steady_clock duration,
// clamped to [0, kLongestSeconds] (NaN: 0). duration_cast of duration<double> overflows
// instead: 1e10 s is 1e19 ns, past int64, and became a negative interval.
std::chrono::steady_clock::duration duration_from_seconds(double seconds);

// The same in nanoseconds, for the clock of bpf_ktime_get_ns.
uint64_t ns_from_seconds(double seconds);

// Whole milliseconds until `deadline` for poll(2): 0 when it has passed, at most INT_MAX.
int poll_timeout_ms(std::chrono::steady_clock::time_point deadline,
                    std::chrono::steady_clock::time_point now);

// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
uint64_t monotonic_now_ns();

// Milliseconds since the Unix epoch.
int64_t unix_now_ms();

}  // namespace memtrail
