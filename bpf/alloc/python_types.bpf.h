/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Python objects by type, as the CPython object probes of alloc.bpf.c count them (see struct
 * memtrail_python_type_counts). */
#ifndef MEMTRAIL_ALLOC_PYTHON_TYPES_BPF_H
#define MEMTRAIL_ALLOC_PYTHON_TYPES_BPF_H

#include "common.bpf.h"
#include "alloc_events.h"

const volatile struct memtrail_python_type_layout python_type_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct memtrail_python_type_key);
	__type(value, struct memtrail_python_type_counts);
} python_types SEC(".maps");

#endif /* MEMTRAIL_ALLOC_PYTHON_TYPES_BPF_H */
