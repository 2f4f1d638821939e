// SPDX-License-Identifier: Apache-2.0
// Small helpers shared by the samplers: read a procfs/cgroupfs file cheaply, split and parse it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace memtrail::sampler {

// How to tell that a file has been read to its end.
enum class ReadUntil {
  kEof,        // read until read() returns 0: right for any file
  kShortRead,  // stop at the first short read: only for single-record seq_files (below)
};

// Reads the whole file at `path` into `buffer` (whose capacity is reused between calls, so a
// scan over thousands of files allocates once) with plain open/read/close. Returns 0, or the
// errno of the failed open or read (ENOENT, ESRCH, ENODEV... when the object has gone away).
//
// kShortRead saves the final read() that returns 0, a quarter of the syscalls of a small file.
// It is exact for files the kernel prints with single_open() (/proc/PID/stat, status, cgroup):
// seq_read() grows its buffer until the one record fits and copies all it can, so a read
// shorter than asked is the end. Multi-record seq_files (/proc/vmstat) may return short reads
// at page boundaries before their end: read those with kEof.
int read_text_file(const char* path, std::string& buffer, ReadUntil until = ReadUntil::kEof);
// The same, relative to a directory file descriptor (openat).
int read_text_file_at(int dir_fd, const char* name, std::string& buffer,
                      ReadUntil until = ReadUntil::kEof);

// Removes and returns the first line of `rest` (without its '\n').
std::string_view next_line(std::string_view& rest);

// Removes and returns the next field of `rest` separated by spaces or tabs.
std::string_view next_word(std::string_view& rest);

// Whole-string decimal parse; false on anything else (sign, garbage, overflow).
bool parse_u64(std::string_view text, uint64_t& value);

// "key value" lines (memory.stat, vmstat, memory.events): the value of `key`, or nothing.
std::optional<uint64_t> find_keyed_value(std::string_view text, std::string_view key);

// Trims spaces, tabs and newlines on both sides.
std::string_view trim(std::string_view text);

}  // namespace memtrail::sampler
