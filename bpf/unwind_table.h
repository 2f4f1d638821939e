/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* ABI shared by userspace and the BPF stack walker: one row of a module's x86-64 unwind table. */
#ifndef MEMTRAIL_UNWIND_TABLE_H
#define MEMTRAIL_UNWIND_TABLE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

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
	__u32 pc;         /* first ELF virtual address the row applies to */
	__u16 cfa_offset; /* bytes added to the CFA's base register */
	__u8 rules;       /* enum memtrail_unwind_cfa | (enum memtrail_unwind_rbp << 4) */
	__s8 rbp_offset;  /* RBP AT_CFA: caller's rbp at CFA + 8 * rbp_offset; PLT: threshold */
};

/* How to find the CFA: the low nibble of `rules`. Every kind but RSP, RBP and PLT ends the
 * walk: the walker reports the stack as truncated there rather than guess a frame. */
enum memtrail_unwind_cfa {
	MEMTRAIL_UNWIND_CFA_NONE = 0,        /* no call-frame information covers this address */
	MEMTRAIL_UNWIND_CFA_RSP = 1,         /* CFA = rsp + cfa_offset */
	MEMTRAIL_UNWIND_CFA_RBP = 2,         /* CFA = rbp + cfa_offset */
	MEMTRAIL_UNWIND_CFA_PLT = 3,         /* lazy-binding PLT entry: see above */
	MEMTRAIL_UNWIND_CFA_OUTERMOST = 4,   /* return address undefined: the stack's first frame
					      * (_start, a thread's start routine); not an error */
	MEMTRAIL_UNWIND_CFA_UNSUPPORTED = 5, /* rules the walker cannot evaluate (DWARF expression,
					      * other base register, offset out of range...) */
};

/* Where the caller's rbp is: the high nibble of `rules`. */
enum memtrail_unwind_rbp {
	/* Not saved by this frame: rbp is callee-saved in the System V ABI, so a frame whose CFI
	 * says nothing about it (or DW_CFA_same_value) has left it as the caller had it. */
	MEMTRAIL_UNWIND_RBP_UNCHANGED = 0,
	MEMTRAIL_UNWIND_RBP_AT_CFA = 1, /* saved at CFA + 8 * rbp_offset */
	MEMTRAIL_UNWIND_RBP_UNKNOWN = 2, /* undefined, or a rule the walker cannot evaluate */
};

#define MEMTRAIL_UNWIND_CFA_KIND(row) ((row)->rules & 0xf)
#define MEMTRAIL_UNWIND_RBP_KIND(row) ((row)->rules >> 4)
#define MEMTRAIL_UNWIND_RULES(cfa, rbp) ((cfa) | ((rbp) << 4))

/* Binary search over a table of N rows needs at most this many halvings (N < 2^32). */
#define MEMTRAIL_UNWIND_MAX_SEARCH_STEPS 32

#ifdef __cplusplus
static_assert(sizeof(struct memtrail_unwind_row) == 8, "the BPF walker reads 8-byte rows");
#endif

#endif /* MEMTRAIL_UNWIND_TABLE_H */
