// SPDX-License-Identifier: Apache-2.0
// Leaks through every path of glibc's malloc and calloc, for the return-site exactness test.
//
// Usage: alloc_paths COUNT
// Prints "ready PID", waits for a line on stdin, then leaks COUNT blocks at each site below
// and prints "line NAME N" and "bytes NAME ASKED USABLE" per site (USABLE: malloc_usable_size
// summed), then "done", and waits for end of input. Single-threaded first (tcache, the main
// arena without locks, mmapped blocks, calloc, memalign, realloc(NULL), callers that reach
// malloc in turn with the same registers); then with threads
// (the locked main arena, thread arenas, their mmapped blocks and calloc). Calls that fail
// (NULL) on each path come with them; "failed N" before "done" says how many, and "usable SIZE
// USABLE" lines what malloc_usable_size says of a block of each size malloc is called with here
// (measured before "ready", untraced).
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile sink;
static int count;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static void report(const char *name, int line, size_t asked, size_t usable) {
  pthread_mutex_lock(&print_lock);
  printf("line %s %d\nbytes %s %zu %zu\n", name, line, name, asked, usable);
  pthread_mutex_unlock(&print_lock);
}

// Leaks `count` blocks of `function(size)` at one line, named `name`.
#define LEAK(name, call, size)                          \
  __attribute__((noinline)) static void name(void) {    \
    size_t usable = 0;                                  \
    int line = 0;                                       \
    for (int i = 0; i < count; ++i) {                   \
      void *block;                                      \
      line = __LINE__, block = call;                    \
      usable += malloc_usable_size(block);              \
      sink = block;                                     \
    }                                                   \
    report(#name, line, (size_t)count *(size), usable); \
  }

// Sizes of the form 16k + 8 are their own usable size in glibc; the others are not.
LEAK(single_arena, malloc(1000), 1000)
LEAK(single_arena_odd, malloc(100), 100)
LEAK(single_tcache, malloc(72), 72)
LEAK(single_mmapped, malloc(200000), 200000)
LEAK(single_calloc, calloc(3, 40), 120)
LEAK(single_memalign, memalign(64, 200), 200)
LEAK(single_realloc_null, realloc(NULL, 120), 120)
LEAK(threaded_main_arena, malloc(1000), 1000)
LEAK(threaded_main_arena_odd, malloc(100), 100)
LEAK(thread_arena, malloc(300), 300)
LEAK(thread_mmapped, malloc(300000), 300000)
LEAK(thread_calloc, calloc(5, 20), 100)
LEAK(thread_memalign, memalign(128, 500), 500)

// Two callers of malloc in turn, called from one function at the same depth, with the same
// frame: malloc's return site sees the same registers for both, and only the stack tells them
// apart (the site's memo must not take one for the other). They store to different sinks, so
// that the compiler neither merges them nor makes their calls tail calls.
static void *volatile left_sink;
__attribute__((noinline)) static void *alternate_left(size_t size) {
  void *block = malloc(size);
  left_sink = block;
  return block;
}
__attribute__((noinline)) static void *alternate_right(size_t size) {
  void *block = malloc(size);
  sink = block;
  return block;
}
// And one caller of malloc called in turn from two functions alike: the same registers and the
// same caller's frame at the site, a different stack above it.
__attribute__((noinline)) static void *alternate_inner(size_t size) {
  void *block = malloc(size);
  sink = block;
  return block;
}
__attribute__((noinline)) static void *alternate_outer_a(size_t size) {
  void *block = alternate_inner(size);
  left_sink = block;
  return block;
}
__attribute__((noinline)) static void *alternate_outer_b(size_t size) {
  void *block = alternate_inner(size);
  sink = block;
  return block;
}
__attribute__((noinline)) static void alternate(void) {
  size_t usable[4] = {0, 0, 0, 0};
  for (int i = 0; i < count; ++i) {
    usable[0] += malloc_usable_size(alternate_left(56));
    usable[1] += malloc_usable_size(alternate_right(56));
    usable[2] += malloc_usable_size(alternate_outer_a(56));
    usable[3] += malloc_usable_size(alternate_outer_b(56));
  }
  report("alternate_left", __LINE__, (size_t)count * 56, usable[0]);
  report("alternate_right", __LINE__, (size_t)count * 56, usable[1]);
  report("alternate_outer_a", __LINE__, (size_t)count * 56, usable[2]);
  report("alternate_outer_b", __LINE__, (size_t)count * 56, usable[3]);
}

// Blocks freed again: frees that must match, and a full tcache for the next malloc(72).
__attribute__((noinline)) static void churn(size_t size, int times) {
  void *blocks[7];
  for (int round = 0; round < times; ++round) {
    for (int i = 0; i < 7; ++i) blocks[i] = malloc(size);
    for (int i = 0; i < 7; ++i) free(blocks[i]);
  }
}

// Calls glibc cannot serve: a size above PTRDIFF_MAX (refused before any arena), one that
// overflows when padded (refused inside _int_malloc), calloc's overflowing product.
static volatile size_t huge = SIZE_MAX;
static int failed;
__attribute__((noinline)) static void fail_calls(void) {
  void *blocks[3] = {malloc(huge), malloc(huge / 2), calloc(huge / 2, 4)};
  for (int i = 0; i < 3; ++i) {
    if (blocks[i]) exit(5);
    __atomic_add_fetch(&failed, 1, __ATOMIC_RELAXED);
  }
}

static void *worker(void *unused) {
  (void)unused;
  churn(40, 3);
  thread_arena();
  thread_mmapped();
  thread_calloc();
  thread_memalign();
  fail_calls();
  return NULL;
}

static void *nothing(void *unused) { return unused; }

// Every size malloc is called with above (realloc(NULL, 120) too), and each one's usable size.
static const size_t malloc_sizes[] = {40, 56, 72, 100, 120, 200, 300, 1000, 200000, 300000};
#define MALLOC_SIZES (sizeof(malloc_sizes) / sizeof(malloc_sizes[0]))
static size_t usable_of[MALLOC_SIZES];

int main(int argc, char **argv) {
  count = argc > 1 ? atoi(argv[1]) : 5;
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (size_t i = 0; i < MALLOC_SIZES; ++i) {
    void *block = malloc(malloc_sizes[i]);
    usable_of[i] = malloc_usable_size(block);
    free(block);
  }
  printf("ready %d\n", (int)getpid());
  char gate[64];
  if (!fgets(gate, sizeof(gate), stdin)) return 3;

  churn(200, 2);
  single_arena();
  single_arena_odd();
  // malloc(72) from a tcache bin filled just before: at most 7 blocks at a time.
  for (int left = count; left > 0; left -= 7) {
    churn(72, 1);
    int saved = count;
    count = left < 7 ? left : 7;
    single_tcache();
    count = saved;
  }
  single_mmapped();
  single_calloc();
  single_memalign();
  single_realloc_null();
  alternate();
  fail_calls();

  // From the first thread on, glibc takes the locked paths for good.
  pthread_t threads[2];
  pthread_create(&threads[0], NULL, nothing, NULL);
  pthread_join(threads[0], NULL);
  churn(1000, 2);
  threaded_main_arena();
  threaded_main_arena_odd();
  for (int i = 0; i < 2; ++i) pthread_create(&threads[i], NULL, worker, NULL);
  for (int i = 0; i < 2; ++i) pthread_join(threads[i], NULL);
  for (size_t i = 0; i < MALLOC_SIZES; ++i)
    printf("usable %zu %zu\n", malloc_sizes[i], usable_of[i]);
  printf("failed %d\ndone\n", failed);
  while (fgets(gate, sizeof(gate), stdin)) {
  }
  return 0;
}
