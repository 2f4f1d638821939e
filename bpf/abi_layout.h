/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Layout checks for the structs the BPF programs share with userspace, in C and in C++. */
#ifndef MEMTRAIL_ABI_LAYOUT_H
#define MEMTRAIL_ABI_LAYOUT_H

/* The ABI headers (alloc_events.h, unwind_table.h, paging_events.h) are compiled by clang for
 * the BPF target and by g++ (and gcc) for userspace, which reads the same bytes through map
 * lookups, memory-mapped arrays and the skeletons' .bss and .rodata. Each struct they share is
 * checked here by both compilers: a field added, moved or resized fails the build on the side
 * that no longer matches, instead of corrupting what the other side reads. */
#ifdef __cplusplus
#define MEMTRAIL_ABI_ASSERT(condition, message) static_assert(condition, message)
#else
#define MEMTRAIL_ABI_ASSERT(condition, message) _Static_assert(condition, message)
#endif

#define MEMTRAIL_ABI_SIZE(type, size)                                                              \
	MEMTRAIL_ABI_ASSERT(sizeof(struct type) == (size),                                         \
			    "struct " #type ": BPF and userspace expect " #size " bytes")
#define MEMTRAIL_ABI_OFFSET(type, field, offset)                                                   \
	MEMTRAIL_ABI_ASSERT(__builtin_offsetof(struct type, field) == (offset),                    \
			    "struct " #type ": BPF and userspace expect " #field " at " #offset)

#endif /* MEMTRAIL_ABI_LAYOUT_H */
