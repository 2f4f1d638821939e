// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* Allocator uprobes: keep every outstanding allocation with its call-stack site, and running
 * per-site totals, entirely in maps. Userspace reads the maps once per interval. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "alloc_events.h"
#include "unwind_table.h"

#define EEXIST 17

/* A nested allocator call (see call_enter) arrives within microseconds of the outer entry. */
#define NESTED_CALL_WINDOW_NS 1000000000ULL

/* GPL-compatible, as the SPDX line above says: the kernel lets only such programs call
 * bpf_probe_read_user (the stack walks, posix_memalign's result), bpf_probe_read_kernel
 * (BPF_CORE_READ), bpf_get_current_task_btf and bpf_task_pt_regs, or read kernel structs through
 * BTF pointers (the tasks of the tp_btf programs, the thread's %fs base). */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Sizes are placeholders: userspace sets max_entries before load. */

/* Outstanding allocations: see struct memtrail_alloc_bucket for the layout and protocol. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* userspace reads it in place */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_alloc_bucket);
} allocs SEC(".maps");

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

/* Entries of the allocs array (set by userspace before load). */
const volatile __u32 alloc_buckets = 1;

/* Set by userspace once C++ delete probes are attached anywhere: only then does free() look for
 * a delete it is nested in (one task-storage lookup per free). */
volatile __u32 cxx_probes_attached = 0;

/* Benchmarks only (memtrail leaks --probe-floor): every program returns at once, so a run
 * measures what the probes' traps alone cost. The verifier prunes the check when false. */
const volatile bool probe_floor = false;

/* --sample-rate in bytes; 0 records every allocation. Set by userspace before load. */
const volatile __u64 sample_rate = 0;
const volatile __u32 sample_quantiles[MEMTRAIL_SAMPLE_QUANTILES] = {};
const volatile __u32 sample_weights[MEMTRAIL_SAMPLE_WEIGHTS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEMTRAIL_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Losses per process (struct memtrail_process_losses); a process beyond max_entries is counted
 * in the global counters only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* entries only for processes that lost something */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_process_losses);
} process_losses SEC(".maps");

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
	return !filter_processes || process_traced(bpf_get_current_pid_tgid() >> 32);
}

/* Arguments of the allocator call a thread is in, from entry to return. Task-local storage is
 * freed with the thread, so threads that die mid-call leave nothing behind. */
struct inflight_call {
	__u64 size;
	__u64 aux;        /* realloc: old pointer; posix_memalign: the void ** it writes */
	__u64 start_ns;   /* realloc: tells the old block from a block reusing its address */
	__u64 entry_sp;   /* stack pointer at the outermost entry: detects a lost return */
	__u32 kind;
	__u32 depth;      /* > 1 while an allocator calls another (memalign -> malloc, ...) */
	__s64 sample_countdown; /* bytes until this thread's next sample */
	__u64 sampler_ready;    /* sample_countdown has been drawn */
	__u64 pending_free;     /* released by operator delete: its nested free() is not a free */
	/* A system call between its entry and exit tracepoints (enum syscall_state). */
	__u32 syscall_state;
	__u32 syscall_flags;    /* mremap's flags */
	__u64 syscall_length;   /* mmap: length asked; mremap: new length */
	__u64 old_break;        /* brk: the break before the call */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight_call);
} inflight SEC(".maps");

static __always_inline void count(enum memtrail_counter counter)
{
	__u32 index = counter;
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		*value += 1; /* per-CPU slot: no atomic needed */
}

/* Counts an event memtrail could not track, in total and for its process. */
static __always_inline void count_loss(enum memtrail_counter counter, enum memtrail_loss loss,
				       __u32 tgid)
{
	struct memtrail_process_losses *losses, fresh = {};

	count(counter);
	losses = bpf_map_lookup_elem(&process_losses, &tgid);
	if (!losses) {
		/* -EEXIST: another CPU created it first; -E2BIG: the map is full */
		bpf_map_update_elem(&process_losses, &tgid, &fresh, BPF_NOEXIST);
		losses = bpf_map_lookup_elem(&process_losses, &tgid);
		if (!losses)
			return;
	}
	__sync_fetch_and_add(&losses->counts[loss & 7], 1);
}

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline void call_enter(struct pt_regs *ctx, __u32 kind, __u64 size, __u64 aux)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct inflight_call *call;
	__u64 sp = PT_REGS_SP(ctx);
	__u64 now;

	if (probe_floor || !probe_applies())
		return;
	now = bpf_ktime_get_ns();
	call = bpf_task_storage_get(&inflight, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES, current_tgid());
		return;
	}
	/* A call made from inside another traced allocator (realloc(NULL, n) -> malloc, memalign
	 * -> malloc) runs deeper on the stack, or at the same depth for a tail call (glibc's
	 * reallocarray jumps to realloc): the outer call accounts for the memory. A call above the
	 * recorded stack pointer, or long after the outer entry, means that the outer return was
	 * lost (the kernel could not hijack it): start afresh rather than ignore calls forever. */
	if (call->depth > 0 && sp <= call->entry_sp && now - call->start_ns < NESTED_CALL_WINDOW_NS) {
		call->depth++;
		return;
	}
	call->depth = 1;
	call->pending_free = 0; /* a delete whose free() never came (an allocation comes first) */
	call->entry_sp = sp;
	call->kind = kind;
	call->size = size;
	call->aux = aux;
	call->start_ns = now;
}

/* Returns the finished outermost call, or NULL while unwinding nested calls. */
static __always_inline struct inflight_call *call_exit(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct inflight_call *call;

	if (probe_floor || !probe_applies())
		return NULL;
	call = bpf_task_storage_get(&inflight, task, 0, 0);
	if (!call || call->depth == 0) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES, current_tgid());
		return NULL;
	}
	call->depth--;
	return call->depth == 0 ? call : NULL;
}

static __always_inline struct memtrail_fallback_totals *fallback_lookup_or_create(__u32 tgid,
										   __s32 site_id,
										   __u64 caller)
{
	struct memtrail_fallback_key key = { .tgid = tgid, .site_id = site_id };
	struct memtrail_fallback_totals *totals = bpf_map_lookup_elem(&fallback_sites, &key);
	struct memtrail_fallback_totals fresh = { .caller_address = caller };

	if (totals)
		return totals;
	/* -EEXIST means another CPU created it first: the lookup below finds theirs. */
	bpf_map_update_elem(&fallback_sites, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&fallback_sites, &key);
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

/* ---- the outstanding-allocations table (protocol: see struct memtrail_alloc_bucket) ---- */

#define WRITE_ONCE_U64(x, v) (*(volatile __u64 *)&(x) = (v))
#define WRITE_ONCE_U32(x, v) (*(volatile __u32 *)&(x) = (v))
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))
#define compiler_barrier() asm volatile("" ::: "memory")

struct slot_ref {
	struct memtrail_alloc_bucket *bucket;
	__u32 slot;
};

static __always_inline struct memtrail_alloc_bucket *candidate_bucket(__u32 tgid, __u64 address,
								      int which)
{
	__u32 index = memtrail_bucket_of(tgid, address, which, alloc_buckets);

	return bpf_map_lookup_elem(&allocs, &index);
}

/* The bucket searches are global functions, checked once each by the verifier: inlined, their
 * 8-slot loops multiplied the paths of every program that records a block (about a second of
 * verification for each return probe, most of memtrail's start-up). */

#define SCAN_MISSED 0x100 /* scan_bucket_packed: not found; free slots << 4 | first free */
#define SCAN_NO_FREE_SLOT 15

/* Searches one bucket for (tgid, address): its slot (0-7), or SCAN_MISSED with the number of
 * free slots and the first of them packed in. */
__noinline int scan_bucket_packed(struct memtrail_alloc_bucket *bucket, __u32 tgid,
				  __u64 address)
{
	int free_slots = 0, first_free = SCAN_NO_FREE_SLOT;

	if (!bucket)
		return SCAN_MISSED | SCAN_NO_FREE_SLOT;
	for (int slot = 0; slot < MEMTRAIL_BUCKET_SLOTS; slot++) {
		__u64 held = READ_ONCE_U64(bucket->address[slot]);

		if (held == address && READ_ONCE_U32(bucket->info[slot].tgid) == tgid)
			return slot;
		if (held == 0) {
			if (first_free == SCAN_NO_FREE_SLOT)
				first_free = slot;
			free_slots++;
		}
	}
	return SCAN_MISSED | (free_slots << 4) | first_free;
}

/* Searches one bucket for (tgid, address): returns its slot, or -1 with *free_slots set to
 * the number of free slots and *first_free to the first of them (-1: none). */
static __always_inline int scan_bucket(struct memtrail_alloc_bucket *bucket, __u32 tgid,
				       __u64 address, int *free_slots, int *first_free)
{
	int packed = scan_bucket_packed(bucket, tgid, address);

	if (!(packed & SCAN_MISSED)) {
		*free_slots = 0;
		*first_free = -1;
		return packed & (MEMTRAIL_BUCKET_SLOTS - 1);
	}
	*free_slots = (packed >> 4) & 0xf;
	*first_free = (packed & 0xf) == SCAN_NO_FREE_SLOT ? -1 : (packed & 7);
	return -1;
}

/* Finds the slot of (tgid, address) in either candidate bucket. */
static __always_inline bool find_slot(__u32 tgid, __u64 address, struct slot_ref *found)
{
	int free_slots, first_free;

	for (int which = 0; which < 2; which++) {
		struct memtrail_alloc_bucket *bucket = candidate_bucket(tgid, address, which);
		int slot;

		if (!bucket)
			return false;
		slot = scan_bucket(bucket, tgid, address, &free_slots, &first_free);
		if (slot >= 0) {
			found->bucket = bucket;
			found->slot = slot;
			return true;
		}
	}
	return false;
}

static __always_inline void fill_slot(struct memtrail_alloc_info *info, __u32 tgid, __u64 size,
				      __u32 kind, __s32 site_id, __u64 now)
{
	WRITE_ONCE_U32(info->tgid, tgid);
	WRITE_ONCE_U64(info->size_kind, (size & MEMTRAIL_SIZE_MASK) |
					((__u64)kind << MEMTRAIL_SIZE_BITS));
	info->site_id = site_id;
	compiler_barrier();
	WRITE_ONCE_U64(info->timestamp_ns, now); /* last: the slot is complete */
}

/* Claims a free slot of `bucket` for `address`, from `first_free` on: its index, or -1 when
 * none is left. */
__noinline int claim_slot_index(struct memtrail_alloc_bucket *bucket, int first_free,
				__u64 address)
{
	if (!bucket || first_free < 0)
		return -1;
	for (int slot = first_free & 7; slot < MEMTRAIL_BUCKET_SLOTS; slot++) {
		/* A failed compare-and-swap means another CPU took the slot: try the next. */
		if (READ_ONCE_U64(bucket->address[slot]) == 0 &&
		    __sync_val_compare_and_swap(&bucket->address[slot], 0, address) == 0)
			return slot;
	}
	return -1;
}

/* Claims a free slot of `bucket` from `first_free` on and fills it; false if none is left. */
static __always_inline bool claim_slot(struct memtrail_alloc_bucket *bucket, int first_free,
				       __u32 tgid, __u64 address, __u64 size, __u32 kind,
				       __s32 site_id, __u64 now)
{
	int slot = claim_slot_index(bucket, first_free, address);

	if (slot < 0)
		return false;
	fill_slot(&bucket->info[slot & 7], tgid, size, kind, site_id, now);
	return true;
}

/* Records a block (placement: see memtrail_bucket_of); false when both candidate buckets are
 * full. A record of the same address found on the way is stale: the block was freed without
 * our knowing (another thread's realloc released it between its free and its return probe),
 * and it is overwritten. (A stale record in the second bucket, while the first has room, stays:
 * that takes a lost free and a busy bucket at once.) */
static __always_inline bool table_insert(__u32 tgid, __u64 address, __u64 size, __u32 kind,
					 __s32 site_id, __u64 now)
{
	struct memtrail_alloc_bucket *first, *second;
	int free_first, free_second, first_free, second_free, slot;
	struct memtrail_alloc_info *stale;

	first = candidate_bucket(tgid, address, 0);
	if (!first)
		return false;
	slot = scan_bucket(first, tgid, address, &free_first, &first_free);
	if (slot >= 0) {
		stale = &first->info[slot & 7];
		goto replace;
	}
	if (MEMTRAIL_BUCKET_SLOTS - free_first < MEMTRAIL_FIRST_BUCKET_LIMIT &&
	    claim_slot(first, first_free, tgid, address, size, kind, site_id, now))
		return true;
	second = candidate_bucket(tgid, address, 1);
	if (!second)
		return false;
	slot = scan_bucket(second, tgid, address, &free_second, &second_free);
	if (slot >= 0) {
		stale = &second->info[slot & 7];
		goto replace;
	}
	if (free_second > free_first)
		return claim_slot(second, second_free, tgid, address, size, kind, site_id, now) ||
		       claim_slot(first, first_free, tgid, address, size, kind, site_id, now);
	return claim_slot(first, first_free, tgid, address, size, kind, site_id, now) ||
	       claim_slot(second, second_free, tgid, address, size, kind, site_id, now);

replace:
	count(MEMTRAIL_CTR_STALE_REPLACED);
	WRITE_ONCE_U64(stale->timestamp_ns, 0);
	compiler_barrier();
	fill_slot(stale, tgid, size, kind, site_id, now);
	return true;
}

/* table_insert as a global function: the verifier checks it once, on its own, rather than in
 * every program and on every path that records a block (which took it about a second for each
 * return probe, most of memtrail's start-up). Five arguments at most: size and kind packed as
 * in the table. Returns 1 when recorded. */
__noinline int table_insert_block(__u32 tgid, __u64 address, __u64 size_kind, __s32 site_id,
				  __u64 now)
{
	return table_insert(tgid, address, size_kind & MEMTRAIL_SIZE_MASK,
			    size_kind >> MEMTRAIL_SIZE_BITS, site_id, now);
}

/* Frees a slot found by find_slot. False if a concurrent double free emptied it first. */
static __always_inline bool table_remove(struct slot_ref *slot, __u64 address)
{
	struct memtrail_alloc_info *info = &slot->bucket->info[slot->slot & 7];

	WRITE_ONCE_U64(info->timestamp_ns, 0);
	WRITE_ONCE_U32(info->tgid, 0);
	compiler_barrier();
	return __sync_val_compare_and_swap(&slot->bucket->address[slot->slot & 7], address, 0) ==
	       address;
}

/* ---- the user stack walk: CFI tables where userspace loaded them, frame pointers elsewhere ---- */

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
	walk->flags = (walk->flags & MEMTRAIL_STACK_USED_TABLES) |
		      (reason ? MEMTRAIL_STACK_TRUNCATED | (reason << MEMTRAIL_STACK_REASON_SHIFT)
			      : 0);
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
			if (bpf_probe_read_user(&saved[0], sizeof(saved[0]), (void *)(cfa + rbp_slot)) ||
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
			mapping = &walk->process->mappings[found & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)];
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

/* ---- Python frames (see struct memtrail_python_layout) ---- */

/* --python-frames other than native: CPython processes get their Python frames walked. */
const volatile bool python_frames = false;
const volatile struct memtrail_python_layout python_layout = {};

/* CPython processes, by tgid (userspace adds them when it finds their _PyRuntime). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_process);
} python_processes SEC(".maps");

/* The Python frames of each stack that has any, by stack id. Memory only for Python stacks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_stack);
} python_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_stack);
} python_scratch SEC(".maps");

/* Threads searched in the interpreter's list when the GIL holder is another thread. */
#define PYTHON_MAX_THREADS 16

static __always_inline __u64 read_user_u64(__u64 address)
{
	__u64 value = 0;

	if (bpf_probe_read_user(&value, sizeof(value), (const void *)address))
		return 0;
	return value;
}

struct python_walk {
	struct memtrail_python_stack *stack;
	__u64 frame;
	__u64 hash;
};

static __always_inline __u64 frame_u64(const __u8 *raw, __u32 offset)
{
	if (offset > MEMTRAIL_PYTHON_FRAME_READ - sizeof(__u64))
		return 0;
	return *(const __u64 *)&raw[offset];
}

static __always_inline __u8 frame_u8(const __u8 *raw, __u32 offset)
{
	if (offset > MEMTRAIL_PYTHON_FRAME_READ - 1)
		return 0;
	return raw[offset];
}

static long python_step(__u32 index, struct python_walk *walk)
{
	__u8 raw[MEMTRAIL_PYTHON_FRAME_READ];
	__u64 code, previous, prev_instr, first_instr, lasti, packed;
	__u8 is_entry, owner;

	if (!walk->frame)
		return 1;
	if (index >= MEMTRAIL_MAX_PYTHON_DEPTH) {
		walk->stack->flags |= MEMTRAIL_PYTHON_TRUNCATED;
		return 1;
	}
	if (bpf_probe_read_user(raw, sizeof(raw), (const void *)walk->frame)) {
		walk->stack->flags |= MEMTRAIL_PYTHON_UNREADABLE;
		return 1;
	}
	/* Userspace checks that every field lies within raw; the bounds are for the verifier. */
	code = frame_u64(raw, python_layout.frame_code);
	previous = frame_u64(raw, python_layout.frame_previous);
	prev_instr = frame_u64(raw, python_layout.frame_prev_instr);
	is_entry = frame_u8(raw, python_layout.frame_is_entry);
	owner = frame_u8(raw, python_layout.frame_owner);
	walk->frame = previous;
	if (owner == python_layout.owner_cstack)
		return 0; /* a shim the interpreter pushes for C calls: no Python code */
	first_instr = code + python_layout.code_adaptive;
	/* A frame being set up has no instruction yet (prev_instr before the first): index 0. */
	lasti = prev_instr >= first_instr ? (prev_instr - first_instr) / 2 : 0;
	if (lasti > MEMTRAIL_PYTHON_LASTI_MAX)
		lasti = MEMTRAIL_PYTHON_LASTI_MAX;
	packed = (code & MEMTRAIL_PYTHON_CODE_MASK) | (lasti << MEMTRAIL_PYTHON_LASTI_SHIFT) |
		 (is_entry ? MEMTRAIL_PYTHON_ENTRY : 0);
	walk->stack->frames[index & (MEMTRAIL_MAX_PYTHON_DEPTH - 1)] = packed;
	walk->stack->depth = index + 1;
	walk->hash = (walk->hash ^ packed) * 0x100000001B3ULL;
	return 0;
}

/* The calling thread's PyThreadState: the GIL holder's when that is this thread (the common
 * case: Python code allocating), else the one in the interpreter's list whose thread_id is this
 * thread's pthread_self() (its %fs base on x86-64). 0 when none is. */
__noinline __u64 python_thread_state(__u64 runtime, __u64 pthread_id)
{
	__u64 tstate, interp;

	if (!runtime || !pthread_id)
		return 0;
	tstate = read_user_u64(runtime + python_layout.runtime_tstate_current);
	if (tstate && read_user_u64(tstate + python_layout.tstate_thread_id) == pthread_id)
		return tstate;
	interp = read_user_u64(runtime + python_layout.runtime_interp_main);
	if (!interp)
		return 0;
	tstate = read_user_u64(interp + python_layout.interp_threads_head);
	for (int i = 0; i < PYTHON_MAX_THREADS && tstate; i++) {
		if (read_user_u64(tstate + python_layout.tstate_thread_id) == pthread_id)
			return tstate;
		tstate = read_user_u64(tstate + python_layout.tstate_next);
	}
	return 0;
}

/* Reads the Python frames of the calling thread into the scratch stack and mixes them into
 * `hash`; NULL when the process is not a CPython one memtrail walks. */
static __always_inline struct memtrail_python_stack *capture_python(__u32 tgid, __u64 *hash)
{
	struct python_walk walk = {};
	struct memtrail_python_process *process;
	struct memtrail_python_stack *stack;
	struct task_struct *task;
	__u64 tstate, cframe;
	__u32 zero = 0;

	if (!python_frames)
		return NULL;
	process = bpf_map_lookup_elem(&python_processes, &tgid);
	if (!process)
		return NULL;
	stack = bpf_map_lookup_elem(&python_scratch, &zero);
	if (!stack)
		return NULL;
	stack->tgid = tgid;
	stack->depth = 0;
	stack->flags = 0;
	task = bpf_get_current_task_btf();
	tstate = python_thread_state(process->runtime_address, task->thread.fsbase);
	if (!tstate) {
		stack->flags = MEMTRAIL_PYTHON_NO_THREAD;
	} else {
		cframe = read_user_u64(tstate + python_layout.tstate_cframe);
		walk.frame = cframe ? read_user_u64(cframe + python_layout.cframe_current_frame) : 0;
		walk.stack = stack;
		walk.hash = *hash;
		bpf_loop(MEMTRAIL_MAX_PYTHON_DEPTH + 1, python_step, &walk, 0);
		*hash = walk.hash;
	}
	*hash ^= ((__u64)stack->flags << 56) | stack->depth;
	return stack;
}

/* ---- Python objects by type (see struct memtrail_python_type_counts) ---- */

const volatile struct memtrail_python_type_layout python_type_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct memtrail_python_type_key);
	__type(value, struct memtrail_python_type_counts);
} python_types SEC(".maps");

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
	counts = bpf_map_lookup_elem(&python_types, &key);
	if (!counts) {
		bpf_map_update_elem(&python_types, &key, &zero, BPF_NOEXIST);
		counts = bpf_map_lookup_elem(&python_types, &key);
		if (!counts) {
			count(MEMTRAIL_CTR_PYTHON_TYPES_LOST);
			return 0;
		}
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

/* Walks the user stack and returns the stack's dense id, or a negative fallback id derived
 * from the caller when the stacks map is full. Called in a uretprobe, the registers are the
 * caller's, with the instruction pointer already set back to the return address, so the first
 * frame is always the function that called the allocator; at a system call, the first frame is
 * the libc wrapper (userspace skips it). Every frame is unwound by its
 * module's CFI table where userspace loaded one, else by frame pointer, as unwind_processes
 * says (bpf/unwind_table.h). A walk that cannot go on ends there and says why in the stack's
 * flags: no frame is ever guessed. This walk replaces bpf_get_stackid, whose perf callchain
 * machinery cost about twice as much per allocation as the frame-pointer walk here. */
static __always_inline __s32 capture_stack(__u64 caller, __u64 sp, __u64 bp, __u32 tgid)
{
	struct walk walk = {
		.pc = caller,
		.sp = sp,
		.bp = bp,
		/* Stacks are per process: the pid is part of the hash, and a stack id names a site. */
		.hash = (caller ^ ((__u64)tgid << 32)) * 0x9E3779B97F4A7C15ULL,
		.depth = 1,
		.bp_known = 1,
		.flags = MEMTRAIL_STACK_TRUNCATED |
			 (MEMTRAIL_TRUNCATED_DEPTH << MEMTRAIL_STACK_REASON_SHIFT),
	};
	struct memtrail_stack *stack, *known;
	struct memtrail_python_stack *python;
	__u32 zero = 0, python_id;
	__u64 hash;

	stack = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!stack)
		goto fallback;
	walk.stack = stack;
	if (unwind_mode == MEMTRAIL_UNWIND_MODE_TABLES)
		walk.process = bpf_map_lookup_elem(&unwind_processes, &tgid);
	stack->ips[0] = caller;
	stack->tgid = tgid;
	bpf_loop(MEMTRAIL_MAX_STACK_DEPTH, unwind_step, &walk, 0);
	stack->flags = walk.flags;
	hash = walk.hash ^ walk.depth;
	python = capture_python(tgid, &hash);

	known = bpf_map_lookup_elem(&stacks, &hash);
	if (known)
		return known->id;
	stack->depth = walk.depth;
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
	if (known)
		return known->id;
fallback:
	count_loss(MEMTRAIL_CTR_STACK_FAILURES, MEMTRAIL_LOSS_STACK_FAILURES, tgid);
	hash = (caller ^ ((__u64)tgid << 32)) * 0x9E3779B97F4A7C15ULL;
	return -(__s32)((hash >> 32) & MEMTRAIL_SITE_ID_FALLBACK_MASK) - 1;
}

static __always_inline __s64 sample_distance(__u64 rate)
{
	__u32 quantile = sample_quantiles[bpf_get_prandom_u32() & (MEMTRAIL_SAMPLE_QUANTILES - 1)];

	return ((rate * quantile) >> 16) + 1;
}

/* The bytes this allocation stands for: its size when every allocation is recorded; with
 * --sample-rate, 0 when it is passed over, else the unbiased estimate size / P(sampled). */
static __always_inline __u64 sampled_bytes(struct inflight_call *call, __u64 size)
{
	__u64 rate = sample_rate, position, index, remainder;
	__u32 low, high;

	if (!rate)
		return size;
	if (!call->sampler_ready) {
		call->sample_countdown = sample_distance(rate);
		call->sampler_ready = 1;
	}
	call->sample_countdown -= size;
	if (call->sample_countdown > 0) {
		count(MEMTRAIL_CTR_UNSAMPLED);
		return 0;
	}
	/* Sample points form a Poisson process over the bytes: the distance from here to the
	 * next one is again exponential, whatever came before. */
	call->sample_countdown = sample_distance(rate);
	position = size * MEMTRAIL_SAMPLE_WEIGHT_STEPS;
	index = position / rate;
	if (index >= MEMTRAIL_SAMPLE_WEIGHTS - 1)
		return size; /* size >= 8 * rate: sampled with probability > 0.9997 */
	remainder = position - index * rate;
	index &= 1023; /* for the verifier: already < MEMTRAIL_SAMPLE_WEIGHTS - 1 */
	low = sample_weights[index];
	high = sample_weights[index + 1];
	/* rate * (low + (high - low) * remainder / rate), interpolated in 16.16 */
	return (rate * low + (high - low) * remainder) >> 16;
}

static __always_inline void record_alloc(struct pt_regs *ctx, __u64 address, __u64 size,
					 __u32 kind, __u64 weight_bytes)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 caller = PT_REGS_IP(ctx);
	__s32 site_id = capture_stack(caller, PT_REGS_SP(ctx), PT_REGS_FP(ctx), tgid);

	/* With sampling, the totals add up estimates: bytes and calls this sample stands for
	 * (calls: rounded down; a sample of size 0 never happens). */
	add_to_site(tgid, site_id, caller, weight_bytes, size ? weight_bytes / size : 1);
	if (table_insert_block(tgid, address,
			       (size & MEMTRAIL_SIZE_MASK) | ((__u64)kind << MEMTRAIL_SIZE_BITS), site_id,
			       bpf_ktime_get_ns()))
		count(MEMTRAIL_CTR_ALLOCATIONS);
	else
		count_loss(MEMTRAIL_CTR_DROPS, MEMTRAIL_LOSS_DROPS, tgid); /* both buckets full */
}

enum release_mode {
	RELEASE_FREE,          /* free(p): p unknown means it predates attach */
	RELEASE_REALLOC,       /* realloc moved p: only if recorded before the call began */
	RELEASE_REALLOC_ZERO,  /* realloc(p, 0): glibc's nested free() already released p */
	RELEASE_DELETE,        /* operator delete(p) */
	RELEASE_DELETE_ARRAY,  /* operator delete[](p) */
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
		struct memtrail_fallback_totals *totals = bpf_map_lookup_elem(&fallback_sites, &key);

		if (totals)
			__sync_fetch_and_add(&totals->mismatched_frees, 1);
	}
}

static __always_inline void release(__u64 address, enum release_mode mode, __u64 call_start_ns)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct memtrail_alloc_info *info;
	struct slot_ref found;

	/* A miss means the block predates attach (or a concurrent double free removed it). */
	if (!find_slot(tgid, address, &found)) {
		if (mode != RELEASE_REALLOC_ZERO)
			count_loss(MEMTRAIL_CTR_UNMATCHED_FREES, MEMTRAIL_LOSS_UNMATCHED_FREES, tgid);
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

/* Records the block a call returned, unless --sample-rate passes it over. */
static __always_inline void record_returned(struct pt_regs *ctx, struct inflight_call *call,
					    __u64 address, __u64 size)
{
	__u64 weight = sampled_bytes(call, size);

	if (weight)
		record_alloc(ctx, address, size, call->kind, weight);
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
			release(old, RELEASE_REALLOC_ZERO, call->start_ns); /* freed, returns NULL */
		else
			count(MEMTRAIL_CTR_FAILED_CALLS); /* failed: the old block is untouched */
		return 0;
	}
	if (old)
		release(old, RELEASE_REALLOC, call->start_ns);
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
	if (result != 0 ||
	    bpf_probe_read_user(&address, sizeof(address), (void *)call->aux) != 0 || !address) {
		count(MEMTRAIL_CTR_FAILED_CALLS);
		return 0;
	}
	record_returned(ctx, call, address, call->size);
	return 0;
}

/* free: may be attached past a leading NULL check (see userspace probe placement), so it never
 * sees free(NULL). The check here keeps it correct when attached at the entry. */
SEC("uprobe")
int BPF_KPROBE(free_enter, __u64 address)
{
	if (!address || probe_floor || !probe_applies())
		return 0;
	if (cxx_probes_attached) {
		/* libstdc++'s operator delete ends in free(): the delete probe already released
		 * the block. */
		struct inflight_call *call =
			bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);

		if (call && call->pending_free == address) {
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
	call = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
				    BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		count_loss(MEMTRAIL_CTR_MISSED_ENTRIES, MEMTRAIL_LOSS_MISSED_ENTRIES, current_tgid());
		return 0;
	}
	if (call->pending_free == address)
		return 0; /* nested in a delete of the same block */
	call->pending_free = address;
	release(address, bpf_get_attach_cookie(ctx) == MEMTRAIL_DELETE_ARRAY ? RELEASE_DELETE_ARRAY
									     : RELEASE_DELETE,
		0);
	return 0;
}

/* ---- memory mapped by system calls (struct memtrail_region_event) ---- */

#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_TYPE 0x0f
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define PROT_NONE 0x0
#define MREMAP_DONTUNMAP 4
#define MAX_ERRNO 4095


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


/* Inside a traced allocator call: malloc mapping a large block, realloc moving one, an arena
 * growing. The allocator's own blocks account for that memory. */
static __always_inline bool in_allocator_call(struct inflight_call *call)
{
	return call->depth > 0 && bpf_ktime_get_ns() - call->start_ns < NESTED_CALL_WINDOW_NS;
}

static __always_inline void emit_region_waking(__u32 tgid, __u8 type, __u64 address,
					       __u64 length, __s32 site_id, __u8 flags, __u64 wake)
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

	if (probe_floor || !process_traced(tgid))
		return NULL;
	call = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, create);
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

	if (probe_floor || !process_traced(tgid))
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
		record_region(tgid, MEMTRAIL_REGION_BRK, old_break, new_break, new_break - old_break);
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
	__u32 parent_tgid = parent->tgid, child_tgid = child->tgid, followed = 1;
	struct memtrail_region_event *event;

	/* A new thread of the same process is not a new process. */
	if (probe_floor || !follow_forks || child_tgid == parent_tgid || child->pid != child_tgid ||
	    !process_traced(parent_tgid))
		return 0;
	bpf_map_update_elem(&traced_processes, &child_tgid, &followed, BPF_ANY);
	event = bpf_ringbuf_reserve(&region_events, sizeof(*event), 0);
	if (!event) {
		count_loss(MEMTRAIL_CTR_REGION_EVENTS_LOST, MEMTRAIL_LOSS_REGION_EVENTS, parent_tgid);
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
	__u32 tgid = task->tgid;

	if (probe_floor || (!filter_processes && !process_traced(tgid)))
		return 0;
	/* Host-wide, a program just started runs untraced until userspace has looked at it. */
	emit_region_waking(tgid, MEMTRAIL_REGION_EXEC, 0, 0, 0, 0, filter_processes);
	return 0;
}
