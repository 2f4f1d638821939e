/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* What alloc.bpf.c counts (enum memtrail_counter), and what it lost, per process. */
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
