// SPDX-License-Identifier: Apache-2.0
// Parse /proc/PID/maps: which files a process maps where.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace memtrail::inspect {

struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t file_offset = 0;
  bool readable = false;
  bool executable = false;
  uint64_t device = 0;  // of the mapped file, as makedev() builds it from the maps' major:minor
  uint64_t inode = 0;
  // The file's name as the maps give it (a container's files relative to its own root, a
  // chrooted process's with the chroot's prefix), without the " (deleted)" the kernel appends
  // to a file deleted or replaced since: for reports and messages. memtrail opens the mapped
  // file through the mapping itself (inspect/process_file.h), never by this name. Empty for
  // anonymous memory; "[heap]", "[vdso]" etc.
  std::string path;
  bool deleted = false;  // the name said " (deleted)": the file is still there to read

  bool contains(uint64_t address) const { return address >= start && address < end; }
  // A file (not anonymous, not [heap]/[stack]/[vdso]), deleted or not.
  bool is_file() const;
};

// Parses the text of a maps file. Malformed lines are skipped (the kernel's format is stable;
// a line we cannot read must not stop the whole report).
std::vector<Mapping> parse_proc_maps(std::string_view text);

// Reads /proc/PID/maps. nullopt when the process does not exist or cannot be read; an empty
// vector for a process without an address space (a zombie, a kernel thread).
std::optional<std::vector<Mapping>> read_proc_maps(uint32_t pid);

}  // namespace memtrail::inspect
