// SPDX-License-Identifier: Apache-2.0
// Owners for libbpf objects: each is destroyed exactly once, links before the skeleton.
#pragma once

#include <bpf/libbpf.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

struct alloc_bpf;
extern "C" void memtrail_alloc_bpf_destroy(alloc_bpf* skeleton);  // alloc_tracer.cpp

namespace memtrail::tracer {

struct LinkDeleter {
  void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
// An attached probe. Destroying it detaches the probe from the target.
using Link = std::unique_ptr<bpf_link, LinkDeleter>;

// Destroys every owner in `owners` (links, link descriptors) and empties it. Closing a uprobe
// link waits for grace periods in the kernel (~50 ms for a uprobe_multi link here); closed from
// several threads at once, the waits overlap: twelve links in 70 ms instead of 0.6 s. (The
// kernel serializes perf-event uprobes' detaches, ~0.1 s each, whatever the threads.) Falls back
// to one thread when none can be started.
template <typename Owner>
void release_concurrently(std::vector<Owner>& owners) {
  constexpr size_t kMaxThreads = 32;
  std::atomic<size_t> next{0};
  auto release_some = [&] {
    for (size_t i; (i = next.fetch_add(1)) < owners.size();) owners[i] = Owner{};
  };
  std::vector<std::thread> threads;
  size_t wanted = std::min(owners.size(), kMaxThreads);
  for (size_t t = 1; t < wanted; ++t) {
    try {
      threads.emplace_back(release_some);
    } catch (const std::system_error&) {
      break;  // the calling thread does the rest
    }
  }
  release_some();
  for (auto& thread : threads) thread.join();
  owners.clear();
}

struct AllocSkeletonDeleter {
  void operator()(alloc_bpf* skeleton) const { memtrail_alloc_bpf_destroy(skeleton); }
};
// The loaded BPF object with its programs and maps.
using AllocSkeleton = std::unique_ptr<alloc_bpf, AllocSkeletonDeleter>;

struct RingBufferDeleter {
  void operator()(ring_buffer* buffer) const { ring_buffer__free(buffer); }
};
// A reader of a BPF ring buffer map.
using RingBuffer = std::unique_ptr<ring_buffer, RingBufferDeleter>;

// A mapping of a BPF_F_MMAPABLE array map's values, unmapped on destruction.
class MappedMap {
 public:
  MappedMap() = default;
  MappedMap(const void* address, size_t length) : address_(address), length_(length) {}
  MappedMap(MappedMap&& other) noexcept
      : address_(std::exchange(other.address_, nullptr)), length_(other.length_) {}
  MappedMap& operator=(MappedMap&& other) noexcept {
    std::swap(address_, other.address_);
    std::swap(length_, other.length_);
    return *this;
  }
  MappedMap(const MappedMap&) = delete;
  MappedMap& operator=(const MappedMap&) = delete;
  ~MappedMap() {
    if (address_) munmap(const_cast<void*>(address_), length_);
  }
  template <typename Value>
  const Value* values() const {
    return static_cast<const Value*>(address_);
  }
  // Only for a mapping made writable (PROT_WRITE).
  template <typename Value>
  Value* writable_values() const {
    return static_cast<Value*>(const_cast<void*>(address_));
  }

 private:
  const void* address_ = nullptr;
  size_t length_ = 0;
};

}  // namespace memtrail::tracer
