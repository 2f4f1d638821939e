/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* What memtrail assumes of x86-64: the BPF side's definitions, and where the rest lies. */
#ifndef MEMTRAIL_ARCH_X86_64_BPF_H
#define MEMTRAIL_ARCH_X86_64_BPF_H

/*
 * memtrail traces x86-64 processes on x86-64 only; the top-level CMakeLists.txt refuses to
 * configure for another processor. Porting means revisiting each of these places:
 *
 * BPF side
 * - bpf/CMakeLists.txt compiles with -D__TARGET_ARCH_x86, so that PT_REGS_IP/SP/FP of
 *   bpf_tracing.h read rip, rsp and rbp from a probe's pt_regs (alloc.bpf.c,
 *   alloc/inflight.bpf.h, alloc/regions.bpf.h).
 * - The stack walker (alloc/stack_walk.bpf.h) and the rows it reads (unwind_table.h): the CFA
 *   from rsp or rbp, the return address right below the CFA, rbp-linked frame records of code
 *   built with frame pointers, 16-byte lazy-binding PLT entries, and the offsets of the saved
 *   registers in the kernel's rt_sigframe (MEMTRAIL_SIGFRAME_*).
 * - Python frames (alloc/python_frames.bpf.h): a thread's pthread_self() is its %fs base,
 *   arch_thread_pointer below.
 * - The allocation table (alloc/table.bpf.h, protocol in alloc_events.h) publishes a slot with
 *   stores ordered by compiler barriers alone, compiler_barrier below.
 * - The syscall tracepoints (alloc.bpf.c, alloc/regions.bpf.h) test mmap's flags with the
 *   mman.h values below.
 *
 * Userspace
 * - userspace/inspect/allocator.cpp decodes the start of each allocator function with capstone
 *   (CS_ARCH_X86, CS_MODE_64) to place its entry probe on an instruction x86 uprobes emulate.
 * - userspace/unwind/table_builder.cpp evaluates CFI with the x86-64 psABI's DWARF register
 *   numbers (rbp 6, rsp 7, rip 16) and return address slot (CFA - 8), recognizes the x86-64 PLT
 *   and __restore_rt CFA expressions, and refuses ELF files of another machine.
 * - userspace/tracer/alloc_tracer.cpp reads the allocation table with loads that x86-64 keeps
 *   in order (the reader's side of the same protocol).
 */

#ifndef __TARGET_ARCH_x86
#error "memtrail's BPF programs read x86-64 registers: compile them with -D__TARGET_ARCH_x86"
#endif

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* pthread_self() of the thread `task`: on x86-64, glibc's thread pointer, the %fs base. */
static __always_inline __u64 arch_thread_pointer(struct task_struct *task)
{
	return task->thread.fsbase;
}

/* x86-64 makes stores visible to other CPUs in program order (and the BPF JIT emits them as
 * plain moves): the allocation table's protocol needs only that the compiler keep its stores in
 * the order written. A weakly ordered machine would need release stores here. */
#define compiler_barrier() asm volatile("" ::: "memory")

/* <sys/mman.h> values on x86-64 (the asm-generic ones; vmlinux.h has no macros). */
#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_TYPE 0x0f
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define PROT_NONE 0x0
#define MREMAP_DONTUNMAP 4

#endif /* MEMTRAIL_ARCH_X86_64_BPF_H */
