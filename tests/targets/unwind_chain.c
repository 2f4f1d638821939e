// SPDX-License-Identifier: Apache-2.0
// A call chain for the DWARF unwinding tests (memtrail leaks --unwind): built -O2
// -fomit-frame-pointer, as distributions build code, so that no frame of the chain has a frame
// pointer and only call-frame information (.eh_frame) can walk through it:
//
//   main -> chain_outer -> chain_middle -> chain_inner -> lib_level_one -> lib_level_two
//        -> malloc(UNWIND_CHAIN_BYTES), UNWIND_CHAIN_COUNT times, never freed
//
// (lib_level_* live in libunwind_chain_lib.so.) chain_freed allocates and frees: it must not
// appear. No function of the chain keeps a frame address in %rbp: chain_inner loads a
// constant into it on purpose, and -O2 code uses it as a general register anyway (at GCC 12
// lib_level_one keeps a counter there, 0 during the malloc calls), so a frame-pointer walk
// stops after the first frame; CFI rows restore %rbp from where each function saved it.
//
// Usage: unwind_chain. Same protocol as leaky.c: prints "ready PID", waits for a line on stdin,
// runs the chain, prints "line lib_level_two N" (N: the source line of the malloc call in
// unwind_chain_lib.c) and "done", then waits for "quit" or end of input.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The numbers the test asserts (tests/integration/unwind_test.cpp has the same ones).
#define UNWIND_CHAIN_COUNT 4
#define UNWIND_CHAIN_BYTES 12345  // 4 x 12,345 = 49,380 bytes outstanding
#define UNWIND_FREED_COUNT 10
#define UNWIND_FREED_BYTES 777

// Every function of the chain stays a real frame: noinline and noclone keep it a function of
// its own name; the empty asm after each call keeps the call from becoming a tail call (a jmp
// that would leave the caller's frame off the stack, legitimately).
#define CHAIN_FUNCTION __attribute__((noinline, noclone, used))
#define AFTER_CALL() __asm__ volatile("" ::: "memory")

int lib_level_one(int count, size_t bytes);  // libunwind_chain_lib.so
int lib_malloc_line(void);

static void *volatile sink;

static void wait_for_line(void) {
  char buffer[64];
  if (!fgets(buffer, sizeof(buffer), stdin)) exit(3);
}

CHAIN_FUNCTION int chain_inner(int count, size_t bytes) {
  volatile unsigned char scratch[328];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)(i * 7);
  // %rbp as a general register: GCC saves it on entry (a plain push, no frame set up) and
  // restores it on return; in between it holds no frame address.
  __asm__ volatile("mov $0x5, %%ebp" ::: "rbp");
  int kept = lib_level_one(count, bytes);
  AFTER_CALL();
  return kept + scratch[kept % sizeof(scratch)] - scratch[kept % sizeof(scratch)];
}

CHAIN_FUNCTION int chain_middle(int count, size_t bytes) {
  volatile unsigned char scratch[200];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)(i + count);
  int kept = chain_inner(count, bytes);
  AFTER_CALL();
  return kept + (scratch[0] == 0xff);
}

CHAIN_FUNCTION int chain_outer(int count, size_t bytes) {
  volatile unsigned char scratch[96];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)(i ^ 0x5a);
  int kept = chain_middle(count, bytes);
  AFTER_CALL();
  return kept - (scratch[1] == 0xff);
}

// Allocates and frees every block: nothing of it is outstanding.
CHAIN_FUNCTION void chain_freed(int count, size_t bytes) {
  volatile unsigned char scratch[64];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)i;
  for (int i = 0; i < count; ++i) {
    void *block = malloc(bytes);
    AFTER_CALL();
    if (!block) abort();
    memset(block, scratch[i % sizeof(scratch)], bytes);
    sink = block;
    free(block);
    AFTER_CALL();
  }
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("ready %d\n", (int)getpid());
  wait_for_line();

  int kept = chain_outer(UNWIND_CHAIN_COUNT, UNWIND_CHAIN_BYTES);
  AFTER_CALL();
  chain_freed(UNWIND_FREED_COUNT, UNWIND_FREED_BYTES);
  AFTER_CALL();
  if (kept != UNWIND_CHAIN_COUNT) return 4;
  printf("line lib_level_two %d\n", lib_malloc_line());
  printf("done\n");

  char buffer[64];
  while (fgets(buffer, sizeof(buffer), stdin) && strncmp(buffer, "quit", 4) != 0) {
  }
  return 0;
}
