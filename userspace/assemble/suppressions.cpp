// SPDX-License-Identifier: Apache-2.0
// Sites whose memory is kept on purpose.
#include "assemble/suppressions.h"

#include <fnmatch.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace memtrail::assemble {
namespace {

std::string file_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Suppressions Suppressions::builtin() {
  Suppressions suppressions;
  // glibc allocates a FILE's buffer on its first use and keeps it until fclose (stdout's for
  // the life of the process).
  suppressions.add({"*_IO_file_doallocate", "libc.so*", "glibc stdio buffer"});
  // libstdc++ reserves a pool at start-up so that exceptions can be thrown when memory runs
  // out (eh_alloc.cc); it is never freed.
  suppressions.add({"*pool::pool*", "libstdc++.so*", "libstdc++ emergency exception pool"});
  // The dynamic loader's thread-local storage: kept for each thread (and cached with thread
  // stacks) by design.
  suppressions.add({"_dl_allocate_tls*", "ld-linux*", "dynamic loader TLS"});
  suppressions.add({"allocate_dtv", "ld-linux*", "dynamic loader TLS"});
  suppressions.add({"_dl_resize_dtv", "ld-linux*", "dynamic loader TLS"});
  return suppressions;
}

void Suppressions::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    int error_number = errno;
    throw Error(errno_message("read suppressions file " + path, error_number),
                "check the path given to --suppressions");
  }
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::string reason = "suppressed by " + file_name(path) + ":" + std::to_string(number);
    size_t hash = line.find('#');
    if (hash != std::string::npos) {
      std::string comment = line.substr(hash + 1);
      size_t start = comment.find_first_not_of(" \t");
      if (start != std::string::npos) reason = comment.substr(start);
      line.resize(hash);
    }
    std::istringstream words(line);
    Suppression suppression;
    if (!(words >> suppression.function_glob)) continue;  // blank or comment only
    words >> suppression.module_glob;
    std::string extra;
    if (words >> extra) {
      throw Error(path + ":" + std::to_string(number) +
                      ": expected FUNCTION_GLOB [MODULE_GLOB] "
                      "[# REASON], found a third word \"" +
                      extra + "\"",
                  "put a reason after a # sign");
    }
    suppression.reason = reason;
    add(std::move(suppression));
  }
}

std::optional<std::string> Suppressions::match(const std::vector<model::Frame>& stack) const {
  for (const auto& suppression : list_) {
    for (const auto& frame : stack) {
      if (!frame.function) continue;
      if (fnmatch(suppression.function_glob.c_str(), frame.function->c_str(), 0) != 0) continue;
      if (!suppression.module_glob.empty() &&
          fnmatch(suppression.module_glob.c_str(), file_name(frame.module).c_str(), 0) != 0) {
        continue;
      }
      return suppression.reason;
    }
  }
  return std::nullopt;
}

}  // namespace memtrail::assemble
