// SPDX-License-Identifier: Apache-2.0
// Paging workloads for `memtrail paging` tests: a growing culprit, an anon and a file victim.
//
//   thrash grow RATE_MIB_S MAX_MIB   grows anonymous memory at RATE until MAX, then holds it
//   thrash idle MIB PERIOD_MS         allocates MIB once, touches every page every PERIOD ms
//   thrash file PATH PERIOD_MS        reads one byte per page of mmap'd PATH every PERIOD ms
//
// Each prints "ready <pid>" once set up, then progress lines ("pass_ms 0.71" per pass for idle
// and file, "grown_mib N" each second and "full_mib N" for grow), and exits 0 on SIGTERM/SIGINT.
// Only libc: the tests run it inside a memory cgroup where every page must be its own.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)

static volatile sig_atomic_t stop_requested;
static size_t page_size;

static void on_stop(int signal_number) {
  (void)signal_number;
  stop_requested = 1;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

// Sleeps until the absolute monotonic time `until_ms`, or until a stop signal arrives (the
// handler is installed without SA_RESTART, so the signal interrupts the sleep).
static void sleep_until(double until_ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(until_ms / 1e3);
  ts.tv_nsec = (long)((until_ms - (double)ts.tv_sec * 1e3) * 1e6);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  while (!stop_requested && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

// Progress goes out with write(2), never stdio: stdout is made non-blocking when it is a pipe,
// so a test that stops reading cannot freeze a workload (a full pipe drops lines instead).
static void report(const char *format, ...) {
  char line[128];
  va_list args;
  va_start(args, format);
  int length = vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  if (length <= 0) return;
  if ((size_t)length >= sizeof(line)) length = sizeof(line) - 1;
  ssize_t ignored = write(STDOUT_FILENO, line, (size_t)length);
  (void)ignored;
}

static void setup_stdout(void) {
  struct stat st;
  // Only for pipes: O_NONBLOCK on a terminal would leak into the shell that owns it.
  if (fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode)) {
    int flags = fcntl(STDOUT_FILENO, F_GETFL);
    if (flags >= 0) fcntl(STDOUT_FILENO, F_SETFL, flags | O_NONBLOCK);
  }
}

static int usage(void) {
  fprintf(stderr,
          "usage: thrash grow RATE_MIB_S MAX_MIB\n"
          "       thrash idle MIB PERIOD_MS\n"
          "       thrash file PATH PERIOD_MS\n");
  return 2;
}

static int parse_positive(const char *text, long min, long *out) {
  char *end = NULL;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno || end == text || *end || value < min) return -1;
  *out = value;
  return 0;
}

// Private anonymous memory in base pages: transparent huge pages would turn one fault into
// 512 pages and make reclaim, swap and fault counts depend on the host's THP setting.
static unsigned char *map_anon(size_t bytes) {
  void *p =
      mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "thrash: mmap %zu bytes: %s\n", bytes, strerror(errno));
    return NULL;
  }
  madvise(p, bytes, MADV_NOHUGEPAGE);
  return p;
}

// Writes one byte in every page of [begin, end): a write, not a read, so every page is a real
// private page (a read of untouched anon memory maps the shared zero page) and swapped-out
// pages become dirty again, as in a program that works on its data. Stops early on a signal.
static void touch_pages(unsigned char *begin, unsigned char *end) {
  for (unsigned char *p = begin; p < end && !stop_requested; p += page_size)
    *(volatile unsigned char *)p += 1;
}

static int run_grow(long rate_mib_s, long max_mib) {
  size_t max_bytes = (size_t)max_mib * MIB;
  unsigned char *memory = map_anon(max_bytes);
  if (!memory) return 1;
  report("ready %d\n", (int)getpid());

  // Grows on a 10 ms tick to the amount the rate allows by now, so the rate holds even when
  // reclaim makes single touches slow (it then catches up in larger steps).
  const double tick_ms = 10.0;
  double start = now_ms();
  double next_tick = start;
  double next_report = start + 1000.0;
  size_t grown = 0;
  while (!stop_requested && grown < max_bytes) {
    double elapsed_s = (now_ms() - start) / 1e3;
    size_t target = (size_t)(elapsed_s * (double)rate_mib_s * (double)MIB);
    target = target / page_size * page_size;
    if (target > max_bytes) target = max_bytes;
    if (target > grown) {
      touch_pages(memory + grown, memory + target);
      grown = target;
    }
    if (now_ms() >= next_report) {
      report("grown_mib %zu\n", grown / MIB);
      next_report += 1000.0;
    }
    next_tick += tick_ms;
    sleep_until(next_tick);
  }
  if (!stop_requested) report("full_mib %zu\n", grown / MIB);

  // Holds everything; touches only the newest MiB, ten times a second, so the process stays
  // active (and in the LRU's eyes its newest memory stays hot) without growing further.
  size_t hot = grown < MIB ? grown : MIB;
  double next = now_ms();
  while (!stop_requested) {
    touch_pages(memory + grown - hot, memory + grown);
    next += 100.0;
    sleep_until(next);
  }
  return 0;
}

static int run_idle(long mib, long period_ms) {
  size_t bytes = (size_t)mib * MIB;
  unsigned char *memory = map_anon(bytes);
  if (!memory) return 1;
  touch_pages(memory, memory + bytes);
  report("ready %d\n", (int)getpid());

  double next = now_ms();
  while (!stop_requested) {
    double begin = now_ms();
    touch_pages(memory, memory + bytes);
    if (stop_requested) break;
    report("pass_ms %.2f\n", now_ms() - begin);
    // A fixed schedule: a pass that overran its period starts the next one at once.
    next += (double)period_ms;
    if (next < now_ms()) next = now_ms();
    sleep_until(next);
  }
  return 0;
}

static int run_file(const char *path, long period_ms) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "thrash: open %s: %s\n", path, strerror(errno));
    return 1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    fprintf(stderr, "thrash: %s: empty or unreadable\n", path);
    return 1;
  }
  size_t bytes = (size_t)st.st_size;
  const unsigned char *memory = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (memory == MAP_FAILED) {
    fprintf(stderr, "thrash: mmap %s: %s\n", path, strerror(errno));
    return 1;
  }
  close(fd);
  report("ready %d\n", (int)getpid());

  double next = now_ms();
  while (!stop_requested) {
    double begin = now_ms();
    for (size_t offset = 0; offset < bytes && !stop_requested; offset += page_size)
      (void)*(const volatile unsigned char *)(memory + offset);
    if (stop_requested) break;
    report("pass_ms %.2f\n", now_ms() - begin);
    if (period_ms > 0) {
      next += (double)period_ms;
      if (next < now_ms()) next = now_ms();
      sleep_until(next);
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  page_size = (size_t)sysconf(_SC_PAGESIZE);
  setup_stdout();

  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = on_stop;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);

  if (argc != 4) return usage();
  long a = 0, b = 0;
  if (strcmp(argv[1], "grow") == 0) {
    if (parse_positive(argv[2], 1, &a) || parse_positive(argv[3], 1, &b)) return usage();
    return run_grow(a, b);
  }
  if (strcmp(argv[1], "idle") == 0) {
    if (parse_positive(argv[2], 1, &a) || parse_positive(argv[3], 0, &b)) return usage();
    return run_idle(a, b);
  }
  if (strcmp(argv[1], "file") == 0) {
    if (parse_positive(argv[3], 0, &b)) return usage();
    return run_file(argv[2], b);
  }
  return usage();
}
