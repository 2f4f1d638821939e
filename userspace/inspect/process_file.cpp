// SPDX-License-Identifier: Apache-2.0
// Opening the files of a traced process: what it maps, or a path resolved inside its own root.
#include "inspect/process_file.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <utility>

#include "common/error.h"

namespace memtrail::inspect {
namespace {

std::string map_files_path(uint32_t pid, uint64_t start, uint64_t end) {
  char range[40];
  std::snprintf(range, sizeof(range), "%llx-%llx", static_cast<unsigned long long>(start),
                static_cast<unsigned long long>(end));
  return "/proc/" + std::to_string(pid) + "/map_files/" + range;
}

std::string map_files_path(const ProcessFile& file) {
  return map_files_path(file.pid, file.map_start, file.map_end);
}

// The file through its mapping. A mapping read a moment ago may be gone while the file is
// still mapped (the loader maps a library in steps, mprotect splits a mapping): then through
// any mapping of the same file (device and inode) the process has now.
UniqueFd locate_mapped(const ProcessFile& file) {
  UniqueFd mapped(::open(map_files_path(file).c_str(), O_PATH | O_CLOEXEC));
  if (mapped || errno != ENOENT) return mapped;
  if (auto mappings = read_proc_maps(file.pid)) {
    for (const Mapping& mapping : *mappings) {
      if (mapping.inode != file.inode || mapping.device != file.device) continue;
      mapped.reset(
          ::open(map_files_path(file.pid, mapping.start, mapping.end).c_str(), O_PATH | O_CLOEXEC));
      if (mapped || errno != ENOENT) return mapped;
    }
  }
  errno = ENOENT;
  return mapped;
}

// The file as messages name it.
std::string described(const ProcessFile& file) {
  if (file.mapped()) return "pid " + std::to_string(file.pid) + " maps " + file.path;
  if (file.pid != 0) return file.path + " in the root of pid " + std::to_string(file.pid);
  return file.path;
}

// `path` resolved inside the root of process `pid`: absolute symlinks and ".." stay inside it,
// as they do for the process; magic links (/proc/self/...) could lead anywhere and are refused.
UniqueFd locate_in_root(uint32_t pid, const std::string& path) {
  UniqueFd root(
      ::open(("/proc/" + std::to_string(pid) + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) return root;
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  return UniqueFd(
      static_cast<int>(::syscall(SYS_openat2, root.get(), path.c_str(), &how, sizeof(how))));
}

// Finds the file without opening it (O_PATH: a FIFO does not block, a device's driver is not
// called), or returns an invalid descriptor with errno set.
UniqueFd locate(const ProcessFile& file) {
  if (file.pid == 0) return UniqueFd(::open(file.path.c_str(), O_PATH | O_CLOEXEC));
  if (!file.mapped()) return locate_in_root(file.pid, file.path);
  UniqueFd mapped = locate_mapped(file);
  if (mapped || (errno != EPERM && errno != EACCES)) return mapped;
  // Following map_files takes CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE), which a user tracing
  // their own processes lacks: then the mapped name, resolved inside the process's root, and
  // accepted by open_file() only as the very file mapped (same device and inode).
  UniqueFd named = locate_in_root(file.pid, file.path);
  if (!named) errno = EPERM;  // what kept memtrail from the mapping itself
  return named;
}

Error locate_error(const ProcessFile& file, int error_number) {
  if (file.mapped() && error_number == ENOENT) {
    return Error("pid " + std::to_string(file.pid) + " no longer maps " + file.path +
                     " (it exited or unmapped it)",
                 hint_for_errno(error_number));
  }
  std::string operation = file.mapped() ? "open " + map_files_path(file) + " (" + file.path + ")"
                                        : "open " + described(file);
  if (error_number == ENOSYS) {
    return Error(errno_message(operation, error_number),
                 "memtrail needs Linux 5.6 or later (openat2) to open a process's files safely");
  }
  return Error(errno_message(operation, error_number), hint_for_errno(error_number));
}

// Whether the file is the one `file` expects. btrfs and overlayfs report another device to
// stat() than /proc/PID/maps shows (a subvolume's or a layer's, not their superblock's): there
// the inode decides.
bool is_expected(const ProcessFile& file, const struct stat& status, int fd) {
  if (file.inode == 0) return true;  // not known yet: this is the first open
  if (status.st_ino != file.inode) return false;
  if (status.st_dev == file.device) return true;
  struct statfs filesystem {};
  return ::fstatfs(fd, &filesystem) == 0 &&
         (filesystem.f_type == BTRFS_SUPER_MAGIC || filesystem.f_type == OVERLAYFS_SUPER_MAGIC);
}

}  // namespace

ProcessFile mapped_file(uint32_t pid, const Mapping& mapping) {
  return ProcessFile{pid, mapping.path, mapping.start, mapping.end, mapping.device, mapping.inode};
}

ProcessFile file_in_root(uint32_t pid, std::string path) {
  return ProcessFile{pid, std::move(path), 0, 0, 0, 0};
}

std::string OpenedFile::kernel_path() const { return "/proc/self/fd/" + std::to_string(fd.get()); }

OpenedFile open_file(const ProcessFile& file) {
  UniqueFd located = locate(file);
  if (!located) throw locate_error(file, errno);
  struct stat status {};
  if (::fstat(located.get(), &status) != 0) {
    int error_number = errno;
    throw Error(errno_message("stat " + described(file), error_number));
  }
  if (!S_ISREG(status.st_mode)) {
    throw Error(file.mapped() ? described(file) + ", but it is not a regular file"
                              : described(file) + " is not a regular file");
  }
  if (!is_expected(file, status, located.get())) {
    throw Error(file.mapped() ? described(file) + ", but memtrail finds another file there now"
                              : described(file) + " was replaced since memtrail first read it");
  }
  // Opened through the descriptor just checked: the same file, whatever its name leads to now.
  UniqueFd fd(::open(("/proc/self/fd/" + std::to_string(located.get())).c_str(),
                     O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    int error_number = errno;
    throw Error(errno_message("open " + described(file), error_number),
                hint_for_errno(error_number));
  }
  OpenedFile opened{std::move(fd), file};
  if (opened.file.inode == 0) {
    opened.file.device = status.st_dev;
    opened.file.inode = status.st_ino;
  }
  return opened;
}

}  // namespace memtrail::inspect
