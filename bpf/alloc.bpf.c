// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Allocator uprobes: keep every outstanding allocation with its call-stack site, and running
 * per-site totals, entirely in maps. Userspace reads the maps once per interval.
 *
 * Every program of the object is in this file. The maps and functions they share are in
 * alloc/, one header per concern, all compiled into this one object (one skeleton):
 *   alloc/processes.bpf.h      which processes are recorded: traced_processes, --all
 *   alloc/counters.bpf.h       the counters, losses and allocations per process
 *   alloc/inflight.bpf.h       the allocator call (or system call) each thread is in
 *   alloc/table.bpf.h          the outstanding-allocations table, read in place by userspace
 *   alloc/stack_walk.bpf.h     the user stack walk: CFI tables, frame pointers
 *   alloc/python_frames.bpf.h  the Python frames of CPython threads
 *   alloc/sites.bpf.h          call stacks as sites: their ids and running totals
 *   alloc/site_memo.bpf.h      return sites' memos: one read of the stack a malloc
 *   alloc/sampling.bpf.h       --sample-rate
 *   alloc/python_types.bpf.h   Python objects by type
 *   alloc/regions.bpf.h        memory mapped by system calls
 * Map sizes (max_entries 1) are placeholders: userspace sets them before load. */
#include "common.bpf.h"
#include "arch_x86_64.bpf.h" /* x86-64 only: what that assumes is listed there */
#include "alloc_events.h"
#include "unwind_table.h"

#include "alloc/processes.bpf.h"
#include "alloc/counters.bpf.h"
#include "alloc/inflight.bpf.h"
#include "alloc/table.bpf.h"
#include "alloc/stack_walk.bpf.h"
#include "alloc/python_frames.bpf.h"
#include "alloc/sites.bpf.h"
#include "alloc/site_memo.bpf.h"
#include "alloc/sampling.bpf.h"
#include "alloc/python_types.bpf.h"
#include "alloc/regions.bpf.h"

/* GPL-compatible, as the SPDX line above says: the kernel lets only such programs call
 * bpf_probe_read_user (the stack walks, posix_memalign's result), bpf_probe_read_kernel
 * (BPF_CORE_READ), bpf_get_current_task_btf and bpf_task_pt_regs, or read kernel structs through
 * BTF pointers (the tasks of the tp_btf programs, the thread's %fs base). */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by userspace when tracing stops, before the final reading: from then on no block is
 * recorded or released, so the final report's counts are exact (removing hundreds of uprobes
 * would take seconds). */
volatile __u32 tracing_stopped = 0;

/* Set by userspace when it stops following the processes (the run ends): no exec is held from
 * then on, as nobody would continue it. */
volatile __u32 holds_released = 0;

/* ---- recording and releasing blocks: what the allocator probes share ---- */

/* Records a block of site `site_id` (its stack captured). */
static __always_inline void record_block(__u32 tgid, __s32 site_id, __u64 caller, __u64 address,
					 __u64 size, __u32 kind, __u64 weight_bytes)
{
	count_process_allocation(tgid);
	/* With sampling, the totals add up estimates: bytes and calls this sample stands for
	 * (calls: rounded down; a sample of size 0 never happens). */
	add_to_site(tgid, site_id, caller, weight_bytes, size ? weight_bytes / size : 1);
	if (table_insert_block(tgid, address,
			       (size & MEMTRAIL_SIZE_MASK) | ((__u64)kind << MEMTRAIL_SIZE_BITS),
			       site_id, bpf_ktime_get_ns()))
		count(MEMTRAIL_CTR_ALLOCATIONS);
	else
		count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, tgid); /* both buckets full */
}

/* `caller`, `sp` and `bp`: the registers as the allocator's return leaves them to its caller.
 * Returns the site's id (-1 once tracing stopped). */
static __always_inline __s32 record_alloc_from(__u64 caller, __u64 sp, __u64 bp, __u64 address,
					       __u64 size, __u32 kind, __u64 weight_bytes)
{
	__u32 tgid = current_tgid();
	__s32 site_id;

	if (tracing_stopped)
		return -1;
	site_id = capture_stack(caller, sp, bp, tgid);
	record_block(tgid, site_id, caller, address, size, kind, weight_bytes);
	return site_id;
}

enum release_mode {
	RELEASE_FREE,	      /* free(p): p unknown means it predates attach */
	RELEASE_REALLOC,      /* realloc moved p: only if recorded before the call began */
	RELEASE_REALLOC_ZERO, /* realloc(p, 0): glibc's nested free() already released p */
	RELEASE_DELETE,	      /* operator delete(p) */
	RELEASE_DELETE_ARRAY, /* operator delete[](p) */
};

/* A block released by a function that does not pair with the one that allocated it: new and
 * free, malloc and delete, new[] and delete, new and delete[]. */
static __always_inline bool mismatched(enum release_mode mode, __u32 kind)
{
	if (mode == RELEASE_DELETE)
		return kind != MEMTRAIL_KIND_NEW;
	if (mode == RELEASE_DELETE_ARRAY)
		return kind != MEMTRAIL_KIND_NEW_ARRAY;
	return kind == MEMTRAIL_KIND_NEW || kind == MEMTRAIL_KIND_NEW_ARRAY;
}

static __always_inline void release(__u64 address, enum release_mode mode, __u64 call_start_ns)
{
	__u32 tgid = current_tgid();
	struct memtrail_alloc_info *info;
	struct slot_ref found;

	if (tracing_stopped)
		return;
	/* A miss means the block predates attach (or a concurrent double free removed it). */
	if (!find_slot(tgid, address, &found)) {
		if (mode != RELEASE_REALLOC_ZERO)
			count_loss(MEMTRAIL_CTR_UNMATCHED_FREES, MEMTRAIL_LOSS_UNMATCHED_FREES,
				   tgid);
		return;
	}
	info = &found.bucket->info[found.slot & 7];
	/* Another thread got this address after our realloc freed it: that block is not ours. */
	if ((mode == RELEASE_REALLOC || mode == RELEASE_REALLOC_ZERO) &&
	    READ_ONCE_U64(info->timestamp_ns) > call_start_ns)
		return;
	if (mismatched(mode, READ_ONCE_U64(info->size_kind) >> MEMTRAIL_SIZE_BITS))
		count_mismatch(tgid, info->site_id);
	if (table_remove(&found, address))
		count(MEMTRAIL_CTR_FREES);
	else if (mode != RELEASE_REALLOC && mode != RELEASE_REALLOC_ZERO)
		count_loss(MEMTRAIL_CTR_UNMATCHED_FREES, MEMTRAIL_LOSS_UNMATCHED_FREES, tgid);
}

/* In a return probe, the registers are the caller's already. */
static __always_inline void record_alloc(struct pt_regs *ctx, __u64 address, __u64 size, __u32 kind,
					 __u64 weight_bytes)
{
	record_alloc_from(PT_REGS_IP(ctx), PT_REGS_SP(ctx), PT_REGS_FP(ctx), address, size, kind,
			  weight_bytes);
}

/* Records the block a call returned, unless --sample-rate passes it over. */
static __always_inline void record_returned(struct pt_regs *ctx, struct inflight_call *call,
					    __u64 address, __u64 size)
{
	__u64 weight = sampled_bytes(call, size);

	if (call->kind & MEMTRAIL_CALL_USABLE_SIZE)
		count(MEMTRAIL_CTR_USABLE_SIZES);
	if (weight)
		record_alloc(ctx, address, size, call->kind & MEMTRAIL_SITE_KIND_MASK, weight);
}

/* ---- entry probes: remember the arguments until the call returns ---- */

/* malloc, valloc, pvalloc: (size). The attach cookie says which. */
SEC("uprobe")
int BPF_KPROBE(size_alloc_enter, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), size, 0);
	return 0;
}

/* The attach cookie is the kind: calloc, or an extension of the same signature (mi_mallocn). */
SEC("uprobe")
int BPF_KPROBE(calloc_enter, __u64 count_, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), count_ * size, 0);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(realloc_enter, __u64 old, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), size, old);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(reallocarray_enter, __u64 old, __u64 count_, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), count_ * size, old);
	return 0;
}

/* aligned_alloc, memalign: (alignment, size). The attach cookie says which. */
SEC("uprobe")
int BPF_KPROBE(aligned_alloc_enter, __u64 alignment, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), size, 0);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(posix_memalign_enter, __u64 memptr, __u64 alignment, __u64 size)
{
	call_enter(ctx, bpf_get_attach_cookie(ctx), size, memptr);
	return 0;
}

/* ---- return probes: the call's outcome decides what is recorded ---- */

/* malloc, calloc, aligned_alloc, memalign, valloc, pvalloc: a pointer or NULL. */
SEC("uretprobe")
int BPF_KRETPROBE(pointer_exit, __u64 address)
{
	struct inflight_call *call = call_exit();

	if (!call)
		return 0;
	if (!address) {
		count(MEMTRAIL_CTR_FAILED_CALLS);
		return 0;
	}
	record_returned(ctx, call, address, call->size);
	return 0;
}

/* realloc's release of the block it moved, as a global function: the verifier checks it once,
 * on its own. Inlined, what it left on the program's stack made two kinds of state reach the
 * stack walk, which was checked for each: twice the instructions to load realloc_exit. */
__noinline int release_moved_block(__u64 old, __u64 call_start_ns)
{
	release(old, RELEASE_REALLOC, call_start_ns);
	return 0;
}

/* realloc, reallocarray: the old block is released only once the call is known to have
 * succeeded, and realloc(NULL, n) and realloc(p, 0) behave as in glibc. */
SEC("uretprobe")
int BPF_KRETPROBE(realloc_exit, __u64 address)
{
	struct inflight_call *call = call_exit();
	__u64 old, size;

	if (!call)
		return 0;
	old = call->aux;
	size = call->size;
	if (!address) {
		if (old && size == 0)
			release(old, RELEASE_REALLOC_ZERO,
				call->start_ns); /* freed, returns NULL */
		else
			count(MEMTRAIL_CTR_FAILED_CALLS); /* failed: the old block is untouched */
		return 0;
	}
	if (old)
		release_moved_block(old, call->start_ns);
	record_returned(ctx, call, address, size);
	return 0;
}

/* posix_memalign: counts only when it returned 0, at the address it stored. */
SEC("uretprobe")
int BPF_KRETPROBE(posix_memalign_exit, int result)
{
	struct inflight_call *call = call_exit();
	__u64 address = 0;

	if (!call)
		return 0;
	if (result != 0 || bpf_probe_read_user(&address, sizeof(address), (void *)call->aux) != 0 ||
	    !address) {
		count(MEMTRAIL_CTR_FAILED_CALLS);
		return 0;
	}
	record_returned(ctx, call, address, call->size);
	return 0;
}

/* ---- return sites: one emulated probe inside malloc or calloc instead of entry and return ---- */

/* Register `number` (x86 encoding: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi,
 * 8..15 r8..r15) of the probed thread. The registers are loaded at constant offsets and picked
 * from a copy: one load of the context at a computed offset is refused by the verifier, and a
 * bpf_probe_read_kernel of it is a helper call on every event. */
static __always_inline __u64 register_value(struct pt_regs *ctx, __u64 number)
{
	__u64 values[16] = {
		ctx->ax, ctx->cx, ctx->dx,  ctx->bx,  ctx->sp,	ctx->bp,  ctx->si,  ctx->di,
		ctx->r8, ctx->r9, ctx->r10, ctx->r11, ctx->r12, ctx->r13, ctx->r14, ctx->r15,
	};

	return values[number & 15];
}

/* glibc's chunk header, the word before the block: its size with flag bits; an mmapped chunk
 * (bit 1) has 16 bytes of overhead, others 8 (malloc_usable_size). */
static __always_inline bool usable_size(__u64 address, __u64 *size)
{
	__u64 header = 0;

	if (bpf_probe_read_user(&header, sizeof(header), (const void *)(address - 8)))
		return false;
	*size = (header & ~7ULL) - ((header & 2) ? 16 : 8);
	return true;
}

/* tcmalloc's class size tables, each as its address minus the address of the instruction
 * probed (the same in every process that maps the library): userspace fills them before it
 * attaches the probes whose cookies name them (MEMTRAIL_SITE_SIZE_CLASS_INDEX). */
volatile __s64 class_size_tables[MEMTRAIL_CLASS_TABLES];

/* The usable size of a block of the size class `index` (a byte): its class's size, from the
 * table that the cookie names. */
static __always_inline bool class_size(struct pt_regs *ctx, __u64 cookie, __u64 index, __u64 *size)
{
	__u64 table =
		PT_REGS_IP(ctx) + class_size_tables[(cookie >> MEMTRAIL_SITE_CLASS_TABLE_SHIFT) &
						    (MEMTRAIL_CLASS_TABLES - 1)];
	__s32 value = 0;

	if (bpf_probe_read_user(&value, sizeof(value),
				(const void *)(table + 4 * (index & 0xff))) ||
	    value <= 0)
		return false;
	*size = value;
	return true;
}

/* The return address in `slot` (where malloc's caller pushed it). Another tracer's return probe
 * on malloc (a second memtrail, BCC's memleak) replaces it with the kernel's trampoline while
 * the call runs; the thread's return instance for that slot keeps the real one. */
static __always_inline __u64 return_address(__u64 slot, __u64 value)
{
	/* Direct loads through the task's BTF pointers (faults read as 0): no helper call. */
	struct uprobe_task *utask = bpf_get_current_task_btf()->utask;
	struct return_instance *instance = utask ? utask->return_instances : NULL;

	for (int i = 0; i < 8 && instance; i++) {
		if (instance->stack == slot)
			return instance->orig_ret_vaddr;
		instance = instance->next;
	}
	return value;
}

/* Where a site finds the size asked for. */
enum site_size_source {
	SITE_SIZE_IN_REGISTER,
	SITE_SIZE_TAKEN,	   /* taken earlier in the call by site_take_size */
	SITE_SIZE_IN_CHUNK_HEADER, /* only the usable size is known */
};

/* The size site_take_size took for the call whose return address is at `frame`. */
struct taken_size {
	__u64 frame;
	__u64 size;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct taken_size);
} taken_sizes SEC(".maps");

/* The size this very call asked for, taken earlier on its path (a nested call, deeper on the
 * stack, has its return address elsewhere), or else the usable size from glibc's chunk header,
 * counted as such. */
static __always_inline bool site_size(__u64 address, __u64 frame, bool taken_first, __u64 *size)
{
	if (taken_first) {
		struct taken_size *taken = current_task_storage(&taken_sizes, 0);

		if (taken && taken->frame == frame) {
			taken->frame = 0;
			*size = taken->size;
			return true;
		}
	}
	if (!usable_size(address, size))
		return false;
	count(MEMTRAIL_CTR_USABLE_SIZES);
	return true;
}

/* The return address at sp + the cookie's frame and, where the function saved it, the caller's
 * rbp: in one read of the stack when they lie within four words (glibc's malloc pushes rbp two
 * words below its return address). A read of user memory costs about 100 ns here (the kernel's
 * checks around the copy), more than the rest of the site's own work. */
static __always_inline bool read_caller_frame(__u64 sp, __u64 cookie, __u64 *caller,
					      __u64 *caller_bp, __u64 words[4])
{
	__u64 frame = (cookie >> MEMTRAIL_SITE_FRAME_SHIFT) & 0xffff;
	__u64 bp_slot = (cookie >> MEMTRAIL_SITE_BP_SHIFT) & 0xffff, gap = frame - bp_slot;

	if (!(cookie & MEMTRAIL_SITE_BP_SAVED))
		return !bpf_probe_read_user(caller, sizeof(*caller), (const void *)(sp + frame));
	/* The words above the return address are the caller's frame: readable, as the stack
	 * goes on above it. A read that fails all the same falls back to two. */
	if (bp_slot < frame && gap < 4 * sizeof(__u64) && !(gap & 7) &&
	    !bpf_probe_read_user(words, 4 * sizeof(__u64), (const void *)(sp + bp_slot))) {
		*caller_bp = words[0];
		*caller = words[(gap / 8) & 3];
		return true;
	}
	return !bpf_probe_read_user(caller, sizeof(*caller), (const void *)(sp + frame)) &&
	       !bpf_probe_read_user(caller_bp, sizeof(*caller_bp), (const void *)(sp + bp_slot));
}

/* C++ operators new that call malloc (struct memtrail_new_call), by the offset in its page of
 * the address malloc returns to; new_call_pages has a bit set for each key present, so that the
 * other calls of malloc pay a load, not a map lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct memtrail_new_call);
} new_calls SEC(".maps");

volatile __u64 new_call_pages[64];

/* Whether `caller` may be a call of malloc from an operator new in new_calls. */
static __always_inline bool is_new_call_page(__u64 caller)
{
	return new_call_pages[(caller & 0xfff) >> 6] & (1ULL << (caller & 63));
}

/* Whether the code `caller` returns into is an operator new userspace proved (new_calls), byte
 * for byte: its kind, with frame->record_skip set to how far above malloc's return address its
 * own is; 0 when it is not one; -1 when its code could not be read (code that just ran: a
 * failure leaves the kind unknown, counted as a drop rather than recorded as malloc's and
 * reported mismatched by its delete). A global function: the verifier checks it once, not on
 * each path of the site programs that call it. */
__noinline int operator_new_at(__u64 caller, struct site_frame *frame)
{
	__u32 key = caller & 0xfff, length;
	struct memtrail_new_call *known = bpf_map_lookup_elem(&new_calls, &key);

	if (!known || !frame)
		return 0;
	length = known->length;
	if (length == 0 || length > MEMTRAIL_NEW_CODE_WORDS * sizeof(__u64))
		return 0;
	/* Words beyond what is read are compared too (their mask is 0): no stale word counts. */
	__builtin_memset(frame->new_code, 0, sizeof(frame->new_code));
	if (bpf_probe_read_user(frame->new_code, length,
				(const void *)(caller - known->call_return)))
		return -1;
	for (int i = 0; i < MEMTRAIL_NEW_CODE_WORDS; i++) {
		if ((frame->new_code[i] ^ known->code[i]) & known->mask[i])
			return 0;
	}
	frame->record_skip = known->frame_skip;
	return known->kind;
}

/* After site_memo_hit found the stack of a site's link: the kind of block to record (`kind`,
 * the site's, or an operator new's), with frame->record_caller set to the allocation's caller;
 * -1 when the hit is not to be taken (a link through an operator new whose code is no longer
 * the one proved, or a plain link whose caller may be an operator new). A global function:
 * in the site programs, each way through these checks went on to the walk with its own
 * pointers and kinds, and the verifier checked the walk once per way (~100,000 more
 * instructions to load each site program, measured). */
__noinline int site_memo_hit_kind(struct site_memo *link, struct site_frame *frame, __u32 kind)
{
	if (!link || !frame)
		return -1;
	if (link->outer) {
		/* Through an operator new: the code the link's return address goes back into is
		 * checked again (the library there may have been replaced), in one read of it. */
		if (operator_new_at(frame->caller, frame) != (int)link->new_kind ||
		    frame->record_skip != link->frame_skip)
			return -1;
		frame->record_caller = link->outer;
		return take_new_array_mark(frame->slot + link->frame_skip, link->outer)
			       ? MEMTRAIL_KIND_NEW_ARRAY
			       : link->new_kind;
	}
	if (is_new_call_page(frame->caller))
		return -1;
	frame->record_caller = frame->caller;
	return kind;
}

/* malloc's return site saw the call come back to `*caller`, its return address at `*slot`: if
 * that is an operator new userspace proved, whose code runs there byte for byte, the block is
 * the operator's, and the operator's caller the allocation's (operator new[] marked the call
 * when it jumped to it); frame->record_new_kind says which operator, and `*outer_plain` whether
 * no return probe had replaced the operator's return address. False when the code or the stack
 * could not be read. */
static __always_inline bool from_operator_new(__u64 *caller, __u64 *slot, __u32 *kind,
					      struct site_frame *frame, bool *outer_plain)
{
	int new_kind = operator_new_at(*caller, frame);
	__u64 outer_slot, outer = 0, returns_to;

	if (new_kind <= 0)
		return new_kind == 0;
	outer_slot = *slot + frame->record_skip;
	if (bpf_probe_read_user(&outer, sizeof(outer), (const void *)outer_slot))
		return false;
	returns_to = return_address(outer_slot, outer);
	*outer_plain = returns_to == outer;
	frame->record_new_kind = new_kind;
	*kind = take_new_array_mark(outer_slot, returns_to) ? MEMTRAIL_KIND_NEW_ARRAY : new_kind;
	*caller = returns_to;
	*slot = outer_slot;
	return true;
}

/* Whether x86 condition `code` (as in jcc 0x70 + code) holds in `flags`: what the kernel's
 * emulation of the jump at the site will decide. */
static __always_inline bool condition_holds(__u64 code, __u64 flags)
{
	bool cf = flags & 0x1, pf = flags & 0x4, zf = flags & 0x40, sf = flags & 0x80,
	     of = flags & 0x800, holds;

	switch ((code >> 1) & 7) {
	case 0:
		holds = of;
		break;
	case 1:
		holds = cf;
		break;
	case 2:
		holds = zf;
		break;
	case 3:
		holds = cf || zf;
		break;
	case 4:
		holds = sf;
		break;
	case 5:
		holds = pf;
		break;
	case 6:
		holds = sf != of;
		break;
	default:
		holds = zf || sf != of;
		break;
	}
	return holds != (code & 1);
}

/* The site's cookie says where the pointer, the size, the return address and the caller's rbp
 * are (userspace proved it over every path through the function). */
static __always_inline int record_at_site(struct pt_regs *ctx, enum site_size_source source)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 address, size = 0, sp, frame, caller = 0, caller_bp, weight, slot, returns_to;
	struct stack_memo_bytes *scratch;
	struct site_frame *site;
	struct inflight_call *call;
	struct site_memo *link;
	__u32 kind, zero = 0, link_slot;
	__s32 site_id;
	int hit_kind;
	bool plain;

	if (probe_floor || tracing_stopped || !probe_applies())
		return 0;
	/* A site on one edge of its jump: the other edge leads where the block is not returned
	 * (jemalloc's empty cache bin, its slow path recording the call itself). */
	if ((cookie & MEMTRAIL_SITE_CONDITIONAL) &&
	    !condition_holds(cookie >> MEMTRAIL_SITE_CONDITION_SHIFT, ctx->flags))
		return 0;
	address = register_value(ctx, cookie >> MEMTRAIL_SITE_POINTER_SHIFT);
	if (!address)
		return 0; /* failed: counted by site_failed_call on the NULL path */
	/* Inside a traced call (memalign, realloc(NULL, n), operator new: their entry probes ran),
	 * the outer call records the block at its return. No thread in one: no lookup. */
	call = NULL;
	if (sample_rate) { /* known when the programs load: one of the two ways is checked */
		call = current_task_storage(&inflight, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (call && in_allocator_call(call))
			return 0;
	} else if (in_traced_call()) {
		return 0;
	}
	/* The process is looked up on the loss paths only: record_alloc_from looks it up too, and
	 * a helper call costs. */
	sp = PT_REGS_SP(ctx);
	frame = (cookie >> MEMTRAIL_SITE_FRAME_SHIFT) & 0xffff;
	caller_bp = PT_REGS_FP(ctx);
	if (source != SITE_SIZE_IN_REGISTER) {
		if (!site_size(address, sp + frame, source == SITE_SIZE_TAKEN, &size)) {
			count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, current_tgid());
			return 0;
		}
	} else {
		size = register_value(ctx, cookie >> MEMTRAIL_SITE_SIZE_SHIFT);
		/* tcmalloc: the register holds the block's size class (its index, or its size). */
		if ((cookie & MEMTRAIL_SITE_SIZE_CLASS_INDEX) &&
		    !class_size(ctx, cookie, size, &size)) {
			count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, current_tgid());
			return 0;
		}
		if (cookie & (MEMTRAIL_SITE_SIZE_USABLE | MEMTRAIL_SITE_SIZE_CLASS_INDEX))
			count(MEMTRAIL_CTR_USABLE_SIZES);
	}
	weight = size;
	if (sample_rate) {
		if (!call) {
			count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES,
				   current_tgid());
			return 0;
		}
		weight = sampled_bytes(call, size);
		if (!weight)
			return 0; /* passed over: nothing read */
	}
	slot = sp + frame;
	kind = cookie & MEMTRAIL_SITE_KIND_MASK;

	/* The same registers at this site as a call before, with the same caller's frame and
	 * stack above: its stack, in one read (see struct site_memo). A return address the
	 * memo matched is the real one (a link is made only where no return probe had replaced
	 * it: then it would have read the kernel's trampoline). */
	site = bpf_map_lookup_elem(&site_frames, &zero);
	if (!site)
		return 0; /* never: a per-CPU array, index in range */
	site->pc = PT_REGS_IP(ctx);
	site->sp = sp;
	site->slot = slot;
	/* Where the function saved rbp, the register holds its own values: not part of the key. */
	site->bp = caller_bp;
	site->bp_slot = 0;
	if (cookie & MEMTRAIL_SITE_BP_SAVED) {
		site->bp = 0;
		site->bp_slot = sp + ((cookie >> MEMTRAIL_SITE_BP_SHIFT) & 0xffff);
	}
	site->tgid = current_tgid();
	site->generation = stack_memo_generation;
	site->read = 0;
	site->record_new_kind = 0;
	link_slot = site_memo_slot(site->pc, sp, site->bp);
	link = bpf_map_lookup_elem(&site_memos, &link_slot);
	scratch = bpf_map_lookup_elem(&stack_memo_scratch, &zero);
	site_id = site_memo_hit(link, scratch, site);
	if (site_id >= 0) {
		hit_kind = site_memo_hit_kind(link, site, kind);
		if (hit_kind >= 0) {
			kind = hit_kind;
			goto record_hit;
		}
	}
	if (site->read) {
		caller = site->caller;
		caller_bp = site->caller_bp;
	} else if (!read_caller_frame(sp, cookie, &caller, &caller_bp, site->caller_words)) {
		count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, site->tgid);
		return 0;
	}
	returns_to = return_address(slot, caller);
	plain = returns_to == caller;
	caller = returns_to;
	if (is_new_call_page(caller)) {
		bool outer_plain = false;

		site->record_returns_to = caller;
		if (!from_operator_new(&caller, &slot, &kind, site, &outer_plain)) {
			count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, site->tgid);
			return 0;
		}
		/* Linked through the operator new only where neither return address was replaced;
		 * a caller on such a page that is no operator new is not linked (see the hit). */
		plain = plain && site->record_new_kind && outer_plain;
	}
	if (tracing_stopped)
		return 0;
	/* What the block's record needs after the walk waits in the per-CPU frame, not in
	 * registers the walk would have spilled to the BPF stack: the program, the walk it
	 * inlines and the calls the walk makes share 512 bytes. */
	site->record_caller = caller;
	site->record_caller_bp = caller_bp;
	site->record_address = address;
	site->record_size = size;
	site->record_weight = weight;
	site->record_kind = kind | (plain ? SITE_RECORD_PLAIN : 0);
	/* After the return: the caller's pc, its sp above the return address, its rbp (operator
	 * new leaves rbp alone: userspace proved it). */
	site_id = capture_stack(caller, slot + 8, caller_bp, site->tgid);
	goto record;
record_hit:
	site->record_address = address;
	site->record_size = size;
	site->record_weight = weight;
	site->record_kind = kind; /* a hit is linked already */
record:
	/* One record for hits and walks, its fields from the frame: inlined once. */
	kind = site->record_kind;
	record_block(site->tgid, site_id, site->record_caller, site->record_address,
		     site->record_size, kind & ~SITE_RECORD_PLAIN, site->record_weight);
	if ((kind & SITE_RECORD_PLAIN) && site_id >= 0)
		site_memo_link(link, site, site->record_caller, site->record_caller_bp);
	return 0;
}

/* A site where a register holds the size asked for. */
SEC("uprobe")
int site_size_in_register(struct pt_regs *ctx)
{
	return record_at_site(ctx, SITE_SIZE_IN_REGISTER);
}

/* A site whose size site_take_size took on every path to it (glibc's single-threaded arena). */
SEC("uprobe")
int site_size_taken(struct pt_regs *ctx)
{
	return record_at_site(ctx, SITE_SIZE_TAKEN);
}

/* A site where no register holds it: the usable size, counted as such. */
SEC("uprobe")
int site_size_in_chunk_header(struct pt_regs *ctx)
{
	return record_at_site(ctx, SITE_SIZE_IN_CHUNK_HEADER);
}

/* Before a site that sees no register holding the size: keeps it for this call. The cookie is
 * a site cookie (its size register and frame). */
SEC("uprobe")
int site_take_size(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct taken_size *taken;

	if (probe_floor || !probe_applies())
		return 0;
	taken = current_task_storage(&taken_sizes, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!taken)
		return 0; /* the site falls back to the usable size, counted */
	taken->frame = PT_REGS_SP(ctx) + ((cookie >> MEMTRAIL_SITE_FRAME_SHIFT) & 0xffff);
	taken->size = register_value(ctx, (cookie >> MEMTRAIL_SITE_SIZE_SHIFT) & 0xf);
	return 0;
}

/* At a jump from malloc or calloc to its slow path, with the stack as at the entry (userspace
 * proved it): the entry probe of that path alone. pointer_exit, attached at the same place,
 * records what the call returns (the kernel hijacks the return address at %rsp, the caller's). */
SEC("uprobe")
int handoff_enter(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 size = register_value(ctx, (cookie >> MEMTRAIL_SITE_SIZE_SHIFT) & 0xf);
	__u64 sp = PT_REGS_SP(ctx);
	__u32 kind = cookie & MEMTRAIL_SITE_KIND_MASK;
	struct taken_size *taken;

	if (probe_floor)
		return 0; /* the trap alone, as call_enter would: before the class size's read */
	if (cookie & MEMTRAIL_HANDOFF_SIZE_PRODUCT)
		size = PT_REGS_PARM1(ctx) * PT_REGS_PARM2(ctx);
	/* tcmalloc: the block's size class, whose size the return counts as usable. A table that
	 * cannot be read: no entry, and pointer_exit counts the missed entry. */
	if ((cookie & MEMTRAIL_SITE_SIZE_CLASS_INDEX) && !class_size(ctx, cookie, size, &size))
		return 0;
	if (cookie & (MEMTRAIL_SITE_SIZE_USABLE | MEMTRAIL_SITE_SIZE_CLASS_INDEX))
		kind |= MEMTRAIL_CALL_USABLE_SIZE;
	if (cookie & MEMTRAIL_HANDOFF_SIZE_TAKEN) {
		taken = current_task_storage(&taken_sizes, 0);
		/* None taken for this call: no entry, and pointer_exit counts the missed entry. */
		if (!taken || taken->frame != sp)
			return 0;
		taken->frame = 0;
		size = taken->size;
	}
	/* call_enter reads the context afresh: not through the pointer offset above. */
	barrier_var(ctx);
	call_enter(ctx, kind, size, 0);
	return 0;
}

/* On a path only failing calls take (userspace proved which): malloc or calloc returns NULL. */
SEC("uprobe")
int site_failed_call(struct pt_regs *ctx)
{
	struct inflight_call *call;

	if (probe_floor || !probe_applies())
		return 0;
	/* Inside a traced call (memalign -> malloc): its return probe counts the failure. */
	call = threads_holding[THREADS_IN_CALLS] ? current_task_storage(&inflight, 0) : NULL;
	if (call && in_allocator_call(call))
		return 0;
	count(MEMTRAIL_CTR_FAILED_CALLS);
	return 0;
}

/* free: may be attached past a leading NULL check (see userspace probe placement), so it never
 * sees free(NULL). The check here keeps it correct when attached at the entry. */
SEC("uprobe")
int BPF_KPROBE(free_enter, __u64 address)
{
	if (!address || probe_floor || !probe_applies())
		return 0;
	/* libstdc++'s operator delete ends in free(): the delete probe already released the
	 * block. No delete awaiting its free() on any thread: no lookup. */
	if (threads_holding[THREADS_AWAITING_FREE]) {
		struct inflight_call *call = current_task_storage(&inflight, 0);

		if (call && call->pending_free == address) {
			count_thread_state(&threads_holding[THREADS_AWAITING_FREE], true, false);
			call->pending_free = 0;
			return 0;
		}
	}
	release(address, RELEASE_FREE, 0);
	return 0;
}

/* operator delete and delete[] (all variants: sized, aligned; the first argument is the
 * pointer). The attach cookie says which. One delete may call another (delete[] -> delete,
 * sized -> unsized) before the final free(): the outermost one releases the block. */
SEC("uprobe")
int BPF_KPROBE(delete_enter, __u64 address)
{
	struct inflight_call *call;

	if (!address || probe_floor || !probe_applies())
		return 0;
	call = current_task_storage(&inflight, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES,
			   current_tgid());
		return 0;
	}
	if (call->pending_free == address)
		return 0; /* nested in a delete of the same block */
	count_thread_state(&threads_holding[THREADS_AWAITING_FREE], call->pending_free, true);
	call->pending_free = address;
	release(address,
		bpf_get_attach_cookie(ctx) == MEMTRAIL_DELETE_ARRAY ? RELEASE_DELETE_ARRAY
								    : RELEASE_DELETE,
		0);
	return 0;
}

/* operator new[] that jumps to an operator new in new_calls (userspace proved both): marks the
 * call, so that malloc's return site inside records the block as new[]. The return address
 * tells this call from one whose mark is stale (a new[] that threw). */
SEC("uprobe")
int new_array_enter(struct pt_regs *ctx)
{
	__u64 slot = PT_REGS_SP(ctx), returns_to = 0;
	struct inflight_call *call;

	if (probe_floor || !probe_applies())
		return 0;
	call = current_task_storage(&inflight, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call || bpf_probe_read_user(&returns_to, sizeof(returns_to), (const void *)slot)) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES,
			   current_tgid());
		return 0;
	}
	/* Inside a traced call (nothrow new[] -> new[]): the outer call records the block. */
	if (in_allocator_call(call))
		return 0;
	count_thread_state(&threads_holding[THREADS_MARKING_NEW_ARRAY], call->array_new_slot, true);
	call->array_new_slot = slot;
	call->array_new_return = returns_to;
	return 0;
}

/* ---- Python objects by type (alloc/python_types.bpf.h) ---- */

/* Entry of CPython's object allocators (the attach cookie says which): counted at entry, so
 * one trap an object; an allocation that fails (out of memory) is counted all the same. */
SEC("uprobe")
int BPF_KPROBE(python_object_new, __u64 type, __u64 nitems)
{
	struct memtrail_python_type_key key = {};
	struct memtrail_python_type_counts *counts, zero = {};
	__u64 call = bpf_get_attach_cookie(ctx);

	if (probe_floor || !probe_applies() || !type)
		return 0;
	if (call == MEMTRAIL_PYTHON_GC_NEW)
		nitems = 0;
	/* tp_alloc of non-GC types too; their objects are freed elsewhere: left out. */
	if (call == MEMTRAIL_PYTHON_GENERIC_ALLOC &&
	    !(read_user_u64(type + python_type_layout.type_flags) & python_type_layout.have_gc))
		return 0;
	key.tgid = current_tgid();
	key.type = type;
	counts = map_lookup_or_insert(&python_types, &key, &zero);
	if (!counts) {
		count(MEMTRAIL_CTR_PYTHON_TYPES_LOST);
		return 0;
	}
	__sync_fetch_and_add(&counts->made, 1);
	if (nitems)
		__sync_fetch_and_add(&counts->items_made, nitems);
	return 0;
}

/* PyObject_GC_Del(op): the type is still in the object (ob_type), and so is ob_size. */
SEC("uprobe")
int BPF_KPROBE(python_object_free, __u64 object)
{
	struct memtrail_python_type_key key = {};
	struct memtrail_python_type_counts *counts;
	__u64 header[3]; /* ob_refcnt, ob_type, ob_size */

	if (probe_floor || !probe_applies() || !object)
		return 0;
	if (bpf_probe_read_user(header, sizeof(header), (const void *)object))
		return 0;
	key.tgid = current_tgid();
	key.type = header[1];
	counts = bpf_map_lookup_elem(&python_types, &key);
	if (!counts)
		return 0; /* a type never seen made since attach */
	__sync_fetch_and_add(&counts->freed, 1);
	__sync_fetch_and_add(&counts->items_freed, header[2]);
	return 0;
}

/* ---- Python objects at their creation (see alloc_events.h) ---- */

/* The registers read at constant offsets first: a switch over them compiles to one read of the
 * context at a variable offset, which the verifier refuses. */
static __always_inline __u64 object_register(struct pt_regs *regs, __u64 which)
{
	__u64 values[16] = {
		[MEMTRAIL_PYREG_RAX] = regs->ax,  [MEMTRAIL_PYREG_RBX] = regs->bx,
		[MEMTRAIL_PYREG_RCX] = regs->cx,  [MEMTRAIL_PYREG_RDX] = regs->dx,
		[MEMTRAIL_PYREG_RSI] = regs->si,  [MEMTRAIL_PYREG_RDI] = regs->di,
		[MEMTRAIL_PYREG_RBP] = regs->bp,  [MEMTRAIL_PYREG_R8] = regs->r8,
		[MEMTRAIL_PYREG_R9] = regs->r9,	  [MEMTRAIL_PYREG_R10] = regs->r10,
		[MEMTRAIL_PYREG_R11] = regs->r11, [MEMTRAIL_PYREG_R12] = regs->r12,
		[MEMTRAIL_PYREG_R13] = regs->r13, [MEMTRAIL_PYREG_R14] = regs->r14,
		[MEMTRAIL_PYREG_R15] = regs->r15,
	};

	return values[which & 15];
}

/* Does a block the malloc family served, and that is recorded as such, hold the object? An object
 * pymalloc does not serve (over 512 bytes) is malloc'd: it starts its block, or follows the
 * block's GC header (16 bytes), or that and a managed dict's two pointers (16 more). Such an
 * object is counted once, as that block (its site names the same stack): recorded as an object
 * too, it would overwrite the block's record (same address) or be counted twice. A pymalloc
 * object cannot lie in a malloc'd block: pymalloc serves its own arenas. */
static __always_inline bool in_recorded_block(__u32 tgid, __u64 object)
{
	struct slot_ref found;

	for (__u64 header = 0; header <= 32; header += 16) {
		if (find_slot(tgid, object - header, &found) &&
		    READ_ONCE_U64(found.bucket->info[found.slot & 7].size_kind) >>
				    MEMTRAIL_SIZE_BITS !=
			    MEMTRAIL_KIND_PYTHON_OBJECT)
			return true;
	}
	return false;
}

/* The objects recorded since userspace last read (see struct memtrail_python_logged). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* userspace reads it in place */
	__uint(max_entries, MEMTRAIL_PYTHON_LOG_ENTRIES);
	__type(key, __u32);
	__type(value, struct memtrail_python_logged);
} python_new_objects SEC(".maps");

/* Objects logged since attach: the next index into python_new_objects (masked). */
volatile __u64 python_objects_logged = 0;
/* Set by userspace while a window of the object probes closes, from its last reading until the
 * probes are out (--python-objects on): the window has ended, and nothing is recorded, but a
 * creation still proves the object recorded at its address dead, as after the stop. */
volatile __u32 python_objects_closing = 0;
/* Set by userspace with python_new_objects' size, a power of two: its entries less one. */
const volatile __u32 python_log_mask = MEMTRAIL_PYTHON_LOG_ENTRIES - 1;

static __always_inline void log_new_object(__u32 tgid, __u64 object)
{
	__u64 number = __sync_fetch_and_add(&python_objects_logged, 1);
	__u32 index = number & python_log_mask;
	struct memtrail_python_logged *entry = bpf_map_lookup_elem(&python_new_objects, &index);

	if (!entry)
		return;
	entry->address = object;
	entry->tgid = tgid;
	compiler_barrier(); /* userspace may be reading: the entry is whole once this is stored */
	entry->written = (__u32)number + 1;
}

/* On the branch after _Py_NewReference's flag check; the attach cookie names the register that
 * holds the new object. Its type is set by then (_PyObject_Init sets ob_type first); its size
 * may not be (a str's length comes later): userspace reads it. */
SEC("uprobe")
int python_object_created(struct pt_regs *ctx)
{
	__u64 object = object_register(ctx, bpf_get_attach_cookie(ctx)), type;
	__u64 pc = PT_REGS_IP(ctx);
	__u32 tgid;
	__s32 site_id;

	if (probe_floor || !probe_applies() || !object)
		return 0;
	tgid = current_tgid();
	/* After the stop, or as a window closes, what a creation still tells: the object recorded
	 * at this address is dead (see table_forget_python_object). */
	if (tracing_stopped || python_objects_closing) {
		table_forget_python_object(tgid, object);
		return 0;
	}
	if (in_recorded_block(tgid, object))
		return 0; /* counted on the malloc path */
	type = read_user_u64(object + MEMTRAIL_PYTHON_OB_TYPE);
	if (!type || type > MEMTRAIL_SIZE_MASK) {
		count(MEMTRAIL_CTR_PYTHON_OBJECTS_UNTYPED);
		return 0;
	}
	site_id = capture_stack_here(pc, PT_REGS_SP(ctx), PT_REGS_FP(ctx), tgid);
	/* Bytes are added by userspace, which reads sizes; here, the creation is counted. */
	add_to_site(tgid, site_id, pc, 0, 1);
	if (table_insert_block(tgid, object,
			       type | ((__u64)MEMTRAIL_KIND_PYTHON_OBJECT << MEMTRAIL_SIZE_BITS),
			       site_id, bpf_ktime_get_ns())) {
		count(MEMTRAIL_CTR_PYTHON_OBJECTS);
		log_new_object(tgid, object);
	} else
		count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, tgid); /* both buckets full */
	return 0;
}

/* SIGSTOP as the kernel numbers it on x86-64 (vmlinux.h carries no macros). */
#define MEMTRAIL_SIGSTOP 19

/* Every hold not answered yet: (process, when) -> the process's start time (the leader's
 * start_boottime, as /proc/PID/stat's starttime counts it). Written before the stop signal,
 * in the same run of the program, and removed by userspace only after its SIGCONT: once no
 * program runs any more, each process stopped by a hold and not continued has its entry.
 * memtrail's guardian process (userspace/tracer/hold_guardian.cpp) holds this map alone and
 * continues those still here when memtrail ends without doing so (SIGKILL, a crash), after
 * checking by the start time that the PID still names the process held. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); /* set by userspace when it holds execs */
	__type(key, struct memtrail_held_key);
	__type(value, __u64);
} held_processes SEC(".maps");

/* Stops the calling process (the signal is acted on when the task returns to user mode):
 * the flag of its event that says whether it is held. Not held when the hold cannot be
 * recorded (the map is full): nobody could continue it if memtrail died. */
static __always_inline __u8 hold_current_process(__u32 tgid, __u64 now)
{
	struct memtrail_held_key key = { .tgid = tgid, .held_at_ns = now };
	__u64 started = bpf_get_current_task_btf()->group_leader->start_boottime;

	if (bpf_map_update_elem(&held_processes, &key, &started, BPF_NOEXIST) != 0)
		return MEMTRAIL_REGION_HOLD_FAILED;
	if (bpf_send_signal(MEMTRAIL_SIGSTOP) == 0)
		return MEMTRAIL_REGION_HELD;
	bpf_map_delete_elem(&held_processes, &key);
	return MEMTRAIL_REGION_HOLD_FAILED;
}

/* An event about the calling thread's process at `now`, `flags` saying whether it is held. */
static __always_inline void fill_thread_event(struct memtrail_region_event *event, __u32 tgid,
					      __u64 now, __u8 type, __u8 flags)
{
	__builtin_memset(event, 0, sizeof(*event));
	event->timestamp_ns = now;
	event->tgid = tgid;
	event->tid = (__u32)bpf_get_current_pid_tgid();
	event->type = type;
	event->flags = flags;
}

/* Sends an event of `type` (with `address`) about the calling thread's process and stops the
 * process until userspace continues it. Neither when the ring buffer is full (counted): nobody
 * would hear of it to continue it. */
static __always_inline void send_hold_event(__u32 tgid, __u8 type, __u64 address)
{
	struct memtrail_region_event *event;
	__u64 now;

	event = bpf_ringbuf_reserve(&region_events, sizeof(*event), 0);
	if (!event) {
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS, tgid);
		return;
	}
	now = bpf_ktime_get_ns();
	fill_thread_event(event, tgid, now, type, hold_current_process(tgid, now));
	event->address = address;
	bpf_ringbuf_submit(event, 0); /* wakes userspace: the process waits for it */
}

/* At Py_FinalizeEx's entry, attached for each process whose objects are traced: the program is
 * ending, and the interpreter is about to free what its modules keep. Also at libc's _exit,
 * which a program ending without finalizing reaches (os._exit; the cookie says which). No probe sees an object
 * die (userspace reads which are alive), and once the process is gone nothing can be read:
 * the process is stopped here (the signal is acted on when the trap returns to user mode) so
 * that userspace reads its objects while they are what the program kept, then continues it.
 * The event is sent after the signal: the SIGCONT that answers it always finds the stop
 * generated. Not once the run ends (holds_released): nobody would continue it. Only a launched
 * command and what it forks (held at their execs too): an interactive shell waiting for a
 * process traced by -p would see it stop (waitpid WUNTRACED) and take the terminal back. */
SEC("uprobe")
int python_finalizing(struct pt_regs *ctx)
{
	__u32 tgid = current_tgid(), *bits = bpf_map_lookup_elem(&traced_processes, &tgid);

	if (tracing_stopped || holds_released || !bits || !(*bits & MEMTRAIL_PROCESS_HOLD_EXEC))
		return 0;
	/* Its report describes this moment: what finalization frees from here (its modules' dicts,
	 * their malloc'd tables) or allocates is not recorded (probe_applies), even if the event
	 * is lost. */
	__sync_fetch_and_or(bits, MEMTRAIL_PROCESS_ENDED);
	processes_ended = 1;
	/* address: MEMTRAIL_PYTHON_END_* */
	send_hold_event(tgid, MEMTRAIL_REGION_PYTHON_FINALIZING, bpf_get_attach_cookie(ctx));
	return 0;
}

/* At the entry point of a launched program's executable (_start), for a Python program whose
 * interpreter is a shared library (libpython3.11.so: pyenv's, asdf's python3): held at its
 * first instruction (the exec), the process had not mapped that library yet; here the dynamic
 * linker has mapped and relocated it and the program's own code has not run. The process is
 * stopped so that userspace finds the interpreter, points the frame walker at it and places
 * its object probes before its first Python line. Attached per process, closed once hit. */
SEC("uprobe")
int program_entry(struct pt_regs *ctx)
{
	__u32 tgid = current_tgid(), *bits = bpf_map_lookup_elem(&traced_processes, &tgid);

	if (tracing_stopped || holds_released || !bits || !(*bits & MEMTRAIL_PROCESS_HOLD_EXEC))
		return 0;
	send_hold_event(tgid, MEMTRAIL_REGION_PROGRAM_ENTRY, 0);
	return 0;
}

/* ---- memory mapped by system calls (alloc/regions.bpf.h) ---- */

SEC("tracepoint/syscalls/sys_enter_mmap")
int region_mmap_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 length = ctx->args[1], protection = ctx->args[2], flags = ctx->args[3];
	__u32 tgid = current_tgid();
	struct inflight_call *call = syscall_call(tgid, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!call)
		return 0;
	call->syscall_length = length;
	call->syscall_state = SYSCALL_NONE;
	/* PROT_NONE reserves address space, which holds no memory. */
	if ((flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
	    protection != PROT_NONE && !in_allocator_call(call))
		call->syscall_state = SYSCALL_MMAP_RECORD;
	else if (flags & MAP_FIXED)
		call->syscall_state = SYSCALL_MMAP_REPLACE;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_mmap")
int region_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tgid = current_tgid(), state = SYSCALL_NONE;
	struct inflight_call *call = finish_syscall(tgid, &state);
	__u64 address = ctx->ret, length;

	if (!call || (ctx->ret < 0 && ctx->ret >= -MAX_ERRNO))
		return 0; /* failed: nothing mapped, nothing replaced */
	length = call->syscall_length;
	if (state == SYSCALL_MMAP_REPLACE)
		emit_region(tgid, MEMTRAIL_REGION_UNMAP, address, length, 0, 0);
	else if (state == SYSCALL_MMAP_RECORD)
		record_region(tgid, MEMTRAIL_REGION_MAP, address, length, length);
	return 0;
}

/* At entry, not exit: once the range is unmapped another thread may map it again, and that
 * mapping's event must come after this one. */
SEC("tracepoint/syscalls/sys_enter_munmap")
int region_munmap_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = current_tgid();

	if (probe_floor || !process_recorded(tgid))
		return 0;
	emit_region(tgid, MEMTRAIL_REGION_UNMAP, ctx->args[0], ctx->args[1], 0, 0);
	return 0;
}

/* mremap: the old range leaves at entry (the same ordering argument as munmap), and the exit
 * says where it went, or that it stayed. */
SEC("tracepoint/syscalls/sys_enter_mremap")
int region_mremap_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = current_tgid();
	struct inflight_call *call = syscall_call(tgid, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!call)
		return 0;
	call->syscall_state = SYSCALL_NONE;
	if (in_allocator_call(call))
		return 0; /* realloc moving a block it mapped */
	call->syscall_state = SYSCALL_MREMAP;
	call->syscall_length = ctx->args[2];
	call->syscall_flags = ctx->args[3];
	emit_region(tgid, MEMTRAIL_REGION_REMAP_BEGIN, ctx->args[0], ctx->args[1], 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_mremap")
int region_mremap_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tgid = current_tgid(), state = SYSCALL_NONE;
	struct inflight_call *call = finish_syscall(tgid, &state);
	__u64 address = ctx->ret;

	if (!call || state != SYSCALL_MREMAP)
		return 0;
	if (ctx->ret < 0 && ctx->ret >= -MAX_ERRNO)
		address = 0;
	emit_region(tgid, MEMTRAIL_REGION_REMAP_END, address, call->syscall_length, 0,
		    (call->syscall_flags & MREMAP_DONTUNMAP) ? MEMTRAIL_REGION_KEEP_OLD : 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_brk")
int region_brk_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = current_tgid();
	struct inflight_call *call = syscall_call(tgid, BPF_LOCAL_STORAGE_GET_F_CREATE);
	struct task_struct *task = bpf_get_current_task_btf();

	if (!call)
		return 0;
	call->syscall_state = SYSCALL_BRK;
	call->old_break = BPF_CORE_READ(task, mm, brk);
	return 0;
}

/* brk returns the new break, or the old one when it failed or was only asked for. */
SEC("tracepoint/syscalls/sys_exit_brk")
int region_brk_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tgid = current_tgid(), state = SYSCALL_NONE;
	struct inflight_call *call = finish_syscall(tgid, &state);
	__u64 new_break = ctx->ret, old_break;

	if (!call || state != SYSCALL_BRK)
		return 0;
	old_break = call->old_break;
	if (new_break == old_break || old_break == 0)
		return 0;
	if (in_allocator_call(call)) {
		emit_region(tgid, MEMTRAIL_REGION_BRK, old_break, new_break, 0,
			    MEMTRAIL_REGION_IN_ALLOCATOR);
		return 0;
	}
	if (new_break > old_break)
		record_region(tgid, MEMTRAIL_REGION_BRK, old_break, new_break,
			      new_break - old_break);
	else
		emit_region(tgid, MEMTRAIL_REGION_BRK, old_break, new_break, 0, 0);
	return 0;
}

/* Set by userspace: a traced process's children are traced too (userspace attaches their
 * probes when it reads the fork event; their mmap calls are followed from the start). */
const volatile bool follow_forks = false;

SEC("tp_btf/sched_process_fork")
int BPF_PROG(region_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = parent->tgid, child_tgid = child->tgid, followed;
	struct memtrail_region_event *event;
	__u32 *parent_bits;

	/* A new thread of the same process is not a new process. */
	if (probe_floor || !follow_forks || child_tgid == parent_tgid || child->pid != child_tgid)
		return 0;
	parent_bits = bpf_map_lookup_elem(&traced_processes, &parent_tgid);
	if (!parent_bits)
		return 0;
	/* The child of a launched command is held at its execs as its parent is; a parent whose
	 * program ended forks a child whose own program has not. */
	followed = *parent_bits & ~MEMTRAIL_PROCESS_ENDED;
	bpf_map_update_elem(&traced_processes, &child_tgid, &followed, BPF_ANY);
	event = bpf_ringbuf_reserve(&region_events, sizeof(*event), 0);
	if (!event) {
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS,
			   parent_tgid);
		return 0;
	}
	__builtin_memset(event, 0, sizeof(*event));
	event->timestamp_ns = bpf_ktime_get_ns();
	event->address = child_tgid;
	event->tgid = parent_tgid;
	event->type = MEMTRAIL_REGION_FORK;
	/* Woken at once: the child runs untraced until userspace attaches its probes. */
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/* The old image's regions died with it. In host-wide mode every exec is reported: the new
 * program may be one to trace (--comm), and userspace decides. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(region_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *binprm)
{
	__u32 tgid = task->tgid, *bits = bpf_map_lookup_elem(&traced_processes, &tgid);
	struct memtrail_region_event *event;
	__u64 now = bpf_ktime_get_ns();
	__u8 flags = 0;

	if (probe_floor || (!filter_processes && !bits))
		return 0;
	/* A new program: its own end is yet to come. */
	if (bits && (*bits & MEMTRAIL_PROCESS_ENDED))
		__sync_fetch_and_and(bits, ~MEMTRAIL_PROCESS_ENDED);
	event = bpf_ringbuf_reserve(&region_events, sizeof(*event), 0);
	if (!event) {
		/* Not held: nobody would hear of it to continue it. */
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS, tgid);
		return 0;
	}
	/* A launched command's new program: stopped before its first instruction (the signal is
	 * sent now and acted on when the task returns to user mode), so that userspace places its
	 * allocator probes and reads its code before it allocates. The event is sent after the
	 * signal: the SIGCONT that answers it always finds the stop generated. */
	if (bits && (*bits & MEMTRAIL_PROCESS_HOLD_EXEC) && !holds_released)
		flags = hold_current_process(tgid, now);
	fill_thread_event(event, tgid, now, MEMTRAIL_REGION_EXEC, flags);
	/* Host-wide, a program just started runs untraced until userspace has looked at it; a
	 * held one waits for it. */
	bpf_ringbuf_submit(event, filter_processes || flags ? 0 : BPF_RB_NO_WAKEUP);
	return 0;
}
