/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The allocator call, or system call, each thread is in: from its entry probe to its return. */
#ifndef MEMTRAIL_ALLOC_INFLIGHT_BPF_H
#define MEMTRAIL_ALLOC_INFLIGHT_BPF_H

#include "common.bpf.h"
#include "alloc_events.h"
#include "alloc/counters.bpf.h"
#include "alloc/processes.bpf.h"

/* A nested allocator call (see call_enter) arrives within microseconds of the outer entry. */
#define NESTED_CALL_WINDOW_NS 1000000000ULL

/* Arguments of the allocator call a thread is in, from entry to return. Task-local storage is
 * freed with the thread, so threads that die mid-call leave nothing behind. */
struct inflight_call {
	__u64 size;
	__u64 aux;	/* realloc: old pointer; posix_memalign: the void ** it writes */
	__u64 start_ns; /* realloc: tells the old block from a block reusing its address */
	__u64 entry_sp; /* stack pointer at the outermost entry: detects a lost return */
	__u32 kind;
	__u32 depth;		/* > 1 while an allocator calls another (memalign -> malloc, ...) */
	__s64 sample_countdown; /* bytes until this thread's next sample */
	__u64 sampler_ready;	/* sample_countdown has been drawn */
	__u64 pending_free;	/* released by operator delete: its nested free() is not a free */
	/* operator new[] entered with its return address at array_new_slot, holding this value:
	 * the operator new it jumps to returns there (see new_array_enter). */
	__u64 array_new_slot;
	__u64 array_new_return;
	/* A system call between its entry and exit tracepoints (enum syscall_state, regions.bpf.h). */
	__u32 syscall_state;
	__u32 syscall_flags;  /* mremap's flags */
	__u64 syscall_length; /* mmap: length asked; mremap: new length */
	__u64 old_break;      /* brk: the break before the call */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight_call);
} inflight SEC(".maps");

/* How many threads hold, in their inflight_call, state that a return site or free() must read:
 * an allocator call between its entry and its return (depth > 0), an operator new[] marked
 * (array_new_slot), a delete whose free() is yet to come (pending_free). A thread adds 1 when it
 * sets such state and takes it back when it clears it, so the count is at least 1 while it holds
 * any: a program that reads 0 knows its own thread holds none and skips the task-storage lookup
 * (~50 ns, on every malloc and free). State nobody clears leaves the count above 0 (a thread that
 * dies mid-call, a process killed in one; a call left by longjmp or an exception, whose return
 * never runs, until the thread's next call): the lookups are paid again, nothing is missed. */
enum thread_state {
	THREADS_IN_CALLS,
	THREADS_MARKING_NEW_ARRAY,
	THREADS_AWAITING_FREE,
};

/* By enum thread_state; on a cache line of their own: they are written at traced calls and
 * deletes, and the switches beside them in .bss are read by every probe on every CPU. */
volatile __u64 threads_holding[8] __attribute__((aligned(64)));

/* Counts the thread in or out of `threads` as its state goes from `was_set` to `is_set`. */
static __always_inline void count_thread_state(volatile __u64 *threads, bool was_set, bool is_set)
{
	if (!was_set && is_set)
		__sync_fetch_and_add(threads, 1);
	else if (was_set && !is_set)
		__sync_fetch_and_add(threads, -1);
}

static __always_inline void call_enter(struct pt_regs *ctx, __u32 kind, __u64 size, __u64 aux)
{
	struct inflight_call *call;
	__u64 sp = PT_REGS_SP(ctx);
	__u64 now;

	if (probe_floor || !probe_applies())
		return;
	now = bpf_ktime_get_ns();
	call = current_task_storage(&inflight, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES,
			   current_tgid());
		return;
	}
	/* A call made from inside another traced allocator (realloc(NULL, n) -> malloc, memalign
	 * -> malloc) runs deeper on the stack, or at the same depth for a tail call (glibc's
	 * reallocarray jumps to realloc): the outer call accounts for the memory. A call above the
	 * recorded stack pointer, or long after the outer entry, means that the outer return was
	 * lost (the kernel could not hijack it): start afresh rather than ignore calls forever. */
	if (call->depth > 0 && sp <= call->entry_sp &&
	    now - call->start_ns < NESTED_CALL_WINDOW_NS) {
		call->depth++;
		return;
	}
	count_thread_state(&threads_holding[THREADS_IN_CALLS], call->depth > 0, true);
	call->depth = 1;
	/* A delete whose free() never came (an allocation comes first). */
	count_thread_state(&threads_holding[THREADS_AWAITING_FREE], call->pending_free, false);
	call->pending_free = 0;
	call->entry_sp = sp;
	call->kind = kind;
	call->size = size;
	call->aux = aux;
	call->start_ns = now;
}

/* Returns the finished outermost call, or NULL while unwinding nested calls. */
static __always_inline struct inflight_call *call_exit(void)
{
	struct inflight_call *call;

	if (probe_floor || !probe_applies())
		return NULL;
	call = current_task_storage(&inflight, 0);
	if (!call || call->depth == 0) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES,
			   current_tgid());
		return NULL;
	}
	call->depth--;
	if (call->depth > 0)
		return NULL;
	count_thread_state(&threads_holding[THREADS_IN_CALLS], true, false);
	return call;
}

/* Inside a traced allocator call: malloc mapping a large block, realloc moving one, an arena
 * growing. The allocator's own blocks account for that memory. */
static __always_inline bool in_allocator_call(struct inflight_call *call)
{
	return call->depth > 0 && bpf_ktime_get_ns() - call->start_ns < NESTED_CALL_WINDOW_NS;
}

/* Whether the calling thread is inside a traced allocator call (its entry probe ran): 1, else
 * 0, with no lookup while no thread is in one. A global function, so that the site programs
 * hold no pointer that is NULL on one path and the thread's storage on another: each such
 * pair of states had the verifier check their whole stack walk twice (~100,000 more
 * instructions to load each site program, measured). */
__noinline int in_traced_call(void)
{
	struct inflight_call *call;

	if (!threads_holding[THREADS_IN_CALLS])
		return 0;
	call = current_task_storage(&inflight, 0);
	return call && in_allocator_call(call);
}

/* Whether an operator new[] marked the call of the operator new that returns to `outer` at
 * `outer_slot` (new_array_enter): then the block is new[]'s, and the mark is taken. A global
 * function, as in_traced_call. */
__noinline int take_new_array_mark(__u64 outer_slot, __u64 outer)
{
	struct inflight_call *call;

	if (!threads_holding[THREADS_MARKING_NEW_ARRAY])
		return 0;
	call = current_task_storage(&inflight, 0);
	if (!call || call->array_new_slot != outer_slot || call->array_new_return != outer)
		return 0;
	count_thread_state(&threads_holding[THREADS_MARKING_NEW_ARRAY], true, false);
	call->array_new_slot = 0;
	return 1;
}

#endif /* MEMTRAIL_ALLOC_INFLIGHT_BPF_H */
