// SPDX-License-Identifier: Apache-2.0
// Load the allocator BPF programs, attach them per target process, read their maps.
#include "tracer/alloc_tracer.h"

#include <bpf/bpf.h>
#include <time.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <algorithm>
#include <string>

#include "alloc.skel.h"
#include "aggregator/sampling.h"
#include "alloc_events.h"
#include "common/error.h"

extern "C" void memtrail_alloc_bpf_destroy(alloc_bpf* skeleton) { alloc_bpf__destroy(skeleton); }

namespace memtrail::tracer {
namespace {

bool g_verbose = false;

// libbpf's messages (they carry their own "libbpf: " prefix) only with -v: every failure they
// describe also comes back as an error code that memtrail turns into its one error line.
int print_libbpf(enum libbpf_print_level, const char* format, va_list args) {
  return g_verbose ? std::vfprintf(stderr, format, args) : 0;
}

// libbpf returns -errno from int functions and sets errno for pointer functions (libbpf >= 1.0).
[[noreturn]] void fail(const std::string& operation, int error_number, std::string hint = {}) {
  if (hint.empty()) hint = hint_for_errno(error_number);
  throw Error(errno_message(operation, error_number), hint);
}

uint64_t monotonic_now_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(now.tv_nsec);
}

struct ProbePrograms {
  bpf_program* entry;
  bpf_program* exit;  // nullptr: no return probe (free)
};

ProbePrograms programs_for(alloc_bpf* skeleton, target::ProbeRole role) {
  auto& p = skeleton->progs;
  switch (role) {
    case target::ProbeRole::kSizeAlloc: return {p.size_alloc_enter, p.pointer_exit};
    case target::ProbeRole::kCalloc: return {p.calloc_enter, p.pointer_exit};
    case target::ProbeRole::kRealloc: return {p.realloc_enter, p.realloc_exit};
    case target::ProbeRole::kReallocArray: return {p.reallocarray_enter, p.realloc_exit};
    case target::ProbeRole::kAlignedAlloc: return {p.aligned_alloc_enter, p.pointer_exit};
    case target::ProbeRole::kPosixMemalign:
      return {p.posix_memalign_enter, p.posix_memalign_exit};
    case target::ProbeRole::kFree: return {p.free_enter, nullptr};
  }
  return {nullptr, nullptr};
}

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
    int err = bpf_map_lookup_batch(map_fd, first ? nullptr : &next_batch, &next_batch,
                                   keys.data(), values.data(), &count, &options);
    int error_number = err < 0 ? errno : 0;
    for (uint32_t i = 0; i < count; ++i) sink(keys[i], values[i]);
    if (err < 0) {
      if (error_number == ENOENT) return;  // the whole map was read
      fail(std::string("read BPF map ") + map_name, error_number);
    }
    first = false;
  }
}

}  // namespace

AllocTracer::AllocTracer(const TracerConfig& config) : config_(config) {
  g_verbose = config.verbose;
  libbpf_set_print(print_libbpf);

  skeleton_.reset(alloc_bpf__open());
  if (!skeleton_) fail("open BPF object alloc.bpf.o", errno);
  auto& maps = skeleton_->maps;
  struct {
    bpf_map* map;
    uint32_t entries;
  } sizes[] = {{maps.allocs, config.max_outstanding_allocations},
               {maps.sites, config.max_sites},
               {maps.stacks, config.max_stacks}};
  for (auto& [map, entries] : sizes) {
    int err = bpf_map__set_max_entries(map, entries);
    if (err < 0) fail(std::string("size BPF map ") + bpf_map__name(map), -err);
  }
  auto* rodata = skeleton_->rodata;
  rodata->sample_rate = config.sample_rate;
  if (config.sample_rate != 0) {
    auto quantiles = aggregator::exponential_quantiles();
    auto weights = aggregator::sample_weight_table();
    std::copy(quantiles.begin(), quantiles.end(), const_cast<uint32_t*>(rodata->sample_quantiles));
    std::copy(weights.begin(), weights.end(), const_cast<uint32_t*>(rodata->sample_weights));
  }
  int err = alloc_bpf__load(skeleton_.get());
  if (err < 0) {
    fail("load BPF programs", -err,
         -err == EPERM || -err == EACCES
             ? "run memtrail as root, or grant it CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
             : "run with -v to see the libbpf and verifier output");
  }
}

AllocTracer::~AllocTracer() = default;

void AllocTracer::attach(uint32_t pid, const target::AllocatorModule& module) {
  std::vector<Link> attached;
  auto attach_one = [&](bpf_program* program, uint64_t offset, bool retprobe, uint32_t kind,
                        const std::string& function) {
    LIBBPF_OPTS(bpf_uprobe_opts, options, .bpf_cookie = kind, .retprobe = retprobe);
    bpf_link* link = bpf_program__attach_uprobe_opts(program, static_cast<pid_t>(pid),
                                                     module.open_path.c_str(), offset, &options);
    if (!link) {
      int error_number = errno;
      std::string what = std::string("attach ") + (retprobe ? "uretprobe " : "uprobe ") +
                         function + " in " + module.path + " (pid " + std::to_string(pid) + ")";
      if (error_number == ESRCH) {
        throw Error("process " + std::to_string(pid) + " exited while memtrail was attaching",
                    "trace a process that keeps running, or launch it with `memtrail leaks -- "
                    "COMMAND`");
      }
      if (error_number == EINVAL) {
        // The kernel refuses a second uprobe on an address that another tool probed with a
        // different reference-counter offset (dmesg: "ref_ctr_offset mismatch"); BCC 0.26's
        // memleak does that.
        fail(what, error_number,
             "another tracer may hold a probe on the same function (dmesg shows "
             "\"ref_ctr_offset mismatch\"); stop it, e.g. BCC's memleak, and retry");
      }
      fail(what, error_number);
    }
    attached.emplace_back(link);
  };
  for (const auto& function : module.functions) {
    ProbePrograms programs = programs_for(skeleton_.get(), function.role);
    // The return probe goes first: an entry recorded without its return probe in place would
    // leave the thread's call state waiting for a return that never comes.
    if (programs.exit) {
      attach_one(programs.exit, function.entry_offset, true, function.kind, function.name);
    }
    attach_one(programs.entry, function.probe_offset, false, function.kind, function.name);
  }
  for (auto& link : attached) links_.push_back(std::move(link));
}

model::Snapshot AllocTracer::snapshot() const {
  model::Snapshot snapshot;
  snapshot.taken_at_ns = monotonic_now_ns();
  const auto& maps = skeleton_->maps;

  read_hash_map<memtrail_alloc_key, memtrail_alloc_info>(
      bpf_map__fd(maps.allocs), 8192, "allocs",
      [&](const memtrail_alloc_key& key, const memtrail_alloc_info& info) {
        snapshot.allocations.push_back({key.tgid, key.address, info.size, info.timestamp_ns,
                                        info.site_id, info.kind});
      });
  read_hash_map<memtrail_site_key, memtrail_site_totals>(
      bpf_map__fd(maps.sites), 4096, "sites",
      [&](const memtrail_site_key& key, const memtrail_site_totals& totals) {
        snapshot.sites.push_back({key.tgid, key.site_id, totals.total_bytes,
                                  totals.total_allocations, totals.caller_address});
      });

  // Few distinct stacks exist and each is written once, so the whole map is read every time.
  read_hash_map<uint64_t, memtrail_stack>(
      bpf_map__fd(maps.stacks), 256, "stacks", [&](uint64_t, const memtrail_stack& stack) {
        uint32_t depth = std::min<uint32_t>(stack.depth, MEMTRAIL_MAX_STACK_DEPTH);
        auto& entry = snapshot.stacks[static_cast<int32_t>(stack.id)];
        entry.addresses.assign(stack.ips, stack.ips + depth);
        entry.truncated = (stack.flags & MEMTRAIL_STACK_TRUNCATED) != 0;
      });

  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) fail("count possible CPUs", -cpus);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
  uint64_t totals[MEMTRAIL_CTR_COUNT] = {};
  for (uint32_t index = 0; index < MEMTRAIL_CTR_COUNT; ++index) {
    if (bpf_map_lookup_elem(bpf_map__fd(maps.counters), &index, per_cpu.data()) != 0) {
      fail("read BPF map counters", errno);
    }
    for (uint64_t value : per_cpu) totals[index] += value;
  }
  auto& counters = snapshot.counters;
  counters.allocations = totals[MEMTRAIL_CTR_ALLOCATIONS];
  counters.frees = totals[MEMTRAIL_CTR_FREES];
  counters.unmatched_frees = totals[MEMTRAIL_CTR_UNMATCHED_FREES];
  counters.drops = totals[MEMTRAIL_CTR_DROPS];
  counters.failed_calls = totals[MEMTRAIL_CTR_FAILED_CALLS];
  counters.stack_failures = totals[MEMTRAIL_CTR_STACK_FAILURES];
  counters.site_drops = totals[MEMTRAIL_CTR_SITE_DROPS];
  counters.stale_replaced = totals[MEMTRAIL_CTR_STALE_REPLACED];
  counters.missed_entries = totals[MEMTRAIL_CTR_MISSED_ENTRIES];
  counters.unsampled = totals[MEMTRAIL_CTR_UNSAMPLED];
  return snapshot;
}

}  // namespace memtrail::tracer
