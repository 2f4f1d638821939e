// SPDX-License-Identifier: Apache-2.0
// Human-readable numbers in text reports.
#include "common/format.h"

#include <gtest/gtest.h>

namespace memtrail {
namespace {

TEST(Format, Thousands) {
  EXPECT_EQ(with_thousands(0), "0");
  EXPECT_EQ(with_thousands(999), "999");
  EXPECT_EQ(with_thousands(1000), "1,000");
  EXPECT_EQ(with_thousands(1234567), "1,234,567");
  EXPECT_EQ(with_thousands(18446744073709551615ull), "18,446,744,073,709,551,615");
}

TEST(Format, Bytes) {
  EXPECT_EQ(human_bytes(512), "512 B");
  EXPECT_EQ(human_bytes(1536), "1.5 KiB");
  EXPECT_EQ(human_bytes(3ull << 30), "3.0 GiB");
}

TEST(Format, Durations) {
  EXPECT_EQ(human_duration(3.25), "3.2s");
  EXPECT_EQ(human_duration(75.2), "1m15s");
  EXPECT_EQ(human_duration(3725), "1h02m05s");
  EXPECT_EQ(human_duration(-1), "0.0s");
}

TEST(Format, Iso8601) { EXPECT_EQ(iso8601_utc(1'700'000'000'123), "2023-11-14T22:13:20.123Z"); }

}  // namespace
}  // namespace memtrail
