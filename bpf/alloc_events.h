/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ABI shared by alloc.bpf.c and userspace: map keys, values and counter indices. */
#ifndef MEMTRAIL_ALLOC_EVENTS_H
#define MEMTRAIL_ALLOC_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "abi_layout.h"

/* Deepest user stack captured per allocation site. */
#define MEMTRAIL_MAX_STACK_DEPTH 64

/* A site whose stack could not be stored (stack map full) is still tracked: its id is derived
 * from the caller's address, made negative so it never collides with a real stack id, and the
 * site value keeps that address. */
#define MEMTRAIL_SITE_ID_FALLBACK_MASK 0x3fffffff

/* The allocator function that returned a block, recorded with it so that reports name it.
 * Programs shared by functions of one signature receive it as the probe's attach cookie. */
enum memtrail_alloc_kind {
	MEMTRAIL_KIND_MALLOC = 0,
	MEMTRAIL_KIND_CALLOC = 1,
	MEMTRAIL_KIND_REALLOC = 2,
	MEMTRAIL_KIND_REALLOCARRAY = 3,
	MEMTRAIL_KIND_POSIX_MEMALIGN = 4,
	MEMTRAIL_KIND_ALIGNED_ALLOC = 5,
	MEMTRAIL_KIND_MEMALIGN = 6,
	MEMTRAIL_KIND_VALLOC = 7,
	MEMTRAIL_KIND_PVALLOC = 8,
	MEMTRAIL_KIND_NEW = 9,	      /* C++ operator new (all its variants) */
	MEMTRAIL_KIND_NEW_ARRAY = 10, /* C++ operator new[] */
	/* Memory mapped by system calls outside every traced allocator call: regions, not blocks.
	 * They are tracked in userspace from region events (struct memtrail_region_event), never
	 * sampled, and a munmap may release part of one. */
	MEMTRAIL_KIND_MMAP = 11, /* anonymous private mmap, grown or moved by mremap */
	MEMTRAIL_KIND_BRK = 12,	 /* the program break moved by brk/sbrk */
	/* A CPython object, recorded where it was created (see the Python objects section below):
	 * its slot's size field holds the object's type until userspace reads its size. */
	MEMTRAIL_KIND_PYTHON_OBJECT = 13,
	MEMTRAIL_KIND_COUNT = 14,
	/* Kinds from here to 255 are named by userspace at attach time: the extension functions
	 * of jemalloc (mallocx, ...), tcmalloc, mimalloc and --allocator's custom functions. To BPF
	 * they are plain malloc-family kinds (released by free, never mismatched). */
	MEMTRAIL_KIND_DYNAMIC_FIRST = 16,
	MEMTRAIL_KIND_DYNAMIC_LAST = 255,
};

/* The attach cookie of a return-site probe (userspace/inspect/return_sites.h): an emulated
 * instruction inside malloc or calloc where a register holds the pointer the call returns. */
#define MEMTRAIL_SITE_KIND_MASK 0xffULL /* bits 0..7: the kind recorded */
#define MEMTRAIL_SITE_POINTER_SHIFT 8	/* bits 8..11: the register holding the pointer */
#define MEMTRAIL_SITE_SIZE_SHIFT 12	/* bits 12..15: the register holding the size */
#define MEMTRAIL_SITE_FRAME_SHIFT 16	/* bits 16..31: the return address is at sp + this */
#define MEMTRAIL_SITE_BP_SHIFT 32	/* bits 32..47: the caller's rbp is saved at sp + this */
#define MEMTRAIL_SITE_BP_SAVED (1ULL << 48) /* else the caller's rbp is still in rbp */
/* The attach cookie of handoff_enter (a jump to the slow path, userspace/inspect/return_sites.h):
 * the kind and size register as in a site cookie, or this flag: site_take_size took the size. */
#define MEMTRAIL_HANDOFF_SIZE_TAKEN (1ULL << 49)
/* Or this flag: the size is calloc's rdi * rsi (the jump comes before the multiplication). */
#define MEMTRAIL_HANDOFF_SIZE_PRODUCT (1ULL << 61)
/* Where no register holds the size asked for, a site's or handoff_enter's size register holds
 * the block's size class (tcmalloc, userspace/inspect/return_sites.h UsableSize): its size, the
 * allocator's usable size (MEMTRAIL_SITE_SIZE_USABLE), or its index (MEMTRAIL_SITE_SIZE_CLASS_INDEX):
 * then the size is the int32 at the probed instruction's address + class_size_tables[bits 52..55]
 * + 4 * index. Either way the block is counted in MEMTRAIL_CTR_USABLE_SIZES. */
#define MEMTRAIL_SITE_SIZE_USABLE (1ULL << 50)
#define MEMTRAIL_SITE_SIZE_CLASS_INDEX (1ULL << 51)
#define MEMTRAIL_SITE_CLASS_TABLE_SHIFT 52
#define MEMTRAIL_CLASS_TABLES 16
/* In inflight_call.kind, above the kind (bits 0..7): the size handoff_enter found is the usable
 * size; the return counts it. */
#define MEMTRAIL_CALL_USABLE_SIZE (1U << 8)
/* A site on one edge of a conditional jump (jemalloc's malloc): it records only when the x86
 * condition code in bits 56..59 (as in jcc 0x70 + code) holds in the flags at the jump. */
#define MEMTRAIL_SITE_CONDITION_SHIFT 56
#define MEMTRAIL_SITE_CONDITIONAL (1ULL << 60)

/* A C++ operator new that calls malloc and returns its result (userspace/inspect/operator_new.h):
 * malloc's return sites tell its calls by their return address, whose offset in its page is the
 * key of the new_calls map, and whose function's bytes must be `code` (masked by `mask`). The
 * block is then the operator's (`kind`), and its caller's return address is `frame_skip` bytes
 * above malloc's. */
#define MEMTRAIL_NEW_CODE_WORDS 8
struct memtrail_new_call {
	__u64 code[MEMTRAIL_NEW_CODE_WORDS]; /* the function's first bytes, from its start */
	__u64 mask[MEMTRAIL_NEW_CODE_WORDS]; /* the bytes of code that count */
	__u32 call_return;		     /* the return address, from the function's start */
	__u32 frame_skip;
	__u32 kind;   /* enum memtrail_alloc_kind */
	__u32 length; /* of code: 1 to 8 * MEMTRAIL_NEW_CODE_WORDS bytes */
};
MEMTRAIL_ABI_SIZE(memtrail_new_call, 144);
MEMTRAIL_ABI_OFFSET(memtrail_new_call, call_return, 128);

/* The attach cookie of the C++ delete probes: which operator releases the block. */
enum memtrail_delete_kind {
	MEMTRAIL_DELETE_SCALAR = 0, /* operator delete: for blocks of operator new */
	MEMTRAIL_DELETE_ARRAY = 1,  /* operator delete[]: for blocks of operator new[] */
};

/* Indices into the per-CPU `counters` array. Every event that memtrail cannot track is counted
 * here; nothing is dropped in silence. */
enum memtrail_counter {
	MEMTRAIL_CTR_ALLOCATIONS = 0, /* successful allocations recorded */
	MEMTRAIL_CTR_FREES = 1,	      /* frees of recorded blocks */
	MEMTRAIL_CTR_UNMATCHED_FREES =
		2,		/* frees of blocks not in the map (allocated before attach) */
	MEMTRAIL_CTR_DROPS = 3, /* allocations lost: both candidate buckets were full */
	MEMTRAIL_CTR_FAILED_CALLS = 4,	 /* allocator returned NULL / an error: not an allocation */
	MEMTRAIL_CTR_STACK_FAILURES = 5, /* stack map full: site keyed by caller only */
	MEMTRAIL_CTR_SITE_DROPS = 6,	 /* per-site totals lost: no room for the site */
	MEMTRAIL_CTR_STALE_REPLACED = 7, /* an address was handed out again while still recorded */
	MEMTRAIL_CTR_MISSED_ENTRIES = 8, /* return without a recorded entry (attached mid-call) */
	MEMTRAIL_CTR_UNSAMPLED = 9,	 /* allocations passed over by --sample-rate */
	MEMTRAIL_CTR_MISMATCHED = 10,	 /* blocks released by the wrong function (new/free, ...) */
	MEMTRAIL_CTR_UNKNOWN_CODE = 11,	 /* stack frames in code no known mapping holds: userspace
					   * re-reads the process's mappings when this grows */
	MEMTRAIL_CTR_REGION_EVENTS_LOST = 12, /* mmap/munmap/mremap/brk events: ring buffer full */
	MEMTRAIL_CTR_PYTHON_TYPES_LOST = 13,  /* Python objects not counted: python_types full */
	MEMTRAIL_CTR_USABLE_SIZES = 14,	  /* blocks recorded at the allocator's usable size: at a
					 * return site where no register holds the size asked */
	MEMTRAIL_CTR_PYTHON_OBJECTS = 15, /* Python objects recorded at their creation */
	MEMTRAIL_CTR_PYTHON_OBJECTS_UNTYPED = 16, /* created with no type read: not recorded */
	MEMTRAIL_CTR_SEGMENTS_WALKED = 17, /* CPython walks' native frames below their innermost
					    * eval loop, walked (no memo fitted) */
	MEMTRAIL_CTR_SEGMENTS_REUSED = 18, /* the same, taken from a segment memo */
	MEMTRAIL_CTR_COUNT = 19,
};

/* What memtrail could not track, per process (tgid), in the process_losses map: updated on the
 * failure paths only, so the common path pays nothing. Indices into memtrail_process_losses. */
enum memtrail_loss {
	MEMTRAIL_LOSS_DROPS = 0,	   /* MEMTRAIL_CTR_DROPS */
	MEMTRAIL_LOSS_STACK_FAILURES = 1,  /* MEMTRAIL_CTR_STACK_FAILURES */
	MEMTRAIL_LOSS_SITE_DROPS = 2,	   /* MEMTRAIL_CTR_SITE_DROPS */
	MEMTRAIL_LOSS_MISSED_ENTRIES = 3,  /* MEMTRAIL_CTR_MISSED_ENTRIES */
	MEMTRAIL_LOSS_UNMATCHED_FREES = 4, /* MEMTRAIL_CTR_UNMATCHED_FREES */
	MEMTRAIL_LOSS_REGION_EVENTS = 5,   /* MEMTRAIL_CTR_REGION_EVENTS_LOST */
	MEMTRAIL_LOSS_COUNT = 6,
};

struct memtrail_process_losses {
	__u64 counts[8]; /* enum memtrail_loss; a power of two for the verifier */
};
MEMTRAIL_ABI_SIZE(memtrail_process_losses, 64);
MEMTRAIL_ABI_ASSERT(MEMTRAIL_LOSS_COUNT <= 8, "counts[loss & 7] holds every enum memtrail_loss");

/* Byte sampling (--sample-rate): each byte allocated is sampled with probability 1/rate, so an
 * allocation of s bytes is recorded with probability 1 - exp(-s/rate), as in tcmalloc and
 * jemalloc. Userspace fills two tables before load (see userspace/aggregator/sampling.h):
 * quantiles of the exponential distribution, for the distance to the next sample, and
 * x / (1 - exp(-x)) at x = i / MEMTRAIL_SAMPLE_WEIGHT_STEPS, for the bytes a sample stands for.
 * Both in 16.16 fixed point. */
#define MEMTRAIL_SAMPLE_QUANTILES 1024
#define MEMTRAIL_SAMPLE_WEIGHT_STEPS 128 /* table points per `rate` bytes */
#define MEMTRAIL_SAMPLE_WEIGHTS 1025	 /* x from 0 to 8: beyond, a sample stands for itself */

/* Outstanding allocations live in a table of buckets, an array map that userspace maps into its
 * memory and reads in place. A block's (tgid, address) hashes to two candidate buckets and it
 * takes a free slot in one of them (see memtrail_bucket_of); two full candidates are counted as
 * a drop. Compared with a BPF hash map this needs no element allocation, no bucket lock and no
 * per-element header: 32 bytes a slot, two slots per allocation memtrail is sized for (64 bytes,
 * against about 130 in a BPF hash map), and two cache lines to find a block.
 *
 * Publication protocol (x86-64 stores are seen in program order):
 * - insert: claim a slot with compare-and-swap of its address from 0, write tgid, size and
 *   site, then timestamp_ns last;
 * - remove: clear timestamp_ns, then tgid, then swap the address back to 0;
 * - replace (a new record of the same pid and address, found recorded): clear timestamp_ns,
 *   write tgid, size and site, timestamp_ns, then compare-and-swap the address from 0 back to
 *   itself, for userspace may have removed the old record meanwhile;
 * - userspace removes a Python object it found dead: compare-and-swap timestamp_ns from the
 *   value it read to 0 (nothing else changed the record), then swap the address back to 0; a
 *   timestamp_ns non-zero after that is a replace that completed in between, whose address it
 *   puts back (tgid is left alone: a free slot's is never read).
 * A reader takes a slot whose address and timestamp_ns are non-zero and the same before and
 * after it read the rest; anything else is a slot in flux, left for the next read. */
#define MEMTRAIL_BUCKET_SLOTS 8

/* One outstanding allocation, beside its address in the bucket. */
struct memtrail_alloc_info {
	__u64 size_kind;    /* bytes requested (low 56 bits), enum memtrail_alloc_kind << 56 */
	__u64 timestamp_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) at return; 0: slot in flux */
	__u32 tgid;
	__s32 site_id; /* stack id >= 0, or a fallback id < 0 (see above) */
};
MEMTRAIL_ABI_SIZE(memtrail_alloc_info, 24);
MEMTRAIL_ABI_OFFSET(memtrail_alloc_info, size_kind, 0);
MEMTRAIL_ABI_OFFSET(memtrail_alloc_info, timestamp_ns, 8);
MEMTRAIL_ABI_OFFSET(memtrail_alloc_info, tgid, 16);
MEMTRAIL_ABI_OFFSET(memtrail_alloc_info, site_id, 20);
#define MEMTRAIL_SIZE_BITS 56
#define MEMTRAIL_SIZE_MASK ((1ULL << MEMTRAIL_SIZE_BITS) - 1)

struct memtrail_alloc_bucket {
	__u64 address[MEMTRAIL_BUCKET_SLOTS]; /* 0: free slot. One cache line to search. */
	struct memtrail_alloc_info info[MEMTRAIL_BUCKET_SLOTS];
};
MEMTRAIL_ABI_SIZE(memtrail_alloc_bucket, 256);
MEMTRAIL_ABI_OFFSET(memtrail_alloc_bucket, info, 64);
MEMTRAIL_ABI_ASSERT(MEMTRAIL_BUCKET_SLOTS == 8, "the BPF table code masks slots with & 7");

/* The two candidate buckets of a block: two independent hashes of its pid and address. The
 * table has twice as many slots as --max-allocations; a block goes to its first bucket while
 * that holds fewer than MEMTRAIL_FIRST_BUCKET_LIMIT blocks (so that most inserts and frees touch
 * one bucket), else to the emptier of the two ("the power of two choices"). Simulated with
 * frees and allocations in steady state at the limit, no block is dropped; at 3/4 load, with
 * deletions, two choices already drop 0.7 % and the first bucket alone 2.6 %. The first
 * bucket keeps neighbouring blocks in neighbouring buckets (64 bytes of blocks a bucket, a page
 * of them in a run of 64 buckets) for the TLB's sake; 128 bytes a bucket dropped 0.9 % of a
 * dense heap of 16-byte blocks (8 to a bucket, 6 kept), and hashing each page to its run on its
 * own made pages collide. See tests/unit/alloc_table_test.cpp. */
#define MEMTRAIL_FIRST_BUCKET_LIMIT 6

static inline __u64 memtrail_mix64(__u64 x)
{
	x ^= x >> 33; /* murmur3's 64-bit finalizer */
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static inline __u32 memtrail_bucket_of(__u32 tgid, __u64 address, int which, __u32 buckets)
{
	__u64 wide_tgid = tgid;
	__u64 key = address ^ (wide_tgid << 47) ^ wide_tgid;

	if (which)
		key ^= 0x9E3779B97F4A7C15ULL;
	if (!which && buckets >= 2048) {
		/* The first choice keeps a 4 KiB page of blocks in a run of 64 neighbouring buckets
		 * (16 KiB of table, 64 bytes of blocks a bucket), and the pages of a 1 MiB region in
		 * consecutive runs, from a place hashed from the region: blocks allocated and freed
		 * near in time mostly lie near in memory, so their buckets share the TLB's pages, and
		 * a dense heap fills its runs evenly. */
		__u64 region = (address >> 20) ^ (wide_tgid << 47) ^ wide_tgid;
		__u64 run = memtrail_mix64(region) + (address >> 12);

		return (run % (buckets / 64)) * 64 + ((address >> 6) & 63);
	}
	return memtrail_mix64(key) % buckets;
}

/* Buckets for `max_outstanding` allocations: two slots for each. */
static inline __u32 memtrail_alloc_buckets_for(__u32 max_outstanding)
{
	__u64 slots = max_outstanding * 2ULL;

	return (slots + MEMTRAIL_BUCKET_SLOTS - 1) / MEMTRAIL_BUCKET_SLOTS;
}

/* Running totals of a site (one call stack in one process), indexed by stack id in the
 * site_totals array and updated atomically in the kernel, so that userspace only reads maps once
 * per interval and never handles one event per malloc. What is still outstanding is not kept
 * here: userspace derives it from the allocations table, so free() never touches totals. */
struct memtrail_site_totals {
	__u64 total_bytes;	 /* bytes ever allocated from this site since attach */
	__u64 total_allocations; /* calls that returned memory */
	__u64 mismatched_frees;	 /* its blocks released by the wrong function (new/free, ...) */
};
MEMTRAIL_ABI_SIZE(memtrail_site_totals, 24);
MEMTRAIL_ABI_OFFSET(memtrail_site_totals, mismatched_frees, 16);

/* Sites whose stack could not be stored (fallback ids < 0) keep their totals in a hash map. */
struct memtrail_fallback_key {
	__u32 tgid;
	__s32 site_id;
};
MEMTRAIL_ABI_SIZE(memtrail_fallback_key, 8);
MEMTRAIL_ABI_OFFSET(memtrail_fallback_key, site_id, 4);

struct memtrail_fallback_totals {
	__u64 total_bytes;
	__u64 total_allocations;
	__u64 mismatched_frees;
	__u64 caller_address; /* return address in the caller: the site's only frame */
};
MEMTRAIL_ABI_SIZE(memtrail_fallback_totals, 32);
MEMTRAIL_ABI_OFFSET(memtrail_fallback_totals, caller_address, 24);

/* A distinct user call stack of one process, keyed in the stacks map by a 64-bit hash of its
 * pid and frames. The id is small and dense: it indexes site_totals. */
struct memtrail_stack {
	__u32 id;
	__u32 tgid;
	__u16 depth; /* valid entries of ips */
	__u16 flags; /* MEMTRAIL_STACK_* */
	__u32 pad;
	__u64 ips[MEMTRAIL_MAX_STACK_DEPTH];
};
MEMTRAIL_ABI_SIZE(memtrail_stack, 16 + 8 * MEMTRAIL_MAX_STACK_DEPTH);
MEMTRAIL_ABI_OFFSET(memtrail_stack, tgid, 4);
MEMTRAIL_ABI_OFFSET(memtrail_stack, depth, 8);
MEMTRAIL_ABI_OFFSET(memtrail_stack, flags, 10);
MEMTRAIL_ABI_OFFSET(memtrail_stack, ips, 16);
MEMTRAIL_ABI_ASSERT((MEMTRAIL_MAX_STACK_DEPTH & (MEMTRAIL_MAX_STACK_DEPTH - 1)) == 0,
		    "the BPF walker masks frame indices with MEMTRAIL_MAX_STACK_DEPTH - 1");

/* The walk stopped before the outermost frame (whose saved frame pointer is 0): a frame
 * without a frame pointer, an unreadable frame, or the depth limit. The frames shown are
 * right; callers further out are missing. */
#define MEMTRAIL_STACK_TRUNCATED 1
/* At least one frame was unwound with a CFI table (the rest by frame pointers). */
#define MEMTRAIL_STACK_USED_TABLES 2
/* The walk ended, complete, at the outermost eval-loop frame of a CPython thread: its Python
 * frames stand for the frames below (see struct memtrail_python_process). */
#define MEMTRAIL_STACK_PYTHON_BASE 4
/* Bits 8..11: enum memtrail_truncation (bpf/unwind_table.h) when TRUNCATED is set. */

/* ---- Python frames (--python-frames) ----
 * In a CPython process the native stack shows the interpreter's eval loop, not the Python code
 * it runs. The walker then also reads the Python frame chain of the allocating thread: the
 * thread's PyThreadState (the one holding the GIL, else found in the interpreter's thread list
 * by the thread's pthread id, its %fs base), its current _PyInterpreterFrame, and each frame's
 * code object and last instruction, following `previous`. Userspace turns code objects into
 * names, files and lines when it builds a report (userspace/python/). Struct offsets come from
 * the CPython headers memtrail was built with (userspace/python/cpython_layout.c); processes of
 * another CPython version are not walked, and the report says so. */
#define MEMTRAIL_MAX_PYTHON_DEPTH 32

/* Where each field lies, as userspace read it from the CPython headers; rodata of the program. */
struct memtrail_python_layout {
	__u32 runtime_tstate_current; /* _PyRuntimeState.gilstate.tstate_current */
	__u32 runtime_interp_main;    /* _PyRuntimeState.interpreters.main */
	__u32 interp_threads_head;    /* PyInterpreterState.threads.head */
	__u32 tstate_next;	      /* PyThreadState.next */
	__u32 tstate_thread_id;	      /* PyThreadState.thread_id: pthread_self() */
	__u32 tstate_cframe;	      /* PyThreadState.cframe */
	__u32 cframe_current_frame;   /* _PyCFrame.current_frame */
	__u32 frame_code;	      /* _PyInterpreterFrame.f_code */
	__u32 frame_previous;	      /* _PyInterpreterFrame.previous */
	__u32 frame_prev_instr;	      /* _PyInterpreterFrame.prev_instr */
	__u32 frame_is_entry; /* _PyInterpreterFrame.is_entry: first frame of an eval loop */
	__u32 frame_owner;    /* _PyInterpreterFrame.owner */
	__u32 code_adaptive;  /* PyCodeObject.co_code_adaptive: the first instruction */
	__u32 owner_cstack;   /* owner of a C-stack shim frame (none in 3.11: 255) */
	__u32 tstate_datastack_chunk; /* PyThreadState.datastack_chunk: the frames' current chunk */
	__u32 tstate_datastack_limit; /* PyThreadState.datastack_limit: that chunk's end */
	__u32 frame_globals;	      /* _PyInterpreterFrame.f_globals: the module's dict */
};
MEMTRAIL_ABI_SIZE(memtrail_python_layout, 17 * 4);
MEMTRAIL_ABI_OFFSET(memtrail_python_layout, frame_code, 7 * 4);
MEMTRAIL_ABI_OFFSET(memtrail_python_layout, owner_cstack, 13 * 4);
MEMTRAIL_ABI_OFFSET(memtrail_python_layout, frame_globals, 16 * 4);

/* Bytes read from each frame at once: every field above lies within them. */
#define MEMTRAIL_PYTHON_FRAME_READ 80
/* Bytes of a PyThreadState read at once, at most: its thread_id, cframe, datastack_chunk and
 * datastack_limit lie within them (3.11: 264 bytes from cframe on). */
#define MEMTRAIL_PYTHON_TSTATE_READ 512
/* A traced CPython process: where its runtime state lies (the _PyRuntime symbol), and where
 * its eval loop's code lies (_PyEval_EvalFrameDefault, [start, end); 0, 0 when unknown). Each
 * native frame of the eval loop runs the Python frames up to an entry frame, so a walk that
 * found as many eval-loop frames as the Python chain has entry frames has reached the outermost
 * one: the frames below it are the interpreter's start-up (Py_RunMain, main, libc's start), the
 * same for every stack, and the native walk ends there (MEMTRAIL_STACK_PYTHON_BASE). */
struct memtrail_python_process {
	__u64 runtime_address;
	__u64 eval_loop_start;
	__u64 eval_loop_end;
};
MEMTRAIL_ABI_SIZE(memtrail_python_process, 24);
MEMTRAIL_ABI_OFFSET(memtrail_python_process, eval_loop_start, 8);

/* One Python frame: the code object's address (low 48 bits), the index of its last instruction
 * in code units (15 bits, saturated) and whether the frame is the first of an eval loop call
 * (bit 63): native frames of _PyEval_EvalFrameDefault and Python frames pair up by it. */
#define MEMTRAIL_PYTHON_CODE_MASK ((1ULL << 48) - 1)
#define MEMTRAIL_PYTHON_LASTI_SHIFT 48
#define MEMTRAIL_PYTHON_LASTI_MAX 0x7fffULL
#define MEMTRAIL_PYTHON_ENTRY (1ULL << 63)

/* The Python frames of one stack, innermost first, in the python_stacks map under its id.
 * globals[i] is frames[i]'s f_globals, its module's dict: code objects die and new ones take
 * their addresses (a module's <module> code right after its import, exec'd code), so the code
 * address alone does not say which code ran; with the module's dict it does, while that module
 * lives. Userspace names each (code, globals) pair apart, and the walk's hash mixes both in. */
struct memtrail_python_stack {
	__u32 tgid;
	__u16 depth;
	__u16 flags; /* MEMTRAIL_PYTHON_* */
	__u64 frames[MEMTRAIL_MAX_PYTHON_DEPTH];
	__u64 globals[MEMTRAIL_MAX_PYTHON_DEPTH];
};
MEMTRAIL_ABI_SIZE(memtrail_python_stack, 8 + 16 * MEMTRAIL_MAX_PYTHON_DEPTH);
MEMTRAIL_ABI_OFFSET(memtrail_python_stack, depth, 4);
MEMTRAIL_ABI_OFFSET(memtrail_python_stack, flags, 6);
MEMTRAIL_ABI_OFFSET(memtrail_python_stack, frames, 8);
MEMTRAIL_ABI_OFFSET(memtrail_python_stack, globals, 8 + 8 * MEMTRAIL_MAX_PYTHON_DEPTH);
MEMTRAIL_ABI_ASSERT((MEMTRAIL_MAX_PYTHON_DEPTH & (MEMTRAIL_MAX_PYTHON_DEPTH - 1)) == 0,
		    "the BPF walker masks frame indices with MEMTRAIL_MAX_PYTHON_DEPTH - 1");
#define MEMTRAIL_PYTHON_TRUNCATED 1  /* more frames than MEMTRAIL_MAX_PYTHON_DEPTH */
#define MEMTRAIL_PYTHON_UNREADABLE 2 /* a frame could not be read: the walk stopped there */
#define MEMTRAIL_PYTHON_NO_THREAD 4  /* no thread state of this thread was found */

/* ---- Python objects by type (--python-types) ----
 * CPython creates the objects its garbage collector tracks (class instances, dicts, lists,
 * tuples, sets, ...) through a few functions that receive the type, and frees them through
 * one, which finds it in the object: per process and type, the kernel counts objects made and
 * freed, and their items (the variable part: a tuple's elements). Userspace names the types
 * and turns counts into objects, bytes and growth. Frees of types never seen made are not
 * counted (objects from before attach of a type not made since). */
enum memtrail_python_object_call {
	MEMTRAIL_PYTHON_GENERIC_ALLOC = 0, /* PyType_GenericAlloc(type, nitems): GC types only */
	MEMTRAIL_PYTHON_GC_NEW = 1,	   /* _PyObject_GC_New(type) */
	MEMTRAIL_PYTHON_GC_NEWVAR = 2,	   /* _PyObject_GC_NewVar(type, nitems) */
};

struct memtrail_python_type_key {
	__u32 tgid;
	__u32 pad;
	__u64 type; /* the PyTypeObject's address in the process */
};
MEMTRAIL_ABI_SIZE(memtrail_python_type_key, 16);
MEMTRAIL_ABI_OFFSET(memtrail_python_type_key, type, 8);

struct memtrail_python_type_counts {
	__u64 made;
	__u64 freed;
	__u64 items_made;
	__u64 items_freed; /* ob_size at the free: meaningful for types with items only */
};
MEMTRAIL_ABI_SIZE(memtrail_python_type_counts, 32);
MEMTRAIL_ABI_OFFSET(memtrail_python_type_counts, items_freed, 24);

/* Where userspace reads a type's flags from (PyTypeObject.tp_flags), and the flag of GC types. */
struct memtrail_python_type_layout {
	__u32 type_flags;
	__u32 pad;
	__u64 have_gc; /* Py_TPFLAGS_HAVE_GC */
};
MEMTRAIL_ABI_SIZE(memtrail_python_type_layout, 16);
MEMTRAIL_ABI_OFFSET(memtrail_python_type_layout, have_gc, 8);

/* ---- Python objects at their creation ----
 * Every CPython object, free-list reuse included, is created through _Py_NewReference (inlined
 * in hundreds of places): userspace finds each of its flag-check branches in the interpreter's
 * code (userspace/python/creation_sites.h) and probes it, with the register that holds the new
 * object as the attach cookie. The program records the object in the allocations table
 * (MEMTRAIL_KIND_PYTHON_OBJECT) with its type in place of its size, and its stack. No probe
 * sees objects die: userspace reads each recorded object's refcount and type every interval
 * and removes the dead (refcount 0 or a free-list link, another type, unreadable). An address
 * reused by a new object is a new creation, which replaces the old record. */
enum memtrail_python_register {
	MEMTRAIL_PYREG_RAX = 0,
	MEMTRAIL_PYREG_RBX = 1,
	MEMTRAIL_PYREG_RCX = 2,
	MEMTRAIL_PYREG_RDX = 3,
	MEMTRAIL_PYREG_RSI = 4,
	MEMTRAIL_PYREG_RDI = 5,
	MEMTRAIL_PYREG_RBP = 6,
	MEMTRAIL_PYREG_R8 = 7,
	MEMTRAIL_PYREG_R9 = 8,
	MEMTRAIL_PYREG_R10 = 9,
	MEMTRAIL_PYREG_R11 = 10,
	MEMTRAIL_PYREG_R12 = 11,
	MEMTRAIL_PYREG_R13 = 12,
	MEMTRAIL_PYREG_R14 = 13,
	MEMTRAIL_PYREG_R15 = 14,
};
/* PyObject.ob_type: the same offset in every CPython version. */
#define MEMTRAIL_PYTHON_OB_TYPE 8

/* The objects recorded since userspace last looked, in the python_new_objects ring (an array
 * map userspace reads in place): the program takes the next number from a counter in .bss,
 * python_objects_logged, and writes the object at that number masked. With --python-objects
 * on, userspace reads it at each window's close, while the probes are still in (a creation at
 * a dead object's address is seen then), so programs may be writing entries as it reads: an
 * entry is whole once its `written` is its number plus one (low 32 bits), stored last. The
 * liveness read then covers these objects, not the whole table. More objects in a window than
 * the ring holds: the read covers the whole table instead. Userspace sizes the ring (a power
 * of two: aggregator::NewObjectRing) and sets the program's mask; this is the default. */
#define MEMTRAIL_PYTHON_LOG_ENTRIES (1 << 16)
struct memtrail_python_logged {
	__u64 address;
	__u32 tgid;
	__u32 written;
};
MEMTRAIL_ABI_SIZE(memtrail_python_logged, 16);
MEMTRAIL_ABI_OFFSET(memtrail_python_logged, tgid, 8);
MEMTRAIL_ABI_OFFSET(memtrail_python_logged, written, 12);
MEMTRAIL_ABI_ASSERT((MEMTRAIL_PYTHON_LOG_ENTRIES & (MEMTRAIL_PYTHON_LOG_ENTRIES - 1)) == 0,
		    "the program masks log indices with MEMTRAIL_PYTHON_LOG_ENTRIES - 1");

/* ---- memory mapped by system calls: mmap, munmap, mremap, brk ----
 * Syscall tracepoints send these events through a ring buffer; userspace keeps the regions
 * (userspace/tracer/mapped_regions.h), because a munmap may release any part of a mapping and
 * a mapping may be moved, which a table keyed by address cannot follow. The syscalls are rare
 * next to malloc, and the buffer is drained every tick with no wake-up per event. Calls made
 * inside a traced allocator call (malloc mapping a large block, realloc moving it) are the
 * allocator's business and are not sent, except brk moves, for the per-process heap figure. */
enum memtrail_region_event_type {
	MEMTRAIL_REGION_MAP = 1,	 /* [address, address + length) mapped, from site_id */
	MEMTRAIL_REGION_UNMAP = 2,	 /* [address, address + length) released (or replaced) */
	MEMTRAIL_REGION_REMAP_BEGIN = 3, /* mremap of [address, address + length) by thread tid */
	MEMTRAIL_REGION_REMAP_END = 4,	 /* its outcome: the region now at address (0: failed),
					   * length bytes long */
	MEMTRAIL_REGION_BRK = 5,	 /* the break moved from address to length */
	MEMTRAIL_REGION_EXEC = 6,	 /* the process executed a new program: regions gone */
	MEMTRAIL_REGION_FORK = 7,	 /* tgid forked a new process: address is its pid */
	MEMTRAIL_REGION_PYTHON_FINALIZING = 8, /* tgid's interpreter is about to free its
						 * modules (Py_FinalizeEx) or the process to
						 * end (_exit): flags _HELD or _HOLD_FAILED,
						 * address MEMTRAIL_PYTHON_END_* */
	MEMTRAIL_REGION_PROGRAM_ENTRY = 9,     /* tgid reached its executable's entry point, its
					     * libraries mapped (a Python program whose interpreter
					     * is a shared library): flags _HELD or _HOLD_FAILED */
};

/* MEMTRAIL_REGION_BRK: the move was made inside a traced allocator call (malloc's heap). */
#define MEMTRAIL_REGION_IN_ALLOCATOR 1
/* MEMTRAIL_REGION_REMAP_END: MREMAP_DONTUNMAP, the old range stays mapped. */
#define MEMTRAIL_REGION_KEEP_OLD 2
/* MEMTRAIL_REGION_PYTHON_FINALIZING's address: where the program was stopped (the probe's
 * cookie): at Py_FinalizeEx, or at libc's _exit, which os._exit (and every exit) reaches. */
#define MEMTRAIL_PYTHON_END_FINALIZE 0
#define MEMTRAIL_PYTHON_END_EXIT 1
/* MEMTRAIL_REGION_EXEC: the process is stopped (SIGSTOP) before the new program's first
 * instruction; userspace continues it (SIGCONT) once the program's probes are in.
 * MEMTRAIL_REGION_PYTHON_FINALIZING: stopped at Py_FinalizeEx's entry; continued once
 * userspace has read which of its Python objects are alive.
 * MEMTRAIL_REGION_PROGRAM_ENTRY: stopped at the program's entry point; continued once
 * userspace has found the interpreter in the libraries it mapped and probed it. */
#define MEMTRAIL_REGION_HELD 4
/* It was to be held, but the kernel refused the signal, or the hold could not be recorded in
 * held_processes (full): it runs on. */
#define MEMTRAIL_REGION_HOLD_FAILED 8

/* Key of held_processes: a hold not answered yet (its value: the process's start_boottime). */
struct memtrail_held_key {
	__u32 tgid;
	__u32 pad;
	__u64 held_at_ns; /* CLOCK_MONOTONIC: the timestamp_ns of the hold's event */
};
MEMTRAIL_ABI_SIZE(memtrail_held_key, 16);
MEMTRAIL_ABI_OFFSET(memtrail_held_key, held_at_ns, 8);

/* Values in traced_processes: bits. A process launched by memtrail (and what it forks) is held
 * at each exec until userspace has probed the new program: a wrapper script that executes the
 * real program is traced from the real program's first instruction. */
#define MEMTRAIL_PROCESS_TRACED 1
#define MEMTRAIL_PROCESS_HOLD_EXEC 2
/* The program ended (Py_FinalizeEx or _exit reached, the process held there): nothing it
 * allocates, frees or maps from then on is recorded, so that its report shows what it held
 * when it ended, not what finalization left of it. Cleared when it executes a new program. */
#define MEMTRAIL_PROCESS_ENDED 4

struct memtrail_region_event {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC */
	__u64 address;
	__u64 length; /* MEMTRAIL_REGION_BRK: the new break */
	__u32 tgid;
	__u32 tid;
	__s32 site_id; /* MEMTRAIL_REGION_MAP and a growing MEMTRAIL_REGION_BRK */
	__u8 type;     /* enum memtrail_region_event_type */
	__u8 flags;    /* MEMTRAIL_REGION_IN_ALLOCATOR, _KEEP_OLD, _HELD, _HOLD_FAILED */
	__u16 pad;
};
MEMTRAIL_ABI_SIZE(memtrail_region_event, 40);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, length, 16);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, tgid, 24);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, tid, 28);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, site_id, 32);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, type, 36);
MEMTRAIL_ABI_OFFSET(memtrail_region_event, flags, 37);

/* Regions are recorded whole, never sampled. */
static inline int memtrail_kind_is_region(__u32 kind)
{
	return kind == MEMTRAIL_KIND_MMAP || kind == MEMTRAIL_KIND_BRK;
}

#endif /* MEMTRAIL_ALLOC_EVENTS_H */
