// SPDX-License-Identifier: Apache-2.0
// The guardian process: continues the processes memtrail held when memtrail dies holding them.
#include "tracer/hold_guardian.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "alloc_events.h"
#include "common/error.h"

namespace memtrail::tracer {

namespace {

// The guardian's descriptors, at fixed numbers (every other one is closed).
constexpr int kCommandFd = 3;   // to memtrail: 'r' once ready; from it: 'q' once it let go
constexpr int kMemtrailFd = 4;  // pidfd of memtrail: readable once it is gone
constexpr int kHeldFd = 5;      // the BPF map held_processes
// More entries than the map can hold: the scan ends even if a removal kept failing.
constexpr int kMaxScanned = 1 << 16;

// How /proc/PID/stat counts a start time from the start_boottime BPF records.
struct StartClock {
  uint64_t boot_offset_ns = 0;  // this time namespace's boottime offset
  uint64_t ns_per_tick = 10'000'000;
};

// The guardian is a fork of memtrail, which may have threads: from the fork on it calls only
// async-signal-safe functions (no allocation, no locks, no stdio).

// Appends `number` in decimal to `text` (of `capacity` bytes) at `length`, as far as it fits.
void append_decimal(char* text, size_t capacity, size_t& length, uint64_t number) {
  char digits[24];
  size_t count = 0;
  do {
    digits[count++] = static_cast<char>('0' + number % 10);
    number /= 10;
  } while (number != 0);
  while (count > 0 && length < capacity) text[length++] = digits[--count];
}

void say(const char* first, uint64_t number, const char* last) {
  char text[160];
  size_t length = 0;
  auto add = [&](const char* part) {
    for (; *part && length < sizeof(text); ++part) text[length++] = *part;
  };
  add(first);
  append_decimal(text, sizeof(text), length, number);
  add(last);
  ssize_t ignored = ::write(STDERR_FILENO, text, length);
  (void)ignored;
}

// The start time of process `pid` in clock ticks since boot (the 22nd field of /proc/PID/stat),
// or -1 when it cannot be read.
int64_t start_ticks(uint32_t pid) {
  char path[40] = "/proc/";
  size_t length = 6;
  append_decimal(path, sizeof(path), length, pid);  // 10 digits at most: "/stat" still fits
  std::memcpy(path + length, "/stat", 6);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char text[1024];
  ssize_t got = ::read(fd, text, sizeof(text) - 1);
  ::close(fd);
  if (got <= 0) return -1;
  text[got] = '\0';
  // The name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
  const char* field = std::strrchr(text, ')');
  if (!field) return -1;
  ++field;  // " S ..." : field 3 on
  for (int skipped = 2; skipped < 21; ++skipped) {
    field = std::strchr(field + 1, ' ');
    if (!field) return -1;
  }
  int64_t ticks = 0;
  for (++field; *field >= '0' && *field <= '9'; ++field) ticks = ticks * 10 + (*field - '0');
  return ticks;
}

// Continues `key.tgid` if the PID still names the process held (its start time is the one BPF
// recorded): returns whether it did. The pidfd is opened first: while its process lives, the
// PID names it, so the start time read is its own, and the signal goes to it alone.
bool continue_held(const memtrail_held_key& key, uint64_t started_ns, const StartClock& clock) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, key.tgid, 0));
  if (pidfd < 0) return false;  // gone (reaped)
  bool continued = false;
  int64_t ticks = start_ticks(key.tgid);
  pollfd exited{pidfd, POLLIN, 0};
  if (ticks >= 0 &&
      static_cast<uint64_t>(ticks) == (started_ns + clock.boot_offset_ns) / clock.ns_per_tick &&
      ::poll(&exited, 1, 0) == 0) {
    continued = ::syscall(SYS_pidfd_send_signal, pidfd, SIGCONT, nullptr, 0) == 0;
  }
  ::close(pidfd);
  return continued;
}

// A program that began before holds_released was set may still run: the kernel runs the exec
// tracepoint's programs and non-sleepable uprobe programs (Py_FinalizeEx's) in RCU read-side
// sections, so after an RCU grace period none does. membarrier's global command waits for one
// (synchronize_rcu); where it cannot (nohz_full CPUs), 100 ms do, as a run takes microseconds.
void wait_for_running_programs() {
  if (::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) return;
  timespec pause{0, 100'000'000};
  while (::nanosleep(&pause, &pause) != 0 && errno == EINTR) {
  }
}

// Continues every process whose hold is still recorded, and empties the map.
void continue_all_held(const StartClock& clock) {
  memtrail_held_key key{};
  uint64_t started_ns = 0;
  for (int scanned = 0; scanned < kMaxScanned && bpf_map_get_next_key(kHeldFd, nullptr, &key) == 0;
       ++scanned) {
    if (bpf_map_lookup_elem(kHeldFd, &key, &started_ns) == 0 &&
        continue_held(key, started_ns, clock)) {
      say("memtrail: pid ", key.tgid,
          " was held (stopped) when memtrail ended: continued it (SIGCONT)\n");
    }
    bpf_map_delete_elem(kHeldFd, &key);
  }
}

// Closes every descriptor from `first` on (close_range: Linux 5.9; one by one before it).
void close_from(unsigned first) {
  if (::syscall(SYS_close_range, first, ~0u, 0u) == 0) return;
  rlimit limit{};
  unsigned last = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_max != RLIM_INFINITY
                      ? static_cast<unsigned>(std::min<rlim_t>(limit.rlim_max, 1u << 20))
                      : 1u << 20;
  for (unsigned fd = first; fd < last; ++fd) ::close(static_cast<int>(fd));
}

void ignore(int signal_number) {
  struct sigaction action {};
  action.sa_handler = SIG_IGN;
  ::sigaction(signal_number, &action, nullptr);
}

// The anchor: a child that joins memtrail's process group and waits. Its parent (the
// guardian) is in another group of the same session, so memtrail's group is not orphaned when
// memtrail dies; it ends with the guardian (SIGKILL from it, or its death signal).
pid_t start_anchor(pid_t memtrail_group) {
  pid_t guardian = ::getpid();
  pid_t anchor = ::fork();
  if (anchor > 0) {
    // Set from both sides, as shells do: in the group once this returns, whichever runs first.
    if (::setpgid(anchor, memtrail_group) == 0) return anchor;
    ::kill(anchor, SIGKILL);
    ::waitpid(anchor, nullptr, 0);
    return -1;
  }
  if (anchor < 0) return -1;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != guardian) _exit(0);
  ::prctl(PR_SET_NAME, "mt-hold-anchor");
  ::setpgid(0, memtrail_group);
  close_from(0);
  for (;;) ::pause();
}

[[noreturn]] void guard(pid_t memtrail_group, volatile uint32_t* holds_released,
                        const StartClock& clock) {
  ::prctl(PR_SET_NAME, "mt-hold-guard");
  // The terminal's signals are for memtrail's job, not for it: it ends when memtrail does.
  // SIGTTOU ignored: a line on a terminal with `stty tostop` is written, not stopped.
  for (int signal_number : {SIGINT, SIGQUIT, SIGHUP, SIGTSTP, SIGTTIN, SIGTTOU, SIGPIPE}) {
    ignore(signal_number);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);  // memtrail blocks SIGINT and SIGTERM
  if (::setpgid(0, 0) != 0) _exit(1);
  pid_t anchor = start_anchor(memtrail_group);
  if (anchor < 0) _exit(1);
  char started = 'r';
  if (::send(kCommandFd, &started, 1, MSG_NOSIGNAL) != 1) _exit(1);
  pollfd fds[2] = {{kCommandFd, POLLIN, 0}, {kMemtrailFd, POLLIN, 0}};
  for (;;) {
    int ready = ::poll(fds, 2, -1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0 || fds[1].revents != 0) break;  // memtrail is gone, and its links with it
    if (fds[0].revents == 0) continue;
    char command = 0;
    ssize_t got = ::read(kCommandFd, &command, 1);
    if (got == 1 && command == 'q') break;  // memtrail closed its links itself
    // End of file: memtrail is dying; its pidfd says when it is gone.
    if (got == 0 || (got < 0 && errno != EINTR)) fds[0].fd = -1;
  }
  // No hold from here, whatever link is left; then none that began before is still running.
  *holds_released = 1;
  wait_for_running_programs();
  continue_all_held(clock);
  ::kill(anchor, SIGKILL);
  while (::waitpid(anchor, nullptr, 0) < 0 && errno == EINTR) {
  }
  _exit(0);
}

// A copy of `fd` above the guardian's numbers, so that placing them there overwrites none.
int raise_fd(int fd) { return ::fcntl(fd, F_DUPFD, 16); }

StartClock start_clock() {
  StartClock clock;
  long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  if (ticks_per_second > 0) clock.ns_per_tick = 1'000'000'000ull / ticks_per_second;
  // In a time namespace, /proc shows start times with its boottime offset.
  if (FILE* offsets = std::fopen("/proc/self/timens_offsets", "r")) {
    char name[32];
    long long seconds = 0, nanoseconds = 0;
    while (std::fscanf(offsets, "%31s %lld %lld", name, &seconds, &nanoseconds) == 3) {
      if (std::strcmp(name, "boottime") == 0) {
        clock.boot_offset_ns = static_cast<uint64_t>(seconds * 1'000'000'000ll + nanoseconds);
      }
    }
    std::fclose(offsets);
  }
  return clock;
}

}  // namespace

HoldGuardian::HoldGuardian(int held_processes_fd, volatile uint32_t* holds_released) {
  const std::string what = "start the process that continues held processes if memtrail dies";
  StartClock clock = start_clock();
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    int error_number = errno;
    throw Error(errno_message(what + ": socketpair", error_number));
  }
  UniqueFd guardian_end(ends[0]), memtrail_end(ends[1]);
  UniqueFd self(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
  if (!self) {
    int error_number = errno;
    throw Error(errno_message(what + ": pidfd_open", error_number));
  }
  pid_t group = ::getpgrp();
  pid_ = ::fork();
  if (pid_ < 0) {
    int error_number = errno;
    throw Error(errno_message(what + ": fork", error_number));
  }
  if (pid_ == 0) {
    // Its three descriptors at kCommandFd, kMemtrailFd, kHeldFd; stdin and stdout on
    // /dev/null (a pipe memtrail writes reports to must end with memtrail); stderr kept.
    int command = raise_fd(guardian_end.get()), memtrail = raise_fd(self.get()),
        held = raise_fd(held_processes_fd);
    if (command < 0 || memtrail < 0 || held < 0) _exit(1);
    ::dup2(command, kCommandFd);
    ::dup2(memtrail, kMemtrailFd);
    ::dup2(held, kHeldFd);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
    }
    // Nothing else: a BPF link kept here would keep memtrail's probes in after its death.
    close_from(kHeldFd + 1);
    guard(group, holds_released, clock);
  }
  to_guardian_ = std::move(memtrail_end);
  guardian_end.reset();
  // Ready (its anchor in memtrail's group) before any hold; else it exited, saying nothing.
  pollfd answer{to_guardian_.get(), POLLIN, 0};
  char ready = 0;
  int polled;
  while ((polled = ::poll(&answer, 1, 5000)) < 0 && errno == EINTR) {
  }
  if (polled != 1 || ::read(to_guardian_.get(), &ready, 1) != 1 || ready != 'r') {
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    throw Error(what + ": it did not start (out of processes or descriptors?)",
                "check the limits on processes (ulimit -u) and open files (ulimit -n)");
  }
}

HoldGuardian::~HoldGuardian() {
  if (pid_ <= 0) return;
  char quit = 'q';
  ssize_t sent = ::send(to_guardian_.get(), &quit, 1, MSG_NOSIGNAL);
  (void)sent;  // a guardian gone (killed) reads nothing: it is reaped all the same
  to_guardian_.reset();
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace memtrail::tracer
