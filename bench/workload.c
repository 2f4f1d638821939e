// SPDX-License-Identifier: Apache-2.0
// The overhead benchmark's workload: a sliding window of 4096 live blocks; each step frees the
// oldest and mallocs a random size of 16-528 bytes. Prints the cost of one malloc+free pair,
// timed around the loop alone.
//
// Usage: memtrail-bench-workload [--steps N] [--threads T] [--wait-file PATH]
//                                [--wait-timeout SECONDS] [--call-depth D] [--hold K]
// --wait-file: print "waiting PID", then start only once PATH exists (polled every 10 ms, for at
//   most --wait-timeout seconds, default 120; exit status 3 on timeout), so that a tracer can
//   attach by PID first.
// Output: "ns_per_pair=X wall_ns_per_pair=Y steps=N threads=T" (steps per thread).
//   ns_per_pair: each thread's loop time / its steps, averaged over threads (with one thread,
//   simply the loop's time per pair). wall_ns_per_pair: wall time from the common start of the
//   loops to the end of the last one / all pairs of all threads (throughput).
// --call-depth D: run the loop D nested calls deeper (every malloc's stack gets D more frames),
//   for the cost of the stack walk per frame.
// --hold K: then allocate K blocks of 16-528 bytes, print "held K" and keep them until killed
//   (for memtrail's memory per outstanding allocation, bench/footprint.py).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 4096
#define MAX_THREADS 64

static long steps = 1000000;
static int call_depth = 0;
static pthread_barrier_t start_line;

struct worker {
  pthread_t id;
  uint32_t seed;
  double start_ns, end_ns;
};

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void loop(struct worker *self, void **window);

// Recurses `depth` times, then runs the loop: a real frame per level (no inlining, no tail call).
__attribute__((noinline)) static void descend(int depth, struct worker *self, void **window) {
  if (depth > 0) {
    descend(depth - 1, self, window);
    __asm__ volatile("" ::: "memory");
    return;
  }
  loop(self, window);
}

static void *run(void *arg) {
  struct worker *self = arg;
  void **window = malloc(sizeof(void *) * WINDOW);
  if (!window) abort();
  for (int i = 0; i < WINDOW; ++i) window[i] = malloc(16);
  pthread_barrier_wait(&start_line);  // all windows filled: the loops start together
  descend(call_depth, self, window);
  for (int i = 0; i < WINDOW; ++i) free(window[i]);
  free(window);
  return NULL;
}

__attribute__((noinline)) static void loop(struct worker *self, void **window) {
  uint32_t x = self->seed | 1;
  self->start_ns = now_ns();
  for (long i = 0; i < steps; ++i) {
    x ^= x << 13;  // xorshift32: cheap, deterministic sizes
    x ^= x >> 17;
    x ^= x << 5;
    free(window[i & (WINDOW - 1)]);
    char *block = malloc(16 + x % 513);
    if (!block) abort();
    block[0] = (char)i;  // touch it: the allocation is observable and cannot be elided
    window[i & (WINDOW - 1)] = block;
  }
  self->end_ns = now_ns();
}

static int wait_for_file(const char *path, double timeout_s) {
  printf("waiting %d\n", getpid());
  fflush(stdout);
  // Poll every 10 ms: the loop starts at most 10 ms after the runner opens the gate.
  double deadline = now_ns() + timeout_s * 1e9;
  while (access(path, F_OK) != 0) {
    if (now_ns() > deadline) {
      fprintf(stderr, "memtrail-bench-workload: %s did not appear within %g s\n", path, timeout_s);
      return -1;
    }
    usleep(10000);
  }
  return 0;
}

int main(int argc, char **argv) {
  int threads = 1;
  long hold = 0;
  double wait_timeout = 120;
  const char *wait_file = NULL;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = atol(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--wait-file") && i + 1 < argc)
      wait_file = argv[++i];
    else if (!strcmp(argv[i], "--wait-timeout") && i + 1 < argc)
      wait_timeout = atof(argv[++i]);
    else if (!strcmp(argv[i], "--hold") && i + 1 < argc)
      hold = atol(argv[++i]);
    else if (!strcmp(argv[i], "--call-depth") && i + 1 < argc)
      call_depth = atoi(argv[++i]);
    else {
      fprintf(stderr,
              "usage: %s [--steps N] [--threads T] [--wait-file PATH] [--wait-timeout S] "
              "[--call-depth D] [--hold K]\n",
              argv[0]);
      return 2;
    }
  }
  if (steps <= 0 || threads <= 0 || threads > MAX_THREADS || wait_timeout <= 0 || call_depth < 0 ||
      call_depth > 1000) {
    fprintf(stderr,
            "memtrail-bench-workload: need steps > 0, 1 <= threads <= %d, "
            "wait-timeout > 0, 0 <= call-depth <= 1000\n",
            MAX_THREADS);
    return 2;
  }
  if (wait_file && wait_for_file(wait_file, wait_timeout) != 0) return 3;

  struct worker workers[MAX_THREADS] = {0};
  pthread_barrier_init(&start_line, NULL, (unsigned)threads);
  for (int t = 0; t < threads; ++t) {
    workers[t].seed = (uint32_t)(t + 1);  // fixed seeds: every run allocates the same sizes
    if (pthread_create(&workers[t].id, NULL, run, &workers[t]) != 0) {
      fprintf(stderr, "memtrail-bench-workload: pthread_create failed\n");
      return 1;
    }
  }
  for (int t = 0; t < threads; ++t) pthread_join(workers[t].id, NULL);
  pthread_barrier_destroy(&start_line);

  double per_thread_sum = 0, first_start = workers[0].start_ns, last_end = workers[0].end_ns;
  for (int t = 0; t < threads; ++t) {
    per_thread_sum += (workers[t].end_ns - workers[t].start_ns) / (double)steps;
    if (workers[t].start_ns < first_start) first_start = workers[t].start_ns;
    if (workers[t].end_ns > last_end) last_end = workers[t].end_ns;
  }
  printf("ns_per_pair=%.1f wall_ns_per_pair=%.1f steps=%ld threads=%d\n", per_thread_sum / threads,
         (last_end - first_start) / ((double)steps * threads), steps, threads);
  fflush(stdout);

  if (hold > 0) {
    uint32_t x = 7;
    void **held = malloc(sizeof(void *) * (size_t)hold);
    if (!held) abort();
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
