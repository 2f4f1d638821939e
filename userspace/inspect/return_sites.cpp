// SPDX-License-Identifier: Apache-2.0
// Finds and proves the return sites of an allocation function by abstract interpretation.
#include "inspect/return_sites.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "inspect/x86_code.h"

namespace memtrail::inspect {
namespace {

constexpr int kRax = 0, kRcx = 1, kRdx = 2, kRbx = 3, kRsp = 4, kRbp = 5, kRsi = 6, kRdi = 7;
constexpr int kNoRegister = -1;
// Paths explored per proof: glibc's malloc needs a few thousand states.
constexpr size_t kMaxStates = 200000;
// Rounds of choosing sites and re-verifying before giving up.
constexpr int kMaxRounds = 64;

// A site on a conditional jump records on both of its edges, or on one only: its program
// evaluates the jump's condition from the flags (jemalloc's malloc: the je on its cache bin's
// low-water mark sees the block on the edge that falls through to the return, and an empty bin
// on the other, which ends in the slow path). A chosen site is its pointer register with the
// edge in the bits above it (edge_site_choice).
enum Edge : int { kBothEdges = 0, kTakenEdge = 1, kFallthroughEdge = 2 };
constexpr int kEdgeShift = 4;
int edge_site_choice(int reg, Edge edge) { return reg | edge << kEdgeShift; }
int pointer_of(int choice) { return choice & 15; }
Edge edge_of(int choice) { return static_cast<Edge>(choice >> kEdgeShift); }

// The condition (x86 condition code, as in jcc 0x70 + code) under which a conditional jump is
// taken; nullopt for jumps that test no flags (jrcxz, loop).
std::optional<uint8_t> condition_code(unsigned id) {
  switch (id) {
    case X86_INS_JO:
      return 0;
    case X86_INS_JNO:
      return 1;
    case X86_INS_JB:
      return 2;
    case X86_INS_JAE:
      return 3;
    case X86_INS_JE:
      return 4;
    case X86_INS_JNE:
      return 5;
    case X86_INS_JBE:
      return 6;
    case X86_INS_JA:
      return 7;
    case X86_INS_JS:
      return 8;
    case X86_INS_JNS:
      return 9;
    case X86_INS_JP:
      return 10;
    case X86_INS_JNP:
      return 11;
    case X86_INS_JL:
      return 12;
    case X86_INS_JGE:
      return 13;
    case X86_INS_JLE:
      return 14;
    case X86_INS_JG:
      return 15;
    default:
      return std::nullopt;
  }
}

// What a register or stack slot is known to hold.
enum Tag : uint8_t {
  kUnknown = 0,
  kSize,      // the size asked for
  kArg0,      // calloc's count
  kArg1,      // calloc's element size
  kZero,      // 0
  kValue,     // the pointer a site saw
  kCallerBp,  // the caller's %rbp
  // tcmalloc's size classes (query.size_classes):
  kClassIndexTable,  // the address of the class index table (a rip-relative lea)
  kClassSizesTable,  // the address of the class size table
  kClassIndex,       // a byte of the class index table: a size class
  kClassSize,        // an entry of the class size table: a size class's size
};

// The registers (a mask) holding `tag` in `tags`.
uint16_t registers_holding(const std::array<uint8_t, 16>& tags, uint8_t tag) {
  uint16_t held = 0;
  for (size_t r = 0; r < 16; ++r) {
    if (tags[r] == tag) held = static_cast<uint16_t>(held | (1u << r));
  }
  return held;
}

// The 64-bit register (x86 number) a capstone register is part of, or kNoRegister.
int gpr_of(unsigned reg) {
  switch (reg) {
    case X86_REG_AL:
    case X86_REG_AH:
    case X86_REG_AX:
    case X86_REG_EAX:
    case X86_REG_RAX:
      return 0;
    case X86_REG_CL:
    case X86_REG_CH:
    case X86_REG_CX:
    case X86_REG_ECX:
    case X86_REG_RCX:
      return 1;
    case X86_REG_DL:
    case X86_REG_DH:
    case X86_REG_DX:
    case X86_REG_EDX:
    case X86_REG_RDX:
      return 2;
    case X86_REG_BL:
    case X86_REG_BH:
    case X86_REG_BX:
    case X86_REG_EBX:
    case X86_REG_RBX:
      return 3;
    case X86_REG_SPL:
    case X86_REG_SP:
    case X86_REG_ESP:
    case X86_REG_RSP:
      return 4;
    case X86_REG_BPL:
    case X86_REG_BP:
    case X86_REG_EBP:
    case X86_REG_RBP:
      return 5;
    case X86_REG_SIL:
    case X86_REG_SI:
    case X86_REG_ESI:
    case X86_REG_RSI:
      return 6;
    case X86_REG_DIL:
    case X86_REG_DI:
    case X86_REG_EDI:
    case X86_REG_RDI:
      return 7;
    case X86_REG_R8B:
    case X86_REG_R8W:
    case X86_REG_R8D:
    case X86_REG_R8:
      return 8;
    case X86_REG_R9B:
    case X86_REG_R9W:
    case X86_REG_R9D:
    case X86_REG_R9:
      return 9;
    case X86_REG_R10B:
    case X86_REG_R10W:
    case X86_REG_R10D:
    case X86_REG_R10:
      return 10;
    case X86_REG_R11B:
    case X86_REG_R11W:
    case X86_REG_R11D:
    case X86_REG_R11:
      return 11;
    case X86_REG_R12B:
    case X86_REG_R12W:
    case X86_REG_R12D:
    case X86_REG_R12:
      return 12;
    case X86_REG_R13B:
    case X86_REG_R13W:
    case X86_REG_R13D:
    case X86_REG_R13:
      return 13;
    case X86_REG_R14B:
    case X86_REG_R14W:
    case X86_REG_R14D:
    case X86_REG_R14:
      return 14;
    case X86_REG_R15B:
    case X86_REG_R15W:
    case X86_REG_R15D:
    case X86_REG_R15:
      return 15;
    default:
      return kNoRegister;
  }
}

struct Instruction {
  uint64_t offset = 0;
  uint64_t size = 0;
  unsigned id = 0;
  Flow flow = Flow::kNext;
  uint64_t target = 0;    // absolute, for kJump, kConditional, kCall
  bool emulated = false;  // the kernel's uprobe emulates it (arch/x86/kernel/uprobes.c)
  std::string mnemonic;
  cs_x86 x86{};
  std::vector<int> written;  // 64-bit registers written (implicitly too)
  bool writes_flags = false;
};

// The abstract state at an instruction.
struct State {
  std::array<uint8_t, 16> tags{};
  std::vector<std::pair<int32_t, uint8_t>> slots;  // stack offset from the entry %rsp -> tag
  int32_t delta = 0;                               // %rsp - entry %rsp
  bool delta_known = true;
  int8_t zero_test = kNoRegister;  // flags say whether this register is zero (test r,r)
  int8_t one_test = kNoRegister;   // flags say whether this register is 1 (cmp $1,r)
  int16_t fired = -1;              // the site that fired on this path, or -1
  bool captured = false;           // a size capture took the size asked for on this path
  uint8_t failed = 0;              // failure sites passed (counted failed calls), up to 2

  uint8_t slot(int32_t offset) const {
    for (const auto& [at, tag] : slots) {
      if (at == offset) return tag;
    }
    return kUnknown;
  }
  void set_slot(int32_t offset, uint8_t tag) {
    slots.erase(std::remove_if(slots.begin(), slots.end(),
                               [&](const auto& s) { return s.first == offset; }),
                slots.end());
    if (tag != kUnknown) {
      slots.emplace_back(offset, tag);
      std::sort(slots.begin(), slots.end());
    }
  }
  void set(int reg, uint8_t tag) {
    if (reg == kNoRegister) return;
    tags[static_cast<size_t>(reg)] = tag;
    if (reg == zero_test) zero_test = kNoRegister;
  }
  std::string key(size_t instruction) const {
    std::string k(reinterpret_cast<const char*>(&instruction), sizeof(instruction));
    k.append(reinterpret_cast<const char*>(tags.data()), tags.size());
    for (const auto& [at, tag] : slots) {
      k.append(reinterpret_cast<const char*>(&at), sizeof(at));
      k.push_back(static_cast<char>(tag));
    }
    k.append(reinterpret_cast<const char*>(&delta), sizeof(delta));
    k.push_back(delta_known ? 1 : 0);
    k.push_back(zero_test);
    k.push_back(one_test);
    k.append(reinterpret_cast<const char*>(&fired), sizeof(fired));
    k.push_back(captured ? 1 : 0);
    k.push_back(static_cast<char>(failed));
    return k;
  }
};

// What a site saw, over every path that fired it.
struct Observed {
  bool seen = false;
  uint16_t size_registers = 0xffff;
  std::optional<int32_t> delta;
  bool delta_consistent = true;
  bool bp_in_register = true;
  // Entry-relative offsets holding the caller's rbp on every path.
  std::optional<std::set<int32_t>> bp_slots;
  bool captured_always = true;  // every path passed a size capture holding the size
  // The registers holding the block's size class's size, or its index, on every path.
  uint16_t class_sizes = 0xffff;
  uint16_t class_indexes = 0xffff;
  // Whether the usable size is known from a size class where no register holds the size.
  bool class_known() const { return class_sizes != 0 || class_indexes != 0; }
  // A hand-off: every path has calloc's arguments still in rdi and rsi (their product is the
  // size: full tcmalloc's calloc jumps to EmergencyCalloc before it multiplies).
  bool arguments_always = true;
  // The first path that fired it: each instruction with the registers holding the size there
  // and the stack depth, to choose a size capture on.
  struct Step {
    size_t instruction;
    uint16_t sizes;
    std::optional<int32_t> delta;
  };
  std::vector<Step> first_path;
};

// A size capture being checked: the register, and the stack depth it expects.
struct Capture {
  int reg = 0;
  int32_t delta = 0;
};

struct Problem {
  enum Kind {
    kNone,
    kUncovered,         // a path returns a pointer no site saw
    kDouble,            // a path passes two sites
    kLoop,              // a site is passed again (final check)
    kConflict,          // reaches another chosen site (final check)
    kFatal,             // cannot be proven at all (indirect jump, unknown tail call, ...)
    kUncoveredFailure,  // a path returns NULL without passing a failure site
    kMiscounted,        // a path passes failure sites and returns a pointer, or passes two
  } kind = kNone;
  std::string what;
  std::vector<size_t> path;  // instruction indices, entry first (kUncovered)
  size_t site = 0;           // kDouble: the second site; kConflict: the site reached
};

class Analysis {
 public:
  explicit Analysis(const ReturnSiteQuery& query) : query_(query) {}

  ReturnSiteAnalysis run() {
    if (!decode()) return unproven(reason_);
    std::set<size_t> banned;
    // site instruction index -> pointer register
    std::map<size_t, int> sites;
    for (int round = 0; round < kMaxRounds; ++round) {
      std::map<size_t, Observed> observed, handoffs;
      Problem problem = verify(sites, observed, nullptr, nullptr, &handoffs);
      if (problem.kind == Problem::kNone) {
        std::map<size_t, Capture> captures;
        for (const auto& [site, reg] : sites) {
          const Observed& o = observed[site];
          // A size class known there gives the usable size without a capture: a second trap
          // on the fast path (tcmalloc's malloc).
          if (o.seen && o.size_registers == 0 && !o.class_known()) {
            choose_capture(site, sites, captures, observed, handoffs);
          }
        }
        std::vector<size_t> jumps;
        for (const auto& [jump, o] : handoffs) jumps.push_back(jump);
        for (size_t jump : jumps) {
          const Observed& o = handoffs[jump];
          if (o.seen && o.size_registers == 0 && !o.captured_always && !o.class_known()) {
            choose_capture(jump, sites, captures, observed, handoffs, true);
          }
        }
        std::set<size_t> failures;
        std::optional<std::string> unproven = choose_failures(sites, captures, failures);
        return describe(sites, observed, handoffs, captures, failures, unproven);
      }
      if (problem.kind == Problem::kDouble) {
        sites.erase(problem.site);
        banned.insert(problem.site);
        continue;
      }
      if (problem.kind != Problem::kUncovered) return unproven(problem.what);
      if (!choose_site(problem.path, uncovered_sizes_, sites, banned)) {
        return unproven("no emulated instruction holds the returned pointer on the path to +0x" +
                        hex(code_[problem.path.back()].offset) + " (" + problem.what + ")" +
                        why_no_site(problem.path));
      }
    }
    return unproven("no set of sites found in " + std::to_string(kMaxRounds) + " rounds");
  }

 private:
  static std::string hex(uint64_t value) {
    char text[24];
    std::snprintf(text, sizeof(text), "%llx", static_cast<unsigned long long>(value));
    return text;
  }

  bool decode() {
    auto decoded = decode_x86(query_.address, query_.code, reason_);
    if (!decoded) return false;
    if (decoded->empty()) {
      reason_ = "code could not be decoded";
      return false;
    }
    for (DecodedInstruction& in : *decoded) {
      Instruction instruction;
      instruction.offset = in.offset;
      instruction.size = in.size;
      instruction.id = in.id;
      instruction.flow = in.flow;
      instruction.target = in.target;
      instruction.emulated = in.emulated;
      instruction.mnemonic = std::move(in.mnemonic);
      instruction.x86 = in.x86;
      for (x86_reg reg : in.written) {
        if (reg == X86_REG_EFLAGS) instruction.writes_flags = true;
        int gpr = gpr_of(reg);
        if (gpr != kNoRegister) instruction.written.push_back(gpr);
      }
      index_[instruction.offset] = code_.size();
      code_.push_back(std::move(instruction));
    }
    for (const Instruction& in : code_) {
      if (in.flow == Flow::kJump || in.flow == Flow::kConditional || in.flow == Flow::kCall) {
        if (inside(in.target)) branch_targets_.insert(in.target - query_.address);
      }
    }
    // A call right before padding or the function's end never returns (malloc_printerr):
    // compilers put nothing reachable after it.
    for (size_t i = 0; i < code_.size(); ++i) {
      if (code_[i].flow != Flow::kCall) continue;
      bool last = i + 1 == code_.size();
      if (last || code_[i + 1].id == X86_INS_NOP || code_[i + 1].id == X86_INS_INT3) {
        noreturn_.insert(code_[i].target);
      }
    }
    return true;
  }

  TailCall classify(uint64_t target) const {
    if (inside(target) || !query_.classify_tail_call) return TailCall::kUnknown;
    auto known = classified_.find(target);
    if (known == classified_.end()) {
      known = classified_.emplace(target, query_.classify_tail_call(target)).first;
    }
    return known->second;
  }

  bool calls_traced(uint64_t target) const {
    if (inside(target) || !query_.classify_tail_call) return false;
    auto known = traced_calls_.find(target);
    if (known == traced_calls_.end()) {
      bool traced = query_.classify_tail_call(target) == TailCall::kRecordedElsewhere;
      known = traced_calls_.emplace(target, traced).first;
    }
    return known->second;
  }

  std::optional<size_t> index_of_target(uint64_t target) const {
    if (target < query_.address) return std::nullopt;
    auto found = index_.find(target - query_.address);
    if (found == index_.end()) return std::nullopt;
    return found->second;
  }
  bool inside(uint64_t target) const {
    return target >= query_.address && target < query_.address + query_.code.size();
  }

  // What a load from tcmalloc's size class tables puts in its destination register (with
  // query.size_classes): `lea table(%rip)` their address; `movzbl (table,index,1)` a class
  // index; `movslq` or `mov` of 32 bits from `class_sizes(,class,4)`, addressed from either
  // table, a class's size. nullopt for any other instruction.
  std::optional<uint8_t> size_class_load(const Instruction& in, const State& s) const {
    const cs_x86& x = in.x86;
    if (!query_.size_classes || x.op_count != 2 || x.operands[0].type != X86_OP_REG ||
        x.operands[1].type != X86_OP_MEM || x.operands[0].size < 4 ||
        gpr_of(x.operands[0].reg) == kNoRegister || gpr_of(x.operands[0].reg) == kRsp) {
      return std::nullopt;
    }
    const SizeClassTables& tables = *query_.size_classes;
    const x86_op_mem& mem = x.operands[1].mem;
    if (mem.segment != X86_REG_INVALID) return std::nullopt;
    auto base_tag = [&]() -> uint8_t {
      int base = gpr_of(mem.base);
      return base == kNoRegister ? uint8_t{kUnknown} : s.tags[static_cast<size_t>(base)];
    };
    auto index_tag = [&]() -> uint8_t {
      int index = gpr_of(mem.index);
      return index == kNoRegister ? uint8_t{kUnknown} : s.tags[static_cast<size_t>(index)];
    };
    // The address the base register and displacement make, if the base holds a table's.
    auto table_address = [&]() -> std::optional<uint64_t> {
      uint8_t tag = base_tag();
      if (tag != kClassIndexTable && tag != kClassSizesTable) return std::nullopt;
      return (tag == kClassIndexTable ? tables.class_indexes : tables.class_sizes) +
             static_cast<uint64_t>(mem.disp);
    };
    if (in.id == X86_INS_LEA) {
      if (mem.base != X86_REG_RIP || mem.index != X86_REG_INVALID || x.operands[0].size != 8) {
        return std::nullopt;
      }
      uint64_t address = query_.address + in.offset + in.size + static_cast<uint64_t>(mem.disp);
      if (address == tables.class_indexes) return kClassIndexTable;
      if (address == tables.class_sizes) return kClassSizesTable;
      return std::nullopt;
    }
    if (in.id == X86_INS_MOVZX && x.operands[1].size == 1 && mem.scale == 1 &&
        table_address() == tables.class_indexes) {
      return kClassIndex;
    }
    if ((in.id == X86_INS_MOVSXD || in.id == X86_INS_MOV) && x.operands[1].size == 4 &&
        mem.scale == 4 && index_tag() == kClassIndex && table_address() == tables.class_sizes) {
      return kClassSize;
    }
    return std::nullopt;
  }

  // The effect of an ordinary instruction (no control flow) on `s`.
  void apply(const Instruction& in, State& s) const {
    const cs_x86& x = in.x86;
    auto op_reg = [&](int n) -> int {
      return x.operands[n].type == X86_OP_REG ? gpr_of(x.operands[n].reg) : kNoRegister;
    };
    auto op_is_reg64 = [&](int n) {
      return x.operands[n].type == X86_OP_REG && is_64bit_register(x.operands[n].reg);
    };
    auto stack_slot = [&](int n) -> std::optional<int32_t> {
      const auto& op = x.operands[n];
      if (op.type != X86_OP_MEM || op.mem.base != X86_REG_RSP || op.mem.index != X86_REG_INVALID ||
          op.mem.segment != X86_REG_INVALID || !s.delta_known) {
        return std::nullopt;
      }
      return s.delta + static_cast<int32_t>(op.mem.disp);
    };
    int8_t zero_test = s.zero_test;
    int8_t one_test = kNoRegister;
    bool handled = false;
    switch (in.id) {
      case X86_INS_PUSH:
        if (s.delta_known) {
          s.delta -= 8;
          s.set_slot(s.delta, op_reg(0) != kNoRegister && op_is_reg64(0)
                                  ? s.tags[static_cast<size_t>(op_reg(0))]
                                  : uint8_t{kUnknown});
        }
        handled = true;
        break;
      case X86_INS_POP:
        if (s.delta_known) {
          uint8_t tag = s.slot(s.delta);
          s.set_slot(s.delta, kUnknown);
          s.delta += 8;
          s.set(op_reg(0), op_is_reg64(0) ? tag : uint8_t{kUnknown});
        } else {
          s.set(op_reg(0), kUnknown);
        }
        handled = true;
        break;
      case X86_INS_MOV:
        if (x.op_count == 2) {
          const auto& dst = x.operands[0];
          const auto& src = x.operands[1];
          if (op_is_reg64(0) && op_is_reg64(1) && op_reg(0) != kRsp && op_reg(1) >= 0) {
            s.set(op_reg(0), s.tags[static_cast<size_t>(op_reg(1)) & 15]);
            handled = true;
          } else if (dst.type == X86_OP_REG && src.type == X86_OP_IMM && op_reg(0) != kRsp &&
                     dst.size >= 4) {
            s.set(op_reg(0), src.imm == 0 ? uint8_t{kZero} : uint8_t{kUnknown});
            handled = true;
          } else if (dst.type == X86_OP_REG && src.type == X86_OP_REG && dst.size == 4 &&
                     op_reg(0) != kRsp) {
            // 32-bit moves zero-extend: only a zero, and a size class's index or size (below
            // 2^31), stay known.
            uint8_t tag = s.tags[static_cast<size_t>(op_reg(1))];
            s.set(op_reg(0), tag == kZero || tag == kClassIndex || tag == kClassSize
                                 ? tag
                                 : uint8_t{kUnknown});
            handled = true;
          } else if (auto tag = size_class_load(in, s)) {
            s.set(op_reg(0), *tag);
            handled = true;
          } else if (auto slot = stack_slot(0)) {
            s.set_slot(*slot,
                       op_is_reg64(1) ? s.tags[static_cast<size_t>(op_reg(1))] : uint8_t{kUnknown});
            handled = true;
          } else if (op_is_reg64(0) && op_reg(0) != kRsp && stack_slot(1)) {
            s.set(op_reg(0), s.slot(*stack_slot(1)));
            handled = true;
          }
        }
        break;
      case X86_INS_LEA:
      case X86_INS_MOVZX:
      case X86_INS_MOVSXD:
        if (auto tag = size_class_load(in, s)) {
          s.set(op_reg(0), *tag);
          handled = true;
        }
        break;
      case X86_INS_XOR:
      case X86_INS_SUB:
        if (x.op_count == 2 && x.operands[0].type == X86_OP_REG &&
            x.operands[1].type == X86_OP_REG && x.operands[0].reg == x.operands[1].reg &&
            x.operands[0].size >= 4) {
          s.set(op_reg(0), kZero);
          zero_test = kNoRegister;
          handled = true;
        } else if (in.id == X86_INS_SUB && op_reg(0) == kRsp && x.op_count == 2 &&
                   x.operands[1].type == X86_OP_IMM) {
          s.delta -= static_cast<int32_t>(x.operands[1].imm);
          zero_test = kNoRegister;
          handled = true;
        }
        break;
      case X86_INS_ADD:
        if (op_reg(0) == kRsp && x.op_count == 2 && x.operands[1].type == X86_OP_IMM) {
          s.delta += static_cast<int32_t>(x.operands[1].imm);
          // Slots below the stack pointer are dead.
          s.slots.erase(std::remove_if(s.slots.begin(), s.slots.end(),
                                       [&](const auto& slot) { return slot.first < s.delta; }),
                        s.slots.end());
          zero_test = kNoRegister;
          handled = true;
        }
        break;
      case X86_INS_MUL:
        if (x.op_count == 1 && op_is_reg64(0)) {
          uint8_t a = s.tags[kRax], b = s.tags[static_cast<size_t>(op_reg(0))];
          bool product = (a == kArg0 && b == kArg1) || (a == kArg1 && b == kArg0);
          s.set(kRax, product ? uint8_t{kSize} : uint8_t{kUnknown});
          s.set(kRdx, kUnknown);
          zero_test = kNoRegister;
          handled = true;
        }
        break;
      case X86_INS_IMUL:
        if (x.op_count == 2 && op_is_reg64(0) && op_is_reg64(1)) {
          uint8_t a = s.tags[static_cast<size_t>(op_reg(0))];
          uint8_t b = s.tags[static_cast<size_t>(op_reg(1))];
          bool product = (a == kArg0 && b == kArg1) || (a == kArg1 && b == kArg0);
          s.set(op_reg(0), product ? uint8_t{kSize} : uint8_t{kUnknown});
          zero_test = kNoRegister;
          handled = true;
        }
        break;
      case X86_INS_TEST:
        if (x.op_count == 2 && op_is_reg64(0) && op_is_reg64(1) &&
            x.operands[0].reg == x.operands[1].reg) {
          zero_test = static_cast<int8_t>(op_reg(0));
          handled = true;
        }
        break;
      case X86_INS_CMP:
        if (x.op_count == 2 && op_is_reg64(0) && x.operands[1].type == X86_OP_IMM &&
            x.operands[1].imm == 0) {
          zero_test = static_cast<int8_t>(op_reg(0));
          handled = true;
        } else if (x.op_count == 2 && op_is_reg64(0) && x.operands[1].type == X86_OP_IMM &&
                   x.operands[1].imm == 1) {
          // calloc(1, n) skips the multiplication (mimalloc): then n is the size.
          one_test = static_cast<int8_t>(op_reg(0));
          zero_test = kNoRegister;
          handled = true;
        }
        break;
      default:
        break;
    }
    if (!handled) {
      for (int reg : in.written) {
        if (reg == kRsp) {
          s.delta_known = false;
          s.slots.clear();
        } else {
          s.set(reg, kUnknown);
        }
      }
      // A store to the stack forgets the slot it overwrites.
      for (uint8_t n = 0; n < x.op_count; ++n) {
        if ((x.operands[n].access & CS_AC_WRITE) != 0) {
          if (auto slot = stack_slot(n)) s.set_slot(*slot, kUnknown);
        }
      }
      if (in.writes_flags) zero_test = kNoRegister;
    }
    s.zero_test = zero_test;
    if (!in.writes_flags && one_test == kNoRegister) one_test = s.one_test;
    s.one_test = one_test;
    for (int reg : in.written) {
      if (reg == s.one_test && in.id != X86_INS_CMP) s.one_test = kNoRegister;
    }
    if (s.zero_test != kNoRegister) {
      // A register written since the test no longer is what the flags describe.
      for (int reg : in.written) {
        if (reg == s.zero_test && in.id != X86_INS_TEST && in.id != X86_INS_CMP) {
          s.zero_test = kNoRegister;
        }
      }
    }
  }

  // The register `reg` is known zero on this edge: a pointer a site saw there was NULL, so
  // nothing was recorded.
  static void known_zero(State& s, int reg) {
    if (s.tags[static_cast<size_t>(reg)] == kValue) {
      for (auto& tag : s.tags) {
        if (tag == kValue) tag = kZero;
      }
      for (auto& slot : s.slots) {
        if (slot.second == kValue) slot.second = kZero;
      }
      s.fired = -1;
    }
    s.tags[static_cast<size_t>(reg)] = kZero;
  }

  // The register `reg` is known to be 1 on this edge: if it is calloc's count, the element
  // size is the size asked for, and the other way round.
  static void known_one(State& s, int reg) {
    uint8_t tag = s.tags[static_cast<size_t>(reg)];
    uint8_t other = tag == kArg0 ? kArg1 : tag == kArg1 ? kArg0 : kUnknown;
    if (other == kUnknown) return;
    for (auto& t : s.tags) {
      if (t == other) t = kSize;
    }
    for (auto& slot : s.slots) {
      if (slot.second == other) slot.second = kSize;
    }
  }

  static bool holds_value(const State& s) {
    if (std::find(s.tags.begin(), s.tags.end(), kValue) != s.tags.end()) return true;
    return std::any_of(s.slots.begin(), s.slots.end(),
                       [](const auto& slot) { return slot.second == kValue; });
  }

  // How a path that leaves the function ends, given the register holding what it returns.
  Problem leave(const State& s, int result, const std::string& where,
                bool check_failures = false) const {
    uint8_t tag = s.tags[static_cast<size_t>(result)];
    if (check_failures) {
      // NULL is a failed call, counted once on its way out; a pointer is not.
      if (tag == kZero && s.failed == 0) {
        return {Problem::kUncoveredFailure, where + " returns NULL past no failure site", {}, 0};
      }
      if ((tag == kZero && s.failed > 1) || (tag != kZero && s.failed > 0)) {
        return {Problem::kMiscounted,
                where + (tag == kZero ? " returns NULL past two failure sites"
                                      : " returns a pointer past a failure site"),
                {},
                0};
      }
    }
    if (s.fired >= 0) {
      if (tag == kValue) return {};
      // (A pointer the site saw and found NULL is no longer tagged: known_zero.) A NULL made
      // after the site is returned although it recorded something else: glibc's calloc tests
      // its overflow flag in %rax right before its NULL return.
      if (tag == kZero) {
        return {Problem::kFatal,
                where + " returns NULL after the site at +0x" +
                    hex(code_[static_cast<size_t>(s.fired)].offset) + " saw something else",
                {},
                0};
      }
      return {Problem::kFatal,
              where + " returns something other than the pointer the site at +0x" +
                  hex(code_[static_cast<size_t>(s.fired)].offset) + " saw",
              {},
              0};
    }
    if (tag == kZero) return {};
    return {Problem::kUncovered, where + " returns a pointer no site saw", {}, 0};
  }

  struct Mode {
    const std::map<size_t, int>* sites = nullptr;  // verify: the chosen sites
    std::map<size_t, Observed>* observed = nullptr;
    const std::map<size_t, Capture>* captures = nullptr;
    const std::set<size_t>* failures = nullptr;
    bool check_failures = false;  // every NULL return passes exactly one failure site
    // Verify: jumps out to unknown code, with what their paths hold (see HandOff); null: such
    // a jump cannot be proven (checking a candidate site: its pointer would not return).
    std::map<size_t, Observed>* handoffs = nullptr;
    // Final check: the candidate (fired at the start), other sites it must not reach, and an
    // instruction whose passing ends a path (post-dominance).
    std::optional<size_t> start;
    const std::map<size_t, int>* others = nullptr;
    std::optional<size_t> avoid;
    Edge avoid_edge = kBothEdges;  // an edge site: passing `avoid` covers that edge only
  };

  // Explores every path; the first problem found, or kNone.
  Problem explore(size_t first, State initial, const Mode& mode) const {
    struct Node {
      size_t instruction;
      State state;
      size_t parent;
    };
    std::vector<Node> nodes;
    std::vector<size_t> stack;
    std::unordered_set<std::string> seen;
    auto push = [&](size_t instruction, State state, size_t parent) {
      if (!seen.insert(state.key(instruction)).second) return;
      nodes.push_back(Node{instruction, std::move(state), parent});
      stack.push_back(nodes.size() - 1);
    };
    push(first, std::move(initial), SIZE_MAX);
    auto path_of = [&](size_t node) {
      std::vector<size_t> path;
      for (size_t n = node; n != SIZE_MAX; n = nodes[n].parent)
        path.push_back(nodes[n].instruction);
      std::reverse(path.begin(), path.end());
      return path;
    };
    // The path to `node`: each instruction with the registers holding the size and the depth.
    auto steps_of = [&](size_t node) {
      std::vector<Observed::Step> steps;
      for (size_t n = node; n != SIZE_MAX; n = nodes[n].parent) {
        const State& at = nodes[n].state;
        steps.push_back({nodes[n].instruction, registers_holding(at.tags, kSize),
                         at.delta_known ? std::optional<int32_t>(at.delta) : std::nullopt});
      }
      std::reverse(steps.begin(), steps.end());
      return steps;
    };
    bool at_start = true;
    while (!stack.empty()) {
      if (nodes.size() > kMaxStates) {
        return {Problem::kFatal, "more than " + std::to_string(kMaxStates) + " paths", {}, 0};
      }
      size_t node = stack.back();
      stack.pop_back();
      size_t i = nodes[node].instruction;
      State s = nodes[node].state;
      const Instruction& in = code_[i];
      auto where = [&] { return "+0x" + hex(in.offset); };
      bool starting = at_start;
      at_start = false;
      if (mode.start && !starting) {
        if (i == *mode.start) return {Problem::kLoop, where() + " is passed again", {}, 0};
        // Passed: this path is covered (on the avoided edge only, for an edge site: below).
        if (mode.avoid && i == *mode.avoid && mode.avoid_edge == kBothEdges) continue;
        if (mode.others && mode.others->count(i)) {
          return {Problem::kConflict, "reaches the site at " + where(), {}, i};
        }
      }
      if (mode.captures) {
        auto capture = mode.captures->find(i);
        if (capture != mode.captures->end()) {
          s.captured = s.tags[static_cast<size_t>(capture->second.reg)] == kSize && s.delta_known &&
                       s.delta == capture->second.delta;
        }
      }
      if (mode.failures && mode.failures->count(i)) {
        s.failed = static_cast<uint8_t>(std::min(s.failed + 1, 2));
      }
      // The site at this instruction records in `s`, with the pointer in `reg`.
      auto fire = [&](State& at, int reg) -> std::optional<Problem> {
        if (at.fired >= 0) {
          return Problem{Problem::kDouble,
                         "a path passes the sites at +0x" +
                             hex(code_[static_cast<size_t>(at.fired)].offset) + " and " + where(),
                         path_of(node), i};
        }
        uint8_t tag = at.tags[static_cast<size_t>(reg)];
        if (tag != kZero) {
          Observed& seen_here = (*mode.observed)[i];
          seen_here.seen = true;
          seen_here.size_registers &= registers_holding(at.tags, kSize);
          seen_here.class_sizes &= registers_holding(at.tags, kClassSize);
          seen_here.class_indexes &= registers_holding(at.tags, kClassIndex);
          if (!at.delta_known || (seen_here.delta && *seen_here.delta != at.delta)) {
            seen_here.delta_consistent = false;
          }
          seen_here.delta = at.delta;
          if (at.tags[kRbp] != kCallerBp) seen_here.bp_in_register = false;
          std::set<int32_t> bp;
          for (const auto& [offset, slot_tag] : at.slots) {
            if (slot_tag == kCallerBp) bp.insert(offset);
          }
          if (seen_here.bp_slots) {
            std::set<int32_t> both;
            std::set_intersection(seen_here.bp_slots->begin(), seen_here.bp_slots->end(),
                                  bp.begin(), bp.end(), std::inserter(both, both.begin()));
            bp = both;
          }
          seen_here.bp_slots = bp;
          if (!at.captured) seen_here.captured_always = false;
          if (seen_here.first_path.empty()) seen_here.first_path = steps_of(node);
          at.tags[static_cast<size_t>(reg)] = kValue;
          at.fired = static_cast<int16_t>(i);
        }
        return std::nullopt;
      };
      // A site on one edge of a conditional jump records on that edge only (below).
      std::optional<int> edge_site;
      if (mode.sites) {
        auto site = mode.sites->find(i);
        if (site != mode.sites->end() && edge_of(site->second) != kBothEdges) {
          edge_site = site->second;
        } else if (site != mode.sites->end()) {
          if (auto problem = fire(s, pointer_of(site->second))) return *problem;
        }
      }
      auto next = [&](State state) -> std::optional<Problem> {
        if (i + 1 >= code_.size()) {
          return Problem{Problem::kFatal, "falls off its end after " + where(), {}, 0};
        }
        push(i + 1, std::move(state), node);
        return std::nullopt;
      };
      // Checking post-dominance: a return of the pointer that did not pass `avoid`.
      auto returns_unseen = [&](const State& state, int result) {
        return mode.avoid && state.fired >= 0 && state.tags[static_cast<size_t>(result)] == kValue;
      };
      // A jmp to code not analysed: entry and return probes there, if nothing was recorded
      // before on this path, the return address is at %rsp, and the size is known.
      auto hand_off = [&](const State& state, const std::string& to) -> Problem {
        if (state.fired >= 0) {
          return {Problem::kDouble,
                  to + " after the site at +0x" +
                      hex(code_[static_cast<size_t>(state.fired)].offset) +
                      ": its return probe would record the block again",
                  path_of(node), static_cast<size_t>(state.fired)};
        }
        if (!state.delta_known || state.delta != 0) {
          return {
              Problem::kFatal, to + ": unknown function, called with a frame on the stack", {}, 0};
        }
        if (mode.check_failures && state.failed > 0) {
          return {Problem::kMiscounted, to + " after a failure site: a NULL counted twice", {}, 0};
        }
        Observed& seen_here = (*mode.handoffs)[i];
        seen_here.seen = true;
        seen_here.size_registers &= registers_holding(state.tags, kSize);
        seen_here.class_sizes &= registers_holding(state.tags, kClassSize);
        seen_here.class_indexes &= registers_holding(state.tags, kClassIndex);
        if (!state.captured) seen_here.captured_always = false;
        if (state.tags[kRdi] != kArg0 || state.tags[kRsi] != kArg1) {
          seen_here.arguments_always = false;
        }
        if (seen_here.first_path.empty()) seen_here.first_path = steps_of(node);
        return {};
      };
      auto tail_call = [&](const State& state, uint64_t target) -> Problem {
        TailCall kind = classify(target);
        std::string to = where() + " (tail call to 0x" + hex(target) + ")";
        if (kind == TailCall::kReturnsFirstArgument) {
          if (returns_unseen(state, kRdi)) return {Problem::kFatal, to + " returns unseen", {}, 0};
          return leave(state, kRdi, to, mode.check_failures);
        }
        if (kind == TailCall::kNoReturn) return {};  // the process ends there
        if (kind == TailCall::kRecordedElsewhere) {
          if (state.fired >= 0) {
            return {Problem::kFatal, to + " after a site: counted twice", {}, 0};
          }
          return {};
        }
        if (!mode.handoffs) return {Problem::kFatal, to + ": unknown function", {}, 0};
        return hand_off(state, to);
      };
      auto with_path = [&](Problem problem) {
        if (problem.kind == Problem::kUncovered || problem.kind == Problem::kUncoveredFailure) {
          problem.path = path_of(node);
          uncovered_sizes_.clear();
          for (const auto& step : steps_of(node)) uncovered_sizes_.push_back(step.sizes);
        }
        return problem;
      };
      switch (in.flow) {
        case Flow::kRet: {
          if (returns_unseen(s, kRax)) return {Problem::kFatal, where() + " returns unseen", {}, 0};
          Problem problem = leave(s, kRax, where(), mode.check_failures);
          if (problem.kind != Problem::kNone) return with_path(problem);
          break;
        }
        case Flow::kStop:
          break;
        case Flow::kIndirectJump:
          return {Problem::kFatal, "indirect jump at " + where(), {}, 0};
        case Flow::kJump:
          if (auto target = index_of_target(in.target)) {
            push(*target, s, node);
          } else if (inside(in.target)) {
            return {Problem::kFatal, "jump into an instruction at " + where(), {}, 0};
          } else {
            Problem problem = tail_call(s, in.target);
            if (problem.kind != Problem::kNone) return with_path(problem);
          }
          break;
        case Flow::kConditional: {
          State taken = s, fallthrough = s;
          int8_t tested = s.zero_test;
          bool taken_done = false, fallthrough_done = false;
          if (edge_site) {
            State& edge = edge_of(*edge_site) == kTakenEdge ? taken : fallthrough;
            if (auto problem = fire(edge, pointer_of(*edge_site))) return *problem;
          }
          if (mode.start && !starting && mode.avoid && i == *mode.avoid) {
            (mode.avoid_edge == kTakenEdge ? taken_done : fallthrough_done) = true;
          }
          if (s.one_test != kNoRegister && (in.id == X86_INS_JE || in.id == X86_INS_JNE)) {
            known_one(in.id == X86_INS_JE ? taken : fallthrough, s.one_test);
          }
          if (tested != kNoRegister && (in.id == X86_INS_JE || in.id == X86_INS_JNE) &&
              s.tags[static_cast<size_t>(tested)] == kZero) {
            // Known zero: the edge taken when it is not never runs.
            (in.id == X86_INS_JE ? fallthrough_done : taken_done) = true;
          } else if (tested != kNoRegister && (in.id == X86_INS_JE || in.id == X86_INS_JNE)) {
            State& zero = in.id == X86_INS_JE ? taken : fallthrough;
            known_zero(zero, tested);
            // Checking a candidate: once its pointer is known NULL, the path is none of its
            // business (nothing was recorded).
            if (mode.start && zero.fired < 0) {
              (in.id == X86_INS_JE ? taken_done : fallthrough_done) = true;
            }
          }
          if (taken_done) {
          } else if (auto target = index_of_target(in.target)) {
            push(*target, taken, node);
          } else if (inside(in.target)) {
            return {Problem::kFatal, "jump into an instruction at " + where(), {}, 0};
          } else if (classify(in.target) == TailCall::kUnknown) {
            // A probe on a conditional jump fires on both edges: no hand-off here.
            return {
                Problem::kFatal,
                where() + " (conditional tail call to 0x" + hex(in.target) + "): unknown function",
                {},
                0};
          } else {
            Problem problem = tail_call(taken, in.target);
            if (problem.kind != Problem::kNone) return with_path(problem);
          }
          if (!fallthrough_done) {
            if (auto problem = next(fallthrough)) return *problem;
          }
          break;
        }
        case Flow::kCall:
        case Flow::kIndirectCall: {
          if (in.flow == Flow::kCall &&
              (noreturn_.count(in.target) || classify(in.target) == TailCall::kNoReturn)) {
            break;  // aborts
          }
          // A call to a traced allocator records its block itself (its own probes): a site
          // after it would count the block again, or another one.
          if (in.flow == Flow::kCall && calls_traced(in.target)) {
            return {Problem::kFatal, "calls a traced allocator function at " + where(), {}, 0};
          }
          // memset and memcpy return their first argument (mimalloc's calloc returns what
          // its call to memset returns).
          uint8_t returned =
              in.flow == Flow::kCall && classify(in.target) == TailCall::kReturnsFirstArgument
                  ? s.tags[kRdi]
                  : uint8_t{kUnknown};
          for (int reg : {kRax, kRcx, kRdx, kRsi, kRdi, 8, 9, 10, 11}) s.set(reg, kUnknown);
          s.set(kRax, returned);
          s.zero_test = kNoRegister;
          s.one_test = kNoRegister;
          if (auto problem = next(s)) return *problem;
          break;
        }
        case Flow::kNext:
          apply(in, s);
          if (auto problem = next(s)) return *problem;
          break;
      }
    }
    return {};
  }

  State entry_state() const {
    State s;
    if (query_.product_of_arguments) {
      s.tags[kRdi] = kArg0;
      s.tags[kRsi] = kArg1;
    } else {
      s.tags[kRdi] = kSize;
    }
    s.tags[kRbp] = kCallerBp;
    return s;
  }

  Problem verify(const std::map<size_t, int>& sites, std::map<size_t, Observed>& observed,
                 const std::map<size_t, Capture>* captures = nullptr,
                 const std::set<size_t>* failures = nullptr,
                 std::map<size_t, Observed>* handoffs = nullptr) const {
    std::map<size_t, Observed> handoffs_here;
    Mode mode;
    mode.handoffs = handoffs ? handoffs : &handoffs_here;
    mode.sites = &sites;
    mode.observed = &observed;
    mode.captures = captures;
    mode.failures = failures;
    mode.check_failures = failures != nullptr;
    return explore(0, entry_state(), mode);
  }

  // A size capture for `site`, which sees no register holding the size: the latest emulated
  // instruction on a path to it where a register holds the size, such that every path to the
  // site passes it with the size there (then the site reads what it took).
  // With `handoff`, `site` is a HandOff's jump, observed in `handoffs`.
  bool choose_capture(size_t site, const std::map<size_t, int>& sites,
                      std::map<size_t, Capture>& captures, std::map<size_t, Observed>& observed,
                      std::map<size_t, Observed>& handoffs, bool handoff = false) const {
    std::vector<Observed::Step> path = (handoff ? handoffs : observed)[site].first_path;
    for (auto step = path.rbegin(); step != path.rend(); ++step) {
      size_t i = step->instruction;
      if (i == site || !code_[i].emulated || !step->sizes || !step->delta || sites.count(i) ||
          captures.count(i)) {
        continue;
      }
      for (int r : {kRbx, kRbp, 12, 13, 14, 15, kRdi, kRsi, kRdx, kRcx, 8, 9, 10, 11, kRax}) {
        if (!(step->sizes & (1u << r))) continue;
        std::map<size_t, Capture> trial = captures;
        trial[i] = Capture{r, *step->delta};
        std::map<size_t, Observed> seen, seen_handoffs;
        if (verify(sites, seen, &trial, nullptr, &seen_handoffs).kind == Problem::kNone &&
            (handoff ? seen_handoffs : seen)[site].captured_always) {
          captures = std::move(trial);
          observed = std::move(seen);
          handoffs = std::move(seen_handoffs);
          return true;
        }
        break;  // the same instruction with another register proves no more
      }
    }
    return false;
  }

  // Failure sites until every NULL return passes exactly one; the reason when none can be found.
  std::optional<std::string> choose_failures(const std::map<size_t, int>& sites,
                                             const std::map<size_t, Capture>& captures,
                                             std::set<size_t>& failures) const {
    for (int round = 0; round < kMaxRounds; ++round) {
      std::map<size_t, Observed> observed;
      Problem problem = verify(sites, observed, &captures, &failures);
      if (problem.kind == Problem::kNone) return std::nullopt;
      if (problem.kind != Problem::kUncoveredFailure) return problem.what;
      bool chosen = false;
      // The latest instruction of the path that only failing calls pass: one site there
      // serves every failure that joins before it.
      for (auto it = problem.path.rbegin(); it != problem.path.rend() && !chosen; ++it) {
        if (sites.count(*it) || captures.count(*it) || failures.count(*it)) continue;
        std::set<size_t> trial = failures;
        trial.insert(*it);
        std::map<size_t, Observed> seen;
        Problem after = verify(sites, seen, &captures, &trial);
        if (after.kind == Problem::kNone || after.kind == Problem::kUncoveredFailure) {
          failures = std::move(trial);
          chosen = true;
        }
      }
      if (!chosen) return problem.what;
    }
    return "no set of failure sites found in " + std::to_string(kMaxRounds) + " rounds";
  }

  // From `candidate`, with the pointer in a register (`choice`: edge_site_choice): every path
  // returns that pointer (or finds it NULL, or aborts) without passing the candidate again or a
  // site of `others`, and, with `avoid` (and its choice's edge), passes it before returning.
  // An edge site's paths start on its edge.
  Problem final_check(size_t candidate, int choice, const std::map<size_t, int>* others,
                      std::optional<size_t> avoid = std::nullopt, int avoid_choice = 0) const {
    int reg = pointer_of(choice);
    State s;
    s.tags[static_cast<size_t>(reg)] = kValue;
    s.fired = static_cast<int16_t>(candidate);
    s.zero_test = tested_right_before(candidate);
    Mode mode;
    mode.start = candidate;
    mode.others = others;
    mode.avoid = avoid;
    mode.avoid_edge = edge_of(avoid_choice);
    size_t first = candidate;
    if (edge_of(choice) != kBothEdges) {
      const Instruction& in = code_[candidate];
      bool taken = edge_of(choice) == kTakenEdge;
      // On the edge a je or jne takes when the tested register is zero, the pointer is NULL:
      // nothing to record there.
      if (s.zero_test == reg && taken == (in.id == X86_INS_JE)) {
        return {Problem::kFatal, "sees NULL only on that edge", {}, 0};
      }
      s.zero_test = kNoRegister;
      auto target = index_of_target(in.target);
      if (in.flow != Flow::kConditional || !condition_code(in.id) || (taken && !target) ||
          (!taken && candidate + 1 >= code_.size())) {
        return {Problem::kFatal, "no edge to start from", {}, 0};
      }
      first = taken ? *target : candidate + 1;
    }
    return explore(first, s, mode);
  }

  // The register a `test r,r` (or `cmp $0,r`) right before a je or jne at `candidate` tests,
  // when every path to the candidate comes through that test (no branch lands on the jump):
  // the edge taken when it is zero sees no pointer (mimalloc's empty free list).
  int8_t tested_right_before(size_t candidate) const {
    const Instruction& in = code_[candidate];
    if (candidate == 0 || (in.id != X86_INS_JE && in.id != X86_INS_JNE) ||
        branch_targets_.count(in.offset)) {
      return kNoRegister;
    }
    State s;
    apply(code_[candidate - 1], s);
    return s.zero_test;
  }

  // The choice (edge_site_choice) of a site at `candidate` recording on `edge`.
  std::optional<int> final_register(size_t candidate, Edge edge = kBothEdges) const {
    for (int reg : {kRax, kRdi, kRbx, kRbp, 12, 13, 14, 15, kRcx, kRdx, kRsi, 8, 9, 10, 11}) {
      int choice = edge_site_choice(reg, edge);
      if (final_check(candidate, choice, nullptr).kind == Problem::kNone) return choice;
    }
    return std::nullopt;
  }

  // A conditional jump on `path` at position `n` that is no site on both edges may be one on
  // the edge the path takes (its program tests the flags): that edge.
  std::optional<Edge> edge_on_path(const std::vector<size_t>& path, size_t n) const {
    const Instruction& in = code_[path[n]];
    if (in.flow != Flow::kConditional || !condition_code(in.id) || n + 1 >= path.size()) {
      return std::nullopt;
    }
    auto target = index_of_target(in.target);
    if (target && *target == path[n] + 1) return std::nullopt;  // both edges lead there
    return path[n + 1] == path[n] + 1 ? kFallthroughEdge : kTakenEdge;
  }

  // Adds a site for an uncovered path: the latest emulated instruction on it that every
  // return from the path's first final point passes, and that neither reaches nor is reached
  // from the sites chosen so far. Sites in the way are dropped and banned.
  // Why the latest emulated instruction on an uncovered path is no site, where a jump out of
  // the function after it says it (jemalloc: the je on its cache bin's low-water mark can still
  // end in the slow path); empty otherwise.
  std::string why_no_site(const std::vector<size_t>& path) const {
    for (auto it = path.rbegin(); it != path.rend(); ++it) {
      if (!code_[*it].emulated) continue;
      for (int reg : {kRax, kRdi, kRbx, kRbp, 12, 13, 14, 15, kRcx, kRdx, kRsi, 8, 9, 10, 11}) {
        Problem problem = final_check(*it, reg, nullptr);
        if (problem.kind == Problem::kFatal &&
            problem.what.find("tail call") != std::string::npos) {
          return "; the latest emulated instruction before it, +0x" + hex(code_[*it].offset) + " " +
                 code_[*it].mnemonic + ", also leads to " + problem.what +
                 ", the slow path, whose entry and return probes would record the block again";
        }
        if (problem.kind == Problem::kFatal &&
            problem.what.find("other than") == std::string::npos) {
          return "; the latest emulated instruction before it, +0x" + hex(code_[*it].offset) + " " +
                 code_[*it].mnemonic + ", with the pointer in " +
                 register_name(static_cast<uint8_t>(reg)) + ": " + problem.what;
        }
      }
      return "";
    }
    return "";
  }

  // Whether a site at `candidate` beside `sites` is passed, on some path verification
  // explores before its first problem, with no register holding the size (jemalloc's calloc:
  // its call to memset, which a refilled cache bin reaches with r14 reused).
  bool loses_size_elsewhere(size_t candidate, int choice,
                            const std::map<size_t, int>& sites) const {
    std::map<size_t, int> trial = sites;
    trial[candidate] = choice;
    std::map<size_t, Observed> observed, handoffs;
    verify(trial, observed, nullptr, nullptr, &handoffs);
    auto seen = observed.find(candidate);
    return seen != observed.end() && seen->second.seen && seen->second.size_registers == 0;
  }

  // Candidates where a register holds the size on this path come first: a site without one
  // needs a size capture, a second trap (mimalloc's calloc: its je on the free list rather than
  // its call to memset).
  bool choose_site(const std::vector<size_t>& path, const std::vector<uint16_t>& sizes,
                   std::map<size_t, int>& sites, std::set<size_t>& banned) const {
    std::vector<std::pair<size_t, int>> finals;  // in path order, no repeats
    std::set<size_t> listed, sized;
    for (size_t n = 0; n < path.size(); ++n) {
      size_t i = path[n];
      if (!code_[i].emulated || banned.count(i) || sites.count(i) || !listed.insert(i).second) {
        continue;
      }
      std::optional<int> reg = final_register(i);
      if (!reg) {
        if (auto edge = edge_on_path(path, n)) reg = final_register(i, *edge);
      }
      if (reg) {
        finals.emplace_back(i, *reg);
        if (n < sizes.size() && sizes[n] != 0) sized.insert(i);
      }
    }
    if (finals.empty()) return false;
    auto [earliest, earliest_reg] = finals.front();
    std::set<size_t> in_the_way;
    std::vector<std::pair<size_t, int>> ordered;
    for (bool with_size : {true, false}) {
      for (auto it = finals.rbegin(); it != finals.rend(); ++it) {
        if (sized.count(it->first) == static_cast<size_t>(with_size)) ordered.push_back(*it);
      }
    }
    // The first clear candidate with a size here that another path reaches without one: kept
    // in case no clear candidate keeps its size on every path seen.
    std::optional<std::pair<size_t, int>> size_lost_elsewhere;
    for (auto it = ordered.begin(); it != ordered.end(); ++it) {
      auto [candidate, reg] = *it;
      if (size_lost_elsewhere && !sized.count(candidate)) break;
      if (candidate != earliest &&
          final_check(earliest, earliest_reg, nullptr, candidate, reg).kind != Problem::kNone) {
        continue;  // some return from the earliest point does not pass it
      }
      bool clear = true;
      Problem forward = final_check(candidate, reg, &sites);
      if (forward.kind == Problem::kConflict) {
        in_the_way.insert(forward.site);
        clear = false;
      }
      std::map<size_t, int> just{{candidate, reg}};
      for (const auto& [site, site_reg] : sites) {
        if (final_check(site, site_reg, &just).kind == Problem::kConflict) {
          in_the_way.insert(site);
          clear = false;
        }
      }
      if (clear && sized.count(candidate) && loses_size_elsewhere(candidate, reg, sites)) {
        if (!size_lost_elsewhere) size_lost_elsewhere = std::make_pair(candidate, reg);
        continue;  // a site without the size needs a capture before it: a second trap
      }
      if (clear) {
        sites[candidate] = reg;
        return true;
      }
    }
    if (size_lost_elsewhere) {
      sites[size_lost_elsewhere->first] = size_lost_elsewhere->second;
      return true;
    }
    if (in_the_way.empty()) return false;
    for (size_t site : in_the_way) {
      sites.erase(site);
      banned.insert(site);
    }
    return true;
  }

  // Where no register holds the size asked for at the instruction at `offset`, but one holds the
  // block's size class (`o`): its size in a register, else its index (class_sizes is read).
  void set_usable_size(const Observed& o, uint64_t offset, std::optional<uint8_t>& size_register,
                       UsableSize& usable, int64_t& class_sizes_from_here) const {
    uint16_t registers = o.class_sizes != 0 ? o.class_sizes : o.class_indexes;
    usable =
        o.class_sizes != 0 ? UsableSize::kClassSizeInRegister : UsableSize::kClassIndexInRegister;
    for (int r : {kRbx, kRbp, 12, 13, 14, 15, kRax, kRcx, kRdx, kRsi, kRdi, 8, 9, 10, 11}) {
      if (registers & (1u << r)) {
        size_register = static_cast<uint8_t>(r);
        break;
      }
    }
    if (usable == UsableSize::kClassIndexInRegister) {
      class_sizes_from_here =
          static_cast<int64_t>(query_.size_classes->class_sizes - (query_.address + offset));
    }
  }

  static std::string usable_size_text(UsableSize usable, uint8_t reg) {
    return usable == UsableSize::kClassSizeInRegister
               ? std::string("usable: its class's, in ") + register_name(reg)
               : std::string("usable: its class's, from the class size table at ") +
                     register_name(reg);
  }

  static ReturnSiteAnalysis unproven(std::string reason) {
    ReturnSiteAnalysis result;
    result.reason = std::move(reason);
    return result;
  }

  ReturnSiteAnalysis describe(const std::map<size_t, int>& sites,
                              const std::map<size_t, Observed>& observed,
                              const std::map<size_t, Observed>& handoffs,
                              const std::map<size_t, Capture>& captures,
                              const std::set<size_t>& failures,
                              const std::optional<std::string>& failures_unproven) const {
    if (failures_unproven) {
      return unproven("a failing call (NULL) cannot be counted: " + *failures_unproven);
    }
    ReturnSiteAnalysis result;
    if (sites.empty()) return unproven("no path returns a pointer");
    std::string list;
    for (const auto& [i, reg] : sites) {
      const Instruction& in = code_[i];
      auto seen = observed.find(i);
      std::string where = "+0x" + hex(in.offset);
      if (seen == observed.end() || !seen->second.seen) continue;  // only ever sees NULL
      const Observed& o = seen->second;
      if (!o.delta_consistent || !o.delta || *o.delta > 0) {
        return unproven("the stack depth at " + where + " differs between paths");
      }
      ReturnSite site;
      site.offset = in.offset;
      site.pointer_register = static_cast<uint8_t>(pointer_of(reg));
      if (edge_of(reg) != kBothEdges) {
        // Recorded when the jump goes the site's way: its condition, or the opposite one.
        site.condition = static_cast<uint8_t>(*condition_code(in.id) ^
                                              (edge_of(reg) == kFallthroughEdge ? 1 : 0));
      }
      site.frame_bytes = static_cast<uint32_t>(-*o.delta);
      site.instruction = in.mnemonic;
      if (o.size_registers != 0) {
        // Callee-saved registers first: the most likely to be what the source calls bytes.
        for (int r : {kRbx, kRbp, 12, 13, 14, 15, kRax, kRcx, kRdx, kRsi, kRdi, 8, 9, 10, 11}) {
          if (o.size_registers & (1u << r)) {
            site.size_register = static_cast<uint8_t>(r);
            break;
          }
        }
      } else if (o.captured_always) {
        site.size_captured = true;
      } else if (o.class_known()) {
        set_usable_size(o, in.offset, site.size_register, site.usable_size,
                        site.class_sizes_from_here);
      } else if (!query_.chunk_header_sizes) {
        return unproven("no register holds the size asked for at " + where);
      }
      if (!o.bp_in_register) {
        if (!o.bp_slots || o.bp_slots->empty()) {
          return unproven("the caller's %rbp is lost at " + where);
        }
        site.saved_bp_offset = static_cast<uint32_t>(*o.bp_slots->begin() - *o.delta);
      }
      list += (list.empty() ? "" : ", ") + where + " " + in.mnemonic +
              (edge_of(reg) == kTakenEdge         ? " when taken"
               : edge_of(reg) == kFallthroughEdge ? " when it falls through"
                                                  : "") +
              " (" + register_name(site.pointer_register) + ", size " +
              (site.usable_size != UsableSize::kNo
                   ? usable_size_text(site.usable_size, *site.size_register)
               : site.size_register ? std::string(register_name(*site.size_register))
               : site.size_captured ? std::string("as taken earlier")
                                    : std::string("usable, from the chunk header")) +
              ")";
      result.sites.push_back(site);
    }
    if (result.sites.empty()) return unproven("no path returns a pointer");
    result.reason = "returns seen at " + std::to_string(result.sites.size()) +
                    " emulated instructions, every path proven: " + list;
    for (const auto& [i, capture] : captures) {
      result.captures.push_back(SizeCapture{code_[i].offset, static_cast<uint8_t>(capture.reg),
                                            static_cast<uint32_t>(-capture.delta)});
      result.reason += "; size taken at +0x" + hex(code_[i].offset) + " " + code_[i].mnemonic +
                       " (" + register_name(static_cast<uint8_t>(capture.reg)) + ")";
    }
    for (const auto& [i, o] : handoffs) {
      const Instruction& in = code_[i];
      std::string where = "+0x" + hex(in.offset) + " " + in.mnemonic + " 0x" + hex(in.target);
      HandOff handoff;
      handoff.offset = in.offset;
      handoff.target = in.target;
      if (o.size_registers != 0) {
        for (int r : {kRdi, kRsi, kRdx, kRcx, 8, 9, kRax, kRbx, kRbp, 12, 13, 14, 15, 10, 11}) {
          if (o.size_registers & (1u << r)) {
            handoff.size_register = static_cast<uint8_t>(r);
            break;
          }
        }
      } else if (!o.captured_always && o.class_known()) {
        set_usable_size(o, in.offset, handoff.size_register, handoff.usable_size,
                        handoff.class_sizes_from_here);
      } else if (!o.captured_always && query_.product_of_arguments && o.arguments_always) {
        handoff.size_is_arguments_product = true;
      } else if (!o.captured_always) {
        return unproven("no register holds the size asked for at the jump to the slow path at " +
                        where + ", and no emulated instruction before it takes it on every path");
      }
      result.handoffs.push_back(handoff);
      result.reason += std::string(result.handoffs.size() == 1 ? "; " : ", ") +
                       (result.handoffs.size() == 1 ? "slow paths left to entry and return probes "
                                                      "at the jumps to them: "
                                                    : "") +
                       where + " (size " +
                       (handoff.usable_size != UsableSize::kNo
                            ? usable_size_text(handoff.usable_size, *handoff.size_register)
                        : handoff.size_register             ? register_name(*handoff.size_register)
                        : handoff.size_is_arguments_product ? "rdi * rsi, the arguments"
                                                            : "as taken earlier") +
                       ")";
    }
    for (size_t i : failures) result.failure_offsets.push_back(code_[i].offset);
    result.reason += "; failed calls (NULL) counted at";
    if (failures.empty()) result.reason += " none: no path returns NULL";
    for (size_t i : failures) {
      result.reason += " +0x" + hex(code_[i].offset) + " " + code_[i].mnemonic;
    }
    return result;
  }

  const ReturnSiteQuery& query_;
  std::vector<Instruction> code_;
  std::unordered_map<uint64_t, size_t> index_;  // offset -> instruction
  std::set<uint64_t> noreturn_;
  mutable std::map<uint64_t, bool> traced_calls_;    // call target -> a traced allocator
  mutable std::map<uint64_t, TailCall> classified_;  // jump or call target -> what it is
  std::set<uint64_t> branch_targets_;                // offsets some jump or call lands on
  // The registers holding the size at each instruction of the last uncovered path found.
  mutable std::vector<uint16_t> uncovered_sizes_;
  std::string reason_;
};

}  // namespace

const char* register_name(uint8_t number) {
  static const char* names[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                  "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  return number < 16 ? names[number] : "?";
}

ReturnSiteAnalysis find_return_sites(const ReturnSiteQuery& query) { return Analysis(query).run(); }

std::optional<SizeClassTables> find_size_class_tables(uint64_t address,
                                                      const std::vector<uint8_t>& code) {
  std::string reason;
  auto decoded = decode_x86(address, code, reason);
  if (!decoded) return std::nullopt;
  std::set<uint64_t> landings;  // offsets some jump lands on
  for (const auto& in : *decoded) {
    if ((in.flow == Flow::kJump || in.flow == Flow::kConditional) && in.target >= address) {
      landings.insert(in.target - address);
    }
  }
  // Straight-line code from each rip-relative lea: the register holding the table's address,
  // the one holding the byte loaded from it, and the size loaded by that byte.
  for (size_t first = 0; first < decoded->size(); ++first) {
    const DecodedInstruction& lea = (*decoded)[first];
    const cs_x86& lx = lea.x86;
    if (lea.id != X86_INS_LEA || lx.op_count != 2 || lx.operands[1].mem.base != X86_REG_RIP ||
        lx.operands[1].mem.index != X86_REG_INVALID || !is_64bit_register(lx.operands[0].reg)) {
      continue;
    }
    uint64_t indexes =
        address + lea.offset + lea.size + static_cast<uint64_t>(lx.operands[1].mem.disp);
    int table = gpr_of(lx.operands[0].reg), class_index = kNoRegister, size = kNoRegister;
    int64_t class_sizes_disp = 0;
    for (size_t n = first + 1; n < decoded->size(); ++n) {
      const DecodedInstruction& in = (*decoded)[n];
      if (landings.count(in.offset)) break;
      if (in.flow == Flow::kRet) {
        if (size == kRax) {
          return SizeClassTables{indexes, indexes + static_cast<uint64_t>(class_sizes_disp)};
        }
        break;
      }
      if (in.flow != Flow::kNext && in.flow != Flow::kConditional) break;
      const cs_x86& x = in.x86;
      bool loads = x.op_count == 2 && x.operands[0].type == X86_OP_REG &&
                   x.operands[1].type == X86_OP_MEM &&
                   x.operands[1].mem.segment == X86_REG_INVALID &&
                   gpr_of(x.operands[1].mem.base) == table && table != kNoRegister;
      int written_by_load = kNoRegister;
      if (loads && class_index == kNoRegister && in.id == X86_INS_MOVZX &&
          x.operands[1].size == 1 && x.operands[1].mem.scale == 1 && x.operands[1].mem.disp == 0) {
        written_by_load = class_index = gpr_of(x.operands[0].reg);
      } else if (loads && class_index != kNoRegister && in.id == X86_INS_MOVSXD &&
                 x.operands[0].size == 8 && x.operands[1].size == 4 &&
                 x.operands[1].mem.scale == 4 && gpr_of(x.operands[1].mem.index) == class_index) {
        written_by_load = size = gpr_of(x.operands[0].reg);
        class_sizes_disp = x.operands[1].mem.disp;
      }
      // Any other write to the registers followed ends the pattern.
      for (x86_reg reg : in.written) {
        int gpr = gpr_of(reg);
        if (gpr == kNoRegister || gpr == written_by_load) continue;
        if (gpr == table) table = kNoRegister;
        if (gpr == class_index) class_index = kNoRegister;
        if (gpr == size) size = kNoRegister;
      }
      if (table == kNoRegister && class_index == kNoRegister) break;
    }
  }
  return std::nullopt;
}

}  // namespace memtrail::inspect
