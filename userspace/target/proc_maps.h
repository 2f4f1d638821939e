// SPDX-License-Identifier: Apache-2.0
// Parse /proc/PID/maps: which files a process maps where.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace memtrail::target {

struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t file_offset = 0;
  bool readable = false;
  bool executable = false;
  uint64_t inode = 0;
  std::string path;  // as the process sees it; empty for anonymous memory; "[vdso]" etc.

  bool contains(uint64_t address) const { return address >= start && address < end; }
  // A regular file (not anonymous, not [heap]/[stack]/[vdso], not a deleted file).
  bool is_file() const;
};

// Parses the text of a maps file. Malformed lines are skipped (the kernel's format is stable;
// a line we cannot read must not stop the whole report).
std::vector<Mapping> parse_proc_maps(std::string_view text);

// Reads /proc/PID/maps. nullopt when the process does not exist or cannot be read; an empty
// vector for a process without an address space (a zombie, a kernel thread).
std::optional<std::vector<Mapping>> read_proc_maps(uint32_t pid);

// The path under which memtrail opens a file that `pid` maps, so that files of processes in
// other mount namespaces (containers) are found: /proc/PID/root/<path>.
std::string path_in_process_root(uint32_t pid, const std::string& path);

}  // namespace memtrail::target
