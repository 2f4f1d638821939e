/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ABI shared by alloc.bpf.c and userspace: map keys, values and counter indices. */
#ifndef MEMTRAIL_ALLOC_EVENTS_H
#define MEMTRAIL_ALLOC_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

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
	MEMTRAIL_KIND_COUNT = 9,
};

/* Indices into the per-CPU `counters` array. Every event that memtrail cannot track is counted
 * here; nothing is dropped in silence. */
enum memtrail_counter {
	MEMTRAIL_CTR_ALLOCATIONS = 0,     /* successful allocations recorded */
	MEMTRAIL_CTR_FREES = 1,           /* frees of recorded blocks */
	MEMTRAIL_CTR_UNMATCHED_FREES = 2, /* frees of blocks not in the map (allocated before attach) */
	MEMTRAIL_CTR_DROPS = 3,           /* allocations lost: the outstanding map was full */
	MEMTRAIL_CTR_FAILED_CALLS = 4,    /* allocator returned NULL / an error: not an allocation */
	MEMTRAIL_CTR_STACK_FAILURES = 5,  /* stack map full: site keyed by caller only */
	MEMTRAIL_CTR_SITE_DROPS = 6,      /* per-site totals lost: the sites map was full */
	MEMTRAIL_CTR_STALE_REPLACED = 7,  /* an address was handed out again while still recorded */
	MEMTRAIL_CTR_MISSED_ENTRIES = 8,  /* return without a recorded entry (attached mid-call) */
	MEMTRAIL_CTR_UNSAMPLED = 9,       /* allocations passed over by --sample-rate */
	MEMTRAIL_CTR_COUNT = 10,
};

/* Byte sampling (--sample-rate): each byte allocated is sampled with probability 1/rate, so an
 * allocation of s bytes is recorded with probability 1 - exp(-s/rate), as in tcmalloc and
 * jemalloc. Userspace fills two tables before load (see userspace/aggregator/sampling.h):
 * quantiles of the exponential distribution, for the distance to the next sample, and
 * x / (1 - exp(-x)) at x = i / MEMTRAIL_SAMPLE_WEIGHT_STEPS, for the bytes a sample stands for.
 * Both in 16.16 fixed point. */
#define MEMTRAIL_SAMPLE_QUANTILES 1024
#define MEMTRAIL_SAMPLE_WEIGHT_STEPS 128 /* table points per `rate` bytes */
#define MEMTRAIL_SAMPLE_WEIGHTS 1025     /* x from 0 to 8: beyond, a sample stands for itself */

/* Key of the outstanding-allocations map. */
struct memtrail_alloc_key {
	__u32 tgid;
	__u32 pad;
	__u64 address;
};

/* One outstanding allocation. Kept at 24 bytes: there may be millions of them. */
struct memtrail_alloc_info {
	__u64 size;
	__u64 timestamp_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) when the allocation returned */
	__s32 site_id;      /* stack id >= 0, or a fallback id < 0 (see above) */
	__u32 kind;         /* enum memtrail_alloc_kind */
};

/* Key of the per-site totals map: a site is one call stack in one process. */
struct memtrail_site_key {
	__u32 tgid;
	__s32 site_id;
};

/* Running totals per site, updated atomically in the kernel so that userspace only reads maps
 * once per interval and never handles one event per malloc. What is still outstanding is not
 * kept here: userspace derives it from the allocs map, so free() never touches this map. */
struct memtrail_site_totals {
	__u64 total_bytes;       /* bytes ever allocated from this site since attach */
	__u64 total_allocations; /* calls that returned memory */
	__u64 caller_address;    /* return address in the caller: the site's first frame */
};

/* A distinct user call stack, keyed in the stacks map by a 64-bit hash of its frames. The id
 * is small and dense so that allocation records stay compact. */
struct memtrail_stack {
	__u32 id;
	__u16 depth; /* valid entries of ips */
	__u16 flags; /* MEMTRAIL_STACK_* */
	__u64 ips[MEMTRAIL_MAX_STACK_DEPTH];
};

/* The walk stopped before the outermost frame (whose saved frame pointer is 0): a frame
 * without a frame pointer, an unreadable frame, or the depth limit. The frames shown are
 * right; callers further out are missing. */
#define MEMTRAIL_STACK_TRUNCATED 1

#endif /* MEMTRAIL_ALLOC_EVENTS_H */
