// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Paging pressure per process: major faults, reclaim stalls, swap-ins and refaults, OOM
 * victims. Everything is counted in maps keyed by tgid that userspace reads each interval; no
 * per-event wake-ups. Tier 1 programs fire only on major faults, reclaim passes, OOM kills and
 * exits, and stay attached; tier 2 ("deep") programs fire on every fault and are attached by
 * userspace only while memory is under pressure. Only tracepoints and perf events are used:
 * kprobes and fentry are not available on every kernel memtrail runs on. */
#include "common.bpf.h"
#include "paging_events.h"

/* GPL-compatible, as the SPDX line above says: the kernel lets only such programs call
 * bpf_probe_read_kernel (BPF_CORE_READ) and bpf_get_current_task_btf. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768); /* resized by userspace (--max-processes) */
	__type(key, __u32);	    /* tgid */
	__type(value, struct memtrail_task_stats);
} task_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* memcg kernfs id */
	__type(value, struct memtrail_memcg_stats);
} memcg_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* pid */
	__type(value, struct memtrail_oom_victim);
} oom_victims SEC(".maps");

/* Per thread: when its current fault and reclaim began, and how much it has reclaimed, so a
 * major fault's wait can be told apart from the reclaim done inside it. */
struct thread_state {
	__u64 fault_start_ns;
	__u64 reclaim_start_ns;
	__u64 reclaim_total_ns;
	__u64 reclaim_at_fault_start;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} thread_states SEC(".maps");

__u64 paging_counters[MEMTRAIL_PAGING_CTR_COUNT] = {};

static __always_inline void count(enum memtrail_paging_counter counter)
{
	__sync_fetch_and_add(&paging_counters[counter], 1);
}

static __always_inline __u64 memcg_id_of(struct mem_cgroup *memcg)
{
	return BPF_CORE_READ(memcg, css.cgroup, kn, id);
}

static __always_inline __u64 current_memcg_id(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	int memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	if (memory < 0 || memory >= CGROUP_SUBSYS_COUNT)
		return 0;
	return BPF_CORE_READ(task, cgroups, subsys[memory], cgroup, kn, id);
}

/* The current process's counters, created on its first event. */
static struct memtrail_task_stats *current_stats(void)
{
	__u32 tgid = current_tgid();
	struct memtrail_task_stats *stats = bpf_map_lookup_elem(&task_stats, &tgid);
	struct memtrail_task_stats fresh = {};

	if (stats)
		return stats;
	/* Filled only for a process seen for the first time: the lookup is the common case. */
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	fresh.memcg_id = current_memcg_id();
	stats = map_insert_and_lookup(&task_stats, &tgid, &fresh); /* or another thread's */
	if (!stats)
		count(MEMTRAIL_PAGING_CTR_TASKS_FULL);
	return stats;
}

static __always_inline struct thread_state *current_thread_state(bool create)
{
	return current_task_storage(&thread_states, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* ---- Tier 1 ---------------------------------------------------------------------------- */

/* Attached to the software perf event PAGE_FAULTS_MAJ on every CPU (sample period 1): the
 * kernel emits it, in the faulting task, exactly when it counts a major fault for
 * /proc/PID/stat (mm_account_fault), except for faults taken by the kernel on a process's
 * behalf (get_user_pages), which have no user registers. It never fires on minor faults. */
SEC("perf_event")
int on_major_fault(struct bpf_perf_event_data *ctx)
{
	struct memtrail_task_stats *stats = current_stats();
	struct thread_state *thread;
	__u64 now, wait, reclaimed;

	if (!stats)
		return 0;
	__sync_fetch_and_add(&stats->major_faults, 1);
	thread = current_thread_state(false);
	if (!thread || !thread->fault_start_ns)
		return 0; /* deep mode off, or it began before deep mode was attached */
	now = bpf_ktime_get_ns();
	wait = now - thread->fault_start_ns;
	reclaimed = thread->reclaim_total_ns - thread->reclaim_at_fault_start;
	wait = wait > reclaimed ? wait - reclaimed : 0;
	thread->fault_start_ns = 0;
	__sync_fetch_and_add(&stats->timed_major_faults, 1);
	__sync_fetch_and_add(&stats->major_fault_wait_ns, wait);
	return 0;
}

static __always_inline void reclaim_begin(void)
{
	struct thread_state *thread = current_thread_state(true);

	if (!thread) {
		count(MEMTRAIL_PAGING_CTR_NO_STORAGE);
		return;
	}
	thread->reclaim_start_ns = bpf_ktime_get_ns();
}

static __always_inline void reclaim_end(unsigned long nr_reclaimed, bool memcg)
{
	struct thread_state *thread = current_thread_state(false);
	struct memtrail_task_stats *stats;
	__u64 elapsed;

	if (!thread || !thread->reclaim_start_ns)
		return; /* began before memtrail attached */
	elapsed = bpf_ktime_get_ns() - thread->reclaim_start_ns;
	thread->reclaim_start_ns = 0;
	thread->reclaim_total_ns += elapsed;
	stats = current_stats();
	if (!stats)
		return;
	__sync_fetch_and_add(memcg ? &stats->memcg_reclaim_ns : &stats->direct_reclaim_ns, elapsed);
	__sync_fetch_and_add(&stats->reclaim_passes, 1);
	__sync_fetch_and_add(&stats->pages_reclaimed, nr_reclaimed);
	stats->memcg_id = current_memcg_id();
}

/* Global direct reclaim: an allocation found too little free memory on the host. */
SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(on_direct_reclaim_begin, int order, gfp_t gfp_flags)
{
	reclaim_begin();
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(on_direct_reclaim_end, unsigned long nr_reclaimed)
{
	reclaim_end(nr_reclaimed, false);
	return 0;
}

/* Reclaim at a memory cgroup's limit: what a thrashing container does, while global direct
 * reclaim stays at zero (tools that watch only direct reclaim miss it). */
SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(on_memcg_reclaim_begin, int order, gfp_t gfp_flags)
{
	reclaim_begin();
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(on_memcg_reclaim_end, unsigned long nr_reclaimed)
{
	reclaim_end(nr_reclaimed, true);
	return 0;
}

/* An anonymous folio written to swap, counted for the task that reclaims it: who paid, not who
 * owned it. PAGE_MAPPING_ANON is bit 0 of folio->mapping. */
SEC("tp_btf/mm_vmscan_write_folio")
int BPF_PROG(on_write_folio, struct folio *folio)
{
	struct memtrail_task_stats *stats;
	unsigned long mapping = (unsigned long)BPF_CORE_READ(folio, mapping);

	if (!(mapping & 1))
		return 0;
	stats = current_stats();
	if (stats)
		__sync_fetch_and_add(&stats->swapout_folios, 1);
	return 0;
}

/* The OOM killer chose a victim. The mm's RSS counters are indexed by an anonymous enum
 * (MM_FILEPAGES 0, MM_ANONPAGES 1, MM_SWAPENTS 2, MM_SHMEMPAGES 3, unchanged since 2.6.34),
 * which CO-RE cannot relocate; since 6.2 they are percpu_counters, whose shared count is read. */
SEC("tp_btf/mark_victim")
int BPF_PROG(on_mark_victim, struct task_struct *task, uid_t uid)
{
	struct memtrail_oom_victim victim = {};
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u32 pid = BPF_CORE_READ(task, tgid);
	int memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	victim.timestamp_ns = bpf_ktime_get_ns();
	BPF_CORE_READ_STR_INTO(&victim.comm, task, comm);
	if (memory >= 0 && memory < CGROUP_SUBSYS_COUNT)
		victim.memcg_id = BPF_CORE_READ(task, cgroups, subsys[memory], cgroup, kn, id);
	if (mm) {
		victim.file_rss_pages = BPF_CORE_READ(mm, rss_stat[0].count);
		victim.anon_rss_pages = BPF_CORE_READ(mm, rss_stat[1].count);
		victim.swap_entries = BPF_CORE_READ(mm, rss_stat[2].count);
		victim.shmem_rss_pages = BPF_CORE_READ(mm, rss_stat[3].count);
	}
	if (bpf_map_update_elem(&oom_victims, &pid, &victim, BPF_ANY))
		count(MEMTRAIL_PAGING_CTR_OOM_FULL);
	return 0;
}

/* A thread exits; when it is the last of its process, mark the process's counters so that
 * userspace reports them one last time and frees the entry. signal->live is decremented just
 * before this tracepoint, on every kernel (the tracepoint's group_dead argument is recent). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_process_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct memtrail_task_stats *stats;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	stats = bpf_map_lookup_elem(&task_stats, &tgid);
	if (stats)
		stats->exited = 1;
	return 0;
}

/* ---- Tier 2 (deep): every fault ---------------------------------------------------------- */

/* A user page fault begins. Remember when, to time it if it turns out to be major. */
SEC("tp_btf/page_fault_user")
int BPF_PROG(on_page_fault_user, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	struct thread_state *thread = current_thread_state(true);

	if (!thread) {
		count(MEMTRAIL_PAGING_CTR_NO_STORAGE);
		return 0;
	}
	thread->fault_start_ns = bpf_ktime_get_ns();
	thread->reclaim_at_fault_start = thread->reclaim_total_ns;
	return 0;
}

/* vm_event counters as the memory cgroup code counts them, in the task that causes them
 * (kernels with the memcg stat tracepoints, 6.13+). Item numbers differ between kernel
 * configurations: they are relocated by CO-RE. */
SEC("tp_btf/count_memcg_events")
int BPF_PROG(on_count_memcg_events, struct mem_cgroup *memcg, int item, unsigned long val)
{
	struct memtrail_task_stats *stats;
	struct memtrail_memcg_stats *cgroup, fresh = {};
	bool zswap = false;
	__u64 id;

	if (item == bpf_core_enum_value(enum vm_event_item, PSWPIN)) {
		zswap = false;
	} else if (bpf_core_enum_value_exists(enum vm_event_item, ZSWPIN) &&
		   item == bpf_core_enum_value(enum vm_event_item, ZSWPIN)) {
		zswap = true;
	} else {
		return 0;
	}
	id = memcg_id_of(memcg);
	stats = current_stats();
	if (stats) {
		__sync_fetch_and_add(zswap ? &stats->zswapin_pages : &stats->swapin_pages, val);
		stats->memcg_id = id;
	}
	cgroup = map_lookup_or_insert(&memcg_stats, &id, &fresh);
	if (!cgroup) {
		count(MEMTRAIL_PAGING_CTR_MEMCG_FULL);
		return 0;
	}
	__sync_fetch_and_add(zswap ? &cgroup->zswapin_pages : &cgroup->swapin_pages, val);
	return 0;
}

/* Workingset refaults: a page read back in after it was evicted, in the task that needed it.
 * The file kind is how file-backed thrashing shows: readahead keeps major faults low. */
SEC("tp_btf/mod_memcg_lruvec_state")
int BPF_PROG(on_mod_memcg_lruvec_state, struct mem_cgroup *memcg, int item, int val)
{
	struct memtrail_task_stats *stats;
	int which;

	if (val <= 0)
		return 0;
	/* The cheap item test first: most updates are other node stats. */
	if (item == bpf_core_enum_value(enum node_stat_item, WORKINGSET_REFAULT_ANON))
		which = 0;
	else if (item == bpf_core_enum_value(enum node_stat_item, WORKINGSET_REFAULT_FILE))
		which = 1;
	else if (item == bpf_core_enum_value(enum node_stat_item, WORKINGSET_RESTORE_ANON))
		which = 2;
	else if (item == bpf_core_enum_value(enum node_stat_item, WORKINGSET_RESTORE_FILE))
		which = 3;
	else
		return 0;
	stats = current_stats();
	if (!stats)
		return 0;
	switch (which) {
	case 0:
		__sync_fetch_and_add(&stats->refault_anon, val);
		break;
	case 1:
		__sync_fetch_and_add(&stats->refault_file, val);
		break;
	case 2:
		__sync_fetch_and_add(&stats->restore_anon, val);
		break;
	default:
		__sync_fetch_and_add(&stats->restore_file, val);
	}
	return 0;
}
