// SPDX-License-Identifier: Apache-2.0
// Opening a traced process's files: through its mapping, by a name inside its root, regular
// files only, the expected file only, never blocking.
#include "inspect/process_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"

namespace memtrail::inspect {
namespace {

// A scratch directory, removed with what it holds.
struct ScratchDir {
  ScratchDir() {
    char pattern[] = "/tmp/memtrail-process-file-XXXXXX";
    path = mkdtemp(pattern);
  }
  ~ScratchDir() { std::filesystem::remove_all(path); }
  std::string path;
};

std::string error_of(const ProcessFile& file) {
  try {
    open_file(file);
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

uint32_t own_pid() { return static_cast<uint32_t>(getpid()); }

TEST(ProcessFile, AFifoIsRefusedAtOnceNeverOpened) {
  ScratchDir dir;
  std::string fifo = dir.path + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // Opened for reading without a writer, a FIFO would block here for good.
  EXPECT_EQ(error_of(file_in_root(0, fifo)), fifo + " is not a regular file");
  EXPECT_EQ(error_of(file_in_root(own_pid(), fifo)),
            fifo + " in the root of pid " + std::to_string(own_pid()) + " is not a regular file");
  EXPECT_NE(error_of(file_in_root(0, dir.path)).find("is not a regular file"), std::string::npos);
}

TEST(ProcessFile, ANameIsOpenedOnceKnownAsThatFileOnly) {
  ScratchDir dir;
  std::string path = dir.path + "/lib.so";
  std::ofstream(path) << "first";
  OpenedFile first = open_file(file_in_root(own_pid(), path));
  struct stat status {};
  ASSERT_EQ(fstat(first.fd.get(), &status), 0);
  EXPECT_EQ(first.file.inode, status.st_ino);
  EXPECT_EQ(first.file.device, status.st_dev);
  // The kernel's path for it leads to the same file.
  struct stat through_kernel_path {};
  ASSERT_EQ(stat(first.kernel_path().c_str(), &through_kernel_path), 0);
  EXPECT_EQ(through_kernel_path.st_ino, status.st_ino);
  // Replaced under the same name: not the file read before.
  std::filesystem::remove(path);
  std::ofstream(path) << "second";
  EXPECT_NE(error_of(first.file).find("was replaced since memtrail first read it"),
            std::string::npos);
  EXPECT_NE(error_of(file_in_root(0, dir.path + "/missing.so")).find("No such file"),
            std::string::npos);
}

TEST(ProcessFile, AMappedFileIsOpenedAsTheFileMapped) {
  ScratchDir dir;
  std::string path = dir.path + "/mapped.so";
  std::ofstream(path) << std::string(8192, 'x');
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto* region = static_cast<char*>(mmap(nullptr, 8192, PROT_READ, MAP_PRIVATE, fd, 0));
  close(fd);
  ASSERT_NE(region, MAP_FAILED);
  auto mappings = read_proc_maps(own_pid());
  ASSERT_TRUE(mappings);
  const Mapping* mapping = nullptr;
  for (const auto& candidate : *mappings) {
    if (candidate.start == reinterpret_cast<uint64_t>(region)) mapping = &candidate;
  }
  ASSERT_NE(mapping, nullptr);
  ProcessFile file = mapped_file(own_pid(), *mapping);
  EXPECT_TRUE(file.mapped());
  EXPECT_EQ(file.path, path);
  OpenedFile opened = open_file(file);
  struct stat status {};
  ASSERT_EQ(fstat(opened.fd.get(), &status), 0);
  EXPECT_EQ(status.st_ino, mapping->inode);
  // Another file expected there: refused.
  ProcessFile other = file;
  other.inode += 1;
  EXPECT_NE(error_of(other).find("memtrail finds another file there now"), std::string::npos);
  // Split in two since the maps were read (as mprotect, or the loader at work, does): the
  // mapping read is gone, the file is still mapped.
  ASSERT_EQ(mprotect(region + 4096, 4096, PROT_NONE), 0);
  EXPECT_NO_THROW(open_file(file));
  // Deleted, it is still there to read through the mapping (which takes CAP_SYS_ADMIN).
  std::filesystem::remove(path);
  if (geteuid() == 0) {
    EXPECT_NO_THROW(open_file(file));
  } else {
    EXPECT_NE(error_of(file).find("Operation not permitted"), std::string::npos);
  }
  munmap(region, 8192);
  EXPECT_NE(error_of(file).find("no longer maps " + path), std::string::npos) << error_of(file);
}

}  // namespace
}  // namespace memtrail::inspect
