/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Headers and helpers shared by memtrail's BPF programs (alloc.bpf.c, paging.bpf.c). */
#ifndef MEMTRAIL_COMMON_BPF_H
#define MEMTRAIL_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* The process (thread group) of the current thread. */
static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* The current thread's value in a task-storage map, or NULL; with `flags`
 * BPF_LOCAL_STORAGE_GET_F_CREATE, created (zeroed) if the thread has none yet. Task storage is
 * freed with the thread: a thread that dies between two probes leaves nothing behind. */
static __always_inline void *current_task_storage(void *map, __u64 flags)
{
	return bpf_task_storage_get(map, bpf_get_current_task_btf(), 0, flags);
}

/* Adds `fresh` under `key` unless the key is there already, then looks the key up. Another CPU
 * may add the same key first (-EEXIST): BPF_NOEXIST keeps its value, which the lookup finds.
 * NULL when the map is full (-E2BIG). */
static __always_inline void *map_insert_and_lookup(void *map, const void *key, const void *fresh)
{
	bpf_map_update_elem(map, key, fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* The value under `key` in a hash map, added as `fresh` the first time; NULL when the map is
 * full. */
static __always_inline void *map_lookup_or_insert(void *map, const void *key, const void *fresh)
{
	void *value = bpf_map_lookup_elem(map, key);

	return value ? value : map_insert_and_lookup(map, key, fresh);
}

#endif /* MEMTRAIL_COMMON_BPF_H */
