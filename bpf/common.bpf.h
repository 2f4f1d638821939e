/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Headers and helpers shared by memtrail's BPF programs (alloc.bpf.c, paging.bpf.c). */
#ifndef MEMTRAIL_COMMON_BPF_H
#define MEMTRAIL_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

#endif /* MEMTRAIL_COMMON_BPF_H */
