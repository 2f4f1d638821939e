// SPDX-License-Identifier: Apache-2.0
// The library half of unwind_chain's call chain (see unwind_chain.c): lib_level_one ->
// lib_level_two -> malloc, built like distribution code (-O2 -fomit-frame-pointer), so that
// only call-frame information can walk through its frames.
// Built a second time as unwind_plugin.so (UNWIND_PLUGIN), which unwind_chain dlopen()s: the
// same functions under their own names, so that neither copy binds to the other's.
#ifdef UNWIND_PLUGIN
#define lib_level_one plugin_level_one
#define lib_level_two plugin_level_two
#define lib_kept plugin_kept
#define lib_malloc_line plugin_malloc_line
#endif

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

// A real frame, never inlined, cloned or turned into a tail call (see unwind_chain.c).
#define CHAIN_FUNCTION __attribute__((noinline, noclone, used))
#define AFTER_CALL() __asm__ volatile("" ::: "memory")

// The blocks lib_level_one keeps: leaked on purpose, and visible, so not optimized away.
void *volatile lib_kept[64];

static int malloc_line;  // source line of the malloc call below

// The line of lib_level_two's malloc call, for the test's line check.
int lib_malloc_line(void) { return malloc_line; }

CHAIN_FUNCTION void *lib_level_two(size_t bytes) {
  volatile unsigned char scratch[72];  // a frame of its own size: the CFA is rsp + something
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)(i ^ bytes);
  malloc_line = __LINE__ + 1;
  unsigned char *block = malloc(bytes);
  AFTER_CALL();
  if (!block) abort();
  memset(block, scratch[bytes % sizeof(scratch)], bytes);
  return block;
}

CHAIN_FUNCTION int lib_level_one(int count, size_t bytes) {
  volatile unsigned char scratch[152];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)i;
  int kept = 0;
  for (int i = 0; i < count && i < 64; ++i) {
    lib_kept[i] = lib_level_two(bytes);  // one call instruction: one stack, one site
    AFTER_CALL();
    kept += scratch[i % sizeof(scratch)] != 0xff;
  }
  return kept;
}
