// SPDX-License-Identifier: Apache-2.0
// What following mmap costs (bench/mmap_cost.sh): maps and unmaps 16 KiB of anonymous memory
// N times (default 200,000), and getppid N times (a system call memtrail does not follow,
// which pays only for the syscall tracepoints being enabled), after a gate so a tracer can
// attach by PID.
//
// Usage: memtrail-bench-mmap [N]; prints "ready PID", waits for a line on stdin, then prints
//   "mmap_munmap_ns X getppid_ns Y" (ns per pair, per call).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  long count = argc > 1 ? atol(argv[1]) : 200000;
  if (count <= 0) return 2;
  printf("ready %d\n", (int)getpid());
  fflush(stdout);
  char line[64];
  if (!fgets(line, sizeof(line), stdin)) return 3;
  double begin = now_ns();
  for (long i = 0; i < count; ++i) {
    void *region = mmap(NULL, 16 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return 1;
    munmap(region, 16 << 10);
  }
  double mapped = now_ns();
  for (long i = 0; i < count; ++i) syscall(SYS_getppid);
  double end = now_ns();
  printf("mmap_munmap_ns %.1f getppid_ns %.1f\n", (mapped - begin) / count, (end - mapped) / count);
  return 0;
}
