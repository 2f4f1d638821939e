// SPDX-License-Identifier: Apache-2.0
// Load the paging BPF programs, attach them host-wide, read their per-process counters.
#include "tracer/paging_tracer.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "common/error.h"
#include "common/unique_fd.h"
#include "paging_events.h"
#include "tracer/libbpf_util.h"

#include "paging.skel.h"

extern "C" void memtrail_paging_bpf_destroy(paging_bpf* skeleton) { paging_bpf__destroy(skeleton); }

namespace memtrail::tracer {
namespace {

constexpr std::string_view kTpBtfPrefix = "tp_btf/";

std::string comm_of(const char (&comm)[MEMTRAIL_COMM_LEN]) {
  return std::string(comm, strnlen(comm, MEMTRAIL_COMM_LEN));
}

// A tp_btf program can load only where the kernel has its tracepoint (btf_trace_<name> in the
// kernel's BTF); the memcg stat tracepoints, for one, arrived in 6.13.
bool kernel_has_tracepoint(const btf* vmlinux, std::string_view section) {
  if (section.substr(0, kTpBtfPrefix.size()) != kTpBtfPrefix) return true;
  std::string type = "btf_trace_" + std::string(section.substr(kTpBtfPrefix.size()));
  return btf__find_by_name_kind(vmlinux, type.c_str(), BTF_KIND_TYPEDEF) >= 0;
}

// Tier 1: tracepoints that fire only on reclaim passes, swap writes, OOM kills and exits.
std::vector<bpf_program*> always_attached(paging_bpf* skeleton) {
  auto& p = skeleton->progs;
  return {p.on_direct_reclaim_begin, p.on_direct_reclaim_end, p.on_memcg_reclaim_begin,
          p.on_memcg_reclaim_end,    p.on_write_folio,        p.on_mark_victim,
          p.on_process_exit};
}

// Tier 2: on every fault, attached only while memory is under pressure.
std::vector<bpf_program*> deep_programs(paging_bpf* skeleton) {
  auto& p = skeleton->progs;
  return {p.on_page_fault_user, p.on_count_memcg_events, p.on_mod_memcg_lruvec_state};
}

// Attaches every program of `programs` that was loaded (tracepoints this kernel lacks were not)
// and returns the links; all or nothing, since a throw destroys the links made so far.
std::vector<Link> attach_loaded(const std::vector<bpf_program*>& programs) {
  std::vector<Link> links;
  for (bpf_program* program : programs) {
    if (!bpf_program__autoload(program)) continue;
    bpf_link* link = bpf_program__attach(program);
    if (!link) {
      int error_number = errno;
      fail(std::string("attach BPF program ") + bpf_program__name(program), error_number);
    }
    links.emplace_back(link);
  }
  return links;
}

}  // namespace

PagingTracer::PagingTracer(const PagingTracerConfig& config) {
  route_libbpf_log(config.verbose);
  skeleton_.reset(paging_bpf__open());
  if (!skeleton_) {
    int error_number = errno;
    fail("open BPF object paging.bpf.o", error_number);
  }
  int err = bpf_map__set_max_entries(skeleton_->maps.task_stats, config.max_processes);
  if (err < 0) fail("size BPF map task_stats", -err);

  btf* vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) {
    int error_number = errno;
    fail("read the kernel's BTF (/sys/kernel/btf/vmlinux)", error_number,
         "memtrail needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
  }
  auto& progs = skeleton_->progs;
  std::vector<bpf_program*> tracepoints = always_attached(skeleton_.get());
  for (bpf_program* program : deep_programs(skeleton_.get())) tracepoints.push_back(program);
  for (bpf_program* program : tracepoints) {
    const char* section = bpf_program__section_name(program);
    if (kernel_has_tracepoint(vmlinux, section)) continue;
    bpf_program__set_autoload(program, false);
    deep_unavailable_.push_back(std::string(section).substr(kTpBtfPrefix.size()) +
                                " (no such tracepoint in this kernel)");
  }
  btf__free(vmlinux);

  err = paging_bpf__load(skeleton_.get());
  if (err < 0) fail("load BPF programs (paging)", -err, load_failure_hint(-err, "--max-processes"));

  // Major faults: the software event fires in the faulting task only when the kernel counts a
  // major fault, so minor faults cost nothing. One event per CPU, all processes.
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) fail("count possible CPUs", -cpus);
  for (int cpu = 0; cpu < cpus; ++cpu) {
    perf_event_attr attr{};
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_PAGE_FAULTS_MAJ;
    attr.sample_period = 1;
    UniqueFd event(
        static_cast<int>(syscall(SYS_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)));
    if (!event) {
      int error_number = errno;
      if (error_number == ENODEV) continue;  // a possible CPU that is offline
      fail("open perf event PAGE_FAULTS_MAJ on CPU " + std::to_string(cpu), error_number,
           error_number == EACCES || error_number == EPERM
               ? "run memtrail as root, or grant it CAP_PERFMON (or lower "
                 "kernel.perf_event_paranoid)"
               : "");
    }
    bpf_link* link = bpf_program__attach_perf_event(progs.on_major_fault, event.get());
    if (!link) {
      int error_number = errno;
      fail("attach BPF program on_major_fault to CPU " + std::to_string(cpu), error_number);
    }
    event.release();  // the link closes the perf event's fd
    links_.emplace_back(link);
  }
  for (auto& link : attach_loaded(always_attached(skeleton_.get()))) {
    links_.push_back(std::move(link));
  }
}

PagingTracer::~PagingTracer() {
  release_concurrently(deep_links_);
  release_concurrently(links_);
}

void PagingTracer::set_deep(bool on) {
  if (!on) {
    release_concurrently(deep_links_);
    return;
  }
  if (deep()) return;
  deep_links_ = attach_loaded(deep_programs(skeleton_.get()));
}

void PagingTracer::read(model::PagingSample& sample, uint64_t start_ns) {
  auto& maps = skeleton_->maps;
  std::vector<uint32_t> exited;
  read_hash_map<uint32_t, memtrail_task_stats>(bpf_map__fd(maps.task_stats), 1024, "task_stats",
                                               [&](uint32_t tgid, const memtrail_task_stats& s) {
                                                 model::TaskPagingStats task;
                                                 task.tgid = tgid;
                                                 task.comm = comm_of(s.comm);
                                                 task.memcg_id = s.memcg_id;
                                                 task.exited = s.exited != 0;
                                                 task.major_faults = s.major_faults;
                                                 task.timed_major_faults = s.timed_major_faults;
                                                 task.major_fault_wait_ns = s.major_fault_wait_ns;
                                                 task.direct_reclaim_ns = s.direct_reclaim_ns;
                                                 task.memcg_reclaim_ns = s.memcg_reclaim_ns;
                                                 task.reclaim_passes = s.reclaim_passes;
                                                 task.pages_reclaimed = s.pages_reclaimed;
                                                 task.swapout_pages = s.swapout_folios;
                                                 task.swapin_pages = s.swapin_pages;
                                                 task.zswapin_pages = s.zswapin_pages;
                                                 task.refault_anon = s.refault_anon;
                                                 task.refault_file = s.refault_file;
                                                 task.restore_anon = s.restore_anon;
                                                 task.restore_file = s.restore_file;
                                                 if (task.exited) exited.push_back(tgid);
                                                 sample.tasks.push_back(std::move(task));
                                               });
  // Reported once; a pid the kernel hands out again starts from zero.
  for (uint32_t tgid : exited) bpf_map_delete_elem(bpf_map__fd(maps.task_stats), &tgid);

  read_hash_map<uint64_t, memtrail_memcg_stats>(
      bpf_map__fd(maps.memcg_stats), 256, "memcg_stats",
      [&](uint64_t id, const memtrail_memcg_stats& s) {
        sample.memcgs.push_back({id, s.swapin_pages, s.zswapin_pages});
      });

  std::vector<uint32_t> victims;
  read_hash_map<uint32_t, memtrail_oom_victim>(
      bpf_map__fd(maps.oom_victims), 64, "oom_victims",
      [&](uint32_t pid, const memtrail_oom_victim& v) {
        model::OomKill kill;
        kill.pid = pid;
        kill.comm = comm_of(v.comm);
        kill.memcg_id = v.memcg_id;
        uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
        kill.anon_rss_bytes = v.anon_rss_pages * page;
        kill.file_rss_bytes = v.file_rss_pages * page;
        kill.shmem_rss_bytes = v.shmem_rss_pages * page;
        kill.t_s = v.timestamp_ns > start_ns ? (v.timestamp_ns - start_ns) / 1e9 : 0;
        sample.oom_kills.push_back(std::move(kill));
        victims.push_back(pid);
      });
  for (uint32_t pid : victims) bpf_map_delete_elem(bpf_map__fd(maps.oom_victims), &pid);

  const auto* counters = skeleton_->bss->paging_counters;
  sample.counters.processes_not_tracked = counters[MEMTRAIL_PAGING_CTR_TASKS_FULL];
  sample.counters.oom_kills_not_recorded = counters[MEMTRAIL_PAGING_CTR_OOM_FULL];
  sample.counters.cgroups_not_tracked = counters[MEMTRAIL_PAGING_CTR_MEMCG_FULL];
  sample.counters.stalls_not_timed = counters[MEMTRAIL_PAGING_CTR_NO_STORAGE];
}

uint64_t PagingTracer::map_memory_bytes() const { return tracer::map_memory_bytes(skeleton_->obj); }

}  // namespace memtrail::tracer
