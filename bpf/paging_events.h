/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ABI shared by paging.bpf.c and userspace: per-process paging counters, OOM victims. */
#ifndef MEMTRAIL_PAGING_EVENTS_H
#define MEMTRAIL_PAGING_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "abi_layout.h"

#define MEMTRAIL_COMM_LEN 16

/* What one process (thread group) did, cumulative since memtrail attached or the process
 * started; the value of `task_stats`, keyed by tgid. Threads of a process update it from
 * several CPUs at once, so every counter is added to atomically. Userspace reads the map each
 * interval and deletes the entries of processes that have exited once it has reported them. */
struct memtrail_task_stats {
	/* Tier 1, always attached: fire on major faults, reclaim passes and exits only. */
	__u64 major_faults;	 /* perf software event PAGE_FAULTS_MAJ */
	__u64 direct_reclaim_ns; /* stalled in global direct reclaim */
	__u64 memcg_reclaim_ns;	 /* stalled in reclaim at a memory cgroup's limit */
	__u64 reclaim_passes;
	__u64 pages_reclaimed;
	__u64 swapout_folios; /* anonymous folios this task wrote to swap while reclaiming */
	/* Tier 2 ("deep"), attached while memory is under pressure: hot hooks on every fault. */
	__u64 timed_major_faults;  /* major faults whose start was seen */
	__u64 major_fault_wait_ns; /* their duration, less reclaim done within them */
	__u64 swapin_pages;	   /* PSWPIN */
	__u64 zswapin_pages;	   /* ZSWPIN */
	__u64 refault_anon;	   /* WORKINGSET_REFAULT_ANON: evicted, then needed again */
	__u64 refault_file;
	__u64 restore_anon; /* WORKINGSET_RESTORE_*: refaults of pages that were active: */
	__u64 restore_file; /* the workingset did not fit, the kernel's own thrashing mark */
	__u64 memcg_id;	    /* kernfs id of the memory cgroup at the last update */
	__u32 exited;	    /* the whole thread group has exited */
	__u32 pad;
	char comm[MEMTRAIL_COMM_LEN];
};
MEMTRAIL_ABI_SIZE(memtrail_task_stats, 15 * 8 + 8 + MEMTRAIL_COMM_LEN);
MEMTRAIL_ABI_OFFSET(memtrail_task_stats, timed_major_faults, 6 * 8);
MEMTRAIL_ABI_OFFSET(memtrail_task_stats, memcg_id, 14 * 8);
MEMTRAIL_ABI_OFFSET(memtrail_task_stats, exited, 15 * 8);
MEMTRAIL_ABI_OFFSET(memtrail_task_stats, comm, 16 * 8);

/* Swap-ins of a memory cgroup (deep mode): cgroup v1's memory.stat has no such counter.
 * Keyed by memcg kernfs id. */
struct memtrail_memcg_stats {
	__u64 swapin_pages;
	__u64 zswapin_pages;
};
MEMTRAIL_ABI_SIZE(memtrail_memcg_stats, 16);

/* A process the OOM killer chose (oom:mark_victim); keyed by pid, read and deleted by
 * userspace. RSS from the mm's counters at that moment (per-CPU parts not folded in). */
struct memtrail_oom_victim {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 memcg_id;
	__u64 anon_rss_pages;
	__u64 file_rss_pages;
	__u64 shmem_rss_pages;
	__u64 swap_entries;
	char comm[MEMTRAIL_COMM_LEN];
};
MEMTRAIL_ABI_SIZE(memtrail_oom_victim, 6 * 8 + MEMTRAIL_COMM_LEN);
MEMTRAIL_ABI_OFFSET(memtrail_oom_victim, swap_entries, 5 * 8);
MEMTRAIL_ABI_OFFSET(memtrail_oom_victim, comm, 6 * 8);

/* Indices into the global `paging_counters` array: events memtrail could not record. */
enum memtrail_paging_counter {
	MEMTRAIL_PAGING_CTR_TASKS_FULL = 0, /* an event of a process with no room in task_stats */
	MEMTRAIL_PAGING_CTR_OOM_FULL = 1,   /* an OOM victim with no room in oom_victims */
	MEMTRAIL_PAGING_CTR_MEMCG_FULL = 2, /* a cgroup's swap-in with no room in memcg_stats */
	MEMTRAIL_PAGING_CTR_NO_STORAGE = 3, /* no task storage: a stall could not be timed */
	MEMTRAIL_PAGING_CTR_COUNT = 4,
};

#endif /* MEMTRAIL_PAGING_EVENTS_H */
