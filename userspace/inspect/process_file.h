// SPDX-License-Identifier: Apache-2.0
// Opening the files of a traced process: what it maps, or a path resolved inside its own root.
#pragma once

#include <cstdint>
#include <string>

#include "common/unique_fd.h"
#include "inspect/proc_maps.h"

namespace memtrail::inspect {

// A file of a traced process, as memtrail finds it again. memtrail runs as root and reads
// files that processes name, some of them in containers: a name is never followed out of the
// process's root (through /proc/PID/root, a container's absolute symlink resolves on the host),
// and a mapped file is the file mapped, not whatever has its name now (a bind mount over it, a
// chroot's prefix, an upgrade that replaced or deleted it). A description only: it holds
// nothing open and is copied freely; open_file() opens it.
struct ProcessFile {
  uint32_t pid = 0;  // whose file; 0: memtrail's own (a command it launches)
  std::string path;  // the process's name for it, for reports and messages
  // A mapping of the file: opened through /proc/PID/map_files/START-END, which the kernel
  // resolves to the mapped file itself, deleted or not, in whatever mount namespace or chroot.
  // Both 0: the file is found by `path`, resolved inside the process's root.
  uint64_t map_start = 0;
  uint64_t map_end = 0;
  // What the file is (device and inode): every open checks it. 0: not known until first open.
  uint64_t device = 0;
  uint64_t inode = 0;

  bool mapped() const { return map_end != 0; }
};

// The file that `mapping` of process `pid` maps. Opens nothing.
ProcessFile mapped_file(uint32_t pid, const Mapping& mapping);
// The file that `path` names for process `pid` (one it does not map, e.g. an --allocator it
// will load later): resolved in its root, never out of it (openat2 with RESOLVE_IN_ROOT, no
// magic links). pid 0: in memtrail's own root. Opens nothing.
ProcessFile file_in_root(uint32_t pid, std::string path);

// A file of a traced process, open.
struct OpenedFile {
  UniqueFd fd;       // read-only
  ProcessFile file;  // what was opened, its device and inode known
  // A path the kernel resolves to this same file as long as `fd` is open (/proc/self/fd/N),
  // for interfaces that take a path, such as uprobes: no name can lead elsewhere meanwhile.
  std::string kernel_path() const;
};

// Opens `file` for reading. It is resolved without being opened first (O_PATH), and opened
// only if it is a regular file (the device and inode expected, where known): never a FIFO
// that would block, nor a device whose open does something. Throws memtrail::Error in one
// line naming the process and the file (e.g. "pid 42 maps /usr/lib/libc.so.6, but it is not
// a regular file").
OpenedFile open_file(const ProcessFile& file);

}  // namespace memtrail::inspect
