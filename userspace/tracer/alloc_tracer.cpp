// SPDX-License-Identifier: Apache-2.0
// Load the allocator BPF programs, attach them per target process, read their maps.
#include "tracer/alloc_tracer.h"

#include <bpf/bpf.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <set>
#include <string>
#include <utility>

// The BPF ABI first: the skeleton's rodata holds its structs.
#include "aggregator/sampling.h"
#include "common/clock.h"
#include "common/error.h"
#include "inspect/process_file.h"
#include "tracer/bpf_codes.h"
#include "tracer/libbpf_util.h"

#include "alloc.skel.h"

extern "C" void memtrail_alloc_bpf_destroy(alloc_bpf* skeleton) { alloc_bpf__destroy(skeleton); }

namespace memtrail::tracer {
namespace {

// Processes whose code mappings the walker can hold at once (20 KiB each, allocated on use).
constexpr uint32_t kMaxUnwindProcesses = 4096;
// Processes whose losses are counted one by one (48 bytes each); the totals count all.
constexpr uint32_t kMaxLossProcesses = 16384;
// Processes traced at once (their mmap calls followed, or picked by --all).
constexpr uint32_t kMaxTracedProcesses = 65536;
// Processes traced at once without --all: the targets and the children they fork.
constexpr uint32_t kMaxTracedTrees = 4096;
// The ring buffer's size when it carries only fork and exec events (no --mmap).
constexpr uint32_t kLifecycleBufferBytes = 256u << 10;
// Processes held at once (each for milliseconds, at an exec or Py_FinalizeEx): more are not
// held, and say so.
constexpr uint32_t kMaxHeldProcesses = 1024;
// (process, Python type) pairs counted by --python-types; more are counted as lost.
constexpr uint32_t kMaxPythonTypes = 1u << 17;

// Tests only: MEMTRAIL_TEST_CLOSE_DELAY_MS=N, each window's close waits N ms before its
// liveness read; MEMTRAIL_TEST_CLOSING_DELAY_MS=N, once the window has ended (its last read
// done), N ms before its probes come out. A test makes objects die, and others take their
// addresses, then.
int test_delay_ms(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::atoi(value) : 0;
}
void delay_in_tests(int delay_ms) {
  if (delay_ms > 0) ::usleep(static_cast<useconds_t>(delay_ms) * 1000);
}
void close_delayed_in_tests() {
  static const int delay_ms = test_delay_ms("MEMTRAIL_TEST_CLOSE_DELAY_MS");
  delay_in_tests(delay_ms);
}
void closing_delayed_in_tests() {
  static const int delay_ms = test_delay_ms("MEMTRAIL_TEST_CLOSING_DELAY_MS");
  delay_in_tests(delay_ms);
}

// BPF_TRACE_UPROBE_MULTI and BPF_LINK_CREATE's uprobe_multi attributes (Linux 6.6), which the
// libbpf and uapi headers of Debian 12 predate: the kernel's layout, zero-padded as it expects.
constexpr uint32_t kUprobeMultiAttachType = 48;
struct UprobeMultiAttr {
  uint32_t prog_fd = 0, target_fd = 0, attach_type = 0, flags = 0;
  uint64_t path = 0, offsets = 0, ref_ctr_offsets = 0, cookies = 0;
  uint32_t count = 0, multi_flags = 0, pid = 0, pad = 0;
  uint64_t rest[8] = {};
};
static_assert(offsetof(UprobeMultiAttr, path) == 16 && offsetof(UprobeMultiAttr, count) == 48);
constexpr uint32_t kUprobeMultiReturn = 1;  // BPF_F_UPROBE_MULTI_RETURN

// Places `program` at `offsets` of the file at `path` in one uprobe_multi link, for `pid` (0:
// every process); returns the link's descriptor, or -errno.
int link_uprobe_multi(int program_fd, const std::string& path, const std::vector<uint64_t>& offsets,
                      const std::vector<uint64_t>& cookies, uint32_t pid, bool retprobe) {
  UprobeMultiAttr attr;
  attr.prog_fd = static_cast<uint32_t>(program_fd);
  attr.attach_type = kUprobeMultiAttachType;
  attr.path = reinterpret_cast<uint64_t>(path.c_str());
  attr.offsets = reinterpret_cast<uint64_t>(offsets.data());
  attr.cookies = reinterpret_cast<uint64_t>(cookies.data());
  attr.count = static_cast<uint32_t>(offsets.size());
  attr.multi_flags = retprobe ? kUprobeMultiReturn : 0;
  attr.pid = pid;
  long link = ::syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr));
  return link < 0 ? -errno : static_cast<int>(link);
}

// Whether this kernel has uprobe_multi links: a program of that attach type loads, and a link
// to a directory is refused for not being a regular file (EBADF) rather than for an unknown
// attach type (EINVAL), as libbpf's own feature probe does.
bool kernel_has_uprobe_multi() {
  const bpf_insn return_zero[] = {{BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
                                  {BPF_JMP | BPF_EXIT, 0, 0, 0, 0}};
  LIBBPF_OPTS(bpf_prog_load_opts, options,
              .expected_attach_type = static_cast<bpf_attach_type>(kUprobeMultiAttachType));
  UniqueFd program(
      bpf_prog_load(BPF_PROG_TYPE_KPROBE, "memtrail_probe", "GPL", return_zero, 2, &options));
  if (!program) return false;
  int link = link_uprobe_multi(program.get(), "/", {0}, {0}, 0, false);
  UniqueFd closed(link < 0 ? -1 : link);
  return link >= 0 || link == -EBADF;
}

struct ProbePrograms {
  bpf_program* entry;
  bpf_program* exit;  // nullptr: no return probe (free)
};

ProbePrograms programs_for(alloc_bpf* skeleton, inspect::ProbeRole role) {
  auto& p = skeleton->progs;
  switch (role) {
    case inspect::ProbeRole::kSizeAlloc:
      return {p.size_alloc_enter, p.pointer_exit};
    case inspect::ProbeRole::kCalloc:
      return {p.calloc_enter, p.pointer_exit};
    case inspect::ProbeRole::kRealloc:
      return {p.realloc_enter, p.realloc_exit};
    case inspect::ProbeRole::kReallocArray:
      return {p.reallocarray_enter, p.realloc_exit};
    case inspect::ProbeRole::kAlignedAlloc:
      return {p.aligned_alloc_enter, p.pointer_exit};
    // (heap, size): the size is the second argument, as in aligned_alloc.
    case inspect::ProbeRole::kHeapAlloc:
      return {p.aligned_alloc_enter, p.pointer_exit};
    case inspect::ProbeRole::kPosixMemalign:
      return {p.posix_memalign_enter, p.posix_memalign_exit};
    case inspect::ProbeRole::kFree:
      return {p.free_enter, nullptr};
    case inspect::ProbeRole::kDelete:
      return {p.delete_enter, nullptr};
  }
  return {nullptr, nullptr};
}

// Maps the values of a BPF_F_MMAPABLE array (the kernel lays them out from offset 0).
MappedMap map_values(bpf_map* map, int protection = PROT_READ) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t length = static_cast<size_t>(bpf_map__value_size(map)) * bpf_map__max_entries(map);
  length = (length + page - 1) / page * page;
  void* address = mmap(nullptr, length, protection, MAP_SHARED, bpf_map__fd(map), 0);
  if (address == MAP_FAILED) {
    int error_number = errno;
    fail(std::string("map BPF map ") + bpf_map__name(map), error_number);
  }
  return MappedMap(address, length);
}

static_assert(sizeof(memtrail_unwind_row) == kUnwindRowBytes);

}  // namespace

AllocTracer::AllocTracer(const TracerConfig& config)
    : config_(config),
      regions_(config.max_outstanding_allocations, static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {
  route_libbpf_log(config.verbose);

  skeleton_.reset(alloc_bpf__open());
  if (!skeleton_) {
    int error_number = errno;
    fail("open BPF object alloc.bpf.o", error_number);
  }
  auto& maps = skeleton_->maps;
  uint32_t buckets = memtrail_alloc_buckets_for(config.max_outstanding_allocations);
  // Exec and fork events: for mapped regions, children, and the processes --all picks up.
  bool lifecycle =
      config.trace_regions || config.follow_forks || config.host_wide || config.hold_execs;
  bool tables = config.unwind_mode != unwind::UnwindMode::kFramePointers;
  // Hash maps without preallocation still allocate their bucket array (16 bytes a bucket):
  // room for the host's processes with --all, for a target's process tree otherwise.
  uint32_t traced_processes = config.host_wide ? kMaxTracedProcesses : kMaxTracedTrees;
  // Without --mmap only fork and exec events (a few a second at most) use the ring buffer.
  uint32_t region_buffer =
      config.trace_regions ? config.region_buffer_bytes : kLifecycleBufferBytes;
  struct {
    bpf_map* map;
    uint32_t entries;
  } sizes[] = {{maps.allocs, buckets},
               {maps.site_totals, config.max_stacks},
               {maps.stacks, config.max_stacks},
               {maps.fallback_sites, config.max_fallback_sites},
               {maps.process_losses, kMaxLossProcesses},
               // The frame-pointer walk reads neither: one entry each, no memory.
               {maps.unwind_rows, tables ? std::max(config.unwind_table_rows, 1u) : 1u},
               // A page index entry (8 bytes) per 256 bytes of code, about one per 5 rows (libc:
               // 5,600 for 28,274): room for every table's, with a margin.
               {maps.unwind_pages, tables ? std::max(config.unwind_table_rows / 4, 1u) : 1u},
               {maps.unwind_processes, tables ? kMaxUnwindProcesses : 1u},
               {maps.traced_processes, lifecycle ? traced_processes : 1u},
               {maps.held_processes, config.hold_execs ? kMaxHeldProcesses : 1u},
               // Entries only for CPython processes and their stacks (no preallocation).
               {maps.python_processes, config.python_layout ? traced_processes : 1u},
               {maps.python_stacks, config.python_layout ? config.max_stacks : 1u},
               {maps.python_types, config.python_type_layout ? kMaxPythonTypes : 1u},
               // Entries only for the processes whose object probes are duty-cycled.
               {maps.process_allocations, config.python_objects ? traced_processes : 1u},
               {maps.python_new_objects, config.python_objects ? config.python_log_entries : 1u},
               {maps.region_events,
                lifecycle ? region_buffer : static_cast<uint32_t>(sysconf(_SC_PAGESIZE))}};
  for (auto& [map, entries] : sizes) {
    int err = bpf_map__set_max_entries(map, entries);
    if (err < 0) fail(std::string("size BPF map ") + bpf_map__name(map), -err);
  }
  auto& p = skeleton_->progs;
  if (!config.trace_regions) {
    for (bpf_program* program :
         {p.region_mmap_enter, p.region_mmap_exit, p.region_munmap_enter, p.region_mremap_enter,
          p.region_mremap_exit, p.region_brk_enter, p.region_brk_exit}) {
      bpf_program__set_autoload(program, false);
    }
  }
  if (!config.python_type_layout) {
    bpf_program__set_autoload(p.python_object_new, false);
    bpf_program__set_autoload(p.python_object_free, false);
  } else {
    const_cast<memtrail_python_type_layout&>(skeleton_->rodata->python_type_layout) =
        bpf::python_type_layout(*config.python_type_layout);
  }
  // A launched CPython program is held at its end (attach_python_finalizing) so that its report
  // shows what it kept to it: its objects, and the buffers the finalization frees, which it no
  // longer records; without object tracking, the buffers alone. The hold reports through the
  // lifecycle events (none, no hold) and is placed by a uprobe_multi link.
  uprobe_multi_ = !std::getenv("MEMTRAIL_TEST_PERF_UPROBES") && kernel_has_uprobe_multi();
  python_end_holds_ =
      lifecycle && (config.python_objects || (config.python_layout && uprobe_multi_));
  if (!python_end_holds_) {
    bpf_program__set_autoload(p.python_finalizing, false);
  } else {
    bpf_program__set_expected_attach_type(p.python_finalizing,
                                          static_cast<bpf_attach_type>(kUprobeMultiAttachType));
  }
  // A launched Python program whose interpreter is a shared library is held again at its
  // entry point (attach_program_entry), once the dynamic linker has mapped that library.
  program_entry_holds_ =
      lifecycle && uprobe_multi_ && (config.python_objects || config.python_layout);
  if (!program_entry_holds_) {
    bpf_program__set_autoload(p.program_entry, false);
  } else {
    bpf_program__set_expected_attach_type(p.program_entry,
                                          static_cast<bpf_attach_type>(kUprobeMultiAttachType));
  }
  if (!config.python_objects) {
    bpf_program__set_autoload(p.python_object_created, false);
  } else {
    uint32_t entries = config.python_log_entries;
    if (entries == 0 || (entries & (entries - 1)) != 0) {
      throw Error("the ring of new Python objects must hold a power of two entries, not " +
                  std::to_string(entries));
    }
    skeleton_->rodata->python_log_mask = entries - 1;
    // One uprobe_multi link for the hundreds of creation sites: perf-event uprobes are
    // detached one by one, about 0.1 s each (27 s for python3.11's 263 sites at exit).
    bpf_program__set_expected_attach_type(p.python_object_created,
                                          static_cast<bpf_attach_type>(kUprobeMultiAttachType));
  }
  // Detaching a perf-event uprobe takes ~0.1 s, one after another (the kernel serializes
  // them): twenty allocator probes kept every exit waiting two seconds. uprobe_multi links
  // place a program at all of a module's offsets at once and detach concurrently.
  // MEMTRAIL_TEST_PERF_UPROBES=1 (tests only): the older kernels' way, on this one.
  cxx_own_probes_ = std::getenv("MEMTRAIL_TEST_CXX_OWN_PROBES") != nullptr;
  if (uprobe_multi_) {
    for (bpf_program* program :
         {p.size_alloc_enter, p.calloc_enter, p.realloc_enter, p.reallocarray_enter,
          p.aligned_alloc_enter, p.posix_memalign_enter, p.pointer_exit, p.realloc_exit,
          p.posix_memalign_exit, p.site_size_in_register, p.site_size_taken,
          p.site_size_in_chunk_header, p.site_take_size, p.handoff_enter, p.site_failed_call,
          p.free_enter, p.delete_enter, p.new_array_enter}) {
      bpf_program__set_expected_attach_type(program,
                                            static_cast<bpf_attach_type>(kUprobeMultiAttachType));
    }
  }
  if (!lifecycle) {
    bpf_program__set_autoload(p.region_exec, false);
    bpf_program__set_autoload(p.region_fork, false);
  }
  auto* rodata = skeleton_->rodata;
  rodata->alloc_buckets = buckets;
  rodata->probe_floor = config.probe_floor;
  rodata->follow_forks = config.follow_forks;
  rodata->filter_processes = config.host_wide;
  rodata->sample_rate = config.sample_rate;
  if (config.python_layout) {
    const auto& layout = *config.python_layout;
    for (uint32_t offset : {layout.frame_code, layout.frame_previous, layout.frame_prev_instr,
                            layout.frame_globals}) {
      if (offset + sizeof(uint64_t) > MEMTRAIL_PYTHON_FRAME_READ) {
        throw Error("CPython's frame layout puts a field at offset " + std::to_string(offset) +
                        ", beyond the " + std::to_string(MEMTRAIL_PYTHON_FRAME_READ) +
                        " bytes memtrail reads of a frame",
                    "build memtrail against the CPython it should walk, or use "
                    "--python-frames native");
      }
    }
    auto tstate_fields = {layout.tstate_thread_id, layout.tstate_cframe,
                          layout.tstate_datastack_chunk, layout.tstate_datastack_limit};
    uint32_t tstate_low = std::min(tstate_fields), tstate_high = std::max(tstate_fields);
    if (tstate_high + sizeof(uint64_t) - tstate_low > MEMTRAIL_PYTHON_TSTATE_READ) {
      throw Error("CPython's thread state layout spreads the fields memtrail reads over " +
                      std::to_string(tstate_high + sizeof(uint64_t) - tstate_low) +
                      " bytes, beyond the " + std::to_string(MEMTRAIL_PYTHON_TSTATE_READ) +
                      " it reads at once",
                  "build memtrail against the CPython it should walk, or use "
                  "--python-frames native");
    }
    rodata->python_frames = true;
    const_cast<memtrail_python_layout&>(rodata->python_layout) = bpf::python_layout(layout);
  }
  rodata->unwind_mode = tables ? MEMTRAIL_UNWIND_MODE_TABLES : MEMTRAIL_UNWIND_MODE_FP;
  rodata->unknown_code_by_frame_pointer = config.unwind_mode != unwind::UnwindMode::kDwarf;
  if (config.sample_rate != 0) {
    auto quantiles = aggregator::exponential_quantiles(MEMTRAIL_SAMPLE_QUANTILES);
    auto weights =
        aggregator::sample_weight_table(MEMTRAIL_SAMPLE_WEIGHTS, MEMTRAIL_SAMPLE_WEIGHT_STEPS);
    std::copy(quantiles.begin(), quantiles.end(), const_cast<uint32_t*>(rodata->sample_quantiles));
    std::copy(weights.begin(), weights.end(), const_cast<uint32_t*>(rodata->sample_weights));
  }
  int err = alloc_bpf__load(skeleton_.get());
  if (err < 0) {
    fail("load BPF programs", -err, load_failure_hint(-err, "--max-allocations"));
  }
  // Before any hold (memtrail killed while it holds a process must not leave it stopped), and
  // before the tables are mapped: the guardian's copy of the mappings would keep those maps'
  // memory (hundreds of MiB) for as long as it lives.
  if (config.hold_execs) {
    guardian_.emplace(bpf_map__fd(maps.held_processes), &skeleton_->bss->holds_released);
  }
  // Writable: purge_processes() frees the slots of processes that exited.
  allocs_view_ = map_values(maps.allocs, PROT_READ | PROT_WRITE);
  if (config.python_objects) python_log_view_ = map_values(maps.python_new_objects);
  if (tables) {
    rows_view_ = map_values(maps.unwind_rows, PROT_READ | PROT_WRITE);
    row_capacity_ = bpf_map__max_entries(maps.unwind_rows);
    pages_view_ = map_values(maps.unwind_pages, PROT_READ | PROT_WRITE);
    page_capacity_ = bpf_map__max_entries(maps.unwind_pages);
  }
  if (lifecycle) attach_lifecycle_tracepoints();
}

void AllocTracer::attach_lifecycle_tracepoints() {
  const std::string hint =
      "mount tracefs (mount -t tracefs nodev /sys/kernel/tracing), or leave mapped memory "
      "out (no --mmap)";
  auto& p = skeleton_->progs;
  struct {
    bpf_program* program;
    const char* tracepoint;
  } syscalls[] = {
      {p.region_mmap_enter, "sys_enter_mmap"},     {p.region_mmap_exit, "sys_exit_mmap"},
      {p.region_munmap_enter, "sys_enter_munmap"}, {p.region_mremap_enter, "sys_enter_mremap"},
      {p.region_mremap_exit, "sys_exit_mremap"},   {p.region_brk_enter, "sys_enter_brk"},
      {p.region_brk_exit, "sys_exit_brk"}};
  // Host-wide, but each program returns at once for a process that is not a target (one hash
  // lookup), and the traced_processes map is empty until attach().
  if (config_.trace_regions) {
    ensure_tracefs("mmap tracking", hint);
    for (const auto& [program, tracepoint] : syscalls) {
      bpf_link* link = bpf_program__attach_tracepoint(program, "syscalls", tracepoint);
      if (!link) {
        int error_number = errno;
        fail(std::string("attach tracepoint syscalls:") + tracepoint, error_number, hint);
      }
      links_.emplace_back(link);
    }
  }
  for (auto [program, name] : {std::pair{p.region_exec, "sched_process_exec"},
                               std::pair{p.region_fork, "sched_process_fork"}}) {
    bpf_link* link = bpf_program__attach(program);
    if (!link) {
      int error_number = errno;
      fail(std::string("attach tracepoint ") + name, error_number);
    }
    links_.emplace_back(link);
  }
  region_reader_.reset(ring_buffer__new(bpf_map__fd(skeleton_->maps.region_events),
                                        &AllocTracer::on_region_event, this, nullptr));
  if (!region_reader_) {
    int error_number = errno;
    fail("open the ring buffer of BPF map region_events", error_number);
  }
}

int AllocTracer::on_region_event(void* self, void* data, size_t size) {
  auto* tracer = static_cast<AllocTracer*>(self);
  memtrail_region_event event{};
  if (size < sizeof(event)) return 0;
  std::memcpy(&event, data, sizeof(event));
  if (event.type == MEMTRAIL_REGION_FORK) {
    tracer->lifecycle_.forks.push_back({event.tgid, static_cast<uint32_t>(event.address)});
  } else if (event.type == MEMTRAIL_REGION_PYTHON_FINALIZING) {
    tracer->lifecycle_.python_finalizing.push_back(
        {event.tgid, event.timestamp_ns, (event.flags & MEMTRAIL_REGION_HELD) != 0,
         (event.flags & MEMTRAIL_REGION_HOLD_FAILED) != 0,
         event.address == MEMTRAIL_PYTHON_END_EXIT});
  } else if (event.type == MEMTRAIL_REGION_PROGRAM_ENTRY) {
    tracer->lifecycle_.program_entries.push_back(
        {event.tgid, event.timestamp_ns, (event.flags & MEMTRAIL_REGION_HELD) != 0,
         (event.flags & MEMTRAIL_REGION_HOLD_FAILED) != 0});
  } else if (tracer->regions_.apply(event)) {
    tracer->lifecycle_.execs.push_back({event.tgid, event.timestamp_ns,
                                        (event.flags & MEMTRAIL_REGION_HELD) != 0,
                                        (event.flags & MEMTRAIL_REGION_HOLD_FAILED) != 0});
  }
  return 0;
}

void AllocTracer::consume_region_events() {
  if (!region_reader_) return;
  int consumed = ring_buffer__consume(region_reader_.get());
  if (consumed < 0) fail("read BPF ring buffer region_events", -consumed);
}

AllocTracer::Lifecycle AllocTracer::drain_region_events() {
  consume_region_events();
  return std::exchange(lifecycle_, {});
}

int AllocTracer::region_events_fd() const {
  return region_reader_ ? ring_buffer__epoll_fd(region_reader_.get()) : -1;
}

std::optional<uint32_t> AllocTracer::store_rows(std::span<const unwind::Row> rows) {
  if (rows.size() > row_capacity_ - rows_used_) return std::nullopt;
  auto first = static_cast<uint32_t>(rows_used_);
  // No walker reads these rows before set_unwind_mappings() points a process at them (a
  // syscall: the stores are visible by then).
  auto* stored = rows_view_.writable_values<memtrail_unwind_row>() + first;
  std::transform(rows.begin(), rows.end(), stored, bpf::unwind_row);
  rows_used_ += rows.size();
  return first;
}

std::optional<uint32_t> AllocTracer::store_page_index(std::span<const uint32_t> first_rows) {
  if (first_rows.size() < 2 || first_rows.size() - 1 > page_capacity_ - pages_used_) {
    return std::nullopt;
  }
  auto first = static_cast<uint32_t>(pages_used_);
  auto* pages = pages_view_.writable_values<memtrail_unwind_page>() + first;
  for (size_t page = 0; page + 1 < first_rows.size(); ++page) {
    pages[page] = {first_rows[page], first_rows[page + 1]};
  }
  pages_used_ += first_rows.size() - 1;
  return first;
}

void AllocTracer::set_unwind_mappings(uint32_t pid,
                                      std::span<const unwind::WalkerMapping> mappings) {
  if (row_capacity_ == 0) return;  // --unwind fp
  auto process = std::make_unique<memtrail_unwind_process>();
  size_t count = std::min<size_t>(mappings.size(), MEMTRAIL_UNWIND_MAX_MAPPINGS);
  std::transform(mappings.begin(), mappings.begin() + static_cast<ptrdiff_t>(count),
                 process->mappings, bpf::unwind_mapping);
  process->count = static_cast<uint32_t>(count);
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.unwind_processes), &pid, process.get(),
                          BPF_ANY) != 0) {
    int error_number = errno;
    fail("store the code mappings of pid " + std::to_string(pid) + " for the stack walker",
         error_number,
         error_number == E2BIG ? "more than " + std::to_string(kMaxUnwindProcesses) +
                                     " processes traced at once with --unwind dwarf/auto"
                               : "");
  }
  // Stack memos made with the old mappings are not used (bpf/alloc/stack_walk.bpf.h).
  ++skeleton_->bss->stack_memo_generation;
}

std::unordered_map<uint32_t, uint64_t> AllocTracer::free_slots_of(
    const std::unordered_map<uint32_t, uint64_t>& before_by_pid) {
  // The BPF programs' removal protocol (bpf/alloc_events.h): timestamp, then tgid, then the
  // address back to 0 by compare-and-swap. No program writes these slots (their blocks belong
  // to a dead process or a program that is gone); a slot another CPU is claiming meanwhile has
  // tgid 0 or no timestamp until it is filled, so it is never taken here.
  // One pass over the whole table, whatever the number of processes: a host-wide run sees
  // dozens of exits a second, and the table may be hundreds of MiB.
  std::unordered_map<uint32_t, uint64_t> freed;
  if (before_by_pid.empty()) return freed;
  uint32_t only_pid = before_by_pid.size() == 1 ? before_by_pid.begin()->first : 0;
  uint64_t only_before = before_by_pid.size() == 1 ? before_by_pid.begin()->second : 0;
  auto* buckets = allocs_view_.writable_values<memtrail_alloc_bucket>();
  uint32_t bucket_count = bpf_map__max_entries(skeleton_->maps.allocs);
  for (uint32_t b = 0; b < bucket_count; ++b) {
    memtrail_alloc_bucket& bucket = buckets[b];
    for (uint32_t slot = 0; slot < MEMTRAIL_BUCKET_SLOTS; ++slot) {
      std::atomic_ref<__u64> address(bucket.address[slot]);
      __u64 held = address.load(std::memory_order_acquire);
      if (held == 0) continue;
      memtrail_alloc_info& info = bucket.info[slot];
      uint32_t tgid = std::atomic_ref<__u32>(info.tgid).load();
      uint64_t before_ns;
      if (only_pid) {
        if (tgid != only_pid) continue;
        before_ns = only_before;
      } else {
        auto wanted = before_by_pid.find(tgid);
        if (wanted == before_by_pid.end()) continue;
        before_ns = wanted->second;
      }
      uint64_t allocated_at = std::atomic_ref<__u64>(info.timestamp_ns).load();
      if (allocated_at == 0 || allocated_at >= before_ns) continue;
      std::atomic_ref<__u64>(info.timestamp_ns).store(0, std::memory_order_release);
      std::atomic_ref<__u32>(info.tgid).store(0, std::memory_order_release);
      if (address.compare_exchange_strong(held, 0)) ++freed[tgid];
    }
  }
  return freed;
}

std::unordered_map<uint32_t, uint64_t> AllocTracer::purge_processes(
    const std::unordered_map<uint32_t, uint64_t>& before_by_pid, std::span<const Exec> old_images) {
  std::vector<uint32_t> pids;
  for (const auto& [pid, before] : before_by_pid) pids.push_back(pid);
  auto slots = before_by_pid;
  for (const auto& exec : old_images) {
    auto& before = slots[exec.pid];
    before = std::max(before, exec.at_ns);  // executed twice, or exited too: the later time
  }
  auto dropped = free_slots_of(slots);
  if (pids.empty()) return dropped;
  auto purged = [&](uint32_t tgid) { return before_by_pid.count(tgid) != 0; };
  // Keys first, deletes after: deleting while iterating a hash map restarts the iteration.
  std::vector<uint64_t> stacks;
  std::vector<uint32_t> stack_ids;
  read_hash_map<uint64_t, memtrail_stack>(bpf_map__fd(skeleton_->maps.stacks), 256, "stacks",
                                          [&](uint64_t key, const memtrail_stack& stack) {
                                            if (!purged(stack.tgid)) return;
                                            stacks.push_back(key);
                                            stack_ids.push_back(stack.id);
                                          });
  for (uint64_t key : stacks) bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.stacks), &key);
  if (config_.python_layout) {
    for (uint32_t id : stack_ids) {
      bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.python_stacks), &id);  // ENOENT: none
    }
    for (uint32_t pid : pids) {
      forget_python_process(pid);
      python_ended_.erase(pid);
    }
    std::erase_if(python_objects_sized_,
                  [&](const auto& entry) { return purged(entry.first.pid); });
    std::erase_if(python_site_bytes_, [&](const auto& entry) {
      return purged(static_cast<uint32_t>(entry.first >> 32));
    });
  }
  if (config_.python_type_layout) {
    std::vector<memtrail_python_type_key> types;
    read_hash_map<memtrail_python_type_key, memtrail_python_type_counts>(
        bpf_map__fd(skeleton_->maps.python_types), 1024, "python_types",
        [&](const memtrail_python_type_key& key, const memtrail_python_type_counts&) {
          if (purged(key.tgid)) types.push_back(key);
        });
    for (const auto& key : types) {
      bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.python_types), &key);
    }
  }
  std::vector<memtrail_fallback_key> fallbacks;
  read_hash_map<memtrail_fallback_key, memtrail_fallback_totals>(
      bpf_map__fd(skeleton_->maps.fallback_sites), 4096, "fallback_sites",
      [&](const memtrail_fallback_key& key, const memtrail_fallback_totals&) {
        if (purged(key.tgid)) fallbacks.push_back(key);
      });
  for (const auto& key : fallbacks) {
    bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.fallback_sites), &key);
  }
  std::unordered_map<uint32_t, uint64_t> removed;
  for (uint32_t pid : pids) {
    // ENOENT for each of these is fine: nothing was stored for the process.
    bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.process_losses), &pid);
    forget_unwind_mappings(pid);
    removed[pid] = dropped[pid] + unfollow(pid);  // and its mapped regions
  }
  // After the deletes: no stack memo keeps the id of a stack deleted above, nor mappings
  // forgotten (bpf/alloc/stack_walk.bpf.h).
  ++skeleton_->bss->stack_memo_generation;
  for (const auto& exec : old_images) {
    if (!removed.count(exec.pid)) removed[exec.pid] = dropped[exec.pid];
  }
  return removed;
}

uint64_t AllocTracer::counter_total(uint32_t index) const {
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) fail("count possible CPUs", -cpus);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
  if (bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.counters), &index, per_cpu.data()) != 0) {
    int error_number = errno;
    fail("read BPF map counters", error_number);
  }
  uint64_t total = 0;
  for (uint64_t value : per_cpu) total += value;
  return total;
}

uint64_t AllocTracer::unknown_code_frames() const {
  return counter_total(MEMTRAIL_CTR_UNKNOWN_CODE);
}

void AllocTracer::forget_unwind_mappings(uint32_t pid) {
  if (row_capacity_ == 0) return;
  // ENOENT: never stored (a process that exited before its mappings were read).
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.unwind_processes), &pid);
}

void AllocTracer::set_python_process(uint32_t pid, uint64_t runtime_address,
                                     uint64_t eval_loop_start, uint64_t eval_loop_end) {
  if (!config_.python_layout) return;
  memtrail_python_process process{runtime_address, eval_loop_start, eval_loop_end};
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.python_processes), &pid, &process, BPF_ANY) !=
      0) {
    int error_number = errno;
    fail("add CPython process " + std::to_string(pid) + " to the Python frame walker",
         error_number);
  }
  // Its stacks now have Python frames: no stack memo made before is used.
  ++skeleton_->bss->stack_memo_generation;
}

uint32_t AllocTracer::stacks_created() const {
  return std::atomic_ref<uint32_t>(skeleton_->bss->next_stack_id).load(std::memory_order_relaxed);
}

void AllocTracer::for_each_python_stack(
    const std::function<void(uint32_t, uint32_t, std::span<const model::PythonFrame>)>& visit)
    const {
  if (!config_.python_layout) return;
  std::vector<model::PythonFrame> frames;
  read_hash_map<uint32_t, memtrail_python_stack>(
      bpf_map__fd(skeleton_->maps.python_stacks), 256, "python_stacks",
      [&](uint32_t id, const memtrail_python_stack& python) {
        bpf::python_frames(python, frames);
        visit(id, python.tgid, frames);
      });
}

void AllocTracer::forget_python_process(uint32_t pid) {
  if (!config_.python_layout) return;
  // ENOENT: not a CPython process.
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.python_processes), &pid);
}

AllocTracer::~AllocTracer() {
  // Every probe detached at once (see release_concurrently), before the skeleton goes.
  unlink_python_objects();
  release_concurrently(multi_links_);
  release_concurrently(links_);
}

void AllocTracer::follow(uint32_t pid) {
  if (bpf_map__max_entries(skeleton_->maps.traced_processes) <= 1) return;  // not needed
  uint32_t followed = MEMTRAIL_PROCESS_TRACED;
  // A process followed already keeps its bits (held at exec: attached again after one).
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.traced_processes), &pid, &followed,
                          BPF_NOEXIST) != 0 &&
      errno != EEXIST) {
    int error_number = errno;
    fail("add pid " + std::to_string(pid) + " to the traced processes", error_number,
         error_number == E2BIG
             ? "more than " +
                   std::to_string(bpf_map__max_entries(skeleton_->maps.traced_processes)) +
                   " processes traced at once (" + std::to_string(kMaxTracedProcesses) +
                   " with --all)"
             : "");
  }
}

void AllocTracer::hold_execs(uint32_t pid) {
  if (!region_reader_)
    throw Error("hold the execs of pid " + std::to_string(pid) +
                ": no exec events (hold_execs was not configured)");
  uint32_t bits = MEMTRAIL_PROCESS_TRACED | MEMTRAIL_PROCESS_HOLD_EXEC;
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.traced_processes), &pid, &bits, BPF_ANY) !=
      0) {
    int error_number = errno;
    fail("hold the execs of pid " + std::to_string(pid), error_number);
  }
}

void AllocTracer::release_holds() { skeleton_->bss->holds_released = 1; }

void AllocTracer::continue_held(uint32_t pid, uint64_t held_at_ns) {
  ::kill(static_cast<pid_t>(pid), SIGCONT);
  // Forgotten after the signal: a hold still recorded is the guardian's to continue.
  memtrail_held_key key{pid, 0, held_at_ns};
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.held_processes), &key);
}

uint64_t AllocTracer::unfollow(uint32_t pid) {
  // ENOENT: never followed.
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.traced_processes), &pid);
  return regions_.forget_process(pid);
}

// MEMTRAIL_TEST_FAIL_ATTACH=N (tests only): the first N uprobe attaches fail as the kernel
// fails them when another tool holds a probe with another reference counter (EINVAL), so
// that a test can check what memtrail does then without running that tool.
bool AllocTracer::injected_attach_failure() {
  static int remaining = [] {
    const char* value = std::getenv("MEMTRAIL_TEST_FAIL_ATTACH");
    return value ? std::atoi(value) : 0;
  }();
  if (remaining <= 0) return false;
  --remaining;
  errno = EINVAL;
  return true;
}

void AllocTracer::attach_everywhere(const inspect::AllocatorModule& module) {
  attach(kEveryProcess, module);
}

void AllocTracer::attach(uint32_t pid, const inspect::AllocatorModule& module) {
  // Open while the probes are attached: the kernel resolves the descriptor's path to the
  // very file checked, whatever its name or the process's mappings lead to meanwhile.
  inspect::OpenedFile file = inspect::open_file(module.file);
  std::string kernel_path = file.kernel_path();
  auto& p = skeleton_->progs;
  std::vector<ProbeRequest> requests;
  // The operators new that malloc's return sites tell, known to BPF before anything is probed.
  for (const auto& function : module.functions) {
    CxxProbing probing = cxx_probing(function);
    if (probing == CxxProbing::kAtMallocSites) add_new_call(*function.new_via_malloc);
    if (probing == CxxProbing::kMarksNewArray) add_new_call(*function.array_of);
  }
  for (const auto& function : module.functions) {
    CxxProbing probing = cxx_probing(function);
    if (probing == CxxProbing::kAtMallocSites || probing == CxxProbing::kForwarded) continue;
    if (probing == CxxProbing::kMarksNewArray) {
      requests.push_back({p.new_array_enter, function.probe_offset, false, 0, &function.name});
      continue;
    }
    if (uses_return_sites(function)) {
      // Sizes are taken before the sites that read them are in place, so that no call finds
      // a site without its size.
      for (const auto& capture : function.size_captures) {
        requests.push_back({p.site_take_size, function.entry_offset + capture.offset, false,
                            bpf::capture_cookie(capture), &function.name});
      }
      for (uint64_t offset : function.failure_offsets) {
        requests.push_back(
            {p.site_failed_call, function.entry_offset + offset, false, 0, &function.name});
      }
      // Slow paths: entry and return probes at the jump to them, the return probe first (see
      // below).
      for (const auto& handoff : function.handoffs) {
        uint64_t offset = function.entry_offset + handoff.offset;
        requests.push_back({p.pointer_exit, offset, true,
                            bpf::probe_cookie(function.role, function.kind), &function.name});
        requests.push_back({p.handoff_enter, offset, false,
                            bpf::handoff_cookie(function.kind, handoff,
                                                class_table_slot(handoff.usable_size,
                                                                 handoff.class_sizes_from_here)),
                            &function.name});
      }
      for (const auto& site : function.return_sites) {
        bpf_program* program = site.size_register   ? p.site_size_in_register
                               : site.size_captured ? p.site_size_taken
                                                    : p.site_size_in_chunk_header;
        requests.push_back(
            {program, function.entry_offset + site.offset, false,
             bpf::site_cookie(function.kind, site,
                              class_table_slot(site.usable_size, site.class_sizes_from_here)),
             &function.name});
      }
      continue;
    }
    ProbePrograms programs = programs_for(skeleton_.get(), function.role);
    uint64_t cookie = bpf::probe_cookie(function.role, function.kind);
    // The return probe goes first: an entry recorded without its return probe in place would
    // leave the thread's call state waiting for a return that never comes.
    // At the same address as the entry probe: one trap serves both. The entry probe is past
    // the function's first instruction only where that instruction changes nothing a return
    // probe needs (endbr64; free's NULL check has no return probe).
    if (programs.exit) {
      requests.push_back({programs.exit, function.probe_offset, true, cookie, &function.name});
    }
    requests.push_back({programs.entry, function.probe_offset, false, cookie, &function.name});
  }
  PlacedProbes placed = place_probes(pid, module, kernel_path, requests);
  // Followed before the links are kept: if the process map is full, the probes just attached
  // go with `placed`, rather than record a process memtrail does not track.
  if (pid != kEveryProcess) follow(pid);
  for (auto& link : placed.perf_links) links_.push_back(std::move(link));
  for (auto& link : placed.multi_links) multi_links_.push_back(std::move(link));
}

AllocTracer::PlacedProbes AllocTracer::place_probes(uint32_t pid,
                                                    const inspect::AllocatorModule& module,
                                                    const std::string& kernel_path,
                                                    const std::vector<ProbeRequest>& requests) {
  auto attach_failed = [&](int error_number, bool retprobe, const std::string& functions) {
    std::string what = std::string("attach ") + (retprobe ? "uretprobe " : "uprobe ") + functions +
                       " in " + module.path + " (pid " + std::to_string(pid) + ")";
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
  };
  PlacedProbes placed;
  if (!uprobe_multi_) {
    for (const auto& request : requests) {
      LIBBPF_OPTS(bpf_uprobe_opts, options, .bpf_cookie = request.cookie,
                  .retprobe = request.retprobe);
      pid_t probed = pid == kEveryProcess ? -1 : static_cast<pid_t>(pid);
      bpf_link* link = injected_attach_failure() ? nullptr
                                                 : bpf_program__attach_uprobe_opts(
                                                       request.program, probed, kernel_path.c_str(),
                                                       request.offset, &options);
      if (!link) attach_failed(errno, request.retprobe, *request.function);
      placed.perf_links.emplace_back(link);
    }
    return placed;
  }
  // A link per (program, entry or return): every offset of the module at once. The order of
  // the requests holds across links: sizes taken first, return probes before entry probes.
  struct Group {
    const ProbeRequest* first;
    std::vector<uint64_t> offsets, cookies;
    std::vector<std::string> functions;
  };
  std::vector<Group> groups;
  for (const auto& request : requests) {
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.first->program == request.program && g.first->retprobe == request.retprobe;
    });
    if (group == groups.end()) group = groups.insert(groups.end(), Group{&request, {}, {}, {}});
    group->offsets.push_back(request.offset);
    group->cookies.push_back(request.cookie);
    if (std::find(group->functions.begin(), group->functions.end(), *request.function) ==
        group->functions.end()) {
      group->functions.push_back(*request.function);
    }
  }
  auto rank = [&](const Group& group) {
    if (group.first->program == skeleton_->progs.site_take_size) return 0;
    return group.first->retprobe ? 1 : 2;
  };
  std::stable_sort(groups.begin(), groups.end(),
                   [&](const Group& a, const Group& b) { return rank(a) < rank(b); });
  for (const auto& group : groups) {
    int link = injected_attach_failure()
                   ? -EINVAL
                   : link_uprobe_multi(bpf_program__fd(group.first->program), kernel_path,
                                       group.offsets, group.cookies, pid == kEveryProcess ? 0 : pid,
                                       group.first->retprobe);
    if (link < 0) {
      release_concurrently(placed.multi_links);
      std::string functions;
      for (const auto& name : group.functions) functions += (functions.empty() ? "" : ", ") + name;
      attach_failed(-link, group.first->retprobe, functions);
    }
    placed.multi_links.emplace_back(link);
  }
  return placed;
}

bool AllocTracer::uses_return_sites(const inspect::FunctionProbe& function) const {
  if (!config_.return_sites || config_.trace_regions || function.return_sites.empty()) return false;
  return std::all_of(function.return_sites.begin(), function.return_sites.end(),
                     [](const inspect::ReturnSite& site) {
                       return site.frame_bytes <= 0xffff &&
                              site.saved_bp_offset.value_or(0) <= 0xffff;
                     }) &&
         std::all_of(
             function.size_captures.begin(), function.size_captures.end(),
             [](const inspect::SizeCapture& capture) { return capture.frame_bytes <= 0xffff; }) &&
         class_tables_fit(function);
}

// The class size tables the function's sites and slow paths read, with those BPF knows, fit in
// class_size_tables: a table more cannot be read (the function keeps entry and return probes).
bool AllocTracer::class_tables_fit(const inspect::FunctionProbe& function) const {
  std::set<int64_t> tables(class_size_tables_.begin(), class_size_tables_.end());
  for (const auto& site : function.return_sites) {
    if (site.usable_size == inspect::UsableSize::kClassIndexInRegister) {
      tables.insert(site.class_sizes_from_here);
    }
  }
  for (const auto& handoff : function.handoffs) {
    if (handoff.usable_size == inspect::UsableSize::kClassIndexInRegister) {
      tables.insert(handoff.class_sizes_from_here);
    }
  }
  return tables.size() <= MEMTRAIL_CLASS_TABLES;
}

uint32_t AllocTracer::class_table_slot(inspect::UsableSize usable, int64_t class_sizes_from_here) {
  if (usable != inspect::UsableSize::kClassIndexInRegister) return 0;
  auto known =
      std::find(class_size_tables_.begin(), class_size_tables_.end(), class_sizes_from_here);
  auto slot = static_cast<uint32_t>(known - class_size_tables_.begin());
  if (known == class_size_tables_.end()) {
    // Written before the probe whose cookie names it is attached (class_tables_fit made room).
    skeleton_->bss->class_size_tables[slot] = class_sizes_from_here;
    class_size_tables_.push_back(class_sizes_from_here);
  }
  return slot;
}

AllocTracer::CxxProbing AllocTracer::cxx_probing(const inspect::FunctionProbe& function) const {
  if (cxx_own_probes_) return CxxProbing::kOwnProbes;
  // Not with --mmap or --no-return-sites: malloc keeps its entry and return probes then.
  bool sites = config_.return_sites && !config_.trace_regions;
  if (sites && function.new_via_malloc && new_call_known(*function.new_via_malloc)) {
    return CxxProbing::kAtMallocSites;
  }
  if (sites && function.array_of && new_call_known(*function.array_of)) {
    return CxxProbing::kMarksNewArray;
  }
  if (!function.forwards_to.empty()) return CxxProbing::kForwarded;
  return CxxProbing::kOwnProbes;
}

namespace {

uint32_t new_call_key(const inspect::NewViaMalloc& call) {
  return static_cast<uint32_t>((call.address + call.call_return) & 0xfff);
}

}  // namespace

// Known, or there is room for it: its key free, or taken by the same code.
bool AllocTracer::new_call_known(const inspect::NewViaMalloc& call) const {
  auto known = new_calls_.find(new_call_key(call));
  if (known != new_calls_.end()) return known->second == call.code;
  return new_calls_.size() < bpf_map__max_entries(skeleton_->maps.new_calls) &&
         !call.code.empty() && call.code.size() <= sizeof(memtrail_new_call::code);
}

void AllocTracer::add_new_call(const inspect::NewViaMalloc& call) {
  uint32_t key = new_call_key(call);
  if (new_calls_.count(key)) return;
  memtrail_new_call value{};
  std::memcpy(value.code, call.code.data(), call.code.size());
  std::memset(value.mask, 0xff, call.code.size());
  value.call_return = static_cast<uint32_t>(call.call_return);
  value.frame_skip = call.frame_skip;
  value.kind = MEMTRAIL_KIND_NEW;
  value.length = static_cast<uint32_t>(call.code.size());
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.new_calls), &key, &value, BPF_ANY) != 0) {
    int error_number = errno;
    fail("record an operator new for malloc's return sites", error_number);
  }
  // The map entry first: a set bit sends malloc's return sites to look it up.
  skeleton_->bss->new_call_pages[key >> 6] |= 1ULL << (key & 63);
  new_calls_.emplace(key, call.code);
}

void AllocTracer::attach_python_types(uint32_t pid, const inspect::ProcessFile& file,
                                      const std::vector<PythonObjectProbe>& probes) {
  if (!config_.python_type_layout) return;
  inspect::OpenedFile opened = inspect::open_file(file);  // see attach()
  std::string kernel_path = opened.kernel_path();
  std::vector<Link> attached;
  for (const auto& probe : probes) {
    LIBBPF_OPTS(bpf_uprobe_opts, options, .bpf_cookie = bpf::object_call_code(probe.call));
    bpf_program* program =
        probe.release ? skeleton_->progs.python_object_free : skeleton_->progs.python_object_new;
    bpf_link* link = bpf_program__attach_uprobe_opts(
        program, static_cast<pid_t>(pid), kernel_path.c_str(), probe.file_offset, &options);
    if (!link) {
      int error_number = errno;
      fail("attach uprobe " + probe.function + " in " + file.path + " (pid " + std::to_string(pid) +
               ", --python-types)",
           error_number);
    }
    attached.emplace_back(link);
  }
  for (auto& link : attached) links_.push_back(std::move(link));
}

void AllocTracer::attach_python_objects(uint32_t pid, const inspect::ProcessFile& file,
                                        const std::vector<PythonObjectSite>& sites,
                                        bool at_next_attach) {
  if (!config_.python_objects) return;
  PythonObjectProbes probes;
  probes.pid = pid;
  probes.file = inspect::open_file(file);  // see attach()
  probes.path = file.path;
  for (const auto& site : sites) {
    probes.offsets.push_back(site.file_offset);
    probes.cookies.push_back(site.object_register);
  }
  if (python_objects_attached_ && !at_next_attach) {
    int error_number = link_python_objects(probes);
    if (error_number != 0) {
      fail("attach " + std::to_string(sites.size()) + " uprobes (uprobe_multi) in " + file.path +
               " (pid " + std::to_string(pid) + ", Python object creation)",
           error_number, "Linux 6.6 or later is needed; or use --python-objects off");
    }
  }
  python_probes_.push_back(std::move(probes));
}

void AllocTracer::unlink_python_objects() {
  std::vector<UniqueFd> links;
  for (auto& probes : python_probes_) links.push_back(std::move(probes.link));
  release_concurrently(links);
}

int AllocTracer::link_python_objects(PythonObjectProbes& probes) {
  int link = link_uprobe_multi(bpf_program__fd(skeleton_->progs.python_object_created),
                               probes.file.kernel_path(), probes.offsets, probes.cookies,
                               probes.pid, false);
  if (link < 0) return -link;
  probes.link = UniqueFd(link);
  probes.linked = true;
  return 0;
}

void AllocTracer::set_python_objects_attached(bool attached) {
  if (!attached) {
    // Closing the link removes the breakpoints from the process, and waits for the programs
    // running: from then on no creation is seen. A close begun while detached ends too.
    bool was_attached = std::exchange(python_objects_attached_, false);
    if (was_attached) unlink_python_objects();
    std::atomic_ref<__u32>(skeleton_->bss->python_objects_closing).store(0);  // no program runs
    if (was_attached || close_) finish_close();
    return;
  }
  if (python_objects_attached_) return;
  python_objects_attached_ = true;
  std::erase_if(python_probes_, [this](PythonObjectProbes& probes) {
    int error_number = link_python_objects(probes);
    if (error_number == 0) return false;
    if (error_number != ESRCH) {
      std::cerr << "memtrail: warning: pid " << probes.pid << ": Python objects "
                << (probes.linked ? "no longer traced" : "not traced") << ": attach "
                << probes.offsets.size() << " uprobes (uprobe_multi) in " << probes.path
                << (probes.linked ? " again" : "") << " failed: " << std::strerror(error_number)
                << "\n";
    }
    return true;
  });
}

void AllocTracer::forget_python_objects(uint32_t pid) {
  python_finalizing_links_.erase(pid);
  program_entry_links_.erase(pid);
  std::erase_if(python_probes_,
                [pid](const PythonObjectProbes& probes) { return probes.pid == pid; });
  std::erase_if(python_identities_, [pid](const auto& known) { return known.first.pid == pid; });
}

bool AllocTracer::count_allocations(uint32_t pid) {
  if (!config_.python_objects) return false;
  int map = bpf_map__fd(skeleton_->maps.process_allocations);
  std::vector<uint64_t> zeros(static_cast<size_t>(std::max(libbpf_num_possible_cpus(), 1)), 0);
  if (bpf_map_update_elem(map, &pid, zeros.data(), BPF_ANY) != 0) return false;
  skeleton_->bss->processes_counted = 1;
  return true;
}

std::optional<uint64_t> AllocTracer::allocations_counted(uint32_t pid) const {
  if (!config_.python_objects) return std::nullopt;
  std::vector<uint64_t> per_cpu(static_cast<size_t>(std::max(libbpf_num_possible_cpus(), 1)));
  if (bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.process_allocations), &pid, per_cpu.data()) !=
      0) {
    return std::nullopt;
  }
  uint64_t sum = 0;
  for (uint64_t count : per_cpu) sum += count;
  return sum;
}

void AllocTracer::stop_counting_allocations(uint32_t pid) {
  if (!config_.python_objects) return;
  // ENOENT: never counted.
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.process_allocations), &pid);
}

// The close's reads while the window goes on: passes over what it recorded, until what the
// program recorded during the last pass is this few, or after this many passes; then the
// window ends, and a last pass reads the rest.
constexpr uint64_t kCloseObjectsLeft = 32;
constexpr int kCloseReadPasses = 8;

AllocTracer::SweepWork AllocTracer::sweep_python_objects() {
  if (!config_.python_objects || !python_judge_) return {};
  close_delayed_in_tests();
  close_ = Close{};
  close_->watch_keys = std::exchange(python_watch_, {});
  watch_skipped_ = 0;
  // The program goes on creating objects meanwhile, each recorded (and trapping): a pass is
  // shorter than the last, an object being read faster than a trapped creation is made.
  for (int pass = 0; pass < kCloseReadPasses; ++pass) {
    read_logged_objects();
    if (logged_python_objects() - python_log_read_ <= kCloseObjectsLeft) break;
  }
  // The window ends: from here until the probes are out (closing the links takes tens of
  // milliseconds), nothing is recorded, and a creation at a recorded object's address removes
  // its record (table_forget_python_object). The last objects recorded are read now, with no
  // more coming; only those a program was still logging are left to read after the detach.
  std::atomic_ref<__u32>(skeleton_->bss->python_objects_closing).store(1);
  read_logged_objects();
  closing_delayed_in_tests();
  return close_->work;
}

void AllocTracer::finish_close() {
  if (!config_.python_objects || !python_judge_) return;
  // The detached time begins: whatever is read from now on may be another object.
  ++python_gaps_;
  window_closed_ns_ = monotonic_now_ns();
  if (!close_) {  // no sweep while attached: everything the window recorded is read now
    close_ = Close{};
    close_->watch_keys = std::exchange(python_watch_, {});
    watch_skipped_ = 0;
  }
  // What a program was still logging as the window ended (or, with no sweep before, all the
  // window recorded), read now that no creation is seen: each may already be another object of
  // its type, and is counted at risk (check_identity: a first read outside a window).
  read_logged_objects();
  Close close = std::move(*close_);
  close_.reset();
  python_watch_ = std::move(close.watch_next);
  // Those beyond the bound at the last rebuild stay unread (unless the whole table was); the
  // next snapshot counts anew.
  python_unwatched_ = watch_skipped_ + (close.work.whole_table ? 0 : python_unwatched_);
  ++sweep_totals_.sweeps;
  sweep_totals_.objects_read += close.work.objects_read;
  sweep_totals_.whole_table += close.work.whole_table;
  sweep_totals_.seconds += close.read_seconds;
}

uint64_t AllocTracer::logged_python_objects() const {
  return std::atomic_ref<const __u64>(skeleton_->bss->python_objects_logged)
      .load(std::memory_order_acquire);
}

void AllocTracer::read_logged_objects() {
  uint64_t began_ns = monotonic_now_ns();
  Close& close = *close_;
  class Discard final : public model::AllocationSink {
    void begin(uint64_t, const std::vector<model::SiteTotals>&) override {}
    void add(const model::OutstandingAllocation&) override {}
  } discard;
  model::Snapshot snapshot;
  std::vector<model::TrackedPythonObject> objects;
  std::vector<PythonSlot> slots;
  uint64_t logged = logged_python_objects();
  uint64_t entries = config_.python_log_entries;
  if (logged - python_log_read_ > entries) {
    // The ring was written over: the whole table, whose records are written before their
    // entries; what is logged while it is read is read next.
    close.work.whole_table = true;
    close.watch_keys.clear();  // in the table too
    python_log_read_ = logged;
    read_table(objects, slots, snapshot, nullptr, /*python_only=*/true);
  } else {
    std::vector<PythonObjectKey> keys = std::exchange(close.watch_keys, {});
    const auto* ring = python_log_view_.values<memtrail_python_logged>();
    auto whole = [&](uint64_t number) {
      const auto& written = ring[number & (entries - 1)].written;
      return std::atomic_ref<const __u32>(written).load(std::memory_order_acquire) ==
             static_cast<uint32_t>(number + 1);
    };
    // With the probes in, a program may be writing the last entries: the read stops at the
    // first entry not whole (or written over since), and goes on from there next time.
    uint64_t number = python_log_read_;
    for (; number < logged && whole(number); ++number) {
      const auto& entry = ring[number & (entries - 1)];
      PythonObjectKey key{std::atomic_ref<const __u32>(entry.tgid).load(),
                          std::atomic_ref<const __u64>(entry.address).load()};
      if (!whole(number)) break;
      keys.push_back(key);
    }
    python_log_read_ = number;
    // An object on the watch list may have been recorded anew in the window: read once.
    std::sort(keys.begin(), keys.end(), [](const PythonObjectKey& a, const PythonObjectKey& b) {
      return std::pair{a.pid, a.address} < std::pair{b.pid, b.address};
    });
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    find_python_slots(keys, objects, slots);
  }
  close.work.objects_read += objects.size();
  watch_out_ = &close.watch_next;
  judge_python_objects(objects, slots, snapshot, &discard);
  watch_out_ = nullptr;
  close.work.removed += snapshot.counters.python_objects_dead;
  close.read_seconds += static_cast<double>(monotonic_now_ns() - began_ns) / 1e9;
}

void AllocTracer::find_python_slots(const std::vector<PythonObjectKey>& keys,
                                    std::vector<model::TrackedPythonObject>& objects,
                                    std::vector<PythonSlot>& slots) {
  auto* buckets = allocs_view_.writable_values<memtrail_alloc_bucket>();
  uint32_t bucket_count = bpf_map__max_entries(skeleton_->maps.allocs);
  auto load = [](const auto& field) {
    using Field = std::remove_cv_t<std::remove_reference_t<decltype(field)>>;
    return std::atomic_ref<Field>(const_cast<Field&>(field)).load(std::memory_order_acquire);
  };
  for (const auto& key : keys) {
    for (int which = 0; which < 2; ++which) {
      memtrail_alloc_bucket& bucket =
          buckets[memtrail_bucket_of(key.pid, key.address, which, bucket_count)];
      bool found = false;
      for (uint32_t slot = 0; slot < MEMTRAIL_BUCKET_SLOTS && !found; ++slot) {
        if (load(bucket.address[slot]) != key.address) continue;
        const memtrail_alloc_info& info = bucket.info[slot];
        uint64_t timestamp = load(info.timestamp_ns);
        uint64_t size_kind = load(info.size_kind);
        if (timestamp == 0 || load(info.tgid) != key.pid ||
            (size_kind >> MEMTRAIL_SIZE_BITS) != MEMTRAIL_KIND_PYTHON_OBJECT) {
          continue;
        }
        model::TrackedPythonObject object;
        object.pid = key.pid;
        object.address = key.address;
        object.type = size_kind & MEMTRAIL_SIZE_MASK;
        objects.push_back(object);
        slots.push_back({&bucket, slot, timestamp, load(info.site_id)});
        found = true;
      }
      if (found) break;
    }
  }
}

AllocTracer::IdentityVerdict AllocTracer::check_identity(const model::TrackedPythonObject& object,
                                                         uint64_t timestamp_ns,
                                                         uint64_t reads_began_ns) {
  using model::ObjectIdentity;
  // An object just created may still be being filled (a str's characters, a tuple's items):
  // its content is not taken as its identity yet (model::kIdentitySettleNs says why).
  bool in_window = python_objects_attached_;
  ObjectIdentity kind = model::settled_identity(object.identity_kind, timestamp_ns, reads_began_ns);
  auto [known, first] = python_identities_.try_emplace({object.pid, object.address});
  KnownIdentity& was = known->second;
  if (first || was.timestamp_ns != timestamp_ns) {
    // First found alive: if the probes were detached since its creation, the object now there
    // may already be another one.
    was = {timestamp_ns, object.identity, kind, timestamp_ns < window_closed_ns_ || !in_window,
           python_gaps_, in_window};
    return was.at_risk ? IdentityVerdict::kAtRisk : IdentityVerdict::kSame;
  }
  bool gap = was.gaps != python_gaps_ || !was.in_window;
  if (gap) {
    if (was.kind == ObjectIdentity::kContent && kind == ObjectIdentity::kContent &&
        was.identity != object.identity) {
      python_identities_.erase(known);
      return IdentityVerdict::kReplaced;
    }
    // Nothing identifies it (its type has no identity, or it was not complete when first
    // read), or a dict's version changed: changed, or another dict, cannot be told.
    if (was.kind != ObjectIdentity::kContent || kind != ObjectIdentity::kContent) {
      if (!(was.kind == ObjectIdentity::kVersion && kind == ObjectIdentity::kVersion &&
            was.identity == object.identity)) {
        was.at_risk = true;
      }
    }
  }
  // Without a gap, a change is the object's own: a tuple filled, a dict changed.
  if (kind != ObjectIdentity::kNone) {
    was.kind = kind;
    was.identity = object.identity;
  }
  was.gaps = python_gaps_;
  was.in_window = in_window;
  return was.at_risk ? IdentityVerdict::kAtRisk : IdentityVerdict::kSame;
}

bool AllocTracer::record_unchanged(const PythonSlot& where, uint64_t address) {
  // After the reads of the process's memory (system calls: nothing of theirs is reordered
  // after these loads).
  const memtrail_alloc_info& info = where.bucket->info[where.slot];
  return std::atomic_ref<const __u64>(info.timestamp_ns).load(std::memory_order_acquire) ==
             where.timestamp_ns &&
         std::atomic_ref<const __u64>(where.bucket->address[where.slot])
                 .load(std::memory_order_acquire) == address;
}

void AllocTracer::judge_python_objects(std::vector<model::TrackedPythonObject>& objects,
                                       const std::vector<PythonSlot>& slots,
                                       model::Snapshot& snapshot, model::AllocationSink* sink) {
  if (objects.empty() || !python_judge_) return;
  // By pid, for batched reads of each process's memory; slots follow through the index.
  // The objects of processes whose program has ended come last, and are not read: each stays
  // as the reading at the end found it (see read_python_objects_of), as if its process had
  // exited, whatever finalization has freed since.
  auto ended = [this](uint32_t pid) { return python_ended_.count(pid) != 0; };
  std::vector<size_t> order(objects.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::pair{ended(objects[a].pid), objects[a].pid} <
           std::pair{ended(objects[b].pid), objects[b].pid};
  });
  std::vector<model::TrackedPythonObject> sorted;
  sorted.reserve(objects.size());
  for (size_t i : order) sorted.push_back(objects[i]);
  size_t to_read = sorted.size();
  while (to_read > 0 && ended(sorted[to_read - 1].pid)) sorted[--to_read].gone = true;
  // Before the reads: an object's age at its read is at least the age from here.
  uint64_t reads_began = monotonic_now_ns();
  python_judge_->judge(std::span<model::TrackedPythonObject>(sorted).first(to_read));
  auto& counters = snapshot.counters;
  auto site_key = [](uint32_t pid, int32_t site_id) {
    return (uint64_t{pid} << 32) | static_cast<uint32_t>(site_id);
  };
  // When each site's totals were read: an object created after that is counted by the
  // aggregator as a later allocation, bytes included; it is sized into the totals next time.
  std::unordered_map<uint64_t, size_t> site_index;
  for (size_t i = 0; i < snapshot.sites.size(); ++i) {
    site_index[site_key(snapshot.sites[i].pid, snapshot.sites[i].site_id)] = i;
  }
  for (size_t k = 0; k < sorted.size(); ++k) {
    const auto& object = sorted[k];
    const PythonSlot& where = slots[order[k]];
    if (object.gone) {
      // Its process exited (its report is being made), or its program ended: each object
      // stays as the last reading found it, alive with its size; those never found alive are
      // not reported.
      auto sized = python_objects_sized_.find({object.pid, object.address});
      if (sized == python_objects_sized_.end() ||
          sized->second.timestamp_ns != where.timestamp_ns) {
        continue;
      }
      count_site_bytes(sized->second, object.pid, where.site_id, snapshot, site_index);
      model::OutstandingAllocation allocation{
          object.pid,         object.address, sized->second.size,
          where.timestamp_ns, where.site_id,  model::AllocationKind::kPythonObject,
          object.type};
      if (sink) {
        sink->add(allocation);
      } else {
        snapshot.allocations.push_back(allocation);
      }
      continue;
    }
    auto remove = [&] {
      // The removal protocol (bpf/alloc_events.h), from the timestamp read: a new object
      // created at this address since (a new timestamp) is left alone.
      // A replace (a new object at the address) may run between the two swaps: it writes
      // the record whole, then puts the address back itself if it sees it 0, else this does.
      // tgid is not cleared: a store of it here could land in the new record.
      memtrail_alloc_info& info = where.bucket->info[where.slot];
      __u64 expected = where.timestamp_ns;
      if (!std::atomic_ref<__u64>(info.timestamp_ns).compare_exchange_strong(expected, 0)) {
        return false;
      }
      std::atomic_ref<__u64> address(where.bucket->address[where.slot]);
      __u64 held = object.address;
      if (address.compare_exchange_strong(held, 0) &&
          std::atomic_ref<__u64>(info.timestamp_ns).load() != 0) {
        __u64 freed = 0;
        address.compare_exchange_strong(freed, object.address);
      }
      ++counters.python_objects_dead;
      ++python_removed_total_;
      python_objects_sized_.erase({object.pid, object.address});
      python_identities_.erase({object.pid, object.address});
      return true;
    };
    if (!object.alive) {
      remove();
      continue;
    }
    // What was read is the recorded object only if the record is still there, unchanged: a
    // new object created at its address meanwhile replaced the record (while tracing), or
    // removed it (once tracing stopped: table_forget_python_object), and the memory read
    // then holds that new object, alive. The recorded one is dead; a record that replaced
    // it is read next time.
    if (!record_unchanged(where, object.address)) continue;
    // Over 512 bytes, the object is a malloc'd block, counted as that block: the BPF program
    // records no object where malloc's record of its block is (in_recorded_block). Behind a
    // GC header (or a managed dict's pre-header) the block starts before the object and
    // malloc's record stays. Without one, a creation record here means malloc recorded no
    // block at the object (passed over by --sample-rate, the table full): the object carries
    // the block, or nothing would.
    if (!object.pymalloc && !object.block_at_object) {
      ++counters.python_objects_large;
      continue;
    }
    if (check_identities_) {
      auto verdict = check_identity(object, where.timestamp_ns, reads_began);
      if (verdict == IdentityVerdict::kReplaced) {
        // Another object of its type, created unseen at its address: the one recorded died.
        if (remove()) {
          ++counters.python_objects_replaced;
          ++python_replaced_total_;
        }
        continue;
      }
      if (verdict == IdentityVerdict::kAtRisk) ++counters.python_objects_at_risk;
      // The next close sweep reads again what no content identifies.
      if (watch_out_ && python_identities_[{object.pid, object.address}].kind !=
                            model::ObjectIdentity::kContent) {
        watch({object.pid, object.address});
      }
    }
    // Kept with its size as read now, for its exit report, whichever read found it alive.
    auto [sized, first] = python_objects_sized_.try_emplace(
        {object.pid, object.address}, SizedObject{where.timestamp_ns, object.size});
    if (!first && sized->second.timestamp_ns != where.timestamp_ns) {  // a new one there
      sized->second = {where.timestamp_ns, object.size};
    }
    count_site_bytes(sized->second, object.pid, where.site_id, snapshot, site_index);
    sized->second.size = object.size;  // as last read
    model::OutstandingAllocation allocation{object.pid,    object.address,
                                            object.size,   where.timestamp_ns,
                                            where.site_id, model::AllocationKind::kPythonObject,
                                            object.type};
    if (sink) {
      sink->add(allocation);
    } else {
      snapshot.allocations.push_back(allocation);
    }
  }
}

void AllocTracer::count_site_bytes(SizedObject& sized, uint32_t pid, int32_t site_id,
                                   const model::Snapshot& snapshot,
                                   const std::unordered_map<uint64_t, size_t>& site_index) {
  if (sized.in_site_bytes) return;
  uint64_t key = (uint64_t{pid} << 32) | static_cast<uint32_t>(site_id);
  auto site = site_index.find(key);
  if (site == site_index.end() || sized.timestamp_ns > snapshot.sites[site->second].read_at_ns) {
    return;
  }
  python_site_bytes_[key] += sized.size;
  sized.in_site_bytes = true;
}

bool AllocTracer::attach_python_finalizing(uint32_t pid, const inspect::ProcessFile& file,
                                           uint64_t file_offset, bool at_exit) {
  // Stopped with nobody to read the event, the process would wait forever.
  if (!python_end_holds_ || !region_reader_) return false;
  auto found = python_finalizing_links_.find(pid);
  if (found != python_finalizing_links_.end() && found->second[at_exit]) return true;
  auto opened = inspect::open_file(file);  // see attach()
  uint64_t cookie = at_exit ? MEMTRAIL_PYTHON_END_EXIT : MEMTRAIL_PYTHON_END_FINALIZE;
  int link = link_uprobe_multi(bpf_program__fd(skeleton_->progs.python_finalizing),
                               opened.kernel_path(), {file_offset}, {cookie}, pid, false);
  if (link < 0) return false;
  python_finalizing_links_[pid][at_exit] = UniqueFd(link);
  return true;
}

bool AllocTracer::attach_program_entry(uint32_t pid, const inspect::ProcessFile& file,
                                       uint64_t file_offset) {
  // Stopped with nobody to read the event, the process would wait forever.
  if (!program_entry_holds_ || !region_reader_) return false;
  auto opened = inspect::open_file(file);  // see attach()
  int link = link_uprobe_multi(bpf_program__fd(skeleton_->progs.program_entry),
                               opened.kernel_path(), {file_offset}, {0}, pid, false);
  if (link < 0) return false;
  program_entry_links_[pid] = UniqueFd(link);
  return true;
}

uint64_t AllocTracer::read_python_objects_of(uint32_t pid) {
  if (!config_.python_objects || !python_judge_) return 0;
  class Discard final : public model::AllocationSink {
    void begin(uint64_t, const std::vector<model::SiteTotals>&) override {}
    void add(const model::OutstandingAllocation&) override { ++alive; }

   public:
    uint64_t alive = 0;
  } alive;
  model::Snapshot snapshot;
  std::vector<model::TrackedPythonObject> objects;
  std::vector<PythonSlot> slots;
  read_table(objects, slots, snapshot, nullptr, /*python_only=*/true);
  std::vector<model::TrackedPythonObject> its_objects;
  std::vector<PythonSlot> its_slots;
  for (size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].pid != pid) continue;
    its_objects.push_back(objects[i]);
    its_slots.push_back(slots[i]);
  }
  // Not a window's close: the watch list and the window's state stay as they are.
  auto* watch = std::exchange(watch_out_, nullptr);
  python_ended_.erase(pid);  // read now, whatever an earlier end said
  judge_python_objects(its_objects, its_slots, snapshot, &alive);
  watch_out_ = watch;
  python_ended_.insert(pid);
  return alive.alive;
}

void AllocTracer::watch(const PythonObjectKey& key) {
  if (watch_out_->size() < config_.python_log_entries) {
    watch_out_->push_back(key);
  } else {
    ++watch_skipped_;
  }
}

void AllocTracer::stop_counting() { skeleton_->bss->tracing_stopped = 1; }

// One pass over the table: the Python objects into `python_objects` and `python_slots`, to be
// judged after the pass, all at once; every other block to `sink` or the snapshot, unless
// `python_only`.
void AllocTracer::read_table(std::vector<model::TrackedPythonObject>& python_objects,
                             std::vector<PythonSlot>& python_slots, model::Snapshot& snapshot,
                             model::AllocationSink* sink, bool python_only) {
  const auto& maps = skeleton_->maps;
  auto* buckets = allocs_view_.writable_values<memtrail_alloc_bucket>();
  uint32_t bucket_count = bpf_map__max_entries(maps.allocs);
  auto load = [](const auto& field) {
    using Field = std::remove_cv_t<std::remove_reference_t<decltype(field)>>;
    return std::atomic_ref<Field>(const_cast<Field&>(field)).load(std::memory_order_acquire);
  };
  for (uint32_t b = 0; b < bucket_count; ++b) {
    const memtrail_alloc_bucket& bucket = buckets[b];
    for (uint32_t slot = 0; slot < MEMTRAIL_BUCKET_SLOTS; ++slot) {
      uint64_t address = load(bucket.address[slot]);
      if (address == 0) continue;
      const memtrail_alloc_info& info = bucket.info[slot];
      uint64_t timestamp = load(info.timestamp_ns);
      if (timestamp == 0) continue;  // being written or removed
      uint32_t tgid = load(info.tgid);
      uint64_t size_kind = load(info.size_kind);
      int32_t site_id = load(info.site_id);
      if (load(info.timestamp_ns) != timestamp || load(bucket.address[slot]) != address) {
        ++snapshot.counters.snapshot_read_errors;  // changed while read: next time
        continue;
      }
      auto kind_code = static_cast<uint32_t>(size_kind >> MEMTRAIL_SIZE_BITS);
      if (kind_code == MEMTRAIL_KIND_PYTHON_OBJECT) {
        // Its size field holds its type: judged after the pass, all objects at once.
        model::TrackedPythonObject object;
        object.pid = tgid;
        object.address = address;
        object.type = size_kind & MEMTRAIL_SIZE_MASK;
        python_objects.push_back(object);
        python_slots.push_back({&buckets[b], slot, timestamp, site_id});
        continue;
      }
      if (python_only) continue;
      model::OutstandingAllocation allocation{tgid,      address, size_kind & MEMTRAIL_SIZE_MASK,
                                              timestamp, site_id, bpf::kind_from_code(kind_code)};
      if (sink) {
        sink->add(allocation);
      } else {
        snapshot.allocations.push_back(allocation);
      }
    }
  }
}

model::Snapshot AllocTracer::snapshot(model::AllocationSink* sink) {
  // Exec and fork events found here wait in lifecycle_ for drain_region_events().
  consume_region_events();
  model::Snapshot snapshot;
  // The running totals first, each site's with the time it was read, then the snapshot's
  // time, then the table: the aggregator can tell which blocks the totals count (see
  // aggregator::Accumulator). Reading the table first made a site that never frees show
  // frees (its calls during the read) and young leaks look transient.
  const auto& maps = skeleton_->maps;

  // Few distinct stacks exist and each is written once, so the whole map is read every time;
  // a stack is a site, with its totals (one copy per CPU) at its id.
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) fail("count possible CPUs", -cpus);
  uint32_t max_stacks = bpf_map__max_entries(maps.site_totals);
  std::vector<memtrail_site_totals> site_per_cpu(static_cast<size_t>(cpus));
  read_hash_map<uint64_t, memtrail_stack>(
      bpf_map__fd(maps.stacks), 256, "stacks", [&](uint64_t, const memtrail_stack& stack) {
        uint32_t depth = std::min<uint32_t>(stack.depth, MEMTRAIL_MAX_STACK_DEPTH);
        auto id = static_cast<int32_t>(stack.id);
        auto& entry = snapshot.stacks[id];
        entry.addresses.assign(stack.ips, stack.ips + depth);
        bpf::read_stack_flags(stack.flags, entry);
        if (stack.id >= max_stacks) return;
        uint32_t index = stack.id;
        if (bpf_map_lookup_elem(bpf_map__fd(maps.site_totals), &index, site_per_cpu.data()) != 0) {
          int error_number = errno;
          fail("read BPF map site_totals", error_number);
        }
        model::SiteTotals site{stack.tgid, id, 0, 0, stack.ips[0]};
        site.read_at_ns = monotonic_now_ns();
        for (const auto& on_cpu : site_per_cpu) {
          site.total_bytes += on_cpu.total_bytes;
          site.total_allocations += on_cpu.total_allocations;
          site.mismatched_frees += on_cpu.mismatched_frees;
        }
        snapshot.sites.push_back(site);
      });
  if (config_.python_type_layout) {
    read_hash_map<memtrail_python_type_key, memtrail_python_type_counts>(
        bpf_map__fd(maps.python_types), 1024, "python_types",
        [&](const memtrail_python_type_key& key, const memtrail_python_type_counts& counts) {
          snapshot.python_types.push_back({key.tgid, key.type, counts.made, counts.freed,
                                           counts.items_made, counts.items_freed});
        });
  }
  if (config_.python_layout) {
    read_hash_map<uint32_t, memtrail_python_stack>(
        bpf_map__fd(maps.python_stacks), 256, "python_stacks",
        [&](uint32_t id, const memtrail_python_stack& python) {
          auto stack = snapshot.stacks.find(static_cast<int32_t>(id));
          if (stack == snapshot.stacks.end()) return;  // an orphan (see capture_stack)
          bpf::python_frames(python, stack->second.python_frames);
          bpf::read_python_flags(python.flags, stack->second);
        });
  }
  size_t first_fallback = snapshot.sites.size();
  read_hash_map<memtrail_fallback_key, memtrail_fallback_totals>(
      bpf_map__fd(maps.fallback_sites), 4096, "fallback_sites",
      [&](const memtrail_fallback_key& key, const memtrail_fallback_totals& site) {
        snapshot.sites.push_back({key.tgid, key.site_id, site.total_bytes, site.total_allocations,
                                  site.caller_address, site.mismatched_frees});
      });
  // Read in batches: all of them by now.
  uint64_t fallbacks_read_at = monotonic_now_ns();
  for (size_t i = first_fallback; i < snapshot.sites.size(); ++i) {
    snapshot.sites[i].read_at_ns = fallbacks_read_at;
  }

  read_hash_map<uint32_t, memtrail_process_losses>(
      bpf_map__fd(maps.process_losses), 256, "process_losses",
      [&](uint32_t pid, const memtrail_process_losses& lost) {
        snapshot.losses[pid] = {
            lost.counts[MEMTRAIL_LOSS_DROPS],           lost.counts[MEMTRAIL_LOSS_STACK_FAILURES],
            lost.counts[MEMTRAIL_LOSS_SITE_DROPS],      lost.counts[MEMTRAIL_LOSS_MISSED_ENTRIES],
            lost.counts[MEMTRAIL_LOSS_UNMATCHED_FREES], lost.counts[MEMTRAIL_LOSS_REGION_EVENTS]};
      });
  uint64_t region_drops = 0;
  for (const auto& [pid, drops] : regions_.drops()) {
    snapshot.losses[pid].drops += drops;
    region_drops += drops;
  }

  uint64_t counter_totals[MEMTRAIL_CTR_COUNT] = {};
  for (uint32_t index = 0; index < MEMTRAIL_CTR_COUNT; ++index) {
    counter_totals[index] = counter_total(index);
  }
  auto& counters = snapshot.counters;
  counters.allocations = counter_totals[MEMTRAIL_CTR_ALLOCATIONS];
  counters.frees = counter_totals[MEMTRAIL_CTR_FREES];
  counters.unmatched_frees = counter_totals[MEMTRAIL_CTR_UNMATCHED_FREES];
  counters.drops = counter_totals[MEMTRAIL_CTR_DROPS] + region_drops;
  counters.failed_calls = counter_totals[MEMTRAIL_CTR_FAILED_CALLS];
  counters.stack_failures = counter_totals[MEMTRAIL_CTR_STACK_FAILURES];
  counters.site_drops = counter_totals[MEMTRAIL_CTR_SITE_DROPS];
  counters.stale_replaced = counter_totals[MEMTRAIL_CTR_STALE_REPLACED];
  counters.missed_entries = counter_totals[MEMTRAIL_CTR_MISSED_ENTRIES];
  counters.unsampled = counter_totals[MEMTRAIL_CTR_UNSAMPLED];
  counters.mismatched_frees = counter_totals[MEMTRAIL_CTR_MISMATCHED];
  counters.region_events_lost = counter_totals[MEMTRAIL_CTR_REGION_EVENTS_LOST];
  counters.python_types_lost = counter_totals[MEMTRAIL_CTR_PYTHON_TYPES_LOST];
  counters.usable_size_allocations = counter_totals[MEMTRAIL_CTR_USABLE_SIZES];
  counters.python_objects = counter_totals[MEMTRAIL_CTR_PYTHON_OBJECTS];
  counters.python_objects_untyped = counter_totals[MEMTRAIL_CTR_PYTHON_OBJECTS_UNTYPED];
  counters.python_segments_walked = counter_totals[MEMTRAIL_CTR_SEGMENTS_WALKED];
  counters.python_segments_reused = counter_totals[MEMTRAIL_CTR_SEGMENTS_REUSED];
  counters.allocations += regions_.mapped_total();
  counters.frees += regions_.released_total();

  snapshot.taken_at_ns = monotonic_now_ns();
  if (sink) sink->begin(snapshot.taken_at_ns, snapshot.sites);
  // The table is written concurrently by the BPF programs: each slot is taken only when it is
  // complete and unchanged across the read (protocol: bpf/alloc_events.h). Plain loads in
  // order suffice on x86-64; the atomic_refs keep the compiler from merging or reordering them.
  std::vector<model::TrackedPythonObject> python_objects;
  std::vector<PythonSlot> python_slots;
  read_table(python_objects, python_slots, snapshot, sink, /*python_only=*/false);

  // Every object is judged here: the watch list of the next close sweep is rebuilt from it.
  std::vector<PythonObjectKey> watch_next;
  watch_out_ = &watch_next;
  watch_skipped_ = 0;
  judge_python_objects(python_objects, python_slots, snapshot, sink);
  watch_out_ = nullptr;
  if (check_identities_) {
    python_watch_ = std::move(watch_next);
    python_unwatched_ = watch_skipped_;
  }
  counters.python_unwatched = python_unwatched_;
  // Since attach, the window-close sweeps included.
  counters.python_objects_dead = python_removed_total_;
  counters.python_objects_replaced = python_replaced_total_;
  counters.python_sweeps = sweep_totals_.sweeps;
  counters.python_sweep_objects = sweep_totals_.objects_read;
  counters.python_sweeps_whole = sweep_totals_.whole_table;
  counters.python_sweep_seconds = sweep_totals_.seconds;
  if (!python_site_bytes_.empty()) {
    for (auto& site : snapshot.sites) {
      auto sized =
          python_site_bytes_.find((uint64_t{site.pid} << 32) | static_cast<uint32_t>(site.site_id));
      if (sized != python_site_bytes_.end()) site.total_bytes += sized->second;
    }
  }

  regions_.for_each([&](const model::OutstandingAllocation& region) {
    if (sink) {
      sink->add(region);
    } else {
      snapshot.allocations.push_back(region);
    }
  });

  return snapshot;
}

uint64_t AllocTracer::map_memory_bytes() const { return tracer::map_memory_bytes(skeleton_->obj); }

}  // namespace memtrail::tracer
