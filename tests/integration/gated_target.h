// SPDX-License-Identifier: Apache-2.0
// A target program at its gate (the protocol of tests/targets/leaky.c): it prints "ready PID",
// waits for a line on stdin, runs its scenario printing "line NAME N" for each allocation site
// it wants found, and prints "done".
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "subprocess.h"

namespace memtrail::testing {

// The "line NAME N" lines `out` prints until `until` (NAME -> N).
inline std::map<std::string, int> collect_lines(Subprocess& out, const std::string& until) {
  std::map<std::string, int> lines;
  while (auto line = out.read_stdout_line(std::chrono::seconds(10))) {
    if (*line == until) return lines;
    std::istringstream words(*line);
    std::string tag, name;
    int number = 0;
    if (words >> tag >> name >> number && tag == "line") lines[name] = number;
  }
  ADD_FAILURE() << "target did not print " << until;
  return lines;
}

// Sends the gate line to `in` and collects the lines `out` prints until "done" (`out` is the
// target itself, or memtrail for a command it launched).
inline std::map<std::string, int> run_to_done(Subprocess& out, Subprocess& in) {
  in.write_stdin("go\n");
  return collect_lines(out, "done");
}

// A target started and waiting at its gate ("ready PID" read).
struct Target {
  explicit Target(std::vector<std::string> argv) : process(std::move(argv)) {
    auto ready = process.wait_for_stdout("ready ", std::chrono::seconds(10));
    EXPECT_TRUE(ready.has_value()) << "target did not start: " << process.drain_stderr();
  }
  // Lets it run its scenario; its "line NAME N" lines until "done".
  std::map<std::string, int> run() { return run_to_done(process, process); }
  std::map<std::string, int> collect_lines(const std::string& until) {
    return testing::collect_lines(process, until);
  }
  Subprocess process;
};

}  // namespace memtrail::testing
