// SPDX-License-Identifier: Apache-2.0
// A static program without any C library: nothing for memtrail to trace. It sleeps until killed.
#include <asm/unistd.h>

struct kernel_timespec {
  long seconds;
  long nanoseconds;
};

static long raw_syscall2(long number, long first, long second) {
  long result;
  __asm__ volatile("syscall"
                   : "=a"(result)
                   : "a"(number), "D"(first), "S"(second)
                   : "rcx", "r11", "memory");
  return result;
}

void _start(void) {
  struct kernel_timespec one_second = {1, 0};
  for (;;) raw_syscall2(__NR_nanosleep, (long)&one_second, 0);
}
