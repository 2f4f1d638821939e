/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ABI shared by userspace and the BPF stack walker: one row of a module's x86-64 unwind table. */
#ifndef MEMTRAIL_UNWIND_TABLE_H
#define MEMTRAIL_UNWIND_TABLE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "abi_layout.h"

/*
 * A module's table is an array of rows sorted by `pc`, strictly increasing. A row applies from
 * its `pc` up to the next row's `pc`; the last row of every address range with call-frame
 * information is followed by a MEMTRAIL_UNWIND_CFA_NONE row, so an address between two
 * functions never borrows the rules of the function before it. To unwind one frame at
 * address `pc`, take the last row whose `pc` is <= pc (binary search: at most 32 steps for a
 * u32 key), then:
 *
 *   cfa       = (cfa kind == RSP ? rsp : rbp) + cfa_offset
 *               (PLT: rsp + cfa_offset + ((pc & 15) >= rbp_offset ? 8 : 0))
 *   caller pc = *(u64 *)(cfa - 8)            the System V x86-64 ABI's return address slot
 *   caller sp = cfa                          DWARF 5 section 6.4: the CFA is the caller's SP
 *   caller bp = rbp kind == AT_CFA ? *(u64 *)(cfa + 8 * rbp_offset)
 *             : rbp kind == UNCHANGED ? rbp : unknown (a caller whose CFA needs it ends there)
 *
 * and look the caller pc up again (minus 1: a return address may be just past the end of the
 * calling function when the call was its last instruction).
 *
 * Widths: `pc` is the ELF virtual address (runtime pc - load bias), which fits 32 bits for
 * every shared object and executable short of 4 GiB of text. `cfa_offset` is unsigned: the CFA
 * lies above the register it is computed from, and the largest frame seen in Debian 12's
 * libc.so.6, libstdc++.so.6 and cc1plus is 33,360 bytes (so s16 would not do; u16 does). The
 * caller's rbp is saved by a push or a move into the callee's register save area: in all of the
 * 525,000 rows of those three binaries whose CFA is rsp- or rbp-based, it sits 8-byte aligned
 * 16 to 48 bytes below the CFA, so an s8 in 8-byte units (-1024..+1016 bytes) covers it with
 * room to spare. Rows that do not fit are emitted as UNSUPPORTED (or with an UNKNOWN rbp) and
 * counted by the builder.
 */
struct memtrail_unwind_row {
	__u32 pc;	  /* first ELF virtual address the row applies to */
	__u16 cfa_offset; /* bytes added to the CFA's base register */
	__u8 rules;	  /* enum memtrail_unwind_cfa | (enum memtrail_unwind_rbp << 4) */
	__s8 rbp_offset;  /* RBP AT_CFA: caller's rbp at CFA + 8 * rbp_offset; PLT: threshold */
};
/* The BPF walker reads a row as one 8-byte scalar (unwind_find_row returns it so). */
MEMTRAIL_ABI_SIZE(memtrail_unwind_row, 8);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_row, cfa_offset, 4);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_row, rules, 6);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_row, rbp_offset, 7);

/* How to find the CFA: the low nibble of `rules`. Every kind but RSP, RBP and PLT ends the
 * walk: the walker reports the stack as truncated there rather than guess a frame. */
enum memtrail_unwind_cfa {
	MEMTRAIL_UNWIND_CFA_NONE = 0,	     /* no call-frame information covers this address */
	MEMTRAIL_UNWIND_CFA_RSP = 1,	     /* CFA = rsp + cfa_offset */
	MEMTRAIL_UNWIND_CFA_RBP = 2,	     /* CFA = rbp + cfa_offset */
	MEMTRAIL_UNWIND_CFA_PLT = 3,	     /* lazy-binding PLT entry: see above */
	MEMTRAIL_UNWIND_CFA_OUTERMOST = 4,   /* return address undefined: the stack's first frame
					      * (_start, a thread's start routine); not an error */
	MEMTRAIL_UNWIND_CFA_UNSUPPORTED = 5, /* rules the walker cannot evaluate (DWARF expression,
					      * other base register, offset out of range...) */
	MEMTRAIL_UNWIND_CFA_SIGNAL = 6,	     /* the signal trampoline (__restore_rt): rsp points at
					      * the kernel's ucontext; the interrupted rbp, rsp and
					      * rip are at rsp + 120, 160 and 168 */
};
#define MEMTRAIL_SIGFRAME_RBP 120
#define MEMTRAIL_SIGFRAME_RSP 160 /* rip follows at +168 */

/* Where the caller's rbp is: the high nibble of `rules`. */
enum memtrail_unwind_rbp {
	/* Not saved by this frame: rbp is callee-saved in the System V ABI, so a frame whose CFI
	 * says nothing about it (or DW_CFA_same_value) has left it as the caller had it. */
	MEMTRAIL_UNWIND_RBP_UNCHANGED = 0,
	MEMTRAIL_UNWIND_RBP_AT_CFA = 1,	 /* saved at CFA + 8 * rbp_offset */
	MEMTRAIL_UNWIND_RBP_UNKNOWN = 2, /* undefined, or a rule the walker cannot evaluate */
};

#define MEMTRAIL_UNWIND_CFA_KIND(row) ((row)->rules & 0xf)
#define MEMTRAIL_UNWIND_RBP_KIND(row) ((row)->rules >> 4)
#define MEMTRAIL_UNWIND_RULES(cfa, rbp) ((cfa) | ((rbp) << 4))

/* Binary search over a table of N rows needs at most this many halvings (N < 2^32). */
#define MEMTRAIL_UNWIND_MAX_SEARCH_STEPS 32

/*
 * Where the walker finds the rows for an address: the executable mappings of one traced
 * process, sorted by `start`, in the unwind_processes map under its tgid. Userspace rewrites the
 * whole value when the process maps or unmaps code (an update replaces the element atomically,
 * so a walk sees either the old list or the new one).
 */
#define MEMTRAIL_UNWIND_MAX_MAPPINGS 512 /* a power of two: the search is bounded by its log */

/* How a frame in a mapping is unwound: the low bits of `method`. */
enum memtrail_unwind_method {
	MEMTRAIL_UNWIND_BY_TABLE = 0,	      /* rows [first_row, first_row + rows) */
	MEMTRAIL_UNWIND_BY_FRAME_POINTER = 1, /* the module keeps frame pointers (auto mode), or
						* it has no table and the mode allows the guess */
	MEMTRAIL_UNWIND_BY_NOTHING = 2,	      /* no table and frame pointers not allowed: the
						* walk ends here, marked MEMTRAIL_TRUNCATED_NO_CFI */
};

/*
 * A module's page index narrows the row search to a few rows: for each 256-byte page of its
 * code, from page `page_base` (its first row's pc >> MEMTRAIL_UNWIND_PAGE_SHIFT) on, the index
 * (within the module's rows) of the first row at or after the page's start (the last index
 * being the row count), stored as `pages` entries of struct memtrail_unwind_page in the
 * unwind_pages map. The last row whose pc <= X, X in page p, lies in [index[p] - 1,
 * index[p + 1]). 8 bytes per 256 bytes of code (libc: 44 KiB).
 */
#define MEMTRAIL_UNWIND_PAGE_SHIFT 8

/* One page's entry in unwind_pages: index[p] and index[p + 1] side by side, so that one lookup
 * gives both bounds (and array map values are 8-byte slots anyway). */
struct memtrail_unwind_page {
	__u32 first_row; /* index[p]: the first row at or after the page's start */
	__u32 end_row;	 /* index[p + 1] */
};
MEMTRAIL_ABI_SIZE(memtrail_unwind_page, 8);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_page, end_row, 4);

struct memtrail_unwind_mapping {
	__u64 start; /* runtime addresses [start, end) */
	__u64 end;
	__u64 bias; /* runtime address - ELF virtual address: what the row pcs are relative to */
	__u32 first_row;
	__u32 rows;
	__u32 method;	  /* enum memtrail_unwind_method */
	__u32 first_page; /* the module's page index in unwind_pages */
	__u32 pages;	  /* 0: no page index (it did not fit): the search covers every row */
	__u32 page_base;
};
MEMTRAIL_ABI_SIZE(memtrail_unwind_mapping, 48);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_mapping, bias, 16);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_mapping, first_row, 24);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_mapping, method, 32);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_mapping, page_base, 44);

struct memtrail_unwind_process {
	__u32 count; /* valid entries of mappings */
	__u32 pad;
	struct memtrail_unwind_mapping mappings[MEMTRAIL_UNWIND_MAX_MAPPINGS];
};
MEMTRAIL_ABI_SIZE(memtrail_unwind_process, 8 + 48 * MEMTRAIL_UNWIND_MAX_MAPPINGS);
MEMTRAIL_ABI_OFFSET(memtrail_unwind_process, mappings, 8);
MEMTRAIL_ABI_ASSERT((MEMTRAIL_UNWIND_MAX_MAPPINGS & (MEMTRAIL_UNWIND_MAX_MAPPINGS - 1)) == 0,
		    "the BPF walker masks mapping indices with MEMTRAIL_UNWIND_MAX_MAPPINGS - 1");

/* The walker's mode, set by userspace before load (--unwind). */
enum memtrail_unwind_mode {
	MEMTRAIL_UNWIND_MODE_FP = 0,	 /* frame pointers only: no table is read */
	MEMTRAIL_UNWIND_MODE_TABLES = 1, /* per mapping, as unwind_processes says (dwarf, auto) */
};

/* Why a walk stopped before the outermost frame: bits 8..11 of memtrail_stack.flags. */
enum memtrail_truncation {
	MEMTRAIL_TRUNCATED_DEPTH = 1,		  /* MEMTRAIL_MAX_STACK_DEPTH frames taken */
	MEMTRAIL_TRUNCATED_NO_CFI = 2,		  /* an address no row describes */
	MEMTRAIL_TRUNCATED_UNSUPPORTED = 3,	  /* a row the walker cannot evaluate */
	MEMTRAIL_TRUNCATED_RBP_UNKNOWN = 4,	  /* the frame needs rbp, and a callee lost it */
	MEMTRAIL_TRUNCATED_UNREADABLE = 5,	  /* stack memory could not be read */
	MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER = 6, /* frame-pointer walk: implausible %rbp */
	MEMTRAIL_TRUNCATED_NO_MAPPING = 7,	  /* an address in no known module (JIT code, or a
						* library mapped since userspace last looked) */
	MEMTRAIL_TRUNCATED_LOOP = 8,		  /* the stack pointer did not move up */
	MEMTRAIL_TRUNCATED_REASONS = 9,
};
#define MEMTRAIL_STACK_REASON_SHIFT 8
#define MEMTRAIL_STACK_REASON_MASK 0xf

#endif /* MEMTRAIL_UNWIND_TABLE_H */
