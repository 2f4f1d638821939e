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
// With the argument "signal", the chain runs in a SIGUSR1 handler that main raises,
// UNWIND_SIGNAL_COUNT times: the stack then crosses the kernel's signal frame (glibc's
// __restore_rt) between the handler and raise(), and must still reach main.
//
// With "dlopen PLUGIN", main loads PLUGIN (unwind_plugin.so, the library built again under
// other names) after the first line, prints "loaded", waits for a second line, then leaks
// UNWIND_PLUGIN_COUNT blocks through call_plugin -> plugin_level_one -> plugin_level_two: code
// mapped after memtrail attached.
//
// Usage: unwind_chain [signal | dlopen PLUGIN]. Same protocol as leaky.c: prints "ready PID", waits
// for a line on stdin, runs the chain, prints "line lib_level_two N" (N: the source line of the
// malloc call in unwind_chain_lib.c) and "done", then waits for "quit" or end of input.
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The numbers the test asserts (tests/integration/unwind_test.cpp has the same ones).
#define UNWIND_CHAIN_COUNT 4
#define UNWIND_CHAIN_BYTES 12345  // 4 x 12,345 = 49,380 bytes outstanding
#define UNWIND_FREED_COUNT 10
#define UNWIND_FREED_BYTES 777
#define UNWIND_SIGNAL_COUNT 3  // "signal": 3 x 12,345 = 37,035 bytes outstanding
#define UNWIND_PLUGIN_COUNT 5  // "dlopen": 5 x 12,345 = 61,725 bytes outstanding

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

static volatile int signal_kept;

// Calling malloc in a signal handler is safe here only because the signal is raised
// synchronously, from main, outside any allocator call.
CHAIN_FUNCTION void on_signal(int number) {
  (void)number;
  signal_kept = chain_outer(UNWIND_SIGNAL_COUNT, UNWIND_CHAIN_BYTES);
  AFTER_CALL();
}

typedef int (*level_one_function)(int count, size_t bytes);

CHAIN_FUNCTION int call_plugin(level_one_function level_one, int count, size_t bytes) {
  volatile unsigned char scratch[48];
  for (size_t i = 0; i < sizeof(scratch); ++i) scratch[i] = (unsigned char)(i * 3);
  int kept = level_one(count, bytes);
  AFTER_CALL();
  return kept + (scratch[2] == 0xff);
}

// Loads the plugin, says so, waits for the go-ahead, leaks through it; returns what it kept.
static int leak_through_plugin(const char *path) {
  void *plugin = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!plugin) {
    fprintf(stderr, "unwind_chain: %s\n", dlerror());
    exit(5);
  }
  level_one_function level_one = (level_one_function)dlsym(plugin, "plugin_level_one");
  int (*malloc_line)(void) = (int (*)(void))dlsym(plugin, "plugin_malloc_line");
  if (!level_one || !malloc_line) exit(5);
  printf("loaded\n");
  wait_for_line();
  int kept = call_plugin(level_one, UNWIND_PLUGIN_COUNT, UNWIND_CHAIN_BYTES);
  AFTER_CALL();
  printf("line plugin_level_two %d\n", malloc_line());
  return kept == UNWIND_PLUGIN_COUNT ? UNWIND_CHAIN_COUNT : -1;
}

int main(int argc, char **argv) {
  int in_signal_handler = argc > 1 && strcmp(argv[1], "signal") == 0;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (in_signal_handler) signal(SIGUSR1, on_signal);
  printf("ready %d\n", (int)getpid());
  wait_for_line();

  int kept;
  if (argc > 2 && strcmp(argv[1], "dlopen") == 0) {
    kept = leak_through_plugin(argv[2]);
  } else if (in_signal_handler) {
    raise(SIGUSR1);
    AFTER_CALL();
    kept = signal_kept == UNWIND_SIGNAL_COUNT ? UNWIND_CHAIN_COUNT : -1;
  } else {
    kept = chain_outer(UNWIND_CHAIN_COUNT, UNWIND_CHAIN_BYTES);
    AFTER_CALL();
  }
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
