// SPDX-License-Identifier: Apache-2.0
// A static program without any C library: no allocator for memtrail to probe. It maps one
// anonymous region of 5 pages itself (what --mmap follows), says "mapped 20480" on stdout, then
// sleeps until killed.
#include <asm/unistd.h>
#include <linux/mman.h>

#define REGION_BYTES (5 * 4096)

struct kernel_timespec {
  long seconds;
  long nanoseconds;
};

static inline __attribute__((always_inline)) long raw_syscall6(long number, long a, long b, long c,
                                                               long d, long e, long f) {
  long result;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(result)
                   : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return result;
}

// The region --mmap reports: the system call is made here (raw_syscall6 inlined), its site.
__attribute__((noinline)) char *map_region(void) {
  return (char *)raw_syscall6(__NR_mmap, 0, REGION_BYTES, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

void _start(void) {
  char *region = map_region();
  for (long at = 0; at < REGION_BYTES; at += 4096) region[at] = 1;
  static const char said[] = "mapped 20480\n";
  raw_syscall6(__NR_write, 1, (long)said, sizeof(said) - 1, 0, 0, 0);
  struct kernel_timespec one_second = {1, 0};
  for (;;) raw_syscall6(__NR_nanosleep, (long)&one_second, 0, 0, 0, 0, 0);
}
