// SPDX-License-Identifier: Apache-2.0
// The C++ variant of the workload: the same sliding window with operator new[] / delete[]
// (which libstdc++ forwards to malloc / free). Usage and output as memtrail-bench-workload
// (bench/workload.c), without --hold.
#include <time.h>
#include <unistd.h>

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {

constexpr int kWindow = 4096;
constexpr int kMaxThreads = 64;

double now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

struct Worker {
  uint32_t seed = 1;
  double start_ns = 0, end_ns = 0;
};

void run(Worker& self, long steps, std::barrier<>& start_line) {
  auto window = std::make_unique<char*[]>(kWindow);
  uint32_t x = self.seed | 1;
  for (int i = 0; i < kWindow; ++i) window[i] = new char[16];
  start_line.arrive_and_wait();
  self.start_ns = now_ns();
  for (long i = 0; i < steps; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    delete[] window[i & (kWindow - 1)];
    char* block = new char[16 + x % 513];
    block[0] = static_cast<char>(i);  // used and kept: new/delete cannot be elided
    window[i & (kWindow - 1)] = block;
  }
  self.end_ns = now_ns();
  for (int i = 0; i < kWindow; ++i) delete[] window[i];
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 1000000;
  int threads = 1;
  double wait_timeout = 120;
  const char* wait_file = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = std::atol(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--wait-file") && i + 1 < argc)
      wait_file = argv[++i];
    else if (!std::strcmp(argv[i], "--wait-timeout") && i + 1 < argc)
      wait_timeout = std::atof(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--steps N] [--threads T] [--wait-file PATH] [--wait-timeout S]\n",
                   argv[0]);
      return 2;
    }
  }
  if (steps <= 0 || threads <= 0 || threads > kMaxThreads || wait_timeout <= 0) {
    std::fprintf(stderr, "memtrail-bench-workload-cxx: need steps > 0, 1 <= threads <= %d\n",
                 kMaxThreads);
    return 2;
  }
  if (wait_file) {
    std::printf("waiting %d\n", getpid());
    std::fflush(stdout);
    const double deadline = now_ns() + wait_timeout * 1e9;
    while (access(wait_file, F_OK) != 0) {
      if (now_ns() > deadline) {
        std::fprintf(stderr, "memtrail-bench-workload-cxx: %s did not appear within %g s\n",
                     wait_file, wait_timeout);
        return 3;
      }
      usleep(10000);
    }
  }

  std::vector<Worker> workers(threads);
  std::barrier<> start_line(threads);
  {
    std::vector<std::jthread> running;
    for (int t = 0; t < threads; ++t) {
      workers[t].seed = static_cast<uint32_t>(t + 1);
      running.emplace_back(run, std::ref(workers[t]), steps, std::ref(start_line));
    }
  }  // jthreads join here

  double per_thread_sum = 0, first_start = workers[0].start_ns, last_end = workers[0].end_ns;
  for (const Worker& w : workers) {
    per_thread_sum += (w.end_ns - w.start_ns) / static_cast<double>(steps);
    if (w.start_ns < first_start) first_start = w.start_ns;
    if (w.end_ns > last_end) last_end = w.end_ns;
  }
  std::printf("ns_per_pair=%.1f wall_ns_per_pair=%.1f steps=%ld threads=%d\n",
              per_thread_sum / threads,
              (last_end - first_start) / (static_cast<double>(steps) * threads), steps, threads);
  return 0;
}
