// SPDX-License-Identifier: Apache-2.0
// What every tracer does with libbpf: log routing, errors, clocks, map memory.
#include "tracer/libbpf_util.h"

#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <fstream>

namespace memtrail::tracer {
namespace {

bool g_verbose = false;

int print_libbpf(enum libbpf_print_level, const char* format, va_list args) {
  return g_verbose ? std::vfprintf(stderr, format, args) : 0;
}

}  // namespace

void route_libbpf_log(bool verbose) {
  g_verbose = verbose;
  libbpf_set_print(print_libbpf);
}

void fail(const std::string& operation, int error_number, std::string hint) {
  if (hint.empty()) hint = hint_for_errno(error_number);
  throw Error(errno_message(operation, error_number), hint);
}

std::string load_failure_hint(int error_number, const std::string& map_size_option) {
  if (error_number == EPERM) {
    return "run memtrail as root, or grant it CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN";
  }
  // A missing capability is EPERM; the verifier refuses a program it cannot prove safe with
  // EACCES (and so may a security module): telling root to be root would mislead.
  if (error_number == EACCES) {
    return "the kernel's verifier refused a BPF program it could not prove safe (or a security "
           "module refused the load): run with -v to see the verifier's log, and report it";
  }
  if (error_number == ENOMEM) {
    return "lower " + map_size_option + ": the kernel could not allocate the maps";
  }
  if (error_number == E2BIG) {
    // Both a map larger than the kernel allows and a program the verifier gave up on.
    return "lower " + map_size_option +
           " (a map may be larger than the kernel allows); if "
           "that does not help, the verifier rejected a program as too complex: run with -v "
           "and report its output";
  }
  return "run with -v to see the libbpf and verifier output";
}

void ensure_tracefs(const std::string& what_needs_it, const std::string& hint) {
  if (access("/sys/kernel/tracing/events", F_OK) == 0) return;
  // libbpf 1.1 prefers this path whenever it exists.
  if (access("/sys/kernel/debug/tracing", F_OK) == 0) {
    if (access("/sys/kernel/debug/tracing/events", F_OK) == 0) return;
    fail("find tracefs for " + what_needs_it + ": /sys/kernel/debug/tracing has no events", ENOENT,
         hint);
  }
  if (mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0) {
    int error_number = errno;
    fail("mount tracefs at /sys/kernel/tracing for " + what_needs_it, error_number, hint);
  }
}

uint64_t map_memory_bytes(bpf_object* object) {
  uint64_t total = 0;
  bpf_map* map = nullptr;
  while ((map = bpf_object__next_map(object, map)) != nullptr) {
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(bpf_map__fd(map)));
    std::string line;
    while (std::getline(info, line)) {
      if (line.rfind("memlock:", 0) == 0) total += std::stoull(line.substr(8));
    }
  }
  return total;
}

}  // namespace memtrail::tracer
