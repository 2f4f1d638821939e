// SPDX-License-Identifier: Apache-2.0
// The overhead benchmark's workload: a sliding window of 4096 live blocks; each step frees the
// oldest and mallocs a random size of 16-528 bytes. Prints the cost of one malloc+free pair,
// timed around the loop alone.
//
// Usage: memtrail-bench-workload --steps N [--threads T] [--wait-file PATH] [--hold K]
// With --wait-file it prints "waiting PID" and starts only once PATH exists, so a tracer can
// attach by PID first. Output: "ns_per_pair=X steps=N threads=T" (steps per thread).
// --hold K: then allocate K blocks of 16-528 bytes, print "held K" and keep them until killed
// (for memtrail's memory per outstanding allocation).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 4096

static long steps = 1000000;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *run(void *seed_arg) {
  static __thread void *window[WINDOW];
  uint32_t x = (uint32_t)(uintptr_t)seed_arg | 1;
  for (int i = 0; i < WINDOW; ++i) window[i] = malloc(16);
  for (long i = 0; i < steps; ++i) {
    x ^= x << 13;  // xorshift32: cheap, deterministic sizes
    x ^= x >> 17;
    x ^= x << 5;
    free(window[i & (WINDOW - 1)]);
    char *block = malloc(16 + x % 513);
    block[0] = (char)i;  // touch it: the allocation is observable
    window[i & (WINDOW - 1)] = block;
  }
  for (int i = 0; i < WINDOW; ++i) free(window[i]);
  return NULL;
}

int main(int argc, char **argv) {
  int threads = 1;
  long hold = 0;
  const char *wait_file = NULL;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atol(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--wait-file") && i + 1 < argc) wait_file = argv[++i];
    else if (!strcmp(argv[i], "--hold") && i + 1 < argc) hold = atol(argv[++i]);
    else {
      fprintf(stderr, "usage: %s --steps N [--threads T] [--wait-file PATH] [--hold K]\n",
              argv[0]);
      return 2;
    }
  }
  if (steps <= 0 || threads <= 0 || threads > 64) return 2;
  if (wait_file) {
    printf("waiting %d\n", getpid());
    fflush(stdout);
    // Poll every 10 ms for at most 120 s: never sleep longer than the tracer needs.
    for (int i = 0; access(wait_file, F_OK) != 0; ++i) {
      if (i > 12000) return 3;
      usleep(10000);
    }
  }
  pthread_t ids[64];
  double start = now_ns();
  for (int t = 0; t < threads; ++t) pthread_create(&ids[t], NULL, run, (void *)(uintptr_t)(t + 1));
  for (int t = 0; t < threads; ++t) pthread_join(ids[t], NULL);
  double elapsed = now_ns() - start;
  printf("ns_per_pair=%.1f steps=%ld threads=%d\n", elapsed / steps, steps, threads);
  if (hold > 0) {
    uint32_t x = 7;
    void **held = malloc(sizeof(void *) * (size_t)hold);
    for (long i = 0; i < hold; ++i) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      held[i] = malloc(16 + x % 513);
    }
    printf("held %ld\n", hold);
    fflush(stdout);
    for (;;) pause();
  }
  return 0;
}
