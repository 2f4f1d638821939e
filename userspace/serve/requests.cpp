// SPDX-License-Identifier: Apache-2.0
// What clients of `memtrail serve` ask for, checked before anything is traced.
#include "serve/requests.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

namespace memtrail::serve {
namespace {

constexpr uint64_t kMaxPid = 4194304;  // PID_MAX_LIMIT on 64-bit kernels
constexpr size_t kMaxNameBytes = 4096;

std::optional<uint64_t> whole_number(const std::string& text, uint64_t least, uint64_t most) {
  if (text.empty() || text.size() > 12 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  uint64_t value = std::strtoull(text.c_str(), nullptr, 10);
  if (value < least || value > most) return std::nullopt;
  return value;
}

bool printable(const std::string& text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

// The selector of kind `key` with value `value`; `error` set when the value is wrong.
std::optional<TargetSelector> selector_of(const std::string& key, const std::string& value,
                                          std::string& error) {
  TargetSelector selector;
  if (key == "pid") {
    auto pid = whole_number(value, 1, kMaxPid);
    if (!pid) {
      error = "pid must be a process id from 1 to " + std::to_string(kMaxPid) + ", not '" +
              value.substr(0, 64) + "'";
      return std::nullopt;
    }
    selector.kind = TargetSelector::Kind::kPid;
    selector.pid = static_cast<uint32_t>(*pid);
    return selector;
  }
  if (value.empty() || value.size() > kMaxNameBytes || !printable(value)) {
    error = key + " must be a non-empty printable name of at most " +
            std::to_string(kMaxNameBytes) + " bytes";
    return std::nullopt;
  }
  selector.name = value;
  if (key == "comm") {
    selector.kind = TargetSelector::Kind::kComm;
    return selector;
  }
  selector.kind = TargetSelector::Kind::kCgroup;
  // As /proc/PID/cgroup writes it: absolute, no trailing slash, no . or .. components.
  if (selector.name.front() != '/') selector.name.insert(selector.name.begin(), '/');
  while (selector.name.size() > 1 && selector.name.back() == '/') selector.name.pop_back();
  if (("/" + selector.name + "/").find("/../") != std::string::npos ||
      ("/" + selector.name + "/").find("/./") != std::string::npos) {
    error = "cgroup must be a cgroup path as in /proc/PID/cgroup, without . or .. components";
    return std::nullopt;
  }
  return selector;
}

}  // namespace

std::string TargetSelector::text() const {
  switch (kind) {
    case Kind::kPid:
      return "pid:" + std::to_string(pid);
    case Kind::kComm:
      return "comm:" + name;
    case Kind::kCgroup:
      return "cgroup:" + name;
  }
  return "";
}

std::optional<TargetSelector> parse_trace_selector(const std::string& text, std::string& error) {
  auto colon = text.find(':');
  std::string key = colon == std::string::npos ? "" : text.substr(0, colon);
  if (key != "pid" && key != "comm" && key != "cgroup") {
    error = "--trace must be pid:N, comm:NAME or cgroup:PATH, not '" + text + "'";
    return std::nullopt;
  }
  auto selector = selector_of(key, text.substr(colon + 1), error);
  if (!selector) error = "--trace " + error;
  return selector;
}

std::optional<ProfileRequest> parse_profile_request(
    const std::multimap<std::string, std::string>& query, const ProfileLimits& limits,
    std::string& error) {
  ProfileRequest request;
  request.seconds = limits.default_seconds;
  std::optional<TargetSelector> target;
  bool seconds_given = false;
  for (const auto& [key, value] : query) {
    if (key == "seconds") {
      if (seconds_given) {
        error = "seconds given twice";
        return std::nullopt;
      }
      seconds_given = true;
      auto most = static_cast<uint64_t>(limits.max_seconds);
      auto seconds = whole_number(value, 1, most);
      if (!seconds) {
        error = "seconds must be a whole number from 1 to " + std::to_string(most) + ", not '" +
                value.substr(0, 64) + "'";
        return std::nullopt;
      }
      request.seconds = static_cast<double>(*seconds);
    } else if (key == "pid" || key == "comm" || key == "cgroup") {
      if (target) {
        error = "give exactly one of pid=, comm= and cgroup=";
        return std::nullopt;
      }
      target = selector_of(key, value, error);
      if (!target) return std::nullopt;
    } else {
      error = "unknown parameter '" + key.substr(0, 64) + "' (known: pid, comm, cgroup, seconds)";
      return std::nullopt;
    }
  }
  if (!target) {
    error = "give the target: pid=N, comm=NAME or cgroup=PATH";
    return std::nullopt;
  }
  request.target = *target;
  return request;
}

bool bearer_token_matches(std::string_view header, std::string_view token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (token.empty() || header.size() != kScheme.size() + token.size() ||
      header.substr(0, kScheme.size()) != kScheme) {
    return false;
  }
  unsigned char difference = 0;
  for (size_t i = 0; i < token.size(); ++i) {
    difference |= static_cast<unsigned char>(header[kScheme.size() + i] ^ token[i]);
  }
  return difference == 0;
}

}  // namespace memtrail::serve
