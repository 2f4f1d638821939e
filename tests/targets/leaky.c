// SPDX-License-Identifier: Apache-2.0
// A program the integration tests drive: each scenario allocates at known sites, after a gate.
//
// Usage: leaky SCENARIO [ARGS...] [--exit]
// Prints "ready PID", waits for a line on stdin (the test sends it once memtrail is attached),
// runs the scenario, prints "line NAME N" for each allocation call it made (N = its source
// line) and "done", then exits if --exit was given, else waits for "quit" or end of input.
#define _GNU_SOURCE  // mremap
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile sink;  // keeps every allocation observable, also at -O2

static void report_line(const char *name, int line) { printf("line %s %d\n", name, line); }

static void wait_for_line(void) {
  char buffer[64];
  if (!fgets(buffer, sizeof(buffer), stdin)) exit(3);
}

__attribute__((noinline)) void leak_malloc(int count, size_t size) {
  int line = 0;
  for (int i = 0; i < count; ++i) {
    line = __LINE__, sink = malloc(size);
    memset(sink, 0xab, size);
  }
  report_line("leak_malloc", line);
}

__attribute__((noinline)) void free_all(int count, size_t size) {
  for (int i = 0; i < count; ++i) {
    void *block = malloc(size);
    sink = block;
    free(block);
  }
}

__attribute__((noinline)) void leak_calloc(int count, size_t size) {
  int line = 0;
  for (int i = 0; i < count; ++i) line = __LINE__, sink = calloc(count, size);
  report_line("leak_calloc", line);
}

// Grows one block with realloc and leaks the last one: the realloc site holds its final size.
__attribute__((noinline)) void leak_realloc(void) {
  void *block = NULL;
  int line = 0;
  for (size_t size = 100; size <= 500; size += 100) line = __LINE__, block = realloc(block, size);
  sink = block;
  report_line("leak_realloc", line);
}

// realloc(NULL, n) allocates, realloc(p, 0) frees: nothing is left.
__attribute__((noinline)) void realloc_null_then_zero(void) {
  void *block = realloc(NULL, 77);
  sink = block;
  sink = realloc(block, 0);
}

// Calls that fail return no memory and must not count as allocations.
__attribute__((noinline)) void failed_calls(void) {
  sink = malloc(SIZE_MAX / 2);
  void *block = malloc(64);
  sink = realloc(block, SIZE_MAX / 2);  // fails: block stays allocated, then is freed
  free(block);
  void *aligned = NULL;
  if (posix_memalign(&aligned, 3, 64) == 0) free(aligned);  // EINVAL: not a power of two
}

__attribute__((noinline)) void leak_posix_memalign(int count, size_t size) {
  int line = 0;
  for (int i = 0; i < count; ++i) {
    void *block = NULL;
    line = __LINE__;
    if (posix_memalign(&block, 64, size) != 0) exit(4);
    sink = block;
  }
  report_line("leak_posix_memalign", line);
}

__attribute__((noinline)) void leak_aligned_alloc(size_t size) {
  int line = __LINE__;
  sink = aligned_alloc(64, size);
  report_line("leak_aligned_alloc", line);
}

// One malloc call reached through two callers with identical frames: at the malloc's return
// the registers are the same for both, only the return address into the caller differs (the
// stack memos of bpf/alloc/stack_walk.bpf.h must tell them apart).
__attribute__((noinline)) void *leak_from_leaf(size_t size) {
  void *block = malloc(size);
  memset(block, 0xcd, size);
  return block;
}

__attribute__((noinline)) void caller_a(size_t size) { sink = leak_from_leaf(size); }

__attribute__((noinline)) void caller_b(size_t size) { sink = leak_from_leaf(size); }

// Threads allocating and freeing at once, each leaking `count` blocks of `size` bytes at one
// site; blocks they hand off are freed by another thread than the one that allocated them.
struct worker_args {
  int count;
  size_t size;
  void *handoff[256];  // allocated by the worker, freed by the main thread
};

__attribute__((noinline)) void leak_in_thread(int count, size_t size) {
  int line = 0;
  for (int i = 0; i < count; ++i) line = __LINE__, sink = malloc(size);
  report_line("leak_in_thread", line);
}

static void *churn_worker(void *arg) {
  struct worker_args *args = arg;
  for (int i = 0; i < 20000; ++i) {
    void *block = malloc(16 + (size_t)(i % 300));
    sink = block;
    free(block);
  }
  for (int i = 0; i < 256; ++i) args->handoff[i] = malloc(24);
  leak_in_thread(args->count, args->size);
  return NULL;
}

static int threads_scenario(int count, size_t size) {
  enum { kWorkers = 4 };
  struct worker_args args[kWorkers];
  pthread_t threads[kWorkers];
  for (int t = 0; t < kWorkers; ++t) {
    args[t].count = count;
    args[t].size = size;
    if (pthread_create(&threads[t], NULL, churn_worker, &args[t]) != 0) return 1;
  }
  for (int t = 0; t < kWorkers; ++t) pthread_join(threads[t], NULL);
  for (int t = 0; t < kWorkers; ++t) {
    for (int i = 0; i < 256; ++i) free(args[(t + 1) % kWorkers].handoff[i]);
  }
  return 0;
}

// Memory over time, for leak verdicts. Each runs for about `seconds`.
// A steady leak: 20 blocks of `size` bytes every 100 ms, never freed.
__attribute__((noinline)) void grow_steadily(double seconds, size_t size) {
  int line = 0;
  for (int step = 0; step < (int)(seconds * 10); ++step) {
    for (int i = 0; i < 20; ++i) line = __LINE__, sink = malloc(size);
    usleep(100000);
  }
  report_line("grow_steadily", line);
}

// An LRU cache of 200 entries: fills during the first third, then evicts its oldest entry for
// each new one. Its memory stays flat once full.
__attribute__((noinline)) void cache_insert(void **slot, size_t size) {
  free(*slot);
  *slot = malloc(size);
}

static void lru_cache(double seconds, size_t size) {
  enum { kEntries = 200 };
  static void *entries[kEntries];
  // kEntries inserts per third of the run: full after the first third.
  useconds_t pause = (useconds_t)(seconds / 3 / kEntries * 1e6);
  for (int i = 0; i < 3 * kEntries; ++i) {
    cache_insert(&entries[i % kEntries], size);  // replaces the oldest once full
    usleep(pause);
  }
}

// Memory that no traced allocator hands out: anonymous mappings, 512 KiB every 100 ms, touched
// so that they count in the process's private memory.
static void mmap_growth(double seconds) {
  for (int step = 0; step < (int)(seconds * 10); ++step) {
    char *chunk = mmap(NULL, 512 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (chunk == MAP_FAILED) exit(7);
    memset(chunk, 1, 512 << 10);
    usleep(100000);
  }
}

// Memory that malloc hands out, every byte written: 8 blocks of 64 KiB (from the heap, under
// malloc's mmap threshold) every 100 ms, never freed.
__attribute__((noinline)) void heap_growth(double seconds) {
  int line = 0;
  for (int step = 0; step < (int)(seconds * 10); ++step) {
    for (int i = 0; i < 8; ++i) {
      line = __LINE__, sink = malloc(64 << 10);
      memset(sink, 1, 64 << 10);
    }
    usleep(100000);
  }
  report_line("heap_growth", line);
}

// Memory mapped with system calls, each case at its own site (scenario "regions").
static void *map_anonymous(size_t length) {
  void *region = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) exit(8);
  return region;
}

// `count` mappings of `pages` pages, kept.
__attribute__((noinline)) void leak_mmap(int count, int pages) {
  int line = 0;
  for (int i = 0; i < count; ++i) line = __LINE__, sink = map_anonymous((size_t)pages << 12);
  report_line("leak_mmap", line);
}

// Mapped and unmapped: nothing is left.
__attribute__((noinline)) void mmap_then_munmap(int count) {
  for (int i = 0; i < count; ++i) munmap(map_anonymous(3 << 12), 3 << 12);
}

// 8 pages mapped, the 3rd and 4th unmapped, then the last: 5 pages of one mapping are left.
__attribute__((noinline)) void partial_munmap(void) {
  int line = __LINE__;
  char *region = map_anonymous(8 << 12);
  munmap(region + (2 << 12), 2 << 12);
  munmap(region + (7 << 12), 1 << 12);
  sink = region;
  report_line("partial_munmap", line);
}

// 2 pages grown to 6 by mremap (moved if it must be): one mapping of 6 pages.
__attribute__((noinline)) void grow_by_mremap(void) {
  int line = __LINE__;
  char *region = map_anonymous(2 << 12);
  void *grown = mremap(region, 2 << 12, 6 << 12, MREMAP_MAYMOVE);
  if (grown == MAP_FAILED) exit(9);
  sink = grown;
  report_line("grow_by_mremap", line);
}

// Not memory a leak can hold: address space reserved with PROT_NONE, a shared mapping, a
// mapping of a file.
__attribute__((noinline)) void untracked_mappings(void) {
  sink = mmap(NULL, 16 << 12, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  sink = mmap(NULL, 16 << 12, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  FILE *self = fopen("/proc/self/exe", "r");
  if (self) {
    sink = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fileno(self), 0);
    fclose(self);
  }
}

// malloc maps a block this large itself: it is a malloc site, counted once, not an mmap.
__attribute__((noinline)) void leak_large_malloc(size_t size) {
  int line = __LINE__;
  sink = malloc(size);
  report_line("leak_large_malloc", line);
}

// The program break moved by the program itself, outside malloc.
__attribute__((noinline)) void grow_break(int pages) {
  int line;
  void *old_break = (line = __LINE__, sbrk(pages << 12));
  if (old_break == (void *)-1) exit(10);
  sink = old_break;
  report_line("grow_break", line);
}

// The child of scenario "fork": waits until memtrail has attached to it (half a second), leaks
// `count` blocks of `size` bytes, frees one block inherited from its parent.
__attribute__((noinline)) void leak_in_child(int count, size_t size, void *inherited) {
  usleep(500000);
  free(inherited);
  int line = 0;
  for (int i = 0; i < count; ++i) line = __LINE__, sink = malloc(size);
  report_line("leak_in_child", line);
}

// mimalloc loaded with dlopen after memtrail attached (scenario "dlopen"): `count` blocks of
// `size` bytes leaked through its mi_zalloc, one more allocated and freed with mi_free.
// (jemalloc and tcmalloc use initial-exec TLS: glibc refuses to dlopen them.)
typedef void *(*zalloc_fn)(size_t);
typedef void (*free_fn)(void *);
__attribute__((noinline)) int leak_with_mi_zalloc(int count, size_t size) {
  void *library = dlopen("libmimalloc.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    fprintf(stderr, "leaky: %s (install libmimalloc2.0)\n", dlerror());
    return 14;
  }
  zalloc_fn zalloc = (zalloc_fn)dlsym(library, "mi_zalloc");
  free_fn release = (free_fn)dlsym(library, "mi_free");
  if (!zalloc || !release) return 15;
  usleep(1500000);  // memtrail reads the process's mappings every second
  int line = 0;
  for (int i = 0; i < count; ++i) line = __LINE__, sink = zalloc(size);
  release(zalloc(size));
  report_line("leak_with_mi_zalloc", line);
  return 0;
}

// A pool allocated once at start-up and kept: never a leak.
__attribute__((noinline)) void startup_pool(double seconds, size_t size) {
  static void *pool[64];
  for (int i = 0; i < 64; ++i) pool[i] = malloc(size);
  usleep((useconds_t)(seconds * 1e6));
}

// malloc/free in a loop, checking its own data: used to show that killing memtrail does not
// disturb the target. Prints "ok N" when told to quit.
static int busy_loop(void) {
  void *window[64] = {0};
  unsigned long rounds = 0;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (window[i]) {
        unsigned char *bytes = window[i];
        for (int j = 0; j < 32; ++j) {
          if (bytes[j] != (unsigned char)(i + j)) {
            printf("corrupt\n");
            return 1;
          }
        }
        free(window[i]);
      }
      unsigned char *fresh = malloc(32 + (rounds % 200));
      for (int j = 0; j < 32; ++j) fresh[j] = (unsigned char)(i + j);
      window[i] = fresh;
    }
    ++rounds;
    // Poll stdin without blocking the loop for long.
    fd_set readable;
    FD_ZERO(&readable);
    FD_SET(0, &readable);
    struct timeval no_wait = {0, 0};
    if (select(1, &readable, NULL, NULL, &no_wait) > 0) break;
  }
  for (int i = 0; i < 64; ++i) free(window[i]);
  printf("ok %lu\n", rounds);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: leaky SCENARIO [ARGS...] [--exit]\n");
    return 2;
  }
  const char *scenario = argv[1];
  int exit_when_done = strcmp(argv[argc - 1], "--exit") == 0;
  int count = argc > 2 && argv[2][0] != '-' ? atoi(argv[2]) : 7;
  size_t size = argc > 3 && argv[3][0] != '-' ? (size_t)atoll(argv[3]) : 1000;
  setvbuf(stdout, NULL, _IOLBF, 0);

  // Allocated before memtrail attaches: invisible to it; freed after the gate.
  void *early[20];
  for (int i = 0; i < 20; ++i) early[i] = malloc(100);

  printf("ready %d\n", (int)getpid());
  wait_for_line();

  if (strcmp(scenario, "basic") == 0) {
    leak_malloc(count, size);
    free_all(50, 64);
  } else if (strcmp(scenario, "two_callers") == 0) {
    // a, b, b, a, ...: from one call instruction, so that the registers are the same.
    void (*volatile callers[2])(size_t) = {caller_a, caller_b};
    for (int i = 0; i < 3 * count; ++i) callers[i % 3 != 0](size);
  } else if (strcmp(scenario, "preattach") == 0) {
    for (int i = 0; i < 20; ++i) free(early[i]);
    leak_malloc(count, size);
  } else if (strcmp(scenario, "realloc") == 0) {
    leak_realloc();
    realloc_null_then_zero();
    failed_calls();
  } else if (strcmp(scenario, "memalign") == 0) {
    leak_posix_memalign(count, size);
    leak_aligned_alloc(128);
  } else if (strcmp(scenario, "aged") == 0) {
    leak_malloc(count, size);
    printf("first\n");
    wait_for_line();  // the test lets time pass, then asks for a young allocation
    leak_calloc(3, 10);
  } else if (strcmp(scenario, "stdio") == 0) {
    // A stream opened after attach: glibc allocates its buffer on first use and keeps it.
    FILE *log = fopen("/dev/null", "w");
    if (!log) return 6;
    fprintf(log, "kept open\n");
    sink = log;
    leak_malloc(count, size);
  } else if (strcmp(scenario, "grow") == 0) {
    grow_steadily(count, size);  // count: seconds
  } else if (strcmp(scenario, "cache") == 0) {
    lru_cache(count, size);
  } else if (strcmp(scenario, "regions") == 0) {
    leak_mmap(count, 4);
    mmap_then_munmap(10);
    partial_munmap();
    grow_by_mremap();
    untracked_mappings();
    leak_large_malloc(1 << 20);
    grow_break(16);
  } else if (strcmp(scenario, "mmap") == 0) {
    mmap_growth(count);
  } else if (strcmp(scenario, "heap") == 0) {
    heap_growth(count);
  } else if (strcmp(scenario, "pool") == 0) {
    startup_pool(count, size);
  } else if (strcmp(scenario, "threads") == 0) {
    if (threads_scenario(count, size) != 0) return 5;
  } else if (strcmp(scenario, "busy") == 0) {
    return busy_loop();
  } else if (strcmp(scenario, "fork") == 0) {
    // The parent leaks count x size before and after forking; the child leaks 4 x 700 B.
    leak_malloc(count, size);
    void *inherited = malloc(64);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) return 12;
    if (child == 0) {
      leak_in_child(4, 700, inherited);
      printf("child %d\n", (int)getpid());
      fflush(stdout);
      _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 13;
    free(inherited);
  } else if (strcmp(scenario, "dlopen") == 0) {
    int failed = leak_with_mi_zalloc(count, size);
    if (failed) return failed;
  } else if (strcmp(scenario, "exec_into") == 0 && argc > 4) {
    // Leaks, then executes another program (argv[4]): e.g. one linked against jemalloc.
    leak_malloc(count, size);
    printf("exec\n");
    char *new_argv[] = {argv[4], NULL};
    execv(argv[4], new_argv);
    return 11;
  } else if (strcmp(scenario, "exec") == 0) {
    // Leaks, then becomes `leaky basic 2 500`: the same process, a new program.
    leak_malloc(count, size);
    leak_mmap(count, 4);
    printf("exec\n");
    char *new_argv[] = {argv[0], "basic", "2", "500", NULL};
    execv("/proc/self/exe", new_argv);
    return 11;
  } else {
    fprintf(stderr, "leaky: unknown scenario %s\n", scenario);
    return 2;
  }
  printf("done\n");
  if (exit_when_done) return 0;
  char buffer[64];
  while (fgets(buffer, sizeof(buffer), stdin) && strncmp(buffer, "quit", 4) != 0) {
  }
  return 0;
}
