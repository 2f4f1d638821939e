/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* What alloc.bpf.c counts (enum memtrail_counter), what it lost, and allocations, per process. */
#ifndef MEMTRAIL_ALLOC_COUNTERS_BPF_H
#define MEMTRAIL_ALLOC_COUNTERS_BPF_H

#include "common.bpf.h"
#include "alloc_events.h"

/* Indexed by enum memtrail_counter; one copy per CPU, summed by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEMTRAIL_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Losses per process (struct memtrail_process_losses); a process beyond max_entries is counted
 * in the global counters only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries only for processes that lost something */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_process_losses);
} process_losses SEC(".maps");

/* --python-objects on: the allocations of each process whose object probes are duty-cycled.
 * The allocator probes stay attached and cost the same in and out of the object windows, so
 * these calls are the process's work, counted in both: userspace reads them at every attach
 * and detach, and the share made inside the windows is the share of its objects they saw (the
 * share of time is not, for a process that slows under the object probes). Entries only for
 * those processes, added and removed by userspace; one copy per CPU: no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory only for the processes counted */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} process_allocations SEC(".maps");

/* Set by userspace once process_allocations has an entry: until then (every run without
 * duty-cycled Python objects) an allocation pays one load, not a lookup. */
volatile __u32 processes_counted = 0;

static __always_inline void count_process_allocation(__u32 tgid)
{
	__u64 *value;

	if (!processes_counted)
		return;
	value = bpf_map_lookup_elem(&process_allocations, &tgid);
	if (value)
		*value += 1; /* per-CPU slot */
}

static __always_inline void count(enum memtrail_counter counter)
{
	__u32 index = counter;
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		*value += 1; /* per-CPU slot: no atomic needed */
}

/* Counts an event memtrail could not track, in total and for its process. */
static __always_inline void count_loss(enum memtrail_counter counter, enum memtrail_loss loss,
				       __u32 tgid)
{
	struct memtrail_process_losses *losses, fresh = {};

	count(counter);
	losses = map_lookup_or_insert(&process_losses, &tgid, &fresh);
	if (losses)
		__sync_fetch_and_add(&losses->counts[loss & 7], 1);
}

#endif /* MEMTRAIL_ALLOC_COUNTERS_BPF_H */
