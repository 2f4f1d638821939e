// SPDX-License-Identifier: Apache-2.0
// What every tracer does with libbpf: route its log, turn its errors into memtrail::Error, read
// hash maps in batches, sum a map's kernel memory.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"

namespace memtrail::tracer {

// Sends libbpf's own messages to stderr only when `verbose`: every failure they describe also
// comes back as an error code that memtrail turns into its one error line.
void route_libbpf_log(bool verbose);

// libbpf returns -errno from int functions and sets errno for pointer functions (libbpf >= 1.0).
// Throws memtrail::Error naming `operation`; an empty hint takes the usual one for the errno.
[[noreturn]] void fail(const std::string& operation, int error_number, std::string hint = {});

// The hint for a failed skeleton load: permissions, map sizes, or where to see the verifier.
std::string load_failure_hint(int error_number, const std::string& map_size_option);

// Makes sure tracefs is mounted, where libbpf looks for tracepoint ids (/sys/kernel/tracing,
// or /sys/kernel/debug/tracing): mounts it at /sys/kernel/tracing when neither has it, as the
// kernel's own tools expect it there. Throws memtrail::Error with `what_needs_it` and `hint`.
void ensure_tracefs(const std::string& what_needs_it, const std::string& hint);

// Bytes of kernel memory in an object's BPF maps, as the kernel charges them (fdinfo memlock).
uint64_t map_memory_bytes(bpf_object* object);

// Reads a whole hash map in batches of `batch_size` entries (one syscall per batch).
template <typename Key, typename Value, typename Sink>
void read_hash_map(int map_fd, uint32_t batch_size, const char* map_name, Sink&& sink) {
  std::vector<Key> keys(batch_size);
  std::vector<Value> values(batch_size);
  uint64_t next_batch = 0;  // opaque cursor; large enough for every hash map's batch token
  bool first = true;
  for (;;) {
    uint32_t count = batch_size;
    LIBBPF_OPTS(bpf_map_batch_opts, options);
    int err = bpf_map_lookup_batch(map_fd, first ? nullptr : &next_batch, &next_batch, keys.data(),
                                   values.data(), &count, &options);
    int error_number = err < 0 ? errno : 0;
    for (uint32_t i = 0; i < count; ++i) sink(keys[i], values[i]);
    if (err < 0) {
      if (error_number == ENOENT) return;  // the whole map was read
      fail(std::string("read BPF map ") + map_name, error_number);
    }
    first = false;
  }
}

}  // namespace memtrail::tracer
