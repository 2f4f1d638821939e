// SPDX-License-Identifier: Apache-2.0
// Real memory pressure for paging tests: a memory cgroup, a swap file, workloads spawned into it.
//
// Typical use (declaration order matters: destruction runs bottom-up, so the workloads die
// first, then the cgroup is emptied and removed, and only then is swap turned off, when it no
// longer holds anybody's pages):
//
//   SwapFile::cleanup_stale(); MemoryCgroup::cleanup_stale(); DataFile::cleanup_stale();
//   SwapFile swap(1024);                         // throws FixtureError with the reason
//   DataFile file(96);                           // on disk, not in the page cache
//   MemoryCgroup cgroup;
//   cgroup.set_limit(256 << 20);
//   auto victim = spawn_in_cgroup(cgroup, {THRASH, "idle", "128", "100"});
//   victim.wait_ready(std::chrono::seconds(5));
//
// Everything here throws FixtureError (a std::runtime_error naming the operation, the object
// and strerror) from constructors and actions; destructors log to stderr and never throw.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace memtrail::testing {

class FixtureError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where this host keeps memory cgroups, found in /proc/self/mountinfo.
struct CgroupLayout {
  bool v1 = false;           // memory controller on a cgroup v1 hierarchy (hybrid or legacy)
  std::string memory_root;   // v1: /sys/fs/cgroup/memory; v2: the cgroup2 mount
  std::string unified_root;  // the cgroup2 mount (PSI lives there), or "" on a legacy-only host

  // Throws FixtureError when no memory controller is mounted. The path is a parameter only so
  // that the v2 branch can be exercised with a made-up mount table on a hybrid host.
  static CgroupLayout detect(const std::string& mountinfo = "/proc/self/mountinfo");
};

// Cumulative stall times from a PSI file (`total=` in microseconds).
struct PsiTotals {
  uint64_t some_us = 0;
  uint64_t full_us = 0;
};
PsiTotals read_psi(const std::string& pressure_file);

// A freshly created memory cgroup, `memtrail-test-<creator pid>-<n>` at the top of the memory
// hierarchy and, on hybrid hosts, of the unified one (same name) so that PSI is kept for it.
// The destructor SIGKILLs whatever is still inside, waits (bounded) until the cgroup is empty,
// reaps those that are our children, and removes the directories.
class MemoryCgroup {
 public:
  MemoryCgroup();
  ~MemoryCgroup();
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  // v1 memory.limit_in_bytes, v2 memory.max. Swap stays unlimited (v1 memsw, v2 swap.max).
  void set_limit(uint64_t bytes);
  // Moves a running process into the cgroup in every hierarchy. Pages it touched before stay
  // charged where they were: use spawn_in_cgroup() for workloads.
  void add(pid_t pid) const;

  const std::string& name() const { return name_; }
  // As /proc/PID/cgroup shows it: "/memtrail-test-...".
  std::string path() const { return "/" + name_; }
  const std::string& memory_dir() const { return memory_dir_; }
  // "" when the host has no cgroup v2 hierarchy (no per-cgroup PSI).
  const std::string& unified_dir() const { return unified_dir_; }
  std::string pressure_file() const;
  bool v1() const { return layout_.v1; }
  // cgroup.procs of every hierarchy the cgroup lives in (memory first).
  std::vector<std::string> procs_files() const;

  // Members of the memory cgroup (tgids).
  std::vector<pid_t> pids() const;
  PsiTotals pressure() const;  // throws if there is no pressure file
  // memory.stat as name -> value (v1 and v2 names differ: v1 "swap", "rss"; v2 "anon").
  std::map<std::string, uint64_t> memory_stat() const;
  uint64_t usage_bytes() const;  // v1 memory.usage_in_bytes, v2 memory.current
  uint64_t swap_bytes() const;   // v1 memory.stat "swap", v2 memory.swap.current

  // SIGKILLs every member until the cgroup is empty; false if members remain after `timeout`.
  bool kill_all(std::chrono::milliseconds timeout) const;

  // Removes memtrail-test-* cgroups whose creator pid is gone (killing what is left in them).
  // Returns how many were removed.
  static int cleanup_stale();

 private:
  CgroupLayout layout_;
  std::string name_;
  std::string memory_dir_;
  std::string unified_dir_;
};

// A swap file `<directory>/memtrail-test-swap-<pid>-<n>`, fully allocated (fallocate, or
// zeros where that is unsupported), mode 0600, with a swap header, switched on with swapon(2).
// The destructor calls swapoff(2) and unlinks it. Destroy it after the processes using it.
class SwapFile {
 public:
  explicit SwapFile(size_t mib, const std::string& directory = "/var/tmp");
  ~SwapFile();
  SwapFile(const SwapFile&) = delete;
  SwapFile& operator=(const SwapFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size_bytes() const { return bytes_; }
  // Bytes of this file in use, from /proc/swaps.
  uint64_t used_bytes() const;

  // Turns off and deletes memtrail-test-swap-* files of dead creators in `directory`.
  static int cleanup_stale(const std::string& directory = "/var/tmp");

 private:
  std::string path_;
  uint64_t bytes_ = 0;
  bool active_ = false;
};

// Writes a `mib` MiB file of non-zero data at `path` (not on tmpfs) and makes sure none of its
// pages stays in the page cache: pages written here would stay charged to the writer's cgroup,
// and a reader in a test cgroup would find them resident instead of faulting them in.
void make_file(const std::string& path, size_t mib);
// Pages of `path` in the page cache now (mincore).
size_t resident_pages(const std::string& path);

// make_file() at `<directory>/memtrail-test-data-<pid>-<n>`; unlinked by the destructor.
class DataFile {
 public:
  explicit DataFile(size_t mib, const std::string& directory = "/var/tmp");
  ~DataFile();
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;

  const std::string& path() const { return path_; }
  static int cleanup_stale(const std::string& directory = "/var/tmp");

 private:
  std::string path_;
};

// A workload started by spawn_in_cgroup(): stdout and stderr are pipes, stdin is /dev/null.
// The destructor stops it (SIGTERM, then SIGKILL) and reaps it.
class CgroupProcess {
 public:
  CgroupProcess(pid_t pid, int stdout_fd, int stderr_fd);
  ~CgroupProcess();
  CgroupProcess(CgroupProcess&& other) noexcept;
  CgroupProcess& operator=(CgroupProcess&& other) noexcept;
  CgroupProcess(const CgroupProcess&) = delete;
  CgroupProcess& operator=(const CgroupProcess&) = delete;

  pid_t pid() const { return pid_; }

  // Next stdout line (without '\n'), or nullopt at end of file or after `timeout`.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  // Reads stdout until a line starts with `prefix`; returns it, or nullopt.
  std::optional<std::string> wait_for_line(const std::string& prefix,
                                           std::chrono::milliseconds timeout);
  // Waits for "ready <pid>"; throws FixtureError (with the child's stderr) otherwise.
  void wait_ready(std::chrono::milliseconds timeout);
  // Every complete stdout line available right now, without waiting.
  std::vector<std::string> available_lines();
  // What the child wrote to stderr so far (read without waiting).
  std::string stderr_text();

  // Waits up to `timeout` for the process to exit on its own; returns its exit code (128 +
  // signal when killed by one, e.g. 137 for an OOM kill), or nullopt while it still runs.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // SIGTERM, up to `grace` to exit, then SIGKILL; reaps. Returns the exit code (128 + signal
  // when killed by one). Idempotent.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(3));
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  struct Stream {
    int fd = -1;
    std::string buffer;
    bool eof = false;
  };
  bool fill(Stream& stream, std::chrono::milliseconds timeout);
  std::optional<int> try_reap();
  void close_all();

  pid_t pid_ = -1;
  Stream stdout_, stderr_;
  std::optional<int> exit_code_;
};

// Forks; the child joins the cgroup in every hierarchy (writes itself to cgroup.procs) BEFORE
// exec, so every page the workload touches is charged to the cgroup; then execs argv[0] (a
// path). Throws FixtureError when the join or the exec fails. The child gets SIGKILL when the
// forking thread dies (PR_SET_PDEATHSIG), so a killed test leaves no workload running.
CgroupProcess spawn_in_cgroup(const MemoryCgroup& cgroup, const std::vector<std::string>& argv);

// Per-process paging numbers from /proc/PID/stat and /proc/PID/status (nullopt once gone).
struct ProcessMemory {
  uint64_t minflt = 0;
  uint64_t majflt = 0;
  uint64_t rss_kib = 0;   // VmRSS
  uint64_t anon_kib = 0;  // RssAnon
  uint64_t file_kib = 0;  // RssFile
  uint64_t swap_kib = 0;  // VmSwap
};
std::optional<ProcessMemory> read_process_memory(pid_t pid);

// Samples the cgroup's PSI every `window` until the stall share of one window (full, or some
// when `use_some`) reaches `share` (0..1); returns the share reached, or nullopt at `timeout`.
std::optional<double> wait_for_pressure(const MemoryCgroup& cgroup, double share, bool use_some,
                                        std::chrono::milliseconds window,
                                        std::chrono::milliseconds timeout);

}  // namespace memtrail::testing
