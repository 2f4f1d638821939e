/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Memory mapped by system calls (struct memtrail_region_event): the ring buffer, and what the
 * mmap, munmap, mremap and brk tracepoints of alloc.bpf.c share. */
#ifndef MEMTRAIL_ALLOC_REGIONS_BPF_H
#define MEMTRAIL_ALLOC_REGIONS_BPF_H

#include "common.bpf.h"
#include "arch_x86_64.bpf.h"
#include "alloc_events.h"
#include "alloc/counters.bpf.h"
#include "alloc/processes.bpf.h"
#include "alloc/inflight.bpf.h"
#include "alloc/sites.bpf.h"

#define MAX_ERRNO 4095 /* a system call's return value from -4095 to -1 is an error */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096); /* set by userspace */
} region_events SEC(".maps");

enum syscall_state {
	SYSCALL_NONE = 0,
	SYSCALL_MMAP_RECORD,  /* an anonymous private mapping made outside the allocators */
	SYSCALL_MMAP_REPLACE, /* a MAP_FIXED mapping not recorded: it replaces what was there */
	SYSCALL_MREMAP,
	SYSCALL_BRK,
};

static __always_inline void emit_region_waking(__u32 tgid, __u8 type, __u64 address, __u64 length,
					       __s32 site_id, __u8 flags, __u64 wake)
{
	struct memtrail_region_event *event;

	event = bpf_ringbuf_reserve(&region_events, sizeof(*event), 0);
	if (!event) {
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS, tgid);
		return;
	}
	event->timestamp_ns = bpf_ktime_get_ns();
	event->address = address;
	event->length = length;
	event->tgid = tgid;
	event->tid = (__u32)bpf_get_current_pid_tgid();
	event->site_id = site_id;
	event->type = type;
	event->flags = flags;
	event->pad = 0;
	bpf_ringbuf_submit(event, wake ? 0 : BPF_RB_NO_WAKEUP);
}

/* Userspace drains the buffer on its own schedule: no wake-up per event. */
static __always_inline void emit_region(__u32 tgid, __u8 type, __u64 address, __u64 length,
					__s32 site_id, __u8 flags)
{
	emit_region_waking(tgid, type, address, length, site_id, flags, 0);
}

/* The call stack of the system call being made: the user registers saved at kernel entry. */
static __always_inline __s32 syscall_site(__u32 tgid, __u64 *caller)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	*caller = PT_REGS_IP_CORE(regs);
	return capture_stack(*caller, PT_REGS_SP_CORE(regs), PT_REGS_FP_CORE(regs), tgid);
}

/* The thread's call state for a system call of a traced process, or NULL. */
static __always_inline struct inflight_call *syscall_call(__u32 tgid, __u64 create)
{
	struct inflight_call *call;

	if (probe_floor || !process_recorded(tgid))
		return NULL;
	call = current_task_storage(&inflight, create);
	if (!call && create)
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS, tgid);
	return call;
}

/* The thread's system call that just returned: its state (enum syscall_state), then reset. */
static __always_inline struct inflight_call *finish_syscall(__u32 tgid, __u32 *state)
{
	struct inflight_call *call = syscall_call(tgid, 0);

	if (!call)
		return NULL;
	*state = call->syscall_state;
	call->syscall_state = SYSCALL_NONE;
	return call;
}

/* A region mapped from the current call stack: `bytes` go to its site's totals. */
static __always_inline void record_region(__u32 tgid, __u8 type, __u64 address, __u64 length,
					  __u64 bytes)
{
	__u64 caller;
	__s32 site_id = syscall_site(tgid, &caller);

	add_to_site(tgid, site_id, caller, bytes, 1);
	emit_region(tgid, type, address, length, site_id, 0);
}

#endif /* MEMTRAIL_ALLOC_REGIONS_BPF_H */
