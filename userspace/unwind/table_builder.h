// SPDX-License-Identifier: Apache-2.0
// Turns one ELF module's call-frame information into the sorted rows the BPF walker reads.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "inspect/elf_file.h"

namespace memtrail::unwind {

// How the walker finds a frame's CFA (the canonical frame address: the caller's stack pointer).
// Every kind but kRsp, kRbp and kPlt ends the walk: the walker reports the stack as truncated
// there rather than guess a frame.
enum class CfaKind : uint8_t {
  kNone,         // no call-frame information covers this address
  kRsp,          // CFA = rsp + cfa_offset
  kRbp,          // CFA = rbp + cfa_offset
  kPlt,          // lazy-binding PLT entry: rsp + cfa_offset, + 8 from byte rbp_offset (pc & 15)
  kOutermost,    // return address undefined: the stack's first frame (_start, a thread's
                 // start routine); not an error
  kUnsupported,  // rules the walker cannot evaluate (DWARF expression, other base register,
                 // offset out of range...)
  kSignal,       // the signal trampoline (__restore_rt): the interrupted registers are read
                 // from the kernel's signal frame
};

// Where the caller's rbp is.
enum class RbpKind : uint8_t {
  // Not saved by this frame: rbp is callee-saved in the System V ABI, so a frame whose CFI
  // says nothing about it (or DW_CFA_same_value) has left it as the caller had it.
  kUnchanged,
  kAtCfa,    // saved at CFA + 8 * rbp_offset
  kUnknown,  // undefined, or a rule the walker cannot evaluate
};

// One row of a module's table, as the builder computes it; the tracer stores it in the
// walker's row map (8 bytes there). A row applies from its `pc` up to the next row's. The
// widths are the walker's: `pc` is the ELF virtual address (runtime pc - load bias), which fits
// 32 bits short of 4 GiB of text; the CFA lies above the register it is computed from, and the
// largest frame seen in Debian 12's libc.so.6, libstdc++.so.6 and cc1plus is 33,360 bytes, so
// `cfa_offset` is a u16; the caller's rbp is saved 8-byte aligned 16 to 48 bytes below the
// CFA in all of their 525,000 rsp- or rbp-based rows, so an s8 in 8-byte units (-1024..+1016
// bytes) covers it with room to spare. Rows that do not fit are emitted as kUnsupported (or
// with a kUnknown rbp) and counted by the builder.
struct Row {
  uint32_t pc = 0;          // first ELF virtual address the row applies to
  uint16_t cfa_offset = 0;  // bytes added to the CFA's base register
  CfaKind cfa = CfaKind::kNone;
  RbpKind rbp = RbpKind::kUnchanged;
  int8_t rbp_offset = 0;  // kAtCfa: caller's rbp at CFA + 8 * rbp_offset; kPlt: the threshold
};

// Parameters of the walker's search that the builder reproduces (the tracer checks that the
// BPF program agrees): pages of the page index are 2^kPageShift bytes of code; a binary
// search over rows takes at most kMaxSearchSteps halvings (fewer than 2^32 rows).
inline constexpr uint32_t kPageShift = 8;
inline constexpr int kMaxSearchSteps = 32;

// Why DWARF rows became UNSUPPORTED rows (or lost their rbp rule), counted per DWARF row before
// adjacent identical rows are merged. None of them is fatal: the walker stops at such a row
// and reports the stack as truncated.
struct UnsupportedCounts {
  uint64_t cfa_expression = 0;    // DW_CFA_def_cfa_expression other than a PLT's (signal frames,
                                  // stack realignment through a DRAP register)
  uint64_t cfa_register = 0;      // CFA based on a register other than rsp or rbp
  uint64_t cfa_offset_range = 0;  // CFA offset negative or above 65535
  uint64_t return_address = 0;    // return address not at CFA-8
  uint64_t pc_range = 0;          // row starts at or above 4 GiB (u32 pc)
  uint64_t malformed = 0;         // rows after an instruction that could not be decoded
  // The row itself is kept, with an UNKNOWN rbp: a caller that needs rbp ends there.
  uint64_t rbp_rule = 0;          // rbp: register, expression or value rule
  uint64_t rbp_offset_range = 0;  // rbp saved unaligned or farther than -1024..+1016 from CFA
};

// What the builder skipped whole, each time with its reason.
struct SkippedFdes {
  uint64_t outside_text = 0;  // FDE not in an executable PT_LOAD (discarded code in .debug_frame)
  uint64_t overlapping = 0;   // FDE starting inside one already taken (.eh_frame wins)
  uint64_t empty = 0;         // FDE covering no address
  uint64_t bad_cie = 0;       // CIE unreadable, an augmentation or pointer encoding this builder
                              // does not know: the FDE's address range cannot be decoded
  uint64_t unreadable_sections = 0;  // a CFI section whose data or framing could not be read
                                     // (from the break on, its FDEs are missing)
  uint64_t beyond_row_limit = 0;     // FDEs after the table reached kMaxRowsPerFile rows
};

// The most rows one file's table may have (128 MiB of rows, 8 times what the walker's map holds
// by default): what one file, however crafted, can cost the builder. Real code stays far
// below: Debian 12's cc1plus, one of its largest binaries, has a few hundred thousand.
inline constexpr uint64_t kMaxRowsPerFile = uint64_t{1} << 24;

// A PT_LOAD segment: how file offsets (what /proc/PID/maps shows) map to ELF virtual addresses
// (what rows are keyed by).
using LoadSegment = inspect::LoadSegment;

struct UnwindTable {
  // Sorted by pc (ELF virtual address: runtime pc - load bias), strictly increasing; adjacent
  // rows differ (identical ones are merged); a NONE row ends every run of described addresses.
  std::vector<Row> rows;
  // Why `rows` is empty although the file was read, e.g. "no .eh_frame or .debug_frame";
  // empty otherwise.
  std::string no_cfi_reason;
  // Why `rows` stops short of the file's CFI (kMaxRowsPerFile); empty when it does not.
  std::string limit_reached;

  uint64_t fdes = 0;              // FDEs turned into rows
  uint64_t dwarf_rows = 0;        // rows of their CFA programs, before merging
  uint64_t plt_rows = 0;          // of which PLT rows
  uint64_t outermost_rows = 0;    // of which OUTERMOST rows (return address undefined)
  uint64_t signal_rows = 0;       // of which SIGNAL rows (the signal trampoline)
  uint64_t unsupported_rows = 0;  // of which UNSUPPORTED rows; reasons below
  UnsupportedCounts unsupported;
  SkippedFdes skipped;
  bool used_debug_frame = false;  // .debug_frame contributed FDEs that .eh_frame lacks
  // FDEs whose CFA is rbp-based at some point: functions that set up a frame pointer.
  uint64_t fdes_with_frame_pointer = 0;

  std::vector<LoadSegment> segments;  // every PT_LOAD, in program-header order
  std::string build_id;               // NT_GNU_BUILD_ID in hex; empty when the file has none

  // Most functions keep a frame pointer (-fno-omit-frame-pointer): a frame-pointer walk is
  // right through this module and cheaper than its table.
  bool keeps_frame_pointers() const { return fdes > 0 && fdes_with_frame_pointer * 2 >= fdes; }
};

// Builds the table of the ELF file `elf` from its .eh_frame and, for functions that .eh_frame
// does not describe, its .debug_frame. Throws memtrail::Error when the file is not an x86-64
// ELF file; a file without call-frame information yields no rows and says why in
// `no_cfi_reason`.
UnwindTable build_unwind_table(const inspect::ElfFile& elf);
// The same for the file at `elf_path` in memtrail's own root (ElfFile::open), which throws
// memtrail::Error when the file cannot be read.
UnwindTable build_unwind_table(const std::string& elf_path);

// The row that applies at ELF virtual address `pc`: the last row whose pc is <= `pc`, found by
// the same binary search the BPF walker performs (bounded by kMaxSearchSteps).
// nullopt before the first row. A NONE row means no CFI covers `pc`.
std::optional<Row> find_row(std::span<const Row> rows, uint64_t pc);

// A module's page index for the BPF walker: for each page of 2^kPageShift bytes from
// `page_base` (its first row's pc >> kPageShift) on, the index of its first row at or after the
// page's start, then the row count. Empty for an empty table. The last row whose pc <= X, X in
// page p, lies in [first_rows[p] - 1, first_rows[p + 1]).
struct PageIndex {
  uint32_t page_base = 0;
  std::vector<uint32_t> first_rows;  // pages + 1 entries
};
PageIndex build_page_index(std::span<const Row> rows);

// find_row narrowed by the page index, the way the BPF walker searches (the two must agree).
std::optional<Row> find_row_paged(std::span<const Row> rows, const PageIndex& index, uint64_t pc);

// The CFA of the frame executing at `pc` given its rsp and rbp, as the BPF walker computes it;
// nullopt for the rows that end the walk (NONE, OUTERMOST, UNSUPPORTED).
std::optional<uint64_t> compute_cfa(const Row& row, uint64_t pc, uint64_t rsp, uint64_t rbp);

}  // namespace memtrail::unwind
