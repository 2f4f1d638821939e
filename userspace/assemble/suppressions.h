// SPDX-License-Identifier: Apache-2.0
// Sites whose memory is kept on purpose (stdio buffers, the C++ runtime's emergency pool, the
// dynamic loader's thread-local storage, and the user's own): shown as such, ranked last,
// never called leaks. Matched while the report is assembled, against the symbolized stacks;
// the report keeps only each site's reason (LeakSite::suppressed), which is all renderers and
// saved reports need.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "model/report.h"

namespace memtrail::assemble {

struct Suppression {
  std::string function_glob;  // fnmatch pattern on a frame's (demangled) function name
  std::string module_glob;    // on the file name of the frame's module; empty: any
  std::string reason;
};

class Suppressions {
 public:
  // The built-in list: memory runtimes keep on purpose.
  static Suppressions builtin();
  // Adds the suppressions of a file, one per line: FUNCTION_GLOB [MODULE_GLOB] [# REASON];
  // blank lines and lines starting with # are ignored. Throws memtrail::Error naming the file
  // (and line) when it cannot be read or a line is malformed.
  void load_file(const std::string& path);
  void add(Suppression suppression) { list_.push_back(std::move(suppression)); }

  // The reason of the first suppression that matches any frame of `stack`.
  std::optional<std::string> match(const std::vector<model::Frame>& stack) const;
  const std::vector<Suppression>& list() const { return list_; }

 private:
  std::vector<Suppression> list_;
};

}  // namespace memtrail::assemble
