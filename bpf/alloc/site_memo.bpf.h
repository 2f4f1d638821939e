/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Return sites' memos: one read of the stack checks a malloc's caller and the walk above it. */
#ifndef MEMTRAIL_ALLOC_SITE_MEMO_BPF_H
#define MEMTRAIL_ALLOC_SITE_MEMO_BPF_H

#include "common.bpf.h"
#include "alloc/stack_walk.bpf.h"

/* A return site reads its caller's return address and rbp in malloc's frame (read_caller_frame),
 * then the memo of the walk from the caller's registers reads the stack words above them
 * (stack_memo_hit): two reads of user memory a malloc, ~110 ns each here (the kernel's checks
 * around the copy), the most of a site's own cost. A site memo links the site's registers to
 * the caller's words it found there and to the memo of the walk from them: with the same
 * registers, one read from the lowest of those words to the end of the memo's span checks both,
 * and the walk's stack id follows as from that memo. Per CPU, by the site's registers. */
struct site_memo {
	__u64 pc, sp, bp; /* the site's registers */
	__u32 tgid;
	__u32 generation; /* stack_memo_generation when linked */
	__u64 caller;	  /* the return address in the site's frame */
	__u64 caller_bp;  /* the caller's rbp: saved in the frame, or the site's rbp */
	__u32 memo_slot;  /* the walk's memo in stack_memos, from the caller's registers */
	__u32 misses;	  /* checks failed since the last hit (see site_memo_link) */
	/* Linked through an operator new that called malloc (new_calls): `caller` returns into
	 * it, `outer`, frame_skip bytes above, is its caller's return address and the walk's
	 * first pc; new_kind is the operator's kind. 0: a plain malloc's link. */
	__u64 outer;
	__u32 frame_skip;
	__u32 new_kind;
};

/* Links per CPU (a power of two): more than memos, as the sites of one malloc, each with its
 * own link, share the memo of their caller; fewer would make them collide in some runs (the
 * slots move with the addresses). */
#define SITE_MEMO_SLOTS 64

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SITE_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct site_memo);
} site_memos SEC(".maps");

/* The link slot of a site's registers. */
static __always_inline __u32 site_memo_slot(__u64 pc, __u64 sp, __u64 bp)
{
	return (((pc ^ sp ^ (bp << 7)) * 0x9E3779B97F4A7C15ULL) >> 58) & (SITE_MEMO_SLOTS - 1);
}

/* A site's frame, as its attach cookie places it. */
struct site_frame {
	__u64 pc, sp, bp; /* the site's registers */
	__u64 slot;	  /* where the return address is */
	__u64 bp_slot;	  /* where the caller's rbp is saved; 0: still in rbp */
	__u32 tgid;
	__u32 generation; /* stack_memo_generation, read once */
	/* Set by site_memo_hit when it read the stack, whether the words matched or not: */
	__u64 caller;
	__u64 caller_bp;
	__u64 read;
	/* What read_caller_frame and from_operator_new read: here, not on the BPF stack, which
	 * the site program shares with the walk it inlines and the calls the walk makes (512
	 * bytes for the whole chain). */
	__u64 caller_words[4];
	__u64 new_code[MEMTRAIL_NEW_CODE_WORDS];
	/* The block the site records, kept here across the walk (see record_at_site). */
	__u64 record_caller, record_caller_bp, record_address, record_size, record_weight;
	__u32 record_kind; /* | SITE_RECORD_PLAIN: no return probe had replaced the address */
	/* Through an operator new: the return address into it (in the site's frame), how far
	 * above its own is, and its kind (struct site_memo's outer, frame_skip, new_kind). */
	__u32 record_new_kind;
	__u64 record_returns_to;
	__u32 record_skip;
};

#define SITE_RECORD_PLAIN 0x80000000u

/* The site_frame of the site program running on this CPU: too big for its BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct site_frame);
} site_frames SEC(".maps");

static __always_inline bool site_memo_matches(struct site_memo *link, struct site_frame *frame)
{
	return link->pc == frame->pc && link->sp == frame->sp && link->bp == frame->bp &&
	       link->tgid == frame->tgid && link->generation == frame->generation;
}

/* The stack id of the walk `link` leads to, when it was linked from the registers of `frame`
 * and every word it relies on still holds what it held: the caller's return address and rbp in
 * the site's frame, through an operator new its caller's return address above, and each word
 * the walk's memo noted, read at once into `scratch`; else -1. After a read, frame->caller and
 * caller_bp hold what it found. A global function: checked once by the verifier. */
__noinline __s32 site_memo_hit(struct site_memo *link, struct stack_memo_bytes *scratch,
			       struct site_frame *frame)
{
	__u64 low, end, length, walk_pc, walk_slot;
	struct stack_memo *memo;
	__u32 memo_slot, reads;

	if (!link || !scratch || !frame || !site_memo_matches(link, frame))
		return -1;
	/* Where the walk starts: malloc's caller, or an operator new's. */
	walk_pc = link->outer ? link->outer : link->caller;
	walk_slot = frame->slot + (link->outer ? link->frame_skip : 0);
	memo_slot = link->memo_slot & (STACK_MEMO_SLOTS - 1);
	memo = bpf_map_lookup_elem(&stack_memos, &memo_slot);
	/* The memo as capture_stack_from would look it up from the walk's registers. */
	if (!memo || memo->dropped || memo->key.pc != walk_pc || memo->key.sp != walk_slot + 8 ||
	    memo->key.bp != link->caller_bp || memo->key.tgid != frame->tgid ||
	    memo->key.generation != frame->generation || memo->key.exact_pc)
		return -1;
	reads = memo->reads;
	low = frame->bp_slot && frame->bp_slot < frame->slot ? frame->bp_slot : frame->slot;
	end = memo->low + memo->span;
	if (end < walk_slot + 8)
		end = walk_slot + 8;
	if (frame->bp_slot + 8 > end)
		end = frame->bp_slot + 8;
	length = end - low;
	if (reads == 0 || reads > STACK_MEMO_READS || memo->low < low || length > STACK_MEMO_SPAN)
		return -1;
	if (bpf_probe_read_user(scratch->bytes, length, (const void *)low))
		return -1;
	frame->read = 1;
	frame->caller = *(__u64 *)&scratch->bytes[(frame->slot - low) & (STACK_MEMO_SPAN - 1)];
	frame->caller_bp =
		frame->bp_slot
			? *(__u64 *)&scratch->bytes[(frame->bp_slot - low) & (STACK_MEMO_SPAN - 1)]
			: frame->bp;
	if (frame->caller != link->caller || frame->caller_bp != link->caller_bp)
		return -1;
	if (link->outer &&
	    *(__u64 *)&scratch->bytes[(walk_slot - low) & (STACK_MEMO_SPAN - 1)] != link->outer)
		return -1;
	/* A plain loop, not bpf_loop: this function is checked once, and a callback a read cost
	 * more than the comparison (an indirect call through the kernel's return thunks). */
	for (__u32 index = 0; index < STACK_MEMO_READS; index++) {
		struct stack_memo_read *read = &memo->read[index];
		__u32 offset = (read->address - low) & (STACK_MEMO_SPAN - 1);

		if (index >= reads)
			break;
		if (*(__u64 *)&scratch->bytes[offset] != read->words[0] ||
		    (read->length == 16 && *(__u64 *)&scratch->bytes[offset + 8] != read->words[1]))
			return -1;
	}
	link->misses = 0;
	return memo->id;
}

/* Links the site's registers to the walk from `caller` (its memo just kept, or found): malloc's
 * caller, or, when frame->record_new_kind is set, the caller of the operator new that
 * frame->record_returns_to returns into. A link of the same registers is replaced only at its
 * second miss in a row: two call paths that reach the site with the same registers (wrappers of
 * the same frame size called in turn) would otherwise relink at every call, and neither would
 * hit; kept, one of them does. */
static __always_inline void site_memo_link(struct site_memo *link, struct site_frame *frame,
					   __u64 caller, __u64 caller_bp)
{
	__u64 walk_slot = frame->slot;

	if (!link)
		return;
	if (site_memo_matches(link, frame) && link->misses++ == 0)
		return;
	link->pc = frame->pc;
	link->sp = frame->sp;
	link->bp = frame->bp;
	link->tgid = frame->tgid;
	link->generation = frame->generation;
	link->caller = caller;
	link->outer = 0;
	link->frame_skip = 0;
	link->new_kind = frame->record_new_kind;
	if (frame->record_new_kind) {
		link->caller = frame->record_returns_to;
		link->outer = caller;
		link->frame_skip = frame->record_skip;
		walk_slot += frame->record_skip;
	}
	link->caller_bp = caller_bp;
	link->memo_slot = stack_memo_slot(caller, walk_slot + 8, caller_bp);
	link->misses = 0;
}

#endif /* MEMTRAIL_ALLOC_SITE_MEMO_BPF_H */
