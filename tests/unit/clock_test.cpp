// SPDX-License-Identifier: Apache-2.0
// Seconds from options become clock durations without overflow.
#include "common/clock.h"

#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cmath>

namespace memtrail {
namespace {

using namespace std::chrono_literals;

TEST(Clock, SecondsBecomeDurationsExactlyInRange) {
  EXPECT_EQ(duration_from_seconds(2), 2s);
  EXPECT_EQ(duration_from_seconds(0.01), 10ms);
  EXPECT_EQ(duration_from_seconds(86400), 86400s);
  EXPECT_EQ(ns_from_seconds(1.5), 1'500'000'000u);
}

TEST(Clock, HugeNegativeAndNanSecondsSaturateInsteadOfOverflowing) {
  // 1e10 s is 1e19 ns, past int64: a plain duration_cast made it negative.
  auto longest = duration_from_seconds(kLongestSeconds);
  EXPECT_GT(longest, 0s);
  EXPECT_EQ(duration_from_seconds(1e10), longest);
  EXPECT_EQ(duration_from_seconds(1e300), longest);
  EXPECT_EQ(duration_from_seconds(INFINITY), longest);
  EXPECT_EQ(duration_from_seconds(-5), 0s);
  EXPECT_EQ(duration_from_seconds(NAN), 0s);
  EXPECT_EQ(ns_from_seconds(1e300), static_cast<uint64_t>(kLongestSeconds * 1e9));
  // A time point plus the longest span stays in the future.
  auto now = std::chrono::steady_clock::now();
  EXPECT_GT(now + duration_from_seconds(1e300), now);
}

TEST(Clock, PollTimeoutsAreRoundedUpAndBounded) {
  auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(poll_timeout_ms(now - 1s, now), 0);
  EXPECT_EQ(poll_timeout_ms(now, now), 0);
  EXPECT_EQ(poll_timeout_ms(now + 300us, now), 1);  // not 0: no busy loop before a deadline
  EXPECT_EQ(poll_timeout_ms(now + 2s, now), 2000);
  EXPECT_EQ(poll_timeout_ms(now + duration_from_seconds(1e300), now), INT_MAX);
}

}  // namespace
}  // namespace memtrail
