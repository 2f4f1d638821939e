// SPDX-License-Identifier: Apache-2.0
// A leaking program linked against another allocator (jemalloc, tcmalloc, mimalloc, a custom
// pool) or built static: the allocator tests trace it.
//
// Usage: leaky_alloc: prints "ready PID", waits for a line on stdin, then leaks 5 x 1000 bytes
// through malloc in leak_standard and, built with an allocator's own API, 3 x 300 bytes through
// it in leak_extension; blocks allocated one way and freed through an alias are freed in
// free_through_aliases. Prints "done" and waits for end of input.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The allocators' own entry points, declared here so that only their runtime packages are
// needed (Debian ships the headers in -dev packages).
#if defined(LEAKY_JEMALLOC)
void *mallocx(size_t size, int flags);
void *rallocx(void *ptr, size_t size, int flags);
void dallocx(void *ptr, int flags);
void sdallocx(void *ptr, size_t size, int flags);
#elif defined(LEAKY_TCMALLOC)
void *tc_malloc(size_t size);
void *tc_calloc(size_t count, size_t size);
void tc_free(void *ptr);
#elif defined(LEAKY_MIMALLOC)
void *mi_malloc(size_t size);
void *mi_zalloc(size_t size);
void mi_free(void *ptr);
#elif defined(LEAKY_CUSTOM)
void *pool_alloc(size_t size);
void pool_free(void *block);
#endif

static void *volatile sink;

__attribute__((noinline)) void leak_standard(void) {
  for (int i = 0; i < 5; ++i) {
    sink = malloc(1000);
    memset(sink, 1, 1000);
  }
}

__attribute__((noinline)) void leak_extension(void) {
  for (int i = 0; i < 3; ++i) {
#if defined(LEAKY_JEMALLOC)
    sink = mallocx(300, 0);
#elif defined(LEAKY_TCMALLOC)
    sink = tc_calloc(3, 100);
#elif defined(LEAKY_MIMALLOC)
    sink = mi_zalloc(300);
#elif defined(LEAKY_CUSTOM)
    sink = pool_alloc(300);
#endif
  }
}

// Every block here is freed, some through a function other than the one that allocated it.
__attribute__((noinline)) void free_through_aliases(void) {
  for (int i = 0; i < 20; ++i) {
    void *block = malloc(64);
    sink = block;
    free(block);
#if defined(LEAKY_JEMALLOC)
    block = mallocx(64, 0);
    free(block);  // mallocx -> free
    block = malloc(64);
    sdallocx(block, 64, 0);  // malloc -> sdallocx
    block = mallocx(32, 0);
    block = rallocx(block, 128, 0);
    dallocx(block, 0);  // mallocx -> rallocx -> dallocx
#elif defined(LEAKY_TCMALLOC)
    block = tc_malloc(64);
    free(block);  // tc_malloc -> free
    block = malloc(64);
    tc_free(block);  // malloc -> tc_free
#elif defined(LEAKY_MIMALLOC)
    block = mi_malloc(64);
    free(block);  // mi_malloc -> free
    block = mi_zalloc(64);
    mi_free(block);
    block = malloc(64);
    mi_free(block);  // malloc -> mi_free
#elif defined(LEAKY_CUSTOM)
    block = pool_alloc(64);
    pool_free(block);
#endif
    sink = block;
  }
}

int main(void) {
  printf("ready %d\n", (int)getpid());
  fflush(stdout);
  char line[64];
  if (!fgets(line, sizeof(line), stdin)) return 3;
  leak_standard();
  leak_extension();
  free_through_aliases();
  printf("done\n");
  fflush(stdout);
  while (fgets(line, sizeof(line), stdin)) {
  }
  return 0;
}
