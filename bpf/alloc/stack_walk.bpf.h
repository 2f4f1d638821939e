/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The user stack walk: CFI tables where userspace loaded them, frame pointers elsewhere. */
#ifndef MEMTRAIL_ALLOC_STACK_WALK_BPF_H
#define MEMTRAIL_ALLOC_STACK_WALK_BPF_H

#include "common.bpf.h"
#include "arch_x86_64.bpf.h"
#include "alloc_events.h"
#include "unwind_table.h"
#include "alloc/counters.bpf.h"

/* --unwind: fp reads no table; dwarf and auto read unwind_processes (set by userspace). */
const volatile __u32 unwind_mode = MEMTRAIL_UNWIND_MODE_FP;
/* auto: an address in no known mapping (JIT code, a library mapped since userspace last
 * looked) is walked by frame pointer; dwarf: the walk ends there, marked. */
const volatile bool unknown_code_by_frame_pointer = true;

/* Every module's rows, one table after the other (bpf/unwind_table.h). Userspace appends a
 * module's table once, shared by every process that maps the file, and writes it in place. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_unwind_row);
} unwind_rows SEC(".maps");

/* Every module's page index (see struct memtrail_unwind_mapping), one after the other. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_unwind_page);
} unwind_pages SEC(".maps");

/* Executable mappings of each traced process, by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_unwind_process);
} unwind_processes SEC(".maps");

/* Frame pointers of the caller's frames lie above its stack pointer, within a thread stack.
 * Checking that first rejects the garbage a frame-pointer-less function leaves in %rbp
 * without a faulting read, which costs far more than a successful one. */
#define MAX_STACK_SPAN (64ULL << 20)

/* The registers of the frame being unwound, and the stack collected so far. Lives on the BPF
 * stack of capture_stack; unwind_step runs once per frame under bpf_loop, which the verifier
 * checks once (a plain loop of 64 frames, each with two binary searches, would be explored
 * path by path). */
struct walk {
	struct memtrail_stack *stack;
	struct memtrail_unwind_process *process; /* NULL: frame pointers everywhere */
	__u64 pc; /* a return address: the instruction before it is the call */
	__u64 sp;
	__u64 bp;
	__u64 hash;
	__u32 depth;
	__u32 mapping_hint; /* the previous frame's mapping: callers are often in the same one */
	__u16 flags;
	__u8 bp_known; /* false once a frame's CFI says rbp cannot be recovered */
	__u8 exact_pc; /* pc is where a signal struck, not a return address: no - 1 */
};

/* The two binary searches are global functions: the verifier checks each once, on its own,
 * instead of once per path through the frame step that calls them (inlined, the walk's paths
 * multiplied past the verifier's budget of a million instructions). */

/* Index of the mapping of `process` that holds `address`, or -1. `hint`: the previous frame's
 * mapping, checked first (callers are often in the same module). */
__noinline int unwind_find_mapping(struct memtrail_unwind_process *process, __u64 address,
				   __u32 hint)
{
	__u32 count, low = 0, high, middle;
	struct memtrail_unwind_mapping *mapping;

	if (!process)
		return -1;
	count = process->count;
	mapping = &process->mappings[hint & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
	if (hint < count && address >= mapping->start && address < mapping->end)
		return hint & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1);
	high = count < MEMTRAIL_UNWIND_MAX_MAPPINGS ? count : MEMTRAIL_UNWIND_MAX_MAPPINGS;
	for (int step = 0; step < MEMTRAIL_UNWIND_MAPPING_SEARCH_STEPS && low < high; step++) {
		middle = (low + high) / 2;
		mapping = &process->mappings[middle & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
		if (address < mapping->start)
			high = middle;
		else if (address >= mapping->end)
			low = middle + 1;
		else
			return middle & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1);
	}
	return -1;
}

/* The last row of the mapping's module whose pc <= pc (as unwind::find_row_paged), as its 8
 * bytes (a global function returns a scalar); 0, a NONE row, when there is none. */
__noinline __u64 unwind_find_row(struct memtrail_unwind_mapping *mapping, __u64 pc)
{
	struct memtrail_unwind_row *row;
	__u32 first, rows, low = 0, high, middle, index;
	struct memtrail_unwind_page *bounds;
	__u64 page;

	if (!mapping || pc > 0xffffffffULL)
		return 0;
	first = mapping->first_row;
	rows = mapping->rows;
	high = rows;
	page = pc >> MEMTRAIL_UNWIND_PAGE_SHIFT;
	if (mapping->pages && page >= mapping->page_base &&
	    page - mapping->page_base < mapping->pages) {
		index = mapping->first_page + (__u32)(page - mapping->page_base);
		bounds = bpf_map_lookup_elem(&unwind_pages, &index);
		if (bounds) {
			low = bounds->first_row ? bounds->first_row - 1 : 0;
			high = bounds->end_row < rows ? bounds->end_row : rows;
		}
	}
	for (int step = 0; step < MEMTRAIL_UNWIND_MAX_SEARCH_STEPS && low < high; step++) {
		middle = low + (high - low) / 2;
		index = first + middle;
		row = bpf_map_lookup_elem(&unwind_rows, &index);
		if (!row)
			return 0;
		if (row->pc <= (__u32)pc)
			low = middle + 1;
		else
			high = middle;
	}
	if (low == 0)
		return 0;
	index = first + low - 1;
	row = bpf_map_lookup_elem(&unwind_rows, &index);
	return row ? *(__u64 *)row : 0;
}

#define WALK_CONTINUE 0
#define WALK_STOP 1

static __always_inline long walk_ends(struct walk *walk, enum memtrail_truncation reason)
{
	walk->flags =
		(walk->flags & MEMTRAIL_STACK_USED_TABLES) |
		(reason ? MEMTRAIL_STACK_TRUNCATED | (reason << MEMTRAIL_STACK_REASON_SHIFT) : 0);
	return WALK_STOP;
}

/* The signal trampoline: the kernel saved the interrupted registers in the frame. The next
 * pc is where the signal struck, not a return address. */
static __always_inline long signal_frame_step(struct walk *walk, __u64 *return_address)
{
	__u64 sp_ip[2], bp;

	if (bpf_probe_read_user(sp_ip, sizeof(sp_ip), (void *)(walk->sp + MEMTRAIL_SIGFRAME_RSP)) ||
	    bpf_probe_read_user(&bp, sizeof(bp), (void *)(walk->sp + MEMTRAIL_SIGFRAME_RBP)))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
	if (!sp_ip[1])
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
	walk->flags |= MEMTRAIL_STACK_USED_TABLES;
	walk->sp = sp_ip[0];
	walk->bp = bp;
	walk->bp_known = 1;
	walk->exact_pc = 1;
	*return_address = sp_ip[1];
	return WALK_CONTINUE;
}

/* One frame by its CFI row: the caller's pc, sp and bp, or the end of the walk. */
static __always_inline long table_step(struct walk *walk, struct memtrail_unwind_mapping *mapping,
				       __u64 *return_address)
{
	union {
		__u64 bits;
		struct memtrail_unwind_row fields;
	} found;
	struct memtrail_unwind_row *row = &found.fields;
	__u64 pc = walk->pc - (walk->exact_pc ? 0 : 1) - mapping->bias, cfa, saved[2];
	__s64 rbp_slot;

	found.bits = unwind_find_row(mapping, pc);
	switch (MEMTRAIL_UNWIND_CFA_KIND(row)) {
	case MEMTRAIL_UNWIND_CFA_RSP:
		cfa = walk->sp + row->cfa_offset;
		break;
	case MEMTRAIL_UNWIND_CFA_RBP:
		if (!walk->bp_known)
			return walk_ends(walk, MEMTRAIL_TRUNCATED_RBP_UNKNOWN);
		cfa = walk->bp + row->cfa_offset;
		break;
	case MEMTRAIL_UNWIND_CFA_PLT:
		cfa = walk->sp + row->cfa_offset + ((pc & 15) >= row->rbp_offset ? 8 : 0);
		break;
	case MEMTRAIL_UNWIND_CFA_OUTERMOST:
		return walk_ends(walk, 0); /* _start, a thread's start routine: complete */
	case MEMTRAIL_UNWIND_CFA_SIGNAL:
		return signal_frame_step(walk, return_address);
	case MEMTRAIL_UNWIND_CFA_NONE:
		return walk_ends(walk, MEMTRAIL_TRUNCATED_NO_CFI);
	default:
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNSUPPORTED);
	}
	if (cfa <= walk->sp || cfa - walk->sp >= MAX_STACK_SPAN)
		return walk_ends(walk, MEMTRAIL_TRUNCATED_LOOP);
	walk->flags |= MEMTRAIL_STACK_USED_TABLES;
	switch (MEMTRAIL_UNWIND_RBP_KIND(row)) {
	case MEMTRAIL_UNWIND_RBP_AT_CFA:
		rbp_slot = (__s64)row->rbp_offset * 8;
		if (rbp_slot == -16) {
			/* push %rbp right after the call: one read for both (the common case) */
			if (bpf_probe_read_user(saved, sizeof(saved), (void *)(cfa - 16)))
				return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
			walk->bp = saved[0];
			*return_address = saved[1];
		} else {
			if (bpf_probe_read_user(&saved[0], sizeof(saved[0]),
						(void *)(cfa + rbp_slot)) ||
			    bpf_probe_read_user(&saved[1], sizeof(saved[1]), (void *)(cfa - 8)))
				return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
			walk->bp = saved[0];
			*return_address = saved[1];
		}
		walk->bp_known = 1;
		break;
	case MEMTRAIL_UNWIND_RBP_UNKNOWN:
		walk->bp_known = 0;
		/* fall through: the return address is still where the ABI puts it */
	default: /* UNCHANGED: rbp is callee-saved and this frame left it alone */
		if (bpf_probe_read_user(&saved[1], sizeof(saved[1]), (void *)(cfa - 8)))
			return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
		*return_address = saved[1];
	}
	walk->sp = cfa;
	walk->exact_pc = 0;
	if (*return_address == 0)
		return walk_ends(walk, 0); /* an outermost frame without CFI saying so */
	return WALK_CONTINUE;
}

/* One frame by its frame pointer: [rbp] is the caller's rbp, [rbp + 8] the return address. */
static __always_inline long frame_pointer_step(struct walk *walk, __u64 *return_address)
{
	struct {
		__u64 next_fp;
		__u64 return_address;
	} frame;
	__u64 fp = walk->bp;

	if (!walk->bp_known)
		return walk_ends(walk, MEMTRAIL_TRUNCATED_RBP_UNKNOWN);
	if (fp == 0) /* _start clears %rbp: this is the end of the chain */
		return walk_ends(walk, 0);
	if (fp < walk->sp || fp - walk->sp >= MAX_STACK_SPAN || (fp & 7))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER);
	if (bpf_probe_read_user(&frame, sizeof(frame), (void *)fp))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
	if (!frame.return_address)
		return walk_ends(walk, MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER);
	/* A caller's rbp at or below this one fails the span check of the next step: no loops. */
	walk->bp = frame.next_fp;
	walk->sp = fp + 16;
	walk->exact_pc = 0;
	*return_address = frame.return_address;
	return WALK_CONTINUE;
}

static long unwind_step(__u32 index, struct walk *walk)
{
	struct memtrail_unwind_mapping *mapping = NULL;
	__u32 method = MEMTRAIL_UNWIND_BY_FRAME_POINTER;
	__u64 return_address = 0;
	__u32 depth;
	long outcome;

	if (walk->process) {
		int found = unwind_find_mapping(walk->process, walk->pc - (walk->exact_pc ? 0 : 1),
						walk->mapping_hint);

		if (found >= 0) {
			walk->mapping_hint = found;
			mapping = &walk->process
					   ->mappings[found & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
			method = mapping->method;
		} else {
			/* A library mapped since userspace last read the process's mappings, most
			 * likely (dlopen): the counter makes it read them again soon (<= 250 ms). */
			count(MEMTRAIL_CTR_UNKNOWN_CODE);
			if (!unknown_code_by_frame_pointer)
				return walk_ends(walk, MEMTRAIL_TRUNCATED_NO_MAPPING);
		}
	}
	if (mapping && method == MEMTRAIL_UNWIND_BY_TABLE)
		outcome = table_step(walk, mapping, &return_address);
	else if (method == MEMTRAIL_UNWIND_BY_FRAME_POINTER)
		outcome = frame_pointer_step(walk, &return_address);
	else
		return walk_ends(walk, MEMTRAIL_TRUNCATED_NO_CFI);
	if (outcome != WALK_CONTINUE)
		return outcome;
	/* The frame's slot comes from bpf_loop's index, not from walk->depth: the verifier knows
	 * the index only as a range, so the states of successive iterations converge; a depth
	 * carried in walk would be a different constant each time and multiply its work. */
	depth = index + 1; /* ips[0] is the caller */
	if (depth >= MEMTRAIL_MAX_STACK_DEPTH)
		return walk_ends(walk, MEMTRAIL_TRUNCATED_DEPTH);
	walk->stack->ips[depth & (MEMTRAIL_MAX_STACK_DEPTH - 1)] = return_address;
	walk->depth = depth + 1;
	walk->hash = (walk->hash ^ return_address) * 0x100000001B3ULL; /* FNV-1a style mix */
	walk->pc = return_address;
	return WALK_CONTINUE;
}

#endif /* MEMTRAIL_ALLOC_STACK_WALK_BPF_H */
