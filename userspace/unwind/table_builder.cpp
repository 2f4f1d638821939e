// SPDX-License-Identifier: Apache-2.0
// Builds a module's unwind table: libdw frames the CIEs and FDEs, one linear pass runs each
// FDE's CFA program (DWARF 5 section 6.4) and records the rows the x86-64 BPF walker can use.
#include "unwind/table_builder.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <gelf.h>
#include <libelf.h>

#include <algorithm>
#include <limits>
#include <unordered_map>

#include "common/error.h"
#include "inspect/elf_file.h"

namespace memtrail::unwind {
namespace {

// DWARF register numbers of the System V x86-64 psABI (figure 3.36).
constexpr uint64_t kRegRbp = 6;
constexpr uint64_t kRegRsp = 7;
constexpr uint64_t kRegRip = 16;

// The return address slot: `call` pushes it right below the caller's stack pointer, which is
// the CFA by definition, so every x86-64 CIE says ra = [CFA - 8].
constexpr int64_t kReturnAddressOffset = -8;

// DW_CFA_remember_state nesting one CFA program may reach (GCC's epilogues use one or two).
constexpr size_t kMaxRememberedStates = 64;

// Bounds-checked little-endian reads over a byte range; any overrun sets `failed` and reads 0,
// so one check after a group of reads is enough.
class Reader {
 public:
  Reader(const uint8_t* begin, const uint8_t* end) : pos_(begin), end_(end) {}

  bool at_end() const { return pos_ >= end_; }
  bool failed() const { return failed_; }
  const uint8_t* pos() const { return pos_; }

  uint64_t fixed(size_t size) {
    if (static_cast<size_t>(end_ - pos_) < size) return fail();
    uint64_t value = 0;
    for (size_t i = 0; i < size; ++i) value |= static_cast<uint64_t>(pos_[i]) << (8 * i);
    pos_ += size;
    return value;
  }
  uint8_t u8() { return static_cast<uint8_t>(fixed(1)); }

  uint64_t uleb() {
    uint64_t value = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (pos_ >= end_ || shift >= 64) return fail();
      uint8_t byte = *pos_++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  }
  int64_t sleb() {
    uint64_t value = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (pos_ >= end_ || shift >= 64) return static_cast<int64_t>(fail());
      uint8_t byte = *pos_++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        if (shift + 7 < 64 && (byte & 0x40)) value |= ~uint64_t{0} << (shift + 7);
        return static_cast<int64_t>(value);
      }
    }
  }
  // A DWARF block: ULEB128 length, then that many bytes.
  std::span<const uint8_t> block() {
    uint64_t size = uleb();
    if (failed_ || static_cast<uint64_t>(end_ - pos_) < size) {
      fail();
      return {};
    }
    std::span<const uint8_t> bytes(pos_, size);
    pos_ += size;
    return bytes;
  }

 private:
  uint64_t fail() {
    failed_ = true;
    pos_ = end_;
    return 0;
  }

  const uint8_t* pos_;
  const uint8_t* end_;
  bool failed_ = false;
};

// One CFI section as mapped: .eh_frame or .debug_frame.
struct CfiSection {
  Elf_Data* data = nullptr;
  uint64_t address = 0;  // sh_addr: the base of DW_EH_PE_pcrel pointers
  bool eh_frame = false;

  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data->d_buf); }
  uint64_t address_of(const uint8_t* p) const { return address + (p - bytes()); }
};

// Reads a pointer in the DW_EH_PE encoding of the LSB (Linux Standard Base Core, section
// 10.5.1). FDE addresses only ever use absolute or pc-relative values; anything else (text-,
// data-, function-relative, aligned, indirect) is refused rather than guessed.
std::optional<uint64_t> read_encoded(Reader& reader, uint8_t encoding, const CfiSection& section) {
  if (encoding == DW_EH_PE_omit) return std::nullopt;
  const uint8_t* field = reader.pos();
  uint64_t value = 0;
  switch (encoding & 0x0f) {
    case DW_EH_PE_absptr:
      value = reader.fixed(8);
      break;
    case DW_EH_PE_uleb128:
      value = reader.uleb();
      break;
    case DW_EH_PE_udata2:
      value = reader.fixed(2);
      break;
    case DW_EH_PE_udata4:
      value = reader.fixed(4);
      break;
    case DW_EH_PE_udata8:
      value = reader.fixed(8);
      break;
    case DW_EH_PE_sleb128:
      value = static_cast<uint64_t>(reader.sleb());
      break;
    case DW_EH_PE_sdata2:
      value = static_cast<uint64_t>(static_cast<int16_t>(reader.fixed(2)));
      break;
    case DW_EH_PE_sdata4:
      value = static_cast<uint64_t>(static_cast<int32_t>(reader.fixed(4)));
      break;
    case DW_EH_PE_sdata8:
      value = reader.fixed(8);
      break;
    default:
      return std::nullopt;
  }
  if (reader.failed()) return std::nullopt;
  switch (encoding & 0xf0) {
    case DW_EH_PE_absptr:
      return value;
    case DW_EH_PE_pcrel:
      return value + section.address_of(field);
    default:
      return std::nullopt;
  }
}

// What a CIE contributes to its FDEs.
struct Cie {
  bool usable = false;
  uint64_t code_alignment = 1;
  int64_t data_alignment = -8;
  uint64_t return_address_register = kRegRip;
  uint8_t fde_encoding = DW_EH_PE_absptr;  // .eh_frame's 'R' augmentation
  bool sized_augmentation = false;         // 'z': FDEs carry a ULEB128-sized augmentation block
  bool signal_frame = false;               // 'S': the FDEs describe a signal trampoline
  const uint8_t* initial_instructions = nullptr;
  const uint8_t* initial_instructions_end = nullptr;
};

// Decodes the augmentation of a CIE as GCC and LLVM write it (LSB Core section 10.6.1.1):
// "z" first, then 'R' (FDE pointer encoding), 'L' (LSDA encoding), 'P' (personality),
// 'S' (signal frame). Unknown letters make the CIE unusable: their data could be anywhere.
Cie parse_cie(const Dwarf_CIE& entry, const CfiSection& section) {
  Cie cie;
  cie.code_alignment = entry.code_alignment_factor;
  cie.data_alignment = entry.data_alignment_factor;
  cie.return_address_register = entry.return_address_register;
  cie.initial_instructions = entry.initial_instructions;
  cie.initial_instructions_end = entry.initial_instructions_end;
  // .debug_frame addresses are plain target addresses: 8 bytes in an ELFCLASS64 file.
  cie.fde_encoding = DW_EH_PE_absptr;
  const char* augmentation = entry.augmentation;
  if (augmentation[0] == '\0') {
    cie.usable = true;
    return cie;
  }
  if (augmentation[0] != 'z' || entry.augmentation_data == nullptr) return cie;
  cie.sized_augmentation = true;
  Reader data(entry.augmentation_data, entry.augmentation_data + entry.augmentation_data_size);
  for (const char* letter = augmentation + 1; *letter != '\0'; ++letter) {
    switch (*letter) {
      case 'R':
        cie.fde_encoding = data.u8();
        break;
      case 'L':
        data.u8();
        break;
      case 'P': {
        uint8_t encoding = data.u8();
        // The personality pointer's value does not matter here, only its size; an indirect
        // pointer is the same size as a direct one.
        if (!read_encoded(data, encoding & 0x7f, section)) return cie;
        break;
      }
      case 'S':
        cie.signal_frame = true;
        break;  // see match_signal_frame_expression
      default:
        return cie;
    }
  }
  cie.usable = !data.failed();
  return cie;
}

// The rule for the CFA and for the two registers the walker tracks, as DWARF states them.
struct CfaRule {
  enum Kind : uint8_t { kUndefined, kRegister, kPlt, kSignal, kExpression } kind = kUndefined;
  uint64_t reg = 0;
  int64_t offset = 0;
  uint8_t plt_threshold = 0;
  bool operator==(const CfaRule&) const = default;
};

struct RegisterRule {
  // kUnspecified: no rule in the CIE or FDE. kUndefined: DW_CFA_undefined. kOther: register,
  // val_offset, expression and val_expression rules.
  enum Kind : uint8_t { kUnspecified, kSameValue, kUndefined, kOffset, kOther } kind = kUnspecified;
  int64_t offset = 0;
  bool operator==(const RegisterRule&) const = default;
};

struct FrameState {
  CfaRule cfa;
  RegisterRule rbp;
  RegisterRule ra;
};

// Recognizes the CFA expression that binutils' ld writes for lazy-binding PLT entries
// (elf_x86_64_eh_frame_lazy_plt and its IBT variants):
//   DW_OP_breg7 (rsp) A; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_litT; DW_OP_ge;
//   DW_OP_lit3; DW_OP_shl; DW_OP_plus
// i.e. CFA = rsp + A + ((rip & 15) >= T ? 8 : 0): each 16-byte entry has pushed its relocation
// index from byte T on. Returns false for any other expression.
bool match_plt_expression(std::span<const uint8_t> expression, CfaRule& rule) {
  Reader ops(expression.data(), expression.data() + expression.size());
  auto small_constant = [&ops]() -> int {
    uint8_t op = ops.u8();
    if (op >= DW_OP_lit0 && op <= DW_OP_lit31) return op - DW_OP_lit0;
    if (op == DW_OP_const1u) return ops.u8();
    return -1;
  };
  if (ops.u8() != DW_OP_breg7) return false;
  int64_t base = ops.sleb();
  if (ops.u8() != DW_OP_breg16 || ops.sleb() != 0) return false;
  if (small_constant() != 15 || ops.u8() != DW_OP_and) return false;
  int threshold = small_constant();
  if (threshold < 0 || threshold > 15 || ops.u8() != DW_OP_ge) return false;
  if (small_constant() != 3 || ops.u8() != DW_OP_shl || ops.u8() != DW_OP_plus) return false;
  if (ops.failed() || !ops.at_end()) return false;
  rule = {CfaRule::kPlt, kRegRsp, base, static_cast<uint8_t>(threshold)};
  return true;
}

// Recognizes the CFA expression of the x86-64 Linux signal trampoline (glibc's __restore_rt,
// in an FDE of a CIE with the 'S' augmentation): DW_OP_breg7 (rsp) 160; DW_OP_deref, i.e. the
// interrupted rsp saved in the kernel's rt_sigframe, whose ucontext starts at the trampoline's
// rsp (sigcontext at +40: rbp +80, rsp +120, rip +128). The walker reads those three registers
// from the frame (CfaKind::kSignal) rather than evaluate DWARF expressions.
bool match_signal_frame_expression(std::span<const uint8_t> expression) {
  Reader ops(expression.data(), expression.data() + expression.size());
  if (ops.u8() != DW_OP_breg7 || ops.sleb() != 160 || ops.u8() != DW_OP_deref) return false;
  return !ops.failed() && ops.at_end();
}

// Turns DWARF's rules at one address into the walker's row, counting what does not fit.
Row encode_row(const FrameState& state, bool malformed, UnwindTable& table) {
  auto stop = [](CfaKind kind) { return Row{0, 0, kind, RbpKind::kUnchanged, 0}; };
  ++table.dwarf_rows;
  UnsupportedCounts& why = table.unsupported;
  auto unsupported = [&](uint64_t& reason) {
    ++reason;
    ++table.unsupported_rows;
    return stop(CfaKind::kUnsupported);
  };
  if (malformed) return unsupported(why.malformed);
  // DW_CFA_undefined on the return address column marks the outermost frame (glibc's _start,
  // clone's child): the stack ends here, by design.
  if (state.ra.kind == RegisterRule::kUndefined) {
    ++table.outermost_rows;
    return stop(CfaKind::kOutermost);
  }

  // The trampoline's return address and rbp rules are expressions too: the row says it all.
  if (state.cfa.kind == CfaRule::kSignal) {
    ++table.signal_rows;
    return stop(CfaKind::kSignal);
  }
  Row row;
  CfaKind cfa_kind;
  switch (state.cfa.kind) {
    case CfaRule::kRegister:
      if (state.cfa.reg == kRegRsp) {
        cfa_kind = CfaKind::kRsp;
      } else if (state.cfa.reg == kRegRbp) {
        cfa_kind = CfaKind::kRbp;
      } else {
        return unsupported(why.cfa_register);
      }
      break;
    case CfaRule::kPlt:
      cfa_kind = CfaKind::kPlt;
      row.rbp_offset = static_cast<int8_t>(state.cfa.plt_threshold);
      break;
    case CfaRule::kExpression:
      return unsupported(why.cfa_expression);
    case CfaRule::kUndefined:
    default:
      return unsupported(why.malformed);  // an FDE row without any CFA rule
  }
  if (state.cfa.offset < 0 || state.cfa.offset > std::numeric_limits<uint16_t>::max())
    return unsupported(why.cfa_offset_range);
  if (state.ra.kind != RegisterRule::kOffset || state.ra.offset != kReturnAddressOffset)
    return unsupported(why.return_address);
  row.cfa_offset = static_cast<uint16_t>(state.cfa.offset);
  if (cfa_kind == CfaKind::kPlt) ++table.plt_rows;

  RbpKind rbp_kind = RbpKind::kUnknown;
  switch (state.rbp.kind) {
    // rbp is callee-saved (psABI section 3.2.1): without a rule, the frame has not changed it.
    case RegisterRule::kUnspecified:
    case RegisterRule::kSameValue:
      rbp_kind = RbpKind::kUnchanged;
      break;
    case RegisterRule::kUndefined:
      break;
    case RegisterRule::kOffset: {
      int64_t slots = state.rbp.offset / 8;
      // A PLT row's rbp_offset holds its threshold; PLT stubs never save rbp anyway.
      if (cfa_kind == CfaKind::kPlt) {
        ++why.rbp_rule;
      } else if (state.rbp.offset % 8 != 0 || slots < std::numeric_limits<int8_t>::min() ||
                 slots > std::numeric_limits<int8_t>::max()) {
        ++why.rbp_offset_range;
      } else {
        rbp_kind = RbpKind::kAtCfa;
        row.rbp_offset = static_cast<int8_t>(slots);
      }
      break;
    }
    case RegisterRule::kOther:
    default:
      ++why.rbp_rule;
      break;
  }
  row.cfa = cfa_kind;
  row.rbp = rbp_kind;
  return row;
}

// A row of a CFA program: the rules from `location` up to the next row.
struct StateRow {
  uint64_t location;
  FrameState state;
};

// Runs the CFA program of one FDE (DWARF 5 section 6.4.2) after its CIE's, tracking only the
// CFA, rbp and the return address column: the only rules the walker uses.
class CfaProgram {
 public:
  CfaProgram(const Cie& cie, const CfiSection& section) : cie_(cie), section_(section) {}

  // Runs the CIE's initial instructions, which set the state every DW_CFA_restore returns to.
  // False if they cannot be decoded.
  bool run_initial() {
    in_cie_ = true;
    saved_.clear();
    bool ok = run(cie_.initial_instructions, cie_.initial_instructions_end, initial_);
    in_cie_ = false;
    return ok;
  }
  // The state run_initial() left, to start the next FDE of the same CIE from: a CIE's
  // instructions are run once, however many FDEs share it (a file could otherwise make the
  // builder run one long CIE for each of its FDEs: their product in time).
  const FrameState& initial_state() const { return initial_; }
  void set_initial_state(const FrameState& state) { initial_ = state; }

  // Runs one FDE's instructions for [start, end) and stores its rows in `rows` (cleared first),
  // rows starting at or past `end` left out. False if an instruction could not be decoded: the
  // rows before it stand, and the last row's location is where the FDE stopped making sense.
  bool run_fde(const uint8_t* begin, const uint8_t* end, uint64_t start, uint64_t end_pc,
               std::vector<StateRow>& rows) {
    rows_ = &rows;
    rows.clear();
    saved_.clear();
    location_ = start;
    end_ = end_pc;
    FrameState state = initial_;
    bool ok = run(begin, end, state);
    if (location_ < end_) rows.push_back({location_, state});
    return ok;
  }

 private:
  // Moves to `next`; the rules so far form the row [location_, next).
  bool advance(uint64_t next, const FrameState& state) {
    if (in_cie_ || next < location_) return false;  // rows only move forward (DWARF 6.4.2.1)
    if (next > location_ && location_ < end_) rows_->push_back({location_, state});
    location_ = next;
    return true;
  }

  RegisterRule* tracked(uint64_t reg, FrameState& state) {
    if (reg == kRegRbp) return &state.rbp;
    if (reg == cie_.return_address_register) return &state.ra;
    return nullptr;
  }
  const RegisterRule* initial_rule(uint64_t reg) const {
    if (reg == kRegRbp) return &initial_.rbp;
    return &initial_.ra;
  }

  bool run(const uint8_t* begin, const uint8_t* end, FrameState& state) {
    Reader in(begin, end);
    const int64_t daf = cie_.data_alignment;
    const uint64_t caf = cie_.code_alignment;
    while (!in.at_end()) {
      uint8_t op = in.u8();
      uint8_t low = op & 0x3f;
      switch (op & 0xc0) {
        case DW_CFA_advance_loc:
          if (!advance(location_ + low * caf, state)) return false;
          continue;
        case DW_CFA_offset:
          set_rule(low, {RegisterRule::kOffset, static_cast<int64_t>(in.uleb()) * daf}, state);
          if (in.failed()) return false;
          continue;
        case DW_CFA_restore:
          restore(low, state);
          continue;
        default:
          break;
      }
      switch (op) {
        case DW_CFA_nop:
          break;
        case DW_CFA_set_loc: {
          auto next = read_encoded(in, cie_.fde_encoding, section_);
          if (!next || !advance(*next, state)) return false;
          break;
        }
        case DW_CFA_advance_loc1:
          if (!advance(location_ + in.fixed(1) * caf, state)) return false;
          break;
        case DW_CFA_advance_loc2:
          if (!advance(location_ + in.fixed(2) * caf, state)) return false;
          break;
        case DW_CFA_advance_loc4:
          if (!advance(location_ + in.fixed(4) * caf, state)) return false;
          break;
        case DW_CFA_offset_extended: {
          uint64_t reg = in.uleb();
          set_rule(reg, {RegisterRule::kOffset, static_cast<int64_t>(in.uleb()) * daf}, state);
          break;
        }
        case DW_CFA_offset_extended_sf: {
          uint64_t reg = in.uleb();
          set_rule(reg, {RegisterRule::kOffset, in.sleb() * daf}, state);
          break;
        }
        case DW_CFA_GNU_negative_offset_extended: {
          uint64_t reg = in.uleb();
          set_rule(reg, {RegisterRule::kOffset, -static_cast<int64_t>(in.uleb()) * daf}, state);
          break;
        }
        case DW_CFA_restore_extended:
          restore(in.uleb(), state);
          break;
        case DW_CFA_undefined:
          set_rule(in.uleb(), {RegisterRule::kUndefined, 0}, state);
          break;
        case DW_CFA_same_value:
          set_rule(in.uleb(), {RegisterRule::kSameValue, 0}, state);
          break;
        case DW_CFA_register:
          set_rule(in.uleb(), {RegisterRule::kOther, 0}, state);
          in.uleb();
          break;
        case DW_CFA_val_offset:
        case DW_CFA_val_offset_sf:
          set_rule(in.uleb(), {RegisterRule::kOther, 0}, state);
          in.uleb();  // same width as an sleb: only skipped
          break;
        case DW_CFA_expression:
        case DW_CFA_val_expression:
          set_rule(in.uleb(), {RegisterRule::kOther, 0}, state);
          in.block();
          break;
        // DWARF 5 section 6.4.2.4: remember/restore_state push and pop the whole row,
        // CFA included, as GCC's epilogues expect.
        case DW_CFA_remember_state:
          // Compilers nest a few; a file that pushes more is not describing real code, and
          // each state costs memory.
          if (saved_.size() >= kMaxRememberedStates) return false;
          saved_.push_back(state);
          break;
        case DW_CFA_restore_state:
          if (saved_.empty()) return false;
          state = saved_.back();
          saved_.pop_back();
          break;
        case DW_CFA_def_cfa: {
          uint64_t reg = in.uleb();
          state.cfa = {CfaRule::kRegister, reg, static_cast<int64_t>(in.uleb())};
          break;
        }
        case DW_CFA_def_cfa_sf: {
          uint64_t reg = in.uleb();
          state.cfa = {CfaRule::kRegister, reg, in.sleb() * daf};
          break;
        }
        // These two change one half of a register-based rule; after an expression they are
        // invalid (DWARF 5 section 6.4.2.2), which the row reports as unsupported.
        case DW_CFA_def_cfa_register: {
          uint64_t reg = in.uleb();
          if (state.cfa.kind != CfaRule::kRegister) return false;
          state.cfa.reg = reg;
          break;
        }
        case DW_CFA_def_cfa_offset: {
          int64_t offset = static_cast<int64_t>(in.uleb());
          if (state.cfa.kind != CfaRule::kRegister) return false;
          state.cfa.offset = offset;
          break;
        }
        case DW_CFA_def_cfa_offset_sf: {
          int64_t offset = in.sleb() * daf;
          if (state.cfa.kind != CfaRule::kRegister) return false;
          state.cfa.offset = offset;
          break;
        }
        case DW_CFA_def_cfa_expression: {
          std::span<const uint8_t> expression = in.block();
          if (cie_.signal_frame && match_signal_frame_expression(expression)) {
            state.cfa = {CfaRule::kSignal};
          } else if (!match_plt_expression(expression, state.cfa)) {
            state.cfa = {CfaRule::kExpression};
          }
          break;
        }
        case DW_CFA_GNU_args_size:
          in.uleb();
          break;  // stack adjustment for landing pads only
        default:
          return false;  // DW_CFA_GNU_window_save and vendor opcodes of other targets
      }
      if (in.failed()) return false;
    }
    return !in.failed();
  }

  void set_rule(uint64_t reg, RegisterRule rule, FrameState& state) {
    if (RegisterRule* target = tracked(reg, state)) *target = rule;
  }
  void restore(uint64_t reg, FrameState& state) {
    if (RegisterRule* target = tracked(reg, state)) *target = *initial_rule(reg);
  }

  const Cie& cie_;
  const CfiSection& section_;
  uint64_t location_ = 0;
  uint64_t end_ = 0;
  bool in_cie_ = false;
  FrameState initial_;
  std::vector<FrameState> saved_;
  std::vector<StateRow>* rows_ = nullptr;
};

// An FDE whose address range is known, waiting to be run.
struct FdeRef {
  uint64_t start;
  uint64_t end;
  int priority;  // 0: .eh_frame, 1: .debug_frame (only where .eh_frame has nothing)
  const CfiSection* section;
  const Cie* cie;
  const uint8_t* instructions;
  const uint8_t* instructions_end;
};

struct AddressRange {
  uint64_t begin, end;
};

class FdeCollector {
 public:
  FdeCollector(const unsigned char* ident, std::vector<AddressRange> text, UnwindTable& table)
      : ident_(ident), text_(std::move(text)), table_(table) {}

  // Walks every CIE and FDE of `section` (dwarf_next_cfi does the framing: lengths, 64-bit
  // DWARF, the two sections' CIE pointer conventions) and keeps the usable FDEs.
  void collect(const CfiSection& section, int priority) {
    auto& cies = cies_[priority];
    Dwarf_Off offset = 0;
    for (;;) {
      Dwarf_Off next = 0;
      Dwarf_CFI_Entry entry;
      int status = dwarf_next_cfi(ident_, section.data, section.eh_frame, offset, &next, &entry);
      if (status > 0) break;  // end of section, or .eh_frame's zero terminator
      if (status < 0) {
        ++table_.skipped.unreadable_sections;  // framing broken: what follows cannot be found
        break;
      }
      offset = next;
      if (dwarf_cfi_cie_p(&entry)) continue;  // CIEs are parsed when an FDE names them

      auto [it, inserted] = cies.try_emplace(entry.fde.CIE_pointer);
      if (inserted) it->second = load_cie(section, entry.fde.CIE_pointer);
      const Cie& cie = it->second;
      if (!cie.usable) {
        ++table_.skipped.bad_cie;
        continue;
      }
      Reader reader(entry.fde.start, entry.fde.end);
      auto start = read_encoded(reader, cie.fde_encoding, section);
      // The range has the pointer's size and signedness but is never relative (LSB 10.6.1.2).
      auto range = read_encoded(reader, cie.fde_encoding & 0x0f, section);
      if (cie.sized_augmentation) reader.block();  // the LSDA pointer: not needed to unwind
      if (!start || !range || reader.failed() || *start + *range < *start) {
        ++table_.skipped.bad_cie;
        continue;
      }
      if (*range == 0) {
        ++table_.skipped.empty;
        continue;
      }
      uint64_t end = *start + *range;
      bool in_text = std::any_of(text_.begin(), text_.end(), [&](const AddressRange& r) {
        return *start >= r.begin && end <= r.end;
      });
      if (!in_text) {
        ++table_.skipped.outside_text;
        continue;
      }
      fdes_.push_back({*start, end, priority, &section, &cie, reader.pos(), entry.fde.end});
    }
  }

  std::vector<FdeRef>& fdes() { return fdes_; }

 private:
  Cie load_cie(const CfiSection& section, Dwarf_Off offset) {
    Dwarf_Off next = 0;
    Dwarf_CFI_Entry entry;
    if (dwarf_next_cfi(ident_, section.data, section.eh_frame, offset, &next, &entry) != 0 ||
        !dwarf_cfi_cie_p(&entry))
      return {};
    return parse_cie(entry.cie, section);
  }

  const unsigned char* ident_;
  std::vector<AddressRange> text_;
  UnwindTable& table_;
  // Per section, by section offset. Node-based, so FdeRef::cie pointers stay valid.
  std::unordered_map<Dwarf_Off, Cie> cies_[2];
  std::vector<FdeRef> fdes_;
};

// Appends the row starting at `pc`, keeping the table sorted, strictly increasing and merged.
void append_row(std::vector<Row>& rows, uint64_t pc, Row row, UnwindTable& table) {
  if (pc > std::numeric_limits<uint32_t>::max()) {
    if (row.cfa != CfaKind::kNone) {
      ++table.unsupported.pc_range;
      ++table.unsupported_rows;
    }
    return;
  }
  row.pc = static_cast<uint32_t>(pc);
  // Only an FDE's first row can meet an earlier row's address: the NONE row that ended the
  // previous FDE, which it replaces.
  if (!rows.empty() && rows.back().pc == row.pc) rows.pop_back();
  if (!rows.empty()) {
    const Row& last = rows.back();
    if (last.cfa == row.cfa && last.rbp == row.rbp && last.cfa_offset == row.cfa_offset &&
        last.rbp_offset == row.rbp_offset)
      return;
  }
  rows.push_back(row);
}

struct SectionLookup {
  std::optional<CfiSection> eh_frame;
  std::optional<CfiSection> debug_frame;
};

SectionLookup find_cfi_sections(const inspect::ElfFile& elf, UnwindTable& table) {
  SectionLookup found;
  for (bool eh : {true, false}) {
    auto section = elf.find_section(eh ? ".eh_frame" : ".debug_frame");
    if (!section || section->header.sh_type == SHT_NOBITS) continue;
    // A separate debug-info file or `objcopy --compress-debug-sections` compresses
    // .debug_frame; section_data inflates it.
    Elf_Data* data = elf.section_data(*section);
    if (!data || !data->d_buf || data->d_size == 0) {
      if (!data) ++table.skipped.unreadable_sections;
      continue;
    }
    (eh ? found.eh_frame : found.debug_frame) = CfiSection{data, section->header.sh_addr, eh};
  }
  return found;
}

}  // namespace

UnwindTable build_unwind_table(const std::string& elf_path) {
  return build_unwind_table(inspect::ElfFile::open(elf_path));
}

UnwindTable build_unwind_table(const inspect::ElfFile& elf) {
  // The section data the FDEs point into lives as long as `elf`, which outlives this call.
  // Rows hold x86-64 registers and the 8-byte return address slot: another machine's CFI
  // would be misread, not merely unsupported.
  if (!elf.is_x86_64())
    throw Error(elf.path() + " is not an x86-64 ELF file (e_machine " +
                std::to_string(elf.header().e_machine) + "): memtrail unwinds x86-64 code only");

  UnwindTable table;
  table.segments = elf.load_segments();
  table.build_id = elf.build_id();
  std::vector<AddressRange> text;  // where FDEs belong: the executable segments
  for (const LoadSegment& segment : table.segments) {
    if (segment.executable) text.push_back({segment.vaddr, segment.vaddr + segment.memory_size});
  }
  SectionLookup sections = find_cfi_sections(elf, table);
  if (!sections.eh_frame && !sections.debug_frame) {
    table.no_cfi_reason = "no .eh_frame or .debug_frame section with contents";
    return table;
  }

  FdeCollector collector(elf.header().e_ident, std::move(text), table);
  if (sections.eh_frame) collector.collect(*sections.eh_frame, 0);
  if (sections.debug_frame) collector.collect(*sections.debug_frame, 1);

  // By address, .eh_frame first: it is what the program's own unwinder uses, so where both
  // sections describe a function, .eh_frame's rules are the ones known to be right at run time.
  std::vector<FdeRef>& fdes = collector.fdes();
  std::sort(fdes.begin(), fdes.end(), [](const FdeRef& a, const FdeRef& b) {
    return a.start != b.start ? a.start < b.start : a.priority < b.priority;
  });

  const Row none{0, 0, CfaKind::kNone, RbpKind::kUnchanged, 0};
  std::vector<StateRow> state_rows;
  // Each CIE's initial state, computed at its first FDE (ok: its instructions decoded).
  struct InitialState {
    bool ok = false;
    FrameState state;
  };
  std::unordered_map<const Cie*, InitialState> initial_states;
  uint64_t covered_end = 0;
  for (const FdeRef& fde : fdes) {
    if (fde.start < covered_end) {
      ++table.skipped.overlapping;
      continue;
    }
    if (table.rows.size() >= kMaxRowsPerFile) {
      ++table.skipped.beyond_row_limit;
      continue;
    }
    covered_end = fde.end;
    ++table.fdes;
    if (fde.priority == 1) table.used_debug_frame = true;

    CfaProgram program(*fde.cie, *fde.section);
    auto [initial, first_use] = initial_states.try_emplace(fde.cie);
    if (first_use) {
      initial->second.ok = program.run_initial();
      initial->second.state = program.initial_state();
    } else {
      program.set_initial_state(initial->second.state);
    }
    state_rows.clear();
    bool ok = initial->second.ok && program.run_fde(fde.instructions, fde.instructions_end,
                                                    fde.start, fde.end, state_rows);
    if (!ok && state_rows.empty()) state_rows.push_back({fde.start, FrameState{}});
    bool frame_pointer = false;
    for (size_t i = 0; i < state_rows.size(); ++i) {
      // The row where decoding stopped says nothing reliable about the rest of the FDE.
      bool malformed = !ok && i + 1 == state_rows.size();
      Row row = encode_row(state_rows[i].state, malformed, table);
      frame_pointer = frame_pointer || row.cfa == CfaKind::kRbp;
      append_row(table.rows, state_rows[i].location, row, table);
    }
    if (frame_pointer) ++table.fdes_with_frame_pointer;
    append_row(table.rows, fde.end, none, table);
  }
  if (table.rows.empty())
    table.no_cfi_reason = "no FDE of .eh_frame or .debug_frame describes executable code";
  if (table.skipped.beyond_row_limit)
    table.limit_reached =
        "its table stops at " + std::to_string(kMaxRowsPerFile) +
        " rows, the most one file may have: " + std::to_string(table.skipped.beyond_row_limit) +
        " functions after them have no rows";
  return table;
}

std::optional<uint64_t> compute_cfa(const Row& row, uint64_t pc, uint64_t rsp, uint64_t rbp) {
  switch (row.cfa) {
    case CfaKind::kRsp:
      return rsp + row.cfa_offset;
    case CfaKind::kRbp:
      return rbp + row.cfa_offset;
    case CfaKind::kPlt:
      return rsp + row.cfa_offset + ((pc & 15) >= static_cast<uint64_t>(row.rbp_offset) ? 8 : 0);
    default:
      return std::nullopt;
  }
}

PageIndex build_page_index(std::span<const Row> rows) {
  PageIndex index;
  if (rows.empty()) return index;
  index.page_base = rows.front().pc >> kPageShift;
  uint64_t pages = (rows.back().pc >> kPageShift) - index.page_base + 1;
  index.first_rows.reserve(pages + 1);
  size_t row = 0;
  for (uint64_t page = 0; page < pages; ++page) {
    uint64_t start = (index.page_base + page) << kPageShift;
    while (row < rows.size() && rows[row].pc < start) ++row;
    index.first_rows.push_back(static_cast<uint32_t>(row));
  }
  index.first_rows.push_back(static_cast<uint32_t>(rows.size()));
  return index;
}

namespace {

// The last row of rows[low, high) whose pc <= pc, by the BPF walker's bounded binary search.
// Invariant: rows[i].pc <= pc for every i < low, rows[i].pc > pc for every i >= high. The step
// bound is what lets the BPF verifier accept the same loop.
std::optional<Row> search_rows(std::span<const Row> rows, uint32_t low, uint32_t high,
                               uint64_t pc) {
  for (int step = 0; step < kMaxSearchSteps && low < high; ++step) {
    uint32_t middle = low + (high - low) / 2;
    if (rows[middle].pc <= pc)
      low = middle + 1;
    else
      high = middle;
  }
  if (low == 0) return std::nullopt;
  return rows[low - 1];
}

}  // namespace

std::optional<Row> find_row_paged(std::span<const Row> rows, const PageIndex& index, uint64_t pc) {
  if (pc > std::numeric_limits<uint32_t>::max()) return std::nullopt;
  uint32_t low = 0, high = static_cast<uint32_t>(rows.size());
  uint64_t page = pc >> kPageShift;
  size_t pages = index.first_rows.empty() ? 0 : index.first_rows.size() - 1;
  if (page >= index.page_base && page - index.page_base < pages) {
    size_t p = page - index.page_base;
    low = index.first_rows[p] ? index.first_rows[p] - 1 : 0;
    high = std::min(index.first_rows[p + 1], high);
  }
  return search_rows(rows, low, high, pc);
}

std::optional<Row> find_row(std::span<const Row> rows, uint64_t pc) {
  if (pc > std::numeric_limits<uint32_t>::max()) return std::nullopt;
  uint32_t low = 0;
  uint32_t high = static_cast<uint32_t>(rows.size());
  return search_rows(rows, low, high, pc);
}

}  // namespace memtrail::unwind
