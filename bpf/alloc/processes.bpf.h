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

/* Set by python_finalizing once a process's program has ended (MEMTRAIL_PROCESS_ENDED): from
 * then on every probe looks its process up, per-PID too. Until then, a load is all it costs. */
volatile __u32 processes_ended = 0;

/* A traced process whose events are recorded: not one whose program has ended. */
static __always_inline bool process_recorded(__u32 tgid)
{
	__u32 *bits = bpf_map_lookup_elem(&traced_processes, &tgid);

	return bits && !(*bits & MEMTRAIL_PROCESS_ENDED);
}

/* For the allocator probes: false for a process host-wide mode leaves out, or whose program has
 * ended. Per PID, a process probed is recorded even if it is not in the map (when nothing needs
 * the map, it holds no process). */
static __always_inline bool probe_applies(void)
{
	__u32 tgid, *bits;

	if (!filter_processes && !processes_ended)
		return true;
	tgid = current_tgid();
	bits = bpf_map_lookup_elem(&traced_processes, &tgid);
	if (!bits)
		return !filter_processes;
	return !(*bits & MEMTRAIL_PROCESS_ENDED);
}

#endif /* MEMTRAIL_ALLOC_PROCESSES_BPF_H */
