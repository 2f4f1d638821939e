/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Allocation sites: a call stack of one process, its dense id, and its running totals. */
#ifndef MEMTRAIL_ALLOC_SITES_BPF_H
#define MEMTRAIL_ALLOC_SITES_BPF_H

#include "common.bpf.h"
#include "alloc_events.h"
#include "alloc/counters.bpf.h"
#include "alloc/stack_walk.bpf.h"
#include "alloc/python_frames.bpf.h"

/* Distinct call stacks by hash of their frames (see capture_stack). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct memtrail_stack);
} stacks SEC(".maps");

/* Where a stack is assembled before it is known to be new: too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_stack);
} stack_scratch SEC(".maps");

__u32 next_stack_id = 0;

/* Totals per stack id (stacks are per process, so a stack id is a site), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_site_totals);
} site_totals SEC(".maps");

/* Totals of sites whose stack could not be stored. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct memtrail_fallback_key);
	__type(value, struct memtrail_fallback_totals);
} fallback_sites SEC(".maps");

/* Keeps the walk just noted in `memo`, from `key`, as stack `id` (unless it was dropped: so is
 * every walk of a CPython process, whose Python frames are not among the words noted; userspace
 * bumps stack_memo_generation when it adds one). A global function: checked once by the
 * verifier. */
__noinline int stack_memo_keep(struct stack_memo *memo, struct stack_memo_key *key, __s32 id)
{
	if (!memo || !key || memo->dropped || memo->reads == 0 || id < 0) {
		if (memo)
			memo->reads = 0;
		return 0;
	}
	memo->key = *key;
	memo->id = id;
	return 0;
}

/* Walks the user stack and returns the stack's dense id, or a negative fallback id derived
 * from the caller when the stacks map is full. Called in a uretprobe, the registers are the
 * caller's, with the instruction pointer already set back to the return address, so the first
 * frame is always the function that called the allocator; at a system call, the first frame is
 * the libc wrapper (userspace skips it). Every frame is unwound by its
 * module's CFI table where userspace loaded one, else by frame pointer, as unwind_processes
 * says (bpf/unwind_table.h). A walk that cannot go on ends there and says why in the stack's
 * flags: no frame is ever guessed. This walk replaces bpf_get_stackid, whose perf callchain
 * machinery cost about twice as much per allocation as the frame-pointer walk here.
 * In a CPython process the Python frames are read first: their entry frames say how many
 * eval-loop frames the native walk will meet, and it ends at the outermost one (the C frames
 * between nested eval loops, a C extension calling back into Python, are walked, or taken from a
 * segment memo: see struct segment_memo; the interpreter's start-up below them is not: about 15
 * frames of every Python stack). */
static __always_inline __s32 capture_stack_from(__u64 caller, __u64 sp, __u64 bp, __u32 tgid,
						__u8 exact_pc)
{
	struct walk walk = {
		.pc = caller,
		.sp = sp,
		.bp = bp,
		/* Stacks are per process: the pid is part of the hash, and a stack id names a site. */
		.hash = (caller ^ ((__u64)tgid << 32)) * 0x9E3779B97F4A7C15ULL,
		.depth = 1,
		.bp_known = 1,
		.exact_pc = exact_pc,
		.flags = MEMTRAIL_STACK_TRUNCATED |
			 (MEMTRAIL_TRUNCATED_DEPTH << MEMTRAIL_STACK_REASON_SHIFT),
	};
	struct memtrail_stack *stack, *known;
	struct memtrail_python_stack *python;
	struct walk_scratch *scratch;
	__u32 zero = 0, python_id;
	struct stack_memo_key key = {
		.pc = caller,
		.sp = sp,
		.bp = bp,
		.tgid = tgid,
		.generation = stack_memo_generation,
		.exact_pc = exact_pc,
	};
	__u32 memo_slot = stack_memo_slot(caller, sp, bp);
	struct stack_memo *memo;
	struct stack_memo_bytes *memo_bytes;
	__s32 memoized;
	__u64 hash, python_hash = 0;

	/* The same walk as before, from the same registers over the same stack words (see
	 * struct stack_memo): its stack, without walking again. */
	memo = bpf_map_lookup_elem(&stack_memos, &memo_slot);
	memo_bytes = bpf_map_lookup_elem(&stack_memo_scratch, &zero);
	scratch = bpf_map_lookup_elem(&walk_scratch, &zero);
	/* (Never NULL: per-CPU arrays, indices in range. Going on without a memo would have the
	 * verifier check the whole walk twice, with and without.) */
	if (!memo || !memo_bytes || !scratch)
		goto fallback;
	memoized = stack_memo_hit(memo, memo_bytes, &key);
	if (memoized >= 0)
		return memoized;
	stack_memo_begin(memo);
	walk.memo = memo;

	stack = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!stack)
		goto fallback;
	walk.stack = stack;
	if (unwind_mode == MEMTRAIL_UNWIND_MODE_TABLES)
		walk.process = bpf_map_lookup_elem(&unwind_processes, &tgid);
	stack->ips[0] = caller;
	stack->tgid = tgid;
	scratch->eval_loops.count = 0;
	scratch->segment.state = SEGMENT_NONE;
	scratch->python = 0;
	scratch->span.length = 0;
	python = capture_python(tgid, sp, &python_hash, scratch);
	walk.scratch = scratch;
	/* No branch here on what capture_python found (unwind_step checks the caller first, and
	 * python_hash is 0 without Python frames): each one would have the verifier check the rest
	 * of the program once per side, which made loading it several times slower. A CPython
	 * process's walk is not memoized: no read of it is noted. */
	memo->dropped = scratch->python;
	if (last_eval_loop(&walk, caller)) /* the allocating code is the eval loop's own */
		walk.flags = MEMTRAIL_STACK_PYTHON_BASE;
	else
		bpf_loop(MEMTRAIL_MAX_STACK_DEPTH, unwind_step, &walk, 0);
	/* The outcome is the segment's (a memoized one's, or the walk's): see segment_memo_keep. */
	scratch->segment.walked_depth = walk.depth;
	scratch->segment.walked_hash = walk.hash;
	scratch->segment.walked_flags = walk.flags;
	scratch->segment.walked_sp = walk.sp;
	segment_memo_keep(scratch, memo, stack);
	stack->flags = scratch->segment.flags_out;
	stack_span_learn(&scratch->span, scratch->segment.sp_out);
	hash = ((scratch->segment.hash_out ^ scratch->segment.depth_out) ^ python_hash) *
	       0x100000001B3ULL;

	known = bpf_map_lookup_elem(&stacks, &hash);
	if (known)
		goto found;
	stack->depth = scratch->segment.depth_out;
	stack->id = __sync_fetch_and_add(&next_stack_id, 1) & 0x7fffffff;
	/* Before the stack is published: a reader that finds the stack finds its Python frames.
	 * (Lost if another CPU publishes the same stack first: an orphan purged with the process.) */
	if (python) {
		python_id = stack->id;
		bpf_map_update_elem(&python_stacks, &python_id, python, BPF_ANY);
	}
	/* -EEXIST: another CPU stored the same stack first; its id is the one to use. */
	bpf_map_update_elem(&stacks, &hash, stack, BPF_NOEXIST);
	known = bpf_map_lookup_elem(&stacks, &hash);
	if (!known)
		goto fallback;
found:
	stack_memo_keep(memo, &key, known->id);
	return known->id;
fallback:
	stack_memo_keep(memo, &key, -1);
	count_loss(MEMTRAIL_CTR_STACK_FAILURES, MEMTRAIL_LOSS_STACK_FAILURES, tgid);
	hash = (caller ^ ((__u64)tgid << 32)) * 0x9E3779B97F4A7C15ULL;
	return -(__s32)((hash >> 32) & MEMTRAIL_SITE_ID_FALLBACK_MASK) - 1;
}

static __always_inline __s32 capture_stack(__u64 caller, __u64 sp, __u64 bp, __u32 tgid)
{
	return capture_stack_from(caller, sp, bp, tgid, 0);
}

/* A stack whose first frame is the probed instruction itself (not a return address): the
 * Python object probes sit on a branch inside the function that creates the object. */
static __always_inline __s32 capture_stack_here(__u64 pc, __u64 sp, __u64 bp, __u32 tgid)
{
	return capture_stack_from(pc, sp, bp, tgid, 1);
}

static __always_inline struct memtrail_fallback_totals *
fallback_lookup_or_create(__u32 tgid, __s32 site_id, __u64 caller)
{
	struct memtrail_fallback_key key = { .tgid = tgid, .site_id = site_id };
	struct memtrail_fallback_totals fresh = { .caller_address = caller };

	return map_lookup_or_insert(&fallback_sites, &key, &fresh);
}

/* Adds one allocation to its site's running totals. */
static __always_inline void add_to_site(__u32 tgid, __s32 site_id, __u64 caller, __u64 bytes,
					__u64 calls)
{
	struct memtrail_fallback_totals *fallback;

	if (site_id >= 0) {
		__u32 index = site_id;
		struct memtrail_site_totals *totals = bpf_map_lookup_elem(&site_totals, &index);

		if (!totals) {
			count_loss(MEMTRAIL_CTR_SITE_DROPS, MEMTRAIL_LOSS_SITE_DROPS, tgid);
			return;
		}
		/* This CPU's copy: no atomics, and no cache line bouncing between the CPUs of a
		 * multi-threaded program allocating from the same site. */
		totals->total_bytes += bytes;
		totals->total_allocations += calls;
		return;
	}
	fallback = fallback_lookup_or_create(tgid, site_id, caller);
	if (!fallback) {
		count_loss(MEMTRAIL_CTR_SITE_DROPS, MEMTRAIL_LOSS_SITE_DROPS, tgid);
		return;
	}
	__sync_fetch_and_add(&fallback->total_bytes, bytes);
	__sync_fetch_and_add(&fallback->total_allocations, calls);
}

static __always_inline void count_mismatch(__u32 tgid, __s32 site_id)
{
	count(MEMTRAIL_CTR_MISMATCHED);
	if (site_id >= 0) {
		__u32 index = site_id;
		struct memtrail_site_totals *totals = bpf_map_lookup_elem(&site_totals, &index);

		if (totals)
			totals->mismatched_frees += 1; /* this CPU's copy */
	} else {
		struct memtrail_fallback_key key = { .tgid = tgid, .site_id = site_id };
		struct memtrail_fallback_totals *totals =
			bpf_map_lookup_elem(&fallback_sites, &key);

		if (totals)
			__sync_fetch_and_add(&totals->mismatched_frees, 1);
	}
}

#endif /* MEMTRAIL_ALLOC_SITES_BPF_H */
