// SPDX-License-Identifier: Apache-2.0
// A C++ program the integration tests drive: leaks through new and new[], frees correctly
// through delete, and releases blocks with mismatched functions. Same protocol as leaky.c:
// prints "ready PID", waits for a line, runs, prints "line NAME N" and "done", waits for EOF.
// `leaky_cxx variants`: every operator new and delete of libstdc++ (nothrow, aligned, sized),
// each pairing and mismatch, the same way. `leaky_cxx pairs N`: for each line "new" or "array"
// read, N new/delete or new[]/delete[] pairs, then "paired"; "quit" ends it.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <new>
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

struct alignas(64) Aligned {
  char payload[80];
};

struct Big {
  char payload[3100];
};

// Each operator of libstdc++, kept or released by its pair or by the wrong one.
__attribute__((noinline)) void variants() {
  int line = __LINE__ + 1;  // the allocating line below
  sink = new (std::nothrow) Session();
  report_line("nothrow_new", line);
  line = __LINE__ + 1;
  sink = new (std::nothrow) char[24];
  report_line("nothrow_new_array", line);
  line = __LINE__ + 1;
  sink = new Aligned();
  report_line("aligned_new", line);
  line = __LINE__ + 1;
  sink = new Aligned[2];
  report_line("aligned_new_array", line);
  for (int i = 0; i < 10; ++i) {
    auto* session = new Session();  // sized delete below: operator delete(void*, size_t)
    sink = session;
    delete session;
    auto* aligned = new Aligned();
    sink = aligned;
    delete aligned;
    auto* array = new (std::nothrow) char[40];
    sink = array;
    operator delete[](array, std::nothrow);
  }
  // Larger than the pairs above: reports list the sites that freed the most bytes first.
  auto* array_freed_by_delete = new char[3000];
  sink = array_freed_by_delete;
  operator delete(array_freed_by_delete);
  auto* object_freed_by_delete_array = new Big;
  sink = object_freed_by_delete_array;
  operator delete[](object_freed_by_delete_array);
  auto* array_freed_by_free = new char[3200];
  sink = array_freed_by_free;
  std::free(array_freed_by_free);
}

__attribute__((noinline)) void new_pairs(int count) {
  for (int i = 0; i < count; ++i) {
    auto* session = new Session();
    sink = session;
    delete session;
  }
}

__attribute__((noinline)) void array_pairs(int count) {
  for (int i = 0; i < count; ++i) {
    auto* buffer = new char[64];
    sink = buffer;
    delete[] buffer;
  }
}

int pairs(int count) {
  std::string what;
  while (std::getline(std::cin, what) && what != "quit") {
    if (what == "new") new_pairs(count);
    if (what == "array") array_pairs(count);
    std::printf("paired\n");
  }
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string mode = argc > 1 ? argv[1] : "";
  std::printf("ready %d\n", static_cast<int>(getpid()));
  std::string go;
  if (!std::getline(std::cin, go)) return 3;
  if (mode == "pairs") return pairs(argc > 2 ? std::atoi(argv[2]) : 1000);
  if (mode == "variants") {
    variants();
    std::printf("done\n");
    std::string rest;
    while (std::getline(std::cin, rest) && rest != "quit") {
    }
    return 0;
  }
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
