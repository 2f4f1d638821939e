// SPDX-License-Identifier: Apache-2.0
// Owners for libbpf objects: each is destroyed exactly once, links before the skeleton.
#pragma once

#include <bpf/libbpf.h>

#include <memory>

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

}  // namespace memtrail::tracer
