/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The outstanding-allocations table, read in place by userspace (protocol: see struct
 * memtrail_alloc_bucket in alloc_events.h). */
#ifndef MEMTRAIL_ALLOC_TABLE_BPF_H
#define MEMTRAIL_ALLOC_TABLE_BPF_H

#include "common.bpf.h"
#include "arch_x86_64.bpf.h"
#include "alloc_events.h"
#include "alloc/counters.bpf.h"

/* Outstanding allocations: see struct memtrail_alloc_bucket for the layout and protocol. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* userspace reads it in place */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_alloc_bucket);
} allocs SEC(".maps");

/* Entries of the allocs array (set by userspace before load). */
const volatile __u32 alloc_buckets = 1;

#define WRITE_ONCE_U64(x, v) (*(volatile __u64 *)&(x) = (v))
#define WRITE_ONCE_U32(x, v) (*(volatile __u32 *)&(x) = (v))
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))
/* compiler_barrier() orders the stores of a slot: enough on x86-64 (arch_x86_64.bpf.h). */

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
__noinline int scan_bucket_packed(struct memtrail_alloc_bucket *bucket, __u32 tgid, __u64 address)
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
	WRITE_ONCE_U64(info->size_kind,
		       (size & MEMTRAIL_SIZE_MASK) | ((__u64)kind << MEMTRAIL_SIZE_BITS));
	info->site_id = site_id;
	compiler_barrier();
	WRITE_ONCE_U64(info->timestamp_ns, now); /* last: the slot is complete */
}

/* Claims a free slot of `bucket` for `address`, from `first_free` on: its index, or -1 when
 * none is left. */
__noinline int claim_slot_index(struct memtrail_alloc_bucket *bucket, int first_free, __u64 address)
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
	struct memtrail_alloc_bucket *first, *second, *held;
	int free_first, free_second, first_free, second_free, slot;
	struct memtrail_alloc_info *stale;
	__u64 found;

	first = candidate_bucket(tgid, address, 0);
	if (!first)
		return false;
	slot = scan_bucket(first, tgid, address, &free_first, &first_free);
	if (slot >= 0) {
		held = first;
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
		held = second;
		goto replace;
	}
	if (free_second > free_first)
		return claim_slot(second, second_free, tgid, address, size, kind, site_id, now) ||
		       claim_slot(first, first_free, tgid, address, size, kind, site_id, now);
	return claim_slot(first, first_free, tgid, address, size, kind, site_id, now) ||
	       claim_slot(second, second_free, tgid, address, size, kind, site_id, now);

replace:
	/* A Python object's address taken by a new object: the old one died unseen (no probe
	 * watches deaths), which is normal, not a lost free. */
	if (kind != MEMTRAIL_KIND_PYTHON_OBJECT)
		count(MEMTRAIL_CTR_STALE_REPLACED);
	stale = &held->info[slot & 7];
	WRITE_ONCE_U64(stale->timestamp_ns, 0);
	compiler_barrier();
	fill_slot(stale, tgid, size, kind, site_id, now);
	/* Userspace may have removed the old record meanwhile (a Python object it found dead:
	 * timestamp, then address back to 0), after this slot was found: the address is put back
	 * unless another block claimed the freed slot (then this record is lost). A locked
	 * compare-and-swap, also a full barrier: the record is complete before it is read. */
	found = __sync_val_compare_and_swap(&held->address[slot & 7], 0, address);
	return found == 0 || found == address;
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

/* Once tracing has stopped (the final reading), or while a window of the object probes closes
 * (its last reading, then the detach), a new Python object at the address of a recorded
 * one: the recorded object died (no probe sees deaths), and a reading, which judges
 * objects by what their memory holds when it reads them, would take the new one for it. Its
 * record is removed as userspace removes a dead object's (struct memtrail_alloc_bucket's
 * protocol); the new object is not recorded (nothing is, once tracing stopped or the window
 * ended). A global
 * function: the verifier checks it once. Returns 1 when a record was removed. */
__noinline int table_forget_python_object(__u32 tgid, __u64 address)
{
	struct memtrail_alloc_info *info;
	struct slot_ref found;
	__u64 timestamp;

	if (!find_slot(tgid, address, &found))
		return 0;
	info = &found.bucket->info[found.slot & 7];
	timestamp = READ_ONCE_U64(info->timestamp_ns);
	if (!timestamp ||
	    READ_ONCE_U64(info->size_kind) >> MEMTRAIL_SIZE_BITS != MEMTRAIL_KIND_PYTHON_OBJECT ||
	    __sync_val_compare_and_swap(&info->timestamp_ns, timestamp, 0) != timestamp)
		return 0;
	/* A replace that completed in between (a probe that began before the stop) wrote a
	 * timestamp again: its address is put back. */
	if (__sync_val_compare_and_swap(&found.bucket->address[found.slot & 7], address, 0) ==
		    address &&
	    READ_ONCE_U64(info->timestamp_ns) != 0)
		__sync_val_compare_and_swap(&found.bucket->address[found.slot & 7], 0, address);
	return 1;
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

#endif /* MEMTRAIL_ALLOC_TABLE_BPF_H */
