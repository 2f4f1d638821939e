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

/* Bumped by userspace after it changes what a walk reads besides the stack (unwind_processes)
 * or removes stacks (a process purged): a stack memo (below) made before is not used. */
volatile __u32 stack_memo_generation = 0;

/* ---- stack memos: the last walks of each CPU, reused while the stack words they read are the
 * same ----
 * A walk is a function of its starting registers, the process's unwind tables and the stack
 * words it reads: with the same registers, the same tables (unwind_generation) and the same
 * words, it gives the same frames. A memo keeps those inputs and the walk's hash; a later walk
 * from the same registers reads the words again, in one read of the span they cover, and reuses
 * the hash when every one is unchanged, without the per-frame table searches and reads. A loop
 * allocating from one place (the common case) walks its stack once. */
#define STACK_MEMO_READS 64  /* reads a memoized walk may make (power of two) */
#define STACK_MEMO_SPAN 4096 /* bytes of stack they may cover (power of two) */
#define STACK_MEMO_SLOTS 16  /* memos per CPU, by starting registers (power of two) */

struct stack_memo_read {
	__u64 address;
	__u64 words[2];
	__u64 length; /* 8 or 16 */
};

/* What a walk starts from besides the stack: its registers, process and tables. */
struct stack_memo_key {
	__u64 pc, sp, bp;
	__u32 tgid;
	__u32 generation; /* stack_memo_generation when the walk began */
	__u64 exact_pc;
};

struct stack_memo {
	struct stack_memo_key key;
	__u64 low;     /* lowest address read */
	__u32 span;    /* bytes from low to the end of the highest read */
	__u32 reads;   /* valid entries of read; 0: no memo */
	__s32 id;      /* the stack's id */
	__u32 dropped; /* the walk being noted will not be kept */
	struct stack_memo_read read[STACK_MEMO_READS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STACK_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct stack_memo);
} stack_memos SEC(".maps");

/* The slot of stack_memos that keeps the walk from these registers. */
static __always_inline __u32 stack_memo_slot(__u64 pc, __u64 sp, __u64 bp)
{
	return (((pc ^ sp ^ (bp << 7)) * 0x9E3779B97F4A7C15ULL) >> 60) & (STACK_MEMO_SLOTS - 1);
}

/* The span of stack a memo's check reads at once. */
struct stack_memo_bytes {
	__u8 bytes[STACK_MEMO_SPAN + 16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_memo_bytes);
} stack_memo_scratch SEC(".maps");

/* Frame pointers of the caller's frames lie above its stack pointer, within a thread stack.
 * Checking that first rejects the garbage a frame-pointer-less function leaves in %rbp
 * without a faulting read, which costs far more than a successful one. */
#define MAX_STACK_SPAN (64ULL << 20)

/* The registers of the frame being unwound, and the stack collected so far. Lives on the BPF
 * stack of capture_stack; unwind_step runs once per frame under bpf_loop, which the verifier
 * checks once (a plain loop of 64 frames, each with two binary searches, would be explored
 * path by path). */
/* Where the native walk of a Python stack may end: after `count` frames of the eval loop, whose
 * code is [start, end) (see struct memtrail_python_process); count 0: it walks on. Filled by
 * capture_python, in a per-CPU scratch entry. */
struct python_eval_loops {
	__u64 start;
	__u64 end;
	__u32 count;
};

/* The stack above a walk's first frame, read at once: a CPython thread's walk reads ~14 native
 * frames, 16 bytes each, up to its outermost eval loop (~3 KiB of a web server's stack), where a
 * read of user memory costs ~115 ns here (the kernel's checks around the copy). The bytes cost
 * too (a 4 KiB fill cost ~0.3 µs more than a 3 KiB one, measured): a fill reads as far as the
 * last walks on the CPU went. Filled for CPython processes only (capture_python): their walks
 * are deep and end well below the top of the thread's stack. A C process's walks are memoized
 * (struct stack_memo), and a shallow stack near the top of its mapping would make the read
 * fault, which costs far more. Reads outside the span go to the process. */
#define STACK_SPAN 4096	   /* bytes at most (power of two) */
#define STACK_SPAN_MIN 512 /* bytes at least */

struct stack_span {
	__u64 low;    /* the address of bytes[0]: the walk's first stack pointer */
	__u64 length; /* bytes held from low; 0: none */
	__u64 want;   /* bytes the next fill reads: the reach of the last walks, decaying */
	__u64 reach;  /* bytes from low the walk in progress needed so far */
	__u8 bytes[STACK_SPAN];
};

/* The mapping and CFI row found for a recent pc of a process (struct walk_scratch's rows): a
 * CPython process's walks go through the same return addresses of the eval loop and its callees
 * again and again, each a mapping search and a row search (~35 ns together a frame on a web server, measured).
 * Valid while stack_memo_generation is unchanged: userspace bumps it whenever it changes the
 * process's mappings; the rows a mapping points at are never rewritten. */
#define UNWIND_CACHE_SLOTS 256 /* a power of two */

struct unwind_cached {
	__u64 pc;	  /* the address looked up (a return address less one, or an exact pc) */
	__u64 row;	  /* the row's bits (struct memtrail_unwind_row; 0: NONE) */
	__u32 tgid;	  /* 0: an empty slot (no walk runs for pid 0) */
	__u32 generation; /* stack_memo_generation when looked up */
	__s32 mapping;	  /* index in the process's mappings, -1: in none */
	__u32 unused;
};

/* ---- eval-loop segment memos: a CPython thread's native frames below its innermost eval loop,
 * reused while the stack words they were read from are the same ----
 * A CPython walk is not memoized whole (its Python frames change from one allocation to the
 * next), but its native frames from the innermost eval-loop frame down to the outermost one
 * (the C code between nested eval loops: call plumbing, a C extension calling back into Python)
 * stay the same for as long as those calls are in progress, which is most of a request: Python
 * calls Python without a C frame (3.11). That part of the walk is, as any walk, a function of
 * its registers at the innermost eval-loop frame, the process's tables and the stack words it
 * reads, and where it ends (how many eval loops are left): a memo keeps those and the frames, and
 * a later walk reaching the same registers with the same count checks the words, already in the
 * span read at the walk's start, and takes the frames without walking them (~0.9 µs a walk on a
 * web server's requests, measured: about a third of the recording program's time). */
#define SEGMENT_MEMO_SLOTS 256 /* per CPU, by registers (power of two) */
#define SEGMENT_MEMO_FRAMES 32 /* frames a kept segment may have (power of two) */

struct segment_key {
	__u64 pc, sp, bp;
	__u64 bp_known;
	__u64 exact_pc;
	__u64 eval_loops; /* eval-loop frames left to walk through, the last one included */
	__u32 tgid;
	__u32 generation; /* stack_memo_generation */
};

struct segment_memo {
	struct segment_key key;
	__u64 frames; /* 0: an empty slot */
	__u64 flags;  /* the walk's flags at its end */
	__u64 end_sp; /* its last stack pointer (how far the span must reach) */
	__u64 reads;
	__u64 low, span; /* the stack the reads cover: [low, low + span) */
	__u64 ips[SEGMENT_MEMO_FRAMES];
	struct stack_memo_read read[STACK_MEMO_READS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SEGMENT_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct segment_memo);
} segment_memos SEC(".maps");

/* Bits: an eval-loop frame with more to come was met (the next step looks for a memo first),
 * then one of the two outcomes. Bits, so that meeting one more sets a bit without a branch:
 * each branch there would have the verifier check the rest of the frame step twice. */
enum segment_state {
	SEGMENT_NONE = 0,
	SEGMENT_MET = 1,    /* met: the next step looks for a memo, unless an outcome is set */
	SEGMENT_NOTING = 2, /* none fitted: the reads from there on are noted, kept at the end */
	SEGMENT_REUSED = 4, /* one fitted: the walk's outcome is the segment's out fields */
};

/* The walk's segment memo work, in the per-CPU scratch: what the walk was at the point (key,
 * depth, hash), and what a reuse gives (the out fields). */
struct walk_segment {
	__u64 state; /* enum segment_state */
	__u64 slot;
	__u64 start; /* the depth of the segment's first frame */
	__u64 hash;  /* the walk's hash there */
	/* The walk's outcome: as the walk ended (walked_*), as the walk gives it (out: the walked
	 * one, or the memo's when one was reused). */
	__u64 walked_depth, walked_hash, walked_flags, walked_sp;
	__u64 depth_out, hash_out, flags_out, sp_out;
	struct segment_key key;
};

/* Per-CPU state of the walk in progress, too big for the BPF stack. */
struct walk_scratch {
	struct python_eval_loops eval_loops;
	__u64 python; /* 1: a CPython process's walk (its stack is not memoized) */
	struct walk_segment segment;
	struct stack_span span;
	struct unwind_cached rows[UNWIND_CACHE_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk_scratch);
} walk_scratch SEC(".maps");

/* Reads the stack from `sp` up into `span`, as far as span->want says (rounded up), or when
 * that crosses the end of the stack's mapping (the read fails whole), the rest of sp's page
 * (mapped: it holds the frame at sp). A global function, as the two below: the verifier checks
 * each once, and their branches do not multiply the paths of the program that calls them
 * (inlined, the three made loading each record program take twice as long, measured). */
__noinline int stack_span_fill(struct stack_span *span, __u64 sp)
{
	__u64 size;

	if (!span)
		return 0;
	size = (span->want + 255) & ~255ULL;
	if (size < STACK_SPAN_MIN)
		size = STACK_SPAN_MIN;
	if (size > STACK_SPAN)
		size = STACK_SPAN;
	span->low = sp;
	span->length = 0;
	span->reach = 0;
	if (!bpf_probe_read_user(span->bytes, size, (const void *)sp)) {
		span->length = size;
		return 0;
	}
	size = ((sp | 4095) + 1) - sp;
	if (size <= STACK_SPAN && !bpf_probe_read_user(span->bytes, size, (const void *)sp))
		span->length = size;
	return 0;
}

/* Notes that the walk in progress needed the span's bytes up to `end`. */
__noinline int stack_span_reach(struct stack_span *span, __u64 end)
{
	__u64 reach;

	if (!span)
		return 0;
	reach = end - span->low;
	if (end > span->low && reach <= STACK_SPAN && reach > span->reach)
		span->reach = reach;
	return 0;
}

/* After a walk that ended at stack pointer `end` (a CPython process's; others have no span):
 * the next fill reads as far as this walk went, or as the last ones went less an eighth
 * (allocating functions differ in depth: the deepest recent one sets the size, the others are
 * served from it). */
__noinline int stack_span_learn(struct stack_span *span, __u64 end)
{
	__u64 want;

	if (!span || !span->length)
		return 0;
	stack_span_reach(span, end);
	want = span->want;
	want -= want >> 3;
	span->want = span->reach > want ? span->reach : want;
	return 0;
}

/* Two words of stack, as read by stack_read. */
struct stack_words {
	__u64 word[2];
};

/* The `length` (8 or 16) bytes of stack at `address`, into `words`: from the span of `scratch`
 * (NULL: none) when it holds them, else read from the process. 0 when read, as
 * bpf_probe_read_user. A global function: the verifier checks it once; inlined in each read of a
 * frame step, its two ways of filling the words (a load from the span, a helper's write) kept
 * the states of the step's paths from converging (3x the instructions processed to load a
 * program, measured). */
__noinline long stack_read(struct walk_scratch *scratch, struct stack_words *words, __u32 length,
			   __u64 address)
{
	struct stack_span *span;
	__u64 offset;

	if (!words)
		return -1;
	if (scratch) {
		span = &scratch->span;
		offset = address - span->low;
		if (offset <= STACK_SPAN - 16 && offset + length <= span->length) {
			/* Only what this walk's fill read: an 8-byte read takes no word after it. */
			words->word[0] = *(__u64 *)&span->bytes[offset];
			words->word[1] = length == 16 ? *(__u64 *)&span->bytes[offset + 8] : 0;
			return 0;
		}
	}
	if (length == 16)
		return bpf_probe_read_user(words->word, 16, (const void *)address);
	words->word[1] = 0;
	return bpf_probe_read_user(words->word, 8, (const void *)address);
}

struct walk {
	struct memtrail_stack *stack;
	struct stack_memo *memo;		 /* where the words read are noted (NULL: none) */
	struct memtrail_unwind_process *process; /* NULL: frame pointers everywhere */
	__u64 pc; /* a return address: the instruction before it is the call */
	__u64 sp;
	__u64 bp;
	__u64 hash;
	/* Each field below in its own 8 bytes: the verifier compares a stack slot that a narrow
	 * field shares with others byte by byte, so the states of unwind_step's iterations did not
	 * converge (4x the instructions processed to load a program, measured). */
	__u64 depth;
	__u64 mapping_hint; /* the previous frame's mapping: callers are often in the same one */
	__u64 flags;
	__u64 bp_known; /* false once a frame's CFI says rbp cannot be recovered */
	__u64 exact_pc; /* 1: pc is where a signal struck, not a return address: no - 1. Used
			 * in arithmetic, never branched on, so the verifier need not track it. */
	/* CPython: where the walk may end (struct python_eval_loops), and the stack read at once. */
	struct walk_scratch *scratch;
};

/* Whether the frame at `pc` is the last eval-loop frame the walk needed: its outermost. The
 * count lives in map memory, not in struct walk on the stack: the verifier reads it as any
 * number, so the states of unwind_step's iterations still converge; a count it tracked would
 * differ at each frame and made loading the programs several times slower (measured). */
static __always_inline bool last_eval_loop(struct walk *walk, __u64 pc)
{
	struct python_eval_loops *eval = walk->scratch ? &walk->scratch->eval_loops : NULL;

	pc -= 1 - walk->exact_pc;
	if (!eval || !eval->count || pc < eval->start || pc >= eval->end)
		return false;
	eval->count--;
	if (eval->count == 0)
		return true;
	/* An eval-loop frame with more below: the rest may be memoized (the first one met). */
	walk->scratch->segment.state |= SEGMENT_MET;
	return false;
}

/* The two binary searches are global functions: the verifier checks each once, on its own,
 * instead of once per path through the frame step that calls them (inlined, the walk's paths
 * multiplied past the verifier's budget of a million instructions). */

/* All ones when a < b, else 0, for a and b below 2^63, computed without a branch: the barriers
 * keep the compiler from turning it back into one. */
static __always_inline __u64 all_ones_if_below(__u64 a, __u64 b)
{
	__u64 difference = a - b;

	barrier_var(difference);
	difference = (__s64)difference >> 63;
	barrier_var(difference);
	return difference;
}

/* Index of the mapping of `process` that holds `address`, or -1. `hint`: the previous frame's
 * mapping, checked first (callers are often in the same module). The search does not branch on
 * what it reads: each step adds its half or not by a mask, so the verifier checks one path
 * through it. A search that branched on each comparison was checked path by path, one per
 * combination of outcomes: 17,000 of the 38,000 instructions the verifier processed to load
 * each program that walks stacks. */
__noinline int unwind_find_mapping(struct memtrail_unwind_process *process, __u64 address,
				   __u32 hint)
{
	struct memtrail_unwind_mapping *mapping;
	__u32 count, base = 0;

	if (!process)
		return -1;
	count = process->count;
	mapping = &process->mappings[hint & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
	if (hint < count && address >= mapping->start && address < mapping->end)
		return hint & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1);
	/* The last mapping that starts at or below address (mappings are sorted and disjoint;
	 * user addresses are below 2^63, so the sign of a difference tells which is lower). */
	for (__u32 step = MEMTRAIL_UNWIND_MAX_MAPPINGS / 2; step > 0; step /= 2) {
		__u32 probe = base + step;
		__u64 start = process->mappings[probe & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)].start;
		base += step & all_ones_if_below(probe, count) & ~all_ones_if_below(address, start);
	}
	mapping = &process->mappings[base & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
	if (base < count && address >= mapping->start && address < mapping->end)
		return base & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1);
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

/* The mapping of `process` holding `pc` and the CFI row for pc in it, as the row's 8 bytes with
 * its pc field (which the step does not use) replaced by the mapping's index + 1 (0: in none;
 * the row is then 0, NONE): as found before (the same pc, process and generation, in
 * scratch->rows), or searched now and kept there. `tgid_hint`: the process's id << 32 | the
 * mapping to check first. A global function: the verifier checks it once, and the step gets two
 * scalars, with no new paths. */
__noinline __u64 unwind_lookup(struct walk_scratch *scratch,
			       struct memtrail_unwind_process *process, __u64 pc, __u64 tgid_hint)
{
	__u32 tgid = tgid_hint >> 32, generation = stack_memo_generation;
	__u64 slot = ((pc ^ tgid) * 0x9E3779B97F4A7C15ULL) >> 56;
	struct memtrail_unwind_mapping *mapping;
	struct unwind_cached *entry;
	int found;

	if (!scratch)
		return 0;
	entry = &scratch->rows[slot & (UNWIND_CACHE_SLOTS - 1)];
	if (entry->pc == pc && entry->tgid == tgid && entry->generation == generation)
		return (entry->row & ~0xffffffffULL) | (__u32)(entry->mapping + 1);
	/* In the entry before the searches: fewer values live across their calls, whose frames
	 * add up with the program's under the BPF stack's 512 bytes. */
	entry->tgid = tgid;
	entry->generation = generation;
	entry->row = 0;
	found = unwind_find_mapping(process, pc, (__u32)tgid_hint);
	if (found < 0 || !process)
		found = -1;
	entry->mapping = found;
	entry->pc = pc;
	if (found >= 0 && process) {
		mapping = &process->mappings[found & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
		if (mapping->method == MEMTRAIL_UNWIND_BY_TABLE)
			entry->row = unwind_find_row(mapping, pc - mapping->bias);
	}
	return (entry->row & ~0xffffffffULL) | (__u32)(entry->mapping + 1);
}

/* Notes a stack read in `memo` (length 0: the walk is not to be kept; so is one that reads more,
 * or farther). A global function: the verifier checks it once, not on every path of the frame
 * step that calls it (inlined, it made loading the programs take seconds more). */
__noinline int stack_memo_note(struct stack_memo *memo, __u64 address, __u64 first, __u64 second,
			       __u64 length)
{
	struct stack_memo_read *read;
	__u64 low, end = address + length;
	__u32 reads;

	if (!memo || memo->dropped)
		return 0;
	reads = memo->reads;
	if (length == 0 || reads >= STACK_MEMO_READS) {
		memo->dropped = 1;
		return 0;
	}
	low = memo->low;
	if (reads == 0 || address < low) {
		if (reads && low + memo->span > end)
			end = low + memo->span;
		low = address;
	} else if (low + memo->span > end) {
		end = low + memo->span;
	}
	if (end - low > STACK_MEMO_SPAN) {
		memo->dropped = 1;
		return 0;
	}
	memo->low = low;
	memo->span = end - low;
	read = &memo->read[reads & (STACK_MEMO_READS - 1)];
	read->address = address;
	read->words[0] = first;
	read->words[1] = second;
	read->length = length;
	memo->reads = reads + 1;
	return 0;
}

static __always_inline void memo_note(struct walk *walk, __u64 address, __u64 first, __u64 second,
				      __u64 length)
{
	/* A call also for a CPython process's walk, whose memo is dropped from the start (the
	 * note returns at once): skipping it by a check of the memo here cost the verifier 7,600
	 * more instructions to load each program that walks stacks (72,000 in all, measured),
	 * for ~16 calls of a few ns a walk. */
	stack_memo_note(walk->memo, address, first, second, length);
}

struct memo_check {
	struct stack_memo *memo;
	struct stack_memo_bytes *scratch;
	__u64 base; /* the stack address of scratch's first byte */
	long same;
};

/* One noted read against the stack read now (a bpf_loop callback: checked once by the verifier,
 * where a plain loop of STACK_MEMO_READS was checked iteration by iteration). */
static long memo_check_read(__u32 index, struct memo_check *check)
{
	struct stack_memo_read *read = &check->memo->read[index & (STACK_MEMO_READS - 1)];
	__u32 offset = (read->address - check->base) & (STACK_MEMO_SPAN - 1);

	if (*(__u64 *)&check->scratch->bytes[offset] != read->words[0] ||
	    (read->length == 16 &&
	     *(__u64 *)&check->scratch->bytes[offset + 8] != read->words[1])) {
		check->same = 0;
		return 1;
	}
	return 0;
}

/* The stack id of `memo` when it was made from `key` and every stack word it noted still holds
 * what it held (read in one span into `scratch`); else -1. A global function: checked once by
 * the verifier. */
__noinline __s32 stack_memo_hit(struct stack_memo *memo, struct stack_memo_bytes *scratch,
				struct stack_memo_key *key)
{
	struct memo_check check = { .memo = memo, .scratch = scratch, .same = 1 };
	__u32 span, reads;

	if (!memo || !scratch || !key)
		return -1;
	check.base = memo->low;
	if (memo->dropped || memo->key.pc != key->pc || memo->key.sp != key->sp ||
	    memo->key.bp != key->bp || memo->key.tgid != key->tgid ||
	    memo->key.generation != key->generation || memo->key.exact_pc != key->exact_pc)
		return -1;
	span = memo->span;
	reads = memo->reads;
	if (reads == 0 || reads > STACK_MEMO_READS || span == 0 || span > STACK_MEMO_SPAN)
		return -1;
	if (bpf_probe_read_user(scratch->bytes, span, (const void *)memo->low))
		return -1;
	bpf_loop(reads, memo_check_read, &check, 0);
	return check.same ? memo->id : -1;
}

/* Starts noting a walk in `memo`. */
static __always_inline void stack_memo_begin(struct stack_memo *memo)
{
	memo->reads = 0;
	memo->dropped = 0;
	memo->key.pc = 0; /* no hit until kept */
}

/* The slot of segment_memos for a walk reaching `key`. */
static __always_inline __u32 segment_memo_slot(struct segment_key *key)
{
	return (((key->pc ^ key->sp ^ (key->bp << 7) ^ key->eval_loops) * 0x9E3779B97F4A7C15ULL) >>
		56) &
	       (SEGMENT_MEMO_SLOTS - 1);
}

static __always_inline bool segment_keys_equal(struct segment_key *a, struct segment_key *b)
{
	return a->pc == b->pc && a->sp == b->sp && a->bp == b->bp && a->bp_known == b->bp_known &&
	       a->exact_pc == b->exact_pc && a->eval_loops == b->eval_loops && a->tgid == b->tgid &&
	       a->generation == b->generation;
}

/* Whether every one of the `reads` stack words `kept` noted still holds its value in `bytes`,
 * which hold the stack from address `base` on; an offset past `limit` (16 bytes short of their
 * end) is not held. */
static __always_inline bool segment_words_unchanged(struct segment_memo *kept, __u64 reads,
						    const __u8 *bytes, __u64 base, __u64 limit)
{
	struct stack_memo_read *read;
	__u64 offset;

	for (__u32 i = 0; i < STACK_MEMO_READS; i++) {
		if (i >= reads)
			break;
		read = &kept->read[i];
		offset = read->address - base;
		if (offset > limit || *(const __u64 *)&bytes[offset] != read->words[0] ||
		    (read->length == 16 && *(const __u64 *)&bytes[offset + 8] != read->words[1]))
			return false;
	}
	return true;
}

/* At the innermost eval-loop frame of a walk with more eval loops to go (scratch->segment holds
 * the walk's key there): 1 when the memo kept for that key noted only words that the stack still
 * holds unchanged (segment_memo_append, at the walk's end, takes its frames); else 0, and `memo` notes the
 * reads from here on, for segment_memo_keep at the walk's end. A global function: the verifier
 * checks it once (and its frame is not added to the callers' on the BPF stack but beside). */
__noinline int segment_memo_find(struct walk_scratch *scratch, struct stack_memo *memo)
{
	struct stack_memo_bytes *fresh;
	struct segment_memo *kept;
	__u64 offset, reads, length;
	__u32 slot, zero = 0;

	if (!scratch || !memo)
		return 0;
	slot = segment_memo_slot(&scratch->segment.key);
	scratch->segment.slot = slot;
	scratch->segment.state = SEGMENT_MET | SEGMENT_NOTING;
	kept = bpf_map_lookup_elem(&segment_memos, &slot);
	fresh = bpf_map_lookup_elem(&stack_memo_scratch, &zero);
	if (!kept || !fresh)
		goto note;
	reads = kept->reads;
	length = kept->span;
	if (kept->frames == 0 || kept->frames > SEGMENT_MEMO_FRAMES || reads == 0 ||
	    reads > STACK_MEMO_READS || length == 0 || length > STACK_MEMO_SPAN ||
	    scratch->segment.start + kept->frames >= MEMTRAIL_MAX_STACK_DEPTH ||
	    !segment_keys_equal(&kept->key, &scratch->segment.key))
		goto note;
	/* Every word the kept walk read: from the span read at this walk's start when it holds
	 * them all, else read again at once (the span is as deep as recent walks went: one that
	 * began deeper in C code than they did may not reach the outer eval loops). */
	offset = kept->low - scratch->span.low;
	if (offset <= STACK_SPAN && offset + length <= scratch->span.length) {
		if (!segment_words_unchanged(kept, reads, scratch->span.bytes, scratch->span.low,
					     STACK_SPAN - 16))
			goto note;
	} else if (bpf_probe_read_user(fresh->bytes, length, (const void *)kept->low) ||
		   !segment_words_unchanged(kept, reads, fresh->bytes, kept->low,
					    STACK_MEMO_SPAN)) {
		goto note;
	}
	scratch->segment.state = SEGMENT_MET | SEGMENT_REUSED;
	count(MEMTRAIL_CTR_SEGMENTS_REUSED);
	return 1;
note:
	count(MEMTRAIL_CTR_SEGMENTS_WALKED);
	memo->reads = 0;
	memo->dropped = 0;
	memo->key.pc = 0;
	return 0;
}

/* When segment_memo_find found one: its frames appended to `stack` from the segment's start,
 * the hash mixed on from the segment's, and the walk's outcome in the segment's out fields. */
__noinline int segment_memo_append(struct walk_scratch *scratch, struct memtrail_stack *stack)
{
	struct segment_memo *kept;
	__u64 depth, hash, frames, ip;
	__u32 slot;

	if (!scratch || !stack)
		return 0;
	slot = scratch->segment.slot;
	kept = bpf_map_lookup_elem(&segment_memos, &slot);
	if (!kept)
		return 0;
	depth = scratch->segment.start;
	hash = scratch->segment.hash;
	frames = kept->frames;
	for (__u32 i = 0; i < SEGMENT_MEMO_FRAMES; i++) {
		if (i >= frames)
			break;
		ip = kept->ips[i];
		stack->ips[(depth + i) & (MEMTRAIL_MAX_STACK_DEPTH - 1)] = ip;
		hash = (hash ^ ip) * 0x100000001B3ULL; /* as unwind_step mixes each frame */
	}
	scratch->segment.depth_out = depth + frames;
	scratch->segment.hash_out = hash;
	scratch->segment.flags_out = kept->flags;
	scratch->segment.sp_out = kept->end_sp;
	return 0;
}

/* After a walk (its end in scratch->segment's walked fields): the walk's outcome in the out
 * fields (the memo's when segment_memo_find reused one), and a CPython walk's segment, noted
 * from its innermost eval-loop frame, kept when every read was noted and it ended at its
 * outermost eval loop within SEGMENT_MEMO_FRAMES frames. A CPython walk with nested eval loops
 * drops `memo`, the per-registers memo, either way: it is never kept whole (its Python frames are
 * not among the words noted). A global function: checked once. */
__noinline int segment_memo_keep(struct walk_scratch *scratch, struct stack_memo *memo,
				 struct memtrail_stack *stack)
{
	struct walk_segment *segment;
	struct segment_memo *kept;
	__u64 frames, reads, start;
	__u32 slot;

	if (!scratch || !memo || !stack)
		return 0;
	segment = &scratch->segment;
	if (segment->state & SEGMENT_REUSED) {
		segment_memo_append(scratch, stack);
		goto out;
	}
	segment->depth_out = segment->walked_depth;
	segment->hash_out = segment->walked_hash;
	segment->flags_out = segment->walked_flags;
	segment->sp_out = segment->walked_sp;
	if (segment->state == SEGMENT_NONE)
		return 0; /* not a CPython walk with nested eval loops: its memo stands as it is */
	start = segment->start;
	frames = segment->depth_out - start;
	reads = memo->reads;
	if (!(segment->state & SEGMENT_NOTING) || memo->dropped ||
	    !(segment->flags_out & MEMTRAIL_STACK_PYTHON_BASE) || frames == 0 ||
	    frames > SEGMENT_MEMO_FRAMES || reads == 0 || reads > STACK_MEMO_READS)
		goto out;
	slot = segment->slot;
	kept = bpf_map_lookup_elem(&segment_memos, &slot);
	if (!kept)
		goto out;
	kept->frames = 0;
	kept->key = segment->key;
	for (__u32 i = 0; i < SEGMENT_MEMO_FRAMES; i++) {
		if (i >= frames)
			break;
		kept->ips[i] = stack->ips[(start + i) & (MEMTRAIL_MAX_STACK_DEPTH - 1)];
	}
	for (__u32 i = 0; i < STACK_MEMO_READS; i++) {
		if (i >= reads)
			break;
		kept->read[i] = memo->read[i];
	}
	kept->reads = reads;
	kept->low = memo->low;
	kept->span = memo->span;
	kept->flags = segment->flags_out;
	kept->end_sp = segment->sp_out;
	kept->frames = frames;
out:
	memo->dropped = 1;
	memo->reads = 0;
	return 0;
}

/* A read of the walked stack: from the span read at once when it holds the bytes. */
static __always_inline long walk_read(struct walk *walk, struct stack_words *words, __u32 length,
				      __u64 address)
{
	return stack_read(walk->scratch, words, length, address);
}

#define WALK_CONTINUE 0
#define WALK_STOP 1

static __always_inline long walk_ends(struct walk *walk, enum memtrail_truncation reason)
{
	/* A read that failed may succeed next time: such a walk is not kept. */
	if (reason == MEMTRAIL_TRUNCATED_UNREADABLE)
		memo_note(walk, 0, 0, 0, 0);
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
	memo_note(walk, walk->sp + MEMTRAIL_SIGFRAME_RSP, sp_ip[0], sp_ip[1], 16);
	memo_note(walk, walk->sp + MEMTRAIL_SIGFRAME_RBP, bp, 0, 8);
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
				       __u64 row_bits, __u64 *return_address)
{
	union {
		__u64 bits;
		struct memtrail_unwind_row fields;
	} found;
	struct memtrail_unwind_row *row = &found.fields;
	__u64 pc = walk->pc - (1 - walk->exact_pc) - mapping->bias, cfa;
	struct stack_words saved, other;
	__u64 kind, pair, at;
	__s64 rbp_slot;

	found.bits = row_bits;
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
	/* The return address, and with it the saved rbp when that lies right below it (push %rbp
	 * right after the call: the common case), in one read; a saved rbp elsewhere in a second.
	 * Two reads in the step, not one for each case: each is a call, and each call multiplied
	 * the paths the verifier walks through the step. */
	kind = MEMTRAIL_UNWIND_RBP_KIND(row);
	rbp_slot = (__s64)row->rbp_offset * 8;
	pair = kind == MEMTRAIL_UNWIND_RBP_AT_CFA && rbp_slot == -16 ? 1 : 0;
	at = cfa - 8 - 8 * pair;
	if (walk_read(walk, &saved, 8 + 8 * pair, at))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
	memo_note(walk, at, saved.word[0], saved.word[1], 8 + 8 * pair);
	*return_address = pair ? saved.word[1] : saved.word[0];
	if (kind == MEMTRAIL_UNWIND_RBP_AT_CFA) {
		if (!pair) {
			if (walk_read(walk, &other, 8, cfa + rbp_slot))
				return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
			memo_note(walk, cfa + rbp_slot, other.word[0], 0, 8);
			saved.word[0] = other.word[0];
		}
		walk->bp = saved.word[0];
		walk->bp_known = 1;
	} else if (kind == MEMTRAIL_UNWIND_RBP_UNKNOWN) {
		walk->bp_known = 0;
	} /* else UNCHANGED: rbp is callee-saved and this frame left it alone */
	walk->sp = cfa;
	walk->exact_pc = 0;
	if (*return_address == 0)
		return walk_ends(walk, 0); /* an outermost frame without CFI saying so */
	return WALK_CONTINUE;
}

/* One frame by its frame pointer: [rbp] is the caller's rbp, [rbp + 8] the return address. */
static __always_inline long frame_pointer_step(struct walk *walk, __u64 *return_address)
{
	struct stack_words frame; /* the caller's rbp, the return address */
	__u64 fp = walk->bp;

	if (!walk->bp_known)
		return walk_ends(walk, MEMTRAIL_TRUNCATED_RBP_UNKNOWN);
	if (fp == 0) /* _start clears %rbp: this is the end of the chain */
		return walk_ends(walk, 0);
	if (fp < walk->sp || fp - walk->sp >= MAX_STACK_SPAN || (fp & 7))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER);
	if (walk_read(walk, &frame, 16, fp))
		return walk_ends(walk, MEMTRAIL_TRUNCATED_UNREADABLE);
	memo_note(walk, fp, frame.word[0], frame.word[1], 16);
	if (!frame.word[1])
		return walk_ends(walk, MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER);
	/* A caller's rbp at or below this one fails the span check of the next step: no loops. */
	walk->bp = frame.word[0];
	walk->sp = fp + 16;
	walk->exact_pc = 0;
	*return_address = frame.word[1];
	return WALK_CONTINUE;
}

static long unwind_step(__u32 index, struct walk *walk)
{
	struct memtrail_unwind_mapping *mapping = NULL;
	__u32 method = MEMTRAIL_UNWIND_BY_FRAME_POINTER;
	__u64 return_address = 0, row = 0, looked_up;
	__u32 depth;
	long outcome;

	/* The innermost eval-loop frame, met by the last step (or the first frame itself): the rest
	 * of the walk as memoized for these registers, when its words are unchanged. */
	if (walk->scratch && walk->scratch->segment.state == SEGMENT_MET) {
		struct walk_segment *segment = &walk->scratch->segment;

		segment->key.pc = walk->pc;
		segment->key.sp = walk->sp;
		segment->key.bp = walk->bp;
		segment->key.bp_known = walk->bp_known;
		segment->key.exact_pc = walk->exact_pc;
		segment->key.eval_loops = walk->scratch->eval_loops.count;
		segment->key.tgid = walk->stack->tgid;
		segment->key.generation = stack_memo_generation;
		segment->start = walk->depth;
		segment->hash = walk->hash;
		/* The walk's outcome is then the segment's (see capture_stack_from): set here, walk's
		 * fields would differ from one path to the other and multiply the verifier's work. */
		if (segment_memo_find(walk->scratch, walk->memo))
			return WALK_STOP; /* segment_memo_keep appends the memo's frames */
	}
	if (walk->process) {
		int found;

		looked_up =
			unwind_lookup(walk->scratch, walk->process, walk->pc - (1 - walk->exact_pc),
				      ((__u64)walk->stack->tgid << 32) | (__u32)walk->mapping_hint);
		found = (int)(__u32)looked_up - 1;
		row = looked_up & ~0xffffffffULL;
		if (found >= 0) {
			walk->mapping_hint = found;
			mapping = &walk->process
					   ->mappings[found & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
			method = mapping->method;
		} else {
			/* A library mapped since userspace last read the process's mappings, most
			 * likely (dlopen): the counter makes it read them again soon (<= 250 ms). */
			count(MEMTRAIL_CTR_UNKNOWN_CODE);
			memo_note(walk, 0, 0, 0,
				  0); /* counted on every walk until userspace looks */
			if (!unknown_code_by_frame_pointer)
				return walk_ends(walk, MEMTRAIL_TRUNCATED_NO_MAPPING);
		}
	}
	if (mapping && method == MEMTRAIL_UNWIND_BY_TABLE)
		outcome = table_step(walk, mapping, row, &return_address);
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
	if (last_eval_loop(walk, return_address)) {
		walk_ends(walk, 0);
		walk->flags |= MEMTRAIL_STACK_PYTHON_BASE;
		return WALK_STOP;
	}
	return WALK_CONTINUE;
}

#endif /* MEMTRAIL_ALLOC_STACK_WALK_BPF_H */
