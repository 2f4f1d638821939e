// SPDX-License-Identifier: Apache-2.0
// The one error type of memtrail: what failed, why, and what the user can do about it.
#pragma once

#include <stdexcept>
#include <string>

namespace memtrail {

// Exit codes, documented in README.md and `memtrail --help`.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,  // a runtime failure: target, BPF, output file
  kExitUsage = 2,    // bad command line
};

// A fatal error. `what()` is one line saying what failed (operation, object, reason); `hint()`
// says what to do about it, or is empty.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, std::string hint = {})
      : std::runtime_error(message), hint_(std::move(hint)) {}
  const std::string& hint() const { return hint_; }

 private:
  std::string hint_;
};

// "operation failed: strerror(error_number)", for errno-style failures.
std::string errno_message(const std::string& operation, int error_number);

// The usual hint for an errno: permission problems, missing processes, full maps.
std::string hint_for_errno(int error_number);

}  // namespace memtrail
