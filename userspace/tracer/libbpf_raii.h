// SPDX-License-Identifier: Apache-2.0
// Owners for libbpf objects: each is destroyed exactly once, links before the skeleton.
#pragma once

#include <bpf/libbpf.h>
#include <sys/mman.h>

#include <cstddef>
#include <memory>
#include <utility>

struct alloc_bpf;
extern "C" void memtrail_alloc_bpf_destroy(alloc_bpf* skeleton);  // alloc_tracer.cpp

namespace memtrail::tracer {

struct LinkDeleter {
  void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
// An attached probe. Destroying it detaches the probe from the target.
using Link = std::unique_ptr<bpf_link, LinkDeleter>;

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
