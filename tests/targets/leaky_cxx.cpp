// SPDX-License-Identifier: Apache-2.0
// A C++ program the integration tests drive: leaks through new and new[], frees correctly
// through delete, and releases blocks with mismatched functions. Same protocol as leaky.c:
// prints "ready PID", waits for a line, runs, prints "line NAME N" and "done", waits for EOF.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

struct Session {
  char payload[48];
};

void* volatile sink;

void report_line(const char* name, int line) { std::printf("line %s %d\n", name, line); }

}  // namespace

__attribute__((noinline)) void leak_new(int count) {
  int line = 0;
  for (int i = 0; i < count; ++i) {
    line = __LINE__ + 1;  // the allocating line below
    sink = new Session();
  }
  report_line("leak_new", line);
}

__attribute__((noinline)) void leak_new_array(int count) {
  int line = 0;
  for (int i = 0; i < count; ++i) {
    line = __LINE__ + 1;  // the allocating line below
    sink = new char[100];
  }
  report_line("leak_new_array", line);
}

__attribute__((noinline)) void new_and_delete(int count) {
  for (int i = 0; i < count; ++i) {
    auto* session = new Session();
    sink = session;
    delete session;
    auto* buffer = new char[64];
    sink = buffer;
    delete[] buffer;
  }
}

// Undefined behaviour that glibc happens to tolerate: what memtrail must report.
__attribute__((noinline)) void new_then_free() {
  auto* session = new Session();
  sink = session;
  std::free(session);
}

__attribute__((noinline)) void malloc_then_delete() {
  auto* session = static_cast<Session*>(std::malloc(sizeof(Session)));
  sink = session;
  delete session;
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::printf("ready %d\n", static_cast<int>(getpid()));
  std::string go;
  if (!std::getline(std::cin, go)) return 3;
  leak_new(5);
  leak_new_array(3);
  new_and_delete(50);
  new_then_free();
  malloc_then_delete();
  std::printf("done\n");
  std::string rest;
  while (std::getline(std::cin, rest) && rest != "quit") {
  }
  return 0;
}
