// SPDX-License-Identifier: Apache-2.0
// Real memory pressure for paging tests: memory cgroups (v1 or v2), swap files, workloads.
#include "paging_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <utility>

namespace memtrail::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kCgroupPrefix = "memtrail-test-";
constexpr const char* kSwapPrefix = "memtrail-test-swap-";
constexpr const char* kDataPrefix = "memtrail-test-data-";
constexpr uint64_t kMiB = 1024 * 1024;

// One counter for every name this process makes, so names never repeat within a run.
std::atomic<int> name_counter{0};

std::string errno_text(int error) { return std::strerror(error); }

[[noreturn]] void fail(const std::string& what, int error) {
  throw FixtureError(what + ": " + errno_text(error));
}

std::optional<std::string> try_read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + path, errno);
  std::string text;
  char chunk[4096];
  for (;;) {
    ssize_t got = ::read(fd, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      int error = errno;
      ::close(fd);
      fail("read " + path, error);
    }
    if (got == 0) break;
    text.append(chunk, static_cast<size_t>(got));
  }
  ::close(fd);
  return text;
}

// cgroupfs reports errors of a write (EINVAL, EBUSY, ...) from write(2) itself, so the file is
// written with one write call and its result is checked, not through a buffered stream.
int write_file_errno(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t wrote = ::write(fd, text.data(), text.size());
  int error = wrote == static_cast<ssize_t>(text.size()) ? 0 : (wrote < 0 ? errno : EIO);
  ::close(fd);
  return error;
}

void write_file(const std::string& path, const std::string& text) {
  if (int error = write_file_errno(path, text)) fail("write \"" + text + "\" to " + path, error);
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// A zombie counts as dead: a killed test process stays one until its parent (often a lazy
// init in containers and VMs) reaps it, and kill(pid, 0) still succeeds on it.
bool pid_alive(pid_t pid) {
  auto stat = try_read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  auto paren = stat->rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat->size()) return true;
  char state = (*stat)[paren + 2];
  return state != 'Z' && state != 'X';
}

// Parses "<prefix><pid>-<n>" (and nothing more); returns the creator pid.
std::optional<pid_t> creator_of(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  unsigned long pid = 0, n = 0;
  int consumed = 0;
  if (std::sscanf(name.c_str() + prefix.size(), "%lu-%lu%n", &pid, &n, &consumed) != 2)
    return std::nullopt;
  if (prefix.size() + static_cast<size_t>(consumed) != name.size() || pid == 0) return std::nullopt;
  return static_cast<pid_t>(pid);
}

std::vector<std::string> list_dir(const std::string& directory, bool directories) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(directory.c_str()), ::closedir);
  if (!dir) return names;
  while (dirent* entry = ::readdir(dir.get())) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    bool is_dir = entry->d_type == DT_DIR;
    if (entry->d_type == DT_UNKNOWN) {
      struct stat st {};
      is_dir = ::stat((directory + "/" + name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    }
    if (is_dir == directories) names.push_back(name);
  }
  return names;
}

std::vector<pid_t> read_pids(const std::string& procs_file) {
  std::vector<pid_t> pids;
  auto text = try_read_file(procs_file);
  if (!text) return pids;
  std::istringstream in(*text);
  long pid = 0;
  while (in >> pid) pids.push_back(static_cast<pid_t>(pid));
  return pids;
}

bool has_word(const std::string& text, const std::string& word, char separator) {
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, separator)) {
    while (!item.empty() && (item.back() == '\n' || item.back() == ' ')) item.pop_back();
    if (item == word) return true;
  }
  return false;
}

// SIGKILLs the members of every procs file until all are empty or `timeout` passes. Members
// that are our children are reaped here too: otherwise they would linger as zombies.
bool kill_members(const std::vector<std::string>& procs_files, const std::string& kill_file,
                  milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    bool empty = true;
    for (const auto& file : procs_files) {
      for (pid_t pid : read_pids(file)) {
        empty = false;
        if (pid == ::getpid()) continue;  // never ourselves (someone called add(getpid()))
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, WNOHANG);
      }
    }
    if (empty) return true;
    // cgroup v2 (Linux 5.14+) kills atomically, also tasks forked while we iterate.
    if (!kill_file.empty() && exists(kill_file)) write_file_errno(kill_file, "1");
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
}

// rmdir, retried briefly: right after the last member exits, a cgroup can still be busy.
bool remove_cgroup_dir(const std::string& dir, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != EBUSY || Clock::now() >= deadline) {
      std::fprintf(stderr, "paging_fixture: rmdir %s: %s\n", dir.c_str(), std::strerror(errno));
      return false;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
}

uint64_t parse_u64(const std::string& text) { return std::strtoull(text.c_str(), nullptr, 10); }

}  // namespace

// ----------------------------------------------------------------------------------------------
// CgroupLayout

CgroupLayout CgroupLayout::detect(const std::string& mountinfo) {
  std::string v1_memory, v2;
  std::istringstream mounts(read_file(mountinfo));
  std::string line;
  while (std::getline(mounts, line)) {
    // "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fs> <source> <super>"
    auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream head(line.substr(0, dash)), tail(line.substr(dash + 3));
    std::string id, parent, dev, root, mount_point, fs, source, super_options;
    head >> id >> parent >> dev >> root >> mount_point;
    tail >> fs >> source >> super_options;
    if (fs == "cgroup" && v1_memory.empty() && has_word(super_options, "memory", ','))
      v1_memory = mount_point;
    else if (fs == "cgroup2" && v2.empty())
      v2 = mount_point;
  }
  CgroupLayout layout;
  if (!v1_memory.empty()) {
    // Hybrid (or legacy) host: the memory controller is bound to v1; the v2 hierarchy, if
    // mounted, has no controllers but still keeps PSI per cgroup.
    layout.v1 = true;
    layout.memory_root = v1_memory;
    layout.unified_root = v2;
    return layout;
  }
  if (!v2.empty()) {
    auto controllers = try_read_file(v2 + "/cgroup.controllers");
    if (controllers && has_word(*controllers, "memory", ' ')) {
      layout.memory_root = v2;
      layout.unified_root = v2;
      return layout;
    }
  }
  throw FixtureError("no memory cgroup controller mounted (checked " + mountinfo +
                     " for a cgroup v1 'memory' hierarchy and for cgroup2 with 'memory' in its "
                     "cgroup.controllers)");
}

PsiTotals read_psi(const std::string& pressure_file) {
  PsiTotals totals;
  std::istringstream in(read_file(pressure_file));
  std::string line;
  bool found = false;
  while (std::getline(in, line)) {
    auto at = line.find("total=");
    if (at == std::string::npos) continue;
    uint64_t value = parse_u64(line.substr(at + 6));
    if (line.rfind("some", 0) == 0) totals.some_us = value, found = true;
    if (line.rfind("full", 0) == 0) totals.full_us = value;
  }
  if (!found) throw FixtureError("no 'some ... total=' line in " + pressure_file);
  return totals;
}

// ----------------------------------------------------------------------------------------------
// MemoryCgroup

MemoryCgroup::MemoryCgroup() : layout_(CgroupLayout::detect()) {
  if (!layout_.v1) {
    // v2: a child only gets memory.* files when its parent delegates the controller.
    std::string control = layout_.memory_root + "/cgroup.subtree_control";
    if (!has_word(read_file(control), "memory", ' ')) {
      if (int error = write_file_errno(control, "+memory"))
        fail("enable the memory controller (write \"+memory\" to " + control + ")", error);
    }
  }
  bool split = !layout_.unified_root.empty() && layout_.unified_root != layout_.memory_root;
  for (int attempt = 0;; ++attempt) {
    name_ = kCgroupPrefix + std::to_string(::getpid()) + "-" + std::to_string(name_counter++);
    memory_dir_ = layout_.memory_root + "/" + name_;
    unified_dir_ = layout_.unified_root.empty() ? std::string()
                   : split                      ? layout_.unified_root + "/" + name_
                                                : memory_dir_;
    // EEXIST: a leftover of an earlier process that had our pid; take the next number.
    if (::mkdir(memory_dir_.c_str(), 0755) != 0) {
      if (errno == EEXIST && attempt < 100) continue;
      fail("mkdir " + memory_dir_, errno);
    }
    if (!split || ::mkdir(unified_dir_.c_str(), 0755) == 0) break;
    int error = errno;
    ::rmdir(memory_dir_.c_str());
    if (error == EEXIST && attempt < 100) continue;
    fail("mkdir " + unified_dir_ + " (unified hierarchy, for PSI)", error);
  }
}

MemoryCgroup::~MemoryCgroup() {
  if (!kill_all(std::chrono::seconds(10)))
    std::fprintf(stderr, "paging_fixture: %s still has members after 10 s\n", name_.c_str());
  if (!unified_dir_.empty() && unified_dir_ != memory_dir_)
    remove_cgroup_dir(unified_dir_, std::chrono::seconds(2));
  remove_cgroup_dir(memory_dir_, std::chrono::seconds(2));
}

void MemoryCgroup::set_limit(uint64_t bytes) {
  write_file(memory_dir_ + (layout_.v1 ? "/memory.limit_in_bytes" : "/memory.max"),
             std::to_string(bytes));
}

void MemoryCgroup::add(pid_t pid) const {
  for (const auto& file : procs_files()) write_file(file, std::to_string(pid));
}

std::string MemoryCgroup::pressure_file() const {
  return unified_dir_.empty() ? std::string() : unified_dir_ + "/memory.pressure";
}

std::vector<std::string> MemoryCgroup::procs_files() const {
  std::vector<std::string> files{memory_dir_ + "/cgroup.procs"};
  if (!unified_dir_.empty() && unified_dir_ != memory_dir_)
    files.push_back(unified_dir_ + "/cgroup.procs");
  return files;
}

std::vector<pid_t> MemoryCgroup::pids() const { return read_pids(memory_dir_ + "/cgroup.procs"); }

PsiTotals MemoryCgroup::pressure() const {
  if (unified_dir_.empty())
    throw FixtureError("no cgroup v2 hierarchy on this host: no per-cgroup PSI for " + name_);
  return read_psi(pressure_file());
}

std::map<std::string, uint64_t> MemoryCgroup::memory_stat() const {
  std::map<std::string, uint64_t> stat;
  std::istringstream in(read_file(memory_dir_ + "/memory.stat"));
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) stat[key] = value;
  return stat;
}

uint64_t MemoryCgroup::usage_bytes() const {
  return parse_u64(
      read_file(memory_dir_ + (layout_.v1 ? "/memory.usage_in_bytes" : "/memory.current")));
}

uint64_t MemoryCgroup::swap_bytes() const {
  if (!layout_.v1) return parse_u64(read_file(memory_dir_ + "/memory.swap.current"));
  auto stat = memory_stat();
  auto swap = stat.find("swap");  // only with swap accounting (memory.memsw.* present)
  return swap == stat.end() ? 0 : swap->second;
}

bool MemoryCgroup::kill_all(milliseconds timeout) const {
  return kill_members(procs_files(), layout_.v1 ? std::string() : memory_dir_ + "/cgroup.kill",
                      timeout);
}

int MemoryCgroup::cleanup_stale() {
  CgroupLayout layout = CgroupLayout::detect();
  std::vector<std::string> roots{layout.memory_root};
  if (!layout.unified_root.empty() && layout.unified_root != layout.memory_root)
    roots.push_back(layout.unified_root);
  int removed = 0;
  for (const auto& root : roots) {
    for (const auto& name : list_dir(root, true)) {
      auto creator = creator_of(name, kCgroupPrefix);
      if (!creator || pid_alive(*creator)) continue;
      std::string dir = root + "/" + name;
      bool is_v2 = root == layout.unified_root;
      kill_members({dir + "/cgroup.procs"}, is_v2 ? dir + "/cgroup.kill" : std::string(),
                   std::chrono::seconds(10));
      if (remove_cgroup_dir(dir, std::chrono::seconds(2))) ++removed;
    }
  }
  return removed;
}

// ----------------------------------------------------------------------------------------------
// SwapFile

namespace {

// The swap header mkswap(8) writes (include/linux/swap.h, union swap_header, version 1): the
// "SWAPSPACE2" signature ends the first page; version and size sit after 1 KiB of boot bits.
void write_swap_header(int fd, const std::string& path, uint64_t bytes) {
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> header(page, 0);
  uint32_t fields[3] = {1, static_cast<uint32_t>(bytes / page - 1), 0};  // version, last_page,
  std::memcpy(header.data() + 1024, fields, sizeof(fields));             // nr_badpages
  for (size_t i = 0; i < 16; ++i)  // a UUID, only so that blkid and swapon --show look normal
    header[1024 + sizeof(fields) + i] =
        static_cast<unsigned char>((::getpid() * 31 + i * 97) & 0xff);
  std::memcpy(header.data() + page - 10, "SWAPSPACE2", 10);
  if (::pwrite(fd, header.data(), page, 0) != static_cast<ssize_t>(page))
    fail("write swap header to " + path, errno);
}

void allocate_file(int fd, const std::string& path, uint64_t bytes) {
  // Swap needs every block allocated: no holes. fallocate is instant where supported; writing
  // zeros works everywhere else.
  if (::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) == 0) return;
  if (errno != EOPNOTSUPP && errno != ENOSYS) fail("fallocate " + path, errno);
  std::vector<char> zeros(kMiB, 0);
  for (uint64_t done = 0; done < bytes; done += zeros.size()) {
    if (::pwrite(fd, zeros.data(), zeros.size(), static_cast<off_t>(done)) !=
        static_cast<ssize_t>(zeros.size()))
      fail("write zeros to " + path, errno);
  }
}

std::string swapon_hint(int error) {
  switch (error) {
    case EPERM:
      return "; hint: swapon needs root (CAP_SYS_ADMIN)";
    case EINVAL:
      return "; hint: the file system must support swap files (ext4, xfs; not tmpfs, overlayfs, "
             "NFS, or btrfs without nocow)";
    case EBUSY:
      return "; hint: already active";
    default:
      return "";
  }
}

// /proc/swaps: "Filename Type Size Used Priority", sizes in KiB; returns {path, used KiB}.
std::vector<std::pair<std::string, uint64_t>> active_swaps() {
  std::vector<std::pair<std::string, uint64_t>> swaps;
  auto text = try_read_file("/proc/swaps");
  if (!text) return swaps;
  std::istringstream in(*text);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string name, type;
    uint64_t size = 0, used = 0;
    if (fields >> name >> type >> size >> used) swaps.emplace_back(name, used);
  }
  return swaps;
}

}  // namespace

SwapFile::SwapFile(size_t mib, const std::string& directory) : bytes_(mib * kMiB) {
  if (mib == 0) throw FixtureError("swap file size must be > 0 MiB");
  struct statvfs fs {};
  if (::statvfs(directory.c_str(), &fs) != 0) fail("statvfs " + directory, errno);
  uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free_bytes < bytes_ + 256 * kMiB)
    throw FixtureError("not enough free space in " + directory + " for a " + std::to_string(mib) +
                       " MiB swap file (" + std::to_string(free_bytes / kMiB) + " MiB free)");
  path_ = directory + "/" + kSwapPrefix + std::to_string(::getpid()) + "-" +
          std::to_string(name_counter++);
  // 0600 from the start: swapon warns about (and a reader could see) swapped-out memory.
  int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) fail("create swap file " + path_, errno);
  try {
    allocate_file(fd, path_, bytes_);
    write_swap_header(fd, path_, bytes_);
    if (::fsync(fd) != 0) fail("fsync " + path_, errno);
  } catch (...) {
    ::close(fd);
    ::unlink(path_.c_str());
    throw;
  }
  ::close(fd);
  if (::swapon(path_.c_str(), 0) != 0) {
    int error = errno;
    ::unlink(path_.c_str());
    throw FixtureError("swapon " + path_ + ": " + errno_text(error) + swapon_hint(error));
  }
  active_ = true;
}

SwapFile::~SwapFile() {
  // swapoff reads every page still in swap back into memory: fast once the processes that
  // owned them are gone, slow (and charged to their cgroup) while they live.
  if (active_ && ::swapoff(path_.c_str()) != 0)
    std::fprintf(stderr, "paging_fixture: swapoff %s: %s\n", path_.c_str(), std::strerror(errno));
  if (!path_.empty() && ::unlink(path_.c_str()) != 0 && errno != ENOENT)
    std::fprintf(stderr, "paging_fixture: unlink %s: %s\n", path_.c_str(), std::strerror(errno));
}

uint64_t SwapFile::used_bytes() const {
  for (const auto& [name, used_kib] : active_swaps())
    if (name == path_) return used_kib * 1024;
  return 0;
}

int SwapFile::cleanup_stale(const std::string& directory) {
  int removed = 0;
  for (const auto& [name, used_kib] : active_swaps()) {
    (void)used_kib;
    auto slash = name.rfind('/');
    if (slash == std::string::npos || name.substr(0, slash) != directory) continue;
    auto creator = creator_of(name.substr(slash + 1), kSwapPrefix);
    if (!creator || pid_alive(*creator)) continue;
    if (::swapoff(name.c_str()) != 0)
      std::fprintf(stderr, "paging_fixture: swapoff %s: %s\n", name.c_str(), std::strerror(errno));
  }
  for (const auto& name : list_dir(directory, false)) {
    auto creator = creator_of(name, kSwapPrefix);
    if (!creator || pid_alive(*creator)) continue;
    std::string path = directory + "/" + name;
    // unlink of an active swap file fails with EBUSY (swapon sets S_SWAPFILE), so a swap
    // file whose swapoff failed above is kept, never left active without a name.
    if (::unlink(path.c_str()) == 0)
      ++removed;
    else
      std::fprintf(stderr, "paging_fixture: unlink %s: %s\n", path.c_str(), std::strerror(errno));
  }
  return removed;
}

// ----------------------------------------------------------------------------------------------
// Data files

size_t resident_pages(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int error = errno;
    ::close(fd);
    fail("fstat " + path, error);
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes == 0) {
    ::close(fd);
    return 0;
  }
  // Mapping does not fault anything in; mincore only reports what the page cache holds.
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  int error = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail("mmap " + path, error);
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  if (::mincore(map, bytes, vec.data()) != 0) {
    error = errno;
    ::munmap(map, bytes);
    fail("mincore " + path, error);
  }
  ::munmap(map, bytes);
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return resident;
}

void make_file(const std::string& path, size_t mib) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("create " + path, errno);
  auto close_and_fail = [&](const std::string& what) {
    int error = errno;
    ::close(fd);
    fail(what, error);
  };
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) close_and_fail("fstatfs " + path);
  if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC) {
    ::close(fd);
    ::unlink(path.c_str());
    throw FixtureError(path +
                       " is on tmpfs/ramfs: its pages cannot be dropped from memory, so "
                       "reading it never faults; use a disk-backed directory such as /var/tmp");
  }
  // Non-zero, varying data: nothing (compression, zero-page detection) can make it cheap.
  std::vector<uint64_t> chunk(kMiB / sizeof(uint64_t));
  uint64_t state = 0x9e3779b97f4a7c15ULL ^ static_cast<uint64_t>(::getpid());
  for (size_t i = 0; i < mib; ++i) {
    for (auto& word : chunk) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
      word = state | 1;
    }
    if (::write(fd, chunk.data(), kMiB) != static_cast<ssize_t>(kMiB))
      close_and_fail("write " + path);
  }
  // The written pages are in the page cache, charged to the cgroup of this (the writer's)
  // process. Writeback must finish before they can be dropped, hence fsync first.
  if (::fsync(fd) != 0) close_and_fail("fsync " + path);
  ::close(fd);
  size_t resident = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open " + path, errno);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    resident = resident_pages(path);
    if (resident == 0) return;
    std::this_thread::sleep_for(milliseconds(20));
  }
  throw FixtureError("cannot drop " + path + " from the page cache: " + std::to_string(resident) +
                     " pages stay resident (is it mapped or locked by another process?)");
}

DataFile::DataFile(size_t mib, const std::string& directory)
    : path_(directory + "/" + kDataPrefix + std::to_string(::getpid()) + "-" +
            std::to_string(name_counter++)) {
  try {
    make_file(path_, mib);
  } catch (...) {
    ::unlink(path_.c_str());
    throw;
  }
}

DataFile::~DataFile() {
  // Unlinking frees its page cache, including pages charged to a test cgroup already removed.
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
    std::fprintf(stderr, "paging_fixture: unlink %s: %s\n", path_.c_str(), std::strerror(errno));
}

int DataFile::cleanup_stale(const std::string& directory) {
  int removed = 0;
  for (const auto& name : list_dir(directory, false)) {
    auto creator = creator_of(name, kDataPrefix);
    if (creator && !pid_alive(*creator) && ::unlink((directory + "/" + name).c_str()) == 0)
      ++removed;
  }
  return removed;
}

// ----------------------------------------------------------------------------------------------
// CgroupProcess

CgroupProcess::CgroupProcess(pid_t pid, int stdout_fd, int stderr_fd) : pid_(pid) {
  stdout_.fd = stdout_fd;
  stderr_.fd = stderr_fd;
}

CgroupProcess::~CgroupProcess() {
  if (pid_ > 0) stop(milliseconds(2000));
  close_all();
}

CgroupProcess::CgroupProcess(CgroupProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      stdout_(std::exchange(other.stdout_, Stream{})),
      stderr_(std::exchange(other.stderr_, Stream{})),
      exit_code_(std::exchange(other.exit_code_, std::nullopt)) {}

CgroupProcess& CgroupProcess::operator=(CgroupProcess&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0) stop(milliseconds(2000));
    close_all();
    pid_ = std::exchange(other.pid_, -1);
    stdout_ = std::exchange(other.stdout_, Stream{});
    stderr_ = std::exchange(other.stderr_, Stream{});
    exit_code_ = std::exchange(other.exit_code_, std::nullopt);
  }
  return *this;
}

void CgroupProcess::close_all() {
  for (Stream* stream : {&stdout_, &stderr_}) {
    if (stream->fd >= 0) ::close(stream->fd);
    stream->fd = -1;
  }
}

// Reads what is there after waiting up to `timeout` for data; false at end of file or timeout.
bool CgroupProcess::fill(Stream& stream, milliseconds timeout) {
  if (stream.eof || stream.fd < 0) return false;
  pollfd descriptor{stream.fd, POLLIN, 0};
  int ready = ::poll(&descriptor, 1, static_cast<int>(timeout.count()));
  if (ready <= 0) return false;  // EINTR counts as a timeout: the caller loops on its deadline
  char chunk[4096];
  ssize_t got = ::read(stream.fd, chunk, sizeof(chunk));
  if (got <= 0) {
    stream.eof = true;
    return false;
  }
  stream.buffer.append(chunk, static_cast<size_t>(got));
  return true;
}

std::optional<std::string> CgroupProcess::read_line(milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto newline = stdout_.buffer.find('\n');
    if (newline != std::string::npos) {
      std::string line = stdout_.buffer.substr(0, newline);
      stdout_.buffer.erase(0, newline + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (stdout_.eof || left.count() <= 0) return std::nullopt;
    fill(stdout_, left);
  }
}

std::optional<std::string> CgroupProcess::wait_for_line(const std::string& prefix,
                                                        milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto line = read_line(std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
    if (!line) return std::nullopt;
    if (line->rfind(prefix, 0) == 0) return line;
  }
  return std::nullopt;
}

void CgroupProcess::wait_ready(milliseconds timeout) {
  std::string expected = "ready " + std::to_string(pid_);
  auto line = wait_for_line("ready ", timeout);
  if (line && *line == expected) return;
  throw FixtureError("pid " + std::to_string(pid_) + " did not print \"" + expected + "\" within " +
                     std::to_string(timeout.count()) + " ms" +
                     (line ? " (it printed \"" + *line + "\")" : std::string()) +
                     "; its stderr: \"" + stderr_text() + "\"");
}

std::vector<std::string> CgroupProcess::available_lines() {
  while (fill(stdout_, milliseconds(0))) {
  }
  std::vector<std::string> lines;
  for (auto newline = stdout_.buffer.find('\n'); newline != std::string::npos;
       newline = stdout_.buffer.find('\n')) {
    lines.push_back(stdout_.buffer.substr(0, newline));
    stdout_.buffer.erase(0, newline + 1);
  }
  return lines;
}

std::string CgroupProcess::stderr_text() {
  while (fill(stderr_, milliseconds(0))) {
  }
  return stderr_.buffer;
}

std::optional<int> CgroupProcess::try_reap() {
  if (exit_code_) return exit_code_;
  int status = 0;
  pid_t result = ::waitpid(pid_, &status, WNOHANG);
  if (result == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  } else if (result < 0 && errno == ECHILD) {
    // Reaped elsewhere (MemoryCgroup's destructor reaps the members it kills). The pid may be
    // reused by now, so it must never be signalled again.
    exit_code_ = 128 + SIGKILL;
  }
  return exit_code_;
}

std::optional<int> CgroupProcess::wait(milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  auto deadline = Clock::now() + timeout;
  while (!try_reap() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  return exit_code_;
}

int CgroupProcess::stop(milliseconds grace) {
  if (pid_ <= 0) return -1;
  // Only signal a pid that is still our unreaped child: such a pid cannot have been reused.
  if (try_reap()) return *exit_code_;
  ::kill(pid_, SIGTERM);
  ::kill(pid_, SIGCONT);  // a stopped (SIGSTOP) workload would hold SIGTERM until the grace ends
  auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    if (try_reap()) return *exit_code_;
    std::this_thread::sleep_for(milliseconds(5));
  }
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return *exit_code_;
}

// ----------------------------------------------------------------------------------------------
// spawn_in_cgroup

CgroupProcess spawn_in_cgroup(const MemoryCgroup& cgroup, const std::vector<std::string>& argv) {
  if (argv.empty()) throw FixtureError("spawn_in_cgroup: empty argv");
  // Everything the child needs is prepared before fork: between fork and exec it may only
  // make async-signal-safe calls (the test process can have other threads).
  std::vector<std::string> procs_files = cgroup.procs_files();
  std::vector<std::string> args = argv;
  std::vector<char*> arg_pointers;
  for (auto& arg : args) arg_pointers.push_back(arg.data());
  arg_pointers.push_back(nullptr);

  int out[2], err[2], status[2];
  if (::pipe2(out, O_CLOEXEC) != 0) fail("pipe", errno);
  if (::pipe2(err, O_CLOEXEC) != 0) {
    int error = errno;
    ::close(out[0]), ::close(out[1]);
    fail("pipe", error);
  }
  // Closed by a successful exec (O_CLOEXEC); before that, the child reports failures on it.
  if (::pipe2(status, O_CLOEXEC) != 0) {
    int error = errno;
    ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
    fail("pipe", error);
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int error = errno;
    for (int fd : {out[0], out[1], err[0], err[1], status[0], status[1]}) ::close(fd);
    fail("fork", error);
  }
  if (pid == 0) {
    // Report = {stage, index, errno}: stage 1 = join cgroup.procs #index, 2 = exec, 3 = setup.
    auto report = [&](int stage, int index) {
      int message[3] = {stage, index, errno};
      ssize_t ignored = ::write(status[1], message, sizeof(message));
      (void)ignored;
      ::_exit(126);
    };
    // Dies with the test: a test killed by SIGKILL leaves no workload thrashing the host.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    for (size_t i = 0; i < procs_files.size(); ++i) {
      int fd = ::open(procs_files[i].c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) report(1, static_cast<int>(i));
      // "0" is the writing process itself, in cgroup v1 and v2 alike.
      if (::write(fd, "0", 1) != 1) report(1, static_cast<int>(i));
      ::close(fd);
    }
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || ::dup2(null_fd, 0) < 0 || ::dup2(out[1], 1) < 0 || ::dup2(err[1], 2) < 0)
      report(3, 0);
    // A clean signal state: blocked or ignored signals would survive exec, and the workload
    // must die of SIGTERM (the test process ignores SIGPIPE, see subprocess.cpp).
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int signal_number : {SIGTERM, SIGINT, SIGPIPE, SIGHUP}) ::signal(signal_number, SIG_DFL);
    ::execv(arg_pointers[0], arg_pointers.data());
    report(2, 0);
  }
  ::close(out[1]);
  ::close(err[1]);
  ::close(status[1]);
  int message[3] = {0, 0, 0};
  ssize_t got;
  while ((got = ::read(status[0], message, sizeof(message))) < 0 && errno == EINTR) {
  }
  ::close(status[0]);
  CgroupProcess process(pid, out[0], err[0]);
  if (got == static_cast<ssize_t>(sizeof(message))) {
    process.stop(milliseconds(0));
    std::string what = message[0] == 1   ? "join cgroup (write to " + procs_files[message[1]] + ")"
                       : message[0] == 2 ? "exec " + argv[0]
                                         : "set up stdio";
    throw FixtureError("spawn_in_cgroup: " + what + ": " + errno_text(message[2]));
  }
  return process;
}

// ----------------------------------------------------------------------------------------------
// Sampling helpers

std::optional<ProcessMemory> read_process_memory(pid_t pid) {
  std::string base = "/proc/" + std::to_string(pid);
  auto stat = try_read_file(base + "/stat");
  auto status = try_read_file(base + "/status");
  if (!stat || !status) return std::nullopt;
  ProcessMemory memory;
  // Fields after "(comm)": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt.
  auto paren = stat->rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat->substr(paren + 1));
  std::string field;
  for (int index = 0; fields >> field; ++index) {
    if (index == 7) memory.minflt = parse_u64(field);
    if (index == 9) {
      memory.majflt = parse_u64(field);
      break;
    }
  }
  std::istringstream lines(*status);
  std::string line;
  while (std::getline(lines, line)) {
    auto value = [&](const char* key, uint64_t& out) {
      if (line.rfind(key, 0) == 0) out = parse_u64(line.substr(std::strlen(key)));
    };
    value("VmRSS:", memory.rss_kib);
    value("RssAnon:", memory.anon_kib);
    value("RssFile:", memory.file_kib);
    value("VmSwap:", memory.swap_kib);
  }
  return memory;
}

std::optional<double> wait_for_pressure(const MemoryCgroup& cgroup, double share, bool use_some,
                                        milliseconds window, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  PsiTotals before = cgroup.pressure();
  auto since = Clock::now();
  while (Clock::now() < deadline) {
    std::this_thread::sleep_for(window);
    PsiTotals after = cgroup.pressure();
    auto now = Clock::now();
    double elapsed_us = std::chrono::duration<double, std::micro>(now - since).count();
    uint64_t stalled = use_some ? after.some_us - before.some_us : after.full_us - before.full_us;
    double reached = static_cast<double>(stalled) / elapsed_us;
    if (reached >= share) return reached;
    before = after;
    since = now;
  }
  return std::nullopt;
}

}  // namespace memtrail::testing
