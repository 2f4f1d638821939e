// SPDX-License-Identifier: Apache-2.0
// Human-readable numbers for the text reports.
#pragma once

#include <cstdint>
#include <string>

namespace memtrail {

// 1234567 -> "1,234,567"
std::string with_thousands(uint64_t value);
// 1536 -> "1.5 KiB"; below 1 KiB: "512 B"
std::string human_bytes(uint64_t bytes);
// 75.2 -> "1m15s"; 3.25 -> "3.2s"; 0.0004 -> "0.0s"
std::string human_duration(double seconds);
// Unix milliseconds -> "2026-11-24T20:31:05.123Z"
std::string iso8601_utc(int64_t unix_ms);

}  // namespace memtrail
