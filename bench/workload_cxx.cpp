// SPDX-License-Identifier: Apache-2.0
// The C++ variant of the workload: the same sliding window with operator new[] / delete[].
// Usage and output as memtrail-bench-workload (single-threaded).
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  long steps = 1000000;
  const char* wait_file = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atol(argv[++i]);
    else if (!std::strcmp(argv[i], "--wait-file") && i + 1 < argc) wait_file = argv[++i];
    else return 2;
  }
  if (wait_file) {
    std::printf("waiting %d\n", getpid());
    std::fflush(stdout);
    for (int i = 0; access(wait_file, F_OK) != 0; ++i) {
      if (i > 12000) return 3;
      usleep(10000);
    }
  }
  constexpr int kWindow = 4096;
  static char* window[kWindow];
  uint32_t x = 1;
  for (auto& block : window) block = new char[16];
  timespec start{}, end{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 0; i < steps; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    delete[] window[i & (kWindow - 1)];
    char* block = new char[16 + x % 513];
    block[0] = static_cast<char>(i);  // used, so new/delete cannot be elided
    window[i & (kWindow - 1)] = block;
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  for (auto* block : window) delete[] block;
  double elapsed = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
  std::printf("ns_per_pair=%.1f steps=%ld threads=1\n", elapsed / steps, steps);
  return 0;
}
