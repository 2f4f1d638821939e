// SPDX-License-Identifier: Apache-2.0
// Human-readable numbers for the text reports.
#include "common/format.h"

#include <cmath>
#include <cstdio>
#include <ctime>

namespace memtrail {

std::string with_thousands(uint64_t value) {
  std::string digits = std::to_string(value);
  std::string out;
  out.reserve(digits.size() + digits.size() / 3);
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f %s", value, kUnits[unit]);
  return buffer;
}

std::string human_duration(double seconds) {
  char buffer[48];
  if (!(seconds >= 0)) seconds = 0;
  if (seconds < 60) {
    std::snprintf(buffer, sizeof(buffer), "%.1fs", std::floor(seconds * 10) / 10);
    return buffer;
  }
  auto whole = static_cast<uint64_t>(seconds);
  uint64_t hours = whole / 3600, minutes = whole / 60 % 60, secs = whole % 60;
  if (hours > 0) {
    std::snprintf(buffer, sizeof(buffer), "%lluh%02llum%02llus",
                  static_cast<unsigned long long>(hours), static_cast<unsigned long long>(minutes),
                  static_cast<unsigned long long>(secs));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%llum%02llus", static_cast<unsigned long long>(minutes),
                  static_cast<unsigned long long>(secs));
  }
  return buffer;
}

std::string iso8601_utc(int64_t unix_ms) {
  time_t seconds = static_cast<time_t>(unix_ms / 1000);
  struct tm utc {};
  gmtime_r(&seconds, &utc);
  char buffer[40];
  size_t length = std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(buffer + length, sizeof(buffer) - length, ".%03lldZ",
                static_cast<long long>(unix_ms % 1000));
  return buffer;
}

}  // namespace memtrail
