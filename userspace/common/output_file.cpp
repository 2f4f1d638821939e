// SPDX-License-Identifier: Apache-2.0
// Output files: checked before a run, written whole or reported as failed (see output_file.h).
#include "common/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "common/error.h"
#include "common/unique_fd.h"

namespace memtrail {
namespace {

std::string temporary_path_for(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

// The directory a new file at `path` goes into.
std::string parent_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

[[noreturn]] void fail_check(const std::string& option, const std::string& path,
                             const std::string& reason) {
  throw Error("cannot write " + option + " " + path + ": " + reason);
}

[[noreturn]] void fail_write(const std::string& path, const std::string& reason) {
  throw Error("writing " + path + " failed: " + reason);
}

// Writes all of `content` to `fd`; the errno of the failure, or 0. A write that makes no
// progress is ENOSPC, as the kernel would say on the next attempt.
int write_all(int fd, const std::string& content) {
  size_t done = 0;
  while (done < content.size()) {
    ssize_t written = ::write(fd, content.data() + done, content.size() - done);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (written == 0) return ENOSPC;
    done += static_cast<size_t>(written);
  }
  return 0;
}

bool is_special(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && !S_ISREG(info.st_mode) && !S_ISDIR(info.st_mode);
}

}  // namespace

void check_output_path(const std::string& path, const std::string& option) {
  if (path.empty()) fail_check(option, "''", "an empty path");
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) {
      fail_check(option, path,
                 "it is a directory; give a file name, e.g. " +
                     (path.back() == '/' ? path : path + "/") + "report");
    }
    if (!S_ISREG(info.st_mode)) {
      // A device or FIFO is written in place: its permission is all there is to check.
      if (::access(path.c_str(), W_OK) != 0) fail_check(option, path, std::strerror(errno));
      return;
    }
  } else if (errno != ENOENT) {
    // ENOTDIR: a component of the path is a file; EACCES: a directory cannot be searched.
    fail_check(option, path, std::strerror(errno));
  }
  if (path.back() == '/') fail_check(option, path, "a directory name, not a file name");
  std::string parent = parent_of(path);
  struct stat parent_info {};
  if (::stat(parent.c_str(), &parent_info) != 0) {
    int error_number = errno;
    fail_check(option, path,
               error_number == ENOENT ? "directory " + parent + " does not exist"
                                      : parent + ": " + std::strerror(error_number));
  }
  if (!S_ISDIR(parent_info.st_mode)) fail_check(option, path, parent + " is not a directory");
  // Creating a file is the only sure test: permissions, a read-only mount, ACLs, quotas.
  std::string temporary = temporary_path_for(path);
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) {
    int error_number = errno;
    fail_check(option, path,
               "cannot create files in " + parent + " (" + std::strerror(error_number) + ")");
  }
  fd.reset();
  ::unlink(temporary.c_str());
}

void write_output_file(const std::string& content, const std::string& path) {
  if (is_special(path)) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    if (!fd) fail_write(path, std::strerror(errno));
    int error_number = write_all(fd.get(), content);
    if (error_number == 0 && ::close(fd.release()) != 0) error_number = errno;
    if (error_number != 0) fail_write(path, std::strerror(error_number));
    return;
  }
  std::string temporary = temporary_path_for(path);
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) fail_write(path, std::strerror(errno));
  int error_number = write_all(fd.get(), content);
  // A full disk or quota may only show when the data reaches it: at fsync, or close on NFS.
  if (error_number == 0 && ::fsync(fd.get()) != 0) error_number = errno;
  if (error_number == 0 && ::close(fd.release()) != 0) error_number = errno;
  if (error_number == 0 && std::rename(temporary.c_str(), path.c_str()) != 0) error_number = errno;
  if (error_number != 0) {
    ::unlink(temporary.c_str());
    fail_write(path, std::strerror(error_number));
  }
}

void write_stdout(const std::string& content) {
  std::cout.flush();
  int error_number = write_all(STDOUT_FILENO, content);
  if (error_number != 0 && error_number != EPIPE) {
    throw Error("writing the report to stdout failed: " + std::string(std::strerror(error_number)));
  }
}

}  // namespace memtrail
