// SPDX-License-Identifier: Apache-2.0
// Output files: checked before a run starts, then written whole, or the write is a failure.
#pragma once

#include <string>

namespace memtrail {

// Throws memtrail::Error, one line naming `option` and `path`, when `path` cannot be written:
// a directory, a missing parent directory, a parent that is not a directory, no permission, a
// read-only file system. Called before anything is traced, so that a bad path costs no run.
// A regular or new file is checked by creating and removing a temporary file next to it; a
// device or FIFO (/dev/stdout, /dev/null) by its write permission.
void check_output_path(const std::string& path, const std::string& option);

// Writes `content` to `path`. A regular (or new) file is replaced atomically: a temporary file
// next to it, synced and renamed over it, so that a reader never sees half a report. A device
// or FIFO is written in place. Throws memtrail::Error for any failure, a short write, a failed
// sync or close included (ENOSPC on /dev/full, a full disk).
void write_output_file(const std::string& content, const std::string& path);

// Writes `content` to stdout, after what std::cout holds. Throws memtrail::Error when the write
// fails (a full disk behind a redirection), except for a closed pipe (memtrail ... | head): the
// reader has all it wanted.
void write_stdout(const std::string& content);

}  // namespace memtrail
