// SPDX-License-Identifier: Apache-2.0
// The clocks memtrail compares (see clock.h).
#include "common/clock.h"

#include <time.h>

#include <algorithm>
#include <climits>
#include <cmath>

namespace memtrail {

std::chrono::steady_clock::duration duration_from_seconds(double seconds) {
  return std::chrono::nanoseconds(static_cast<int64_t>(ns_from_seconds(seconds)));
}

uint64_t ns_from_seconds(double seconds) {
  if (!(seconds > 0)) return 0;  // also NaN
  // Clamped before the multiplication and the cast: a double beyond the integer's range is
  // undefined behaviour to convert.
  return static_cast<uint64_t>(std::min(seconds, kLongestSeconds) * 1e9);
}

int poll_timeout_ms(std::chrono::steady_clock::time_point deadline,
                    std::chrono::steady_clock::time_point now) {
  if (deadline <= now) return 0;
  // Rounded up: a wake a little before the deadline would only poll again with 0.
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

uint64_t monotonic_now_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(now.tv_nsec);
}

int64_t unix_now_ms() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1'000'000;
}

}  // namespace memtrail
