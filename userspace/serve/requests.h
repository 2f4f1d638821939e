// SPDX-License-Identifier: Apache-2.0
// What clients of `memtrail serve` ask for, checked before anything is traced: the targets of
// a profile request and of --trace, the bearer token.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace memtrail::serve {

// One target: a process, every process of a name, or every process of a memory cgroup (and
// below it), as `pid=`, `comm=`, `cgroup=` in a request or `pid:`, `comm:`, `cgroup:` in --trace.
struct TargetSelector {
  enum class Kind { kPid, kComm, kCgroup };
  Kind kind = Kind::kPid;
  uint32_t pid = 0;
  std::string name;          // the comm or the cgroup path ("/a/b", as in /proc/PID/cgroup)
  std::string text() const;  // "pid:42", "comm:nginx", "cgroup:/a/b"
};

// --trace pid:N|comm:NAME|cgroup:PATH; nullopt and `error` set when malformed.
std::optional<TargetSelector> parse_trace_selector(const std::string& text, std::string& error);

struct ProfileRequest {
  TargetSelector target;
  double seconds = 0;
};

struct ProfileLimits {
  double default_seconds = 10;
  double max_seconds = 300;
};

// The query of /debug/pprof/heap, /debug/pprof/allocs or /report.json: exactly one of pid=,
// comm=, cgroup=, and seconds= (whole seconds, 1 to the maximum; default_seconds when absent).
// Unknown parameters are refused, so that a typo is not silently a different profile.
// nullopt and `error` (one line for the client) when the query is wrong.
std::optional<ProfileRequest> parse_profile_request(
    const std::multimap<std::string, std::string>& query, const ProfileLimits& limits,
    std::string& error);

// Whether an Authorization header carries `token` ("Bearer <token>"), in time that does not
// depend on where the two first differ.
bool bearer_token_matches(std::string_view header, std::string_view token);

}  // namespace memtrail::serve
