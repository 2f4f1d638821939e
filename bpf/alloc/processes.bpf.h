/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Which events alloc.bpf.c records: the traced processes, host-wide mode, --probe-floor. */
#ifndef MEMTRAIL_ALLOC_PROCESSES_BPF_H
#define MEMTRAIL_ALLOC_PROCESSES_BPF_H

#include "common.bpf.h"

/* Benchmarks only (memtrail leaks --probe-floor): every program returns at once, so a run
 * measures what the probes' traps alone cost. The verifier prunes the check when false. */
const volatile bool probe_floor = false;

/* The traced processes (userspace adds each target; the fork tracepoint adds their children).
 * The syscall and scheduler tracepoints fire for every process on the host, and so do the
 * allocator probes in host-wide mode (--all), which attaches them to files, not processes:
 * this lookup is all that the others pay. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory for the processes traced, not the limit */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} traced_processes SEC(".maps");

/* Host-wide mode (--all): the allocator probes are on files, for every process; only those in
 * traced_processes are recorded. Per-PID probes need no check. */
const volatile bool filter_processes = false;

static __always_inline bool process_traced(__u32 tgid)
{
	return bpf_map_lookup_elem(&traced_processes, &tgid) != NULL;
}

/* For the allocator probes: false for a process host-wide mode leaves out. */
static __always_inline bool probe_applies(void)
{
	return !filter_processes || process_traced(current_tgid());
}

#endif /* MEMTRAIL_ALLOC_PROCESSES_BPF_H */
