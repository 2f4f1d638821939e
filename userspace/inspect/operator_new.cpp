// SPDX-License-Identifier: Apache-2.0
// C++ operators new and delete that only forward to malloc, free or one another (capstone).
#include "inspect/operator_new.h"

#include <capstone/capstone.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "inspect/x86_code.h"

namespace memtrail::inspect {
namespace {

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "%llx", static_cast<unsigned long long>(value));
  return text;
}

// The 64-bit register a capstone register belongs to (al, ax, eax, rax: rax), or itself.
x86_reg family(x86_reg reg) {
  switch (reg) {
    case X86_REG_AL:
    case X86_REG_AH:
    case X86_REG_AX:
    case X86_REG_EAX:
      return X86_REG_RAX;
    case X86_REG_BPL:
    case X86_REG_BP:
    case X86_REG_EBP:
      return X86_REG_RBP;
    case X86_REG_SPL:
    case X86_REG_SP:
    case X86_REG_ESP:
      return X86_REG_RSP;
    case X86_REG_DIL:
    case X86_REG_DI:
    case X86_REG_EDI:
      return X86_REG_RDI;
    default:
      return reg;
  }
}

struct Instruction {
  uint64_t offset = 0;
  uint32_t size = 0;
  unsigned id = 0;
  std::string mnemonic;
  Flow flow = Flow::kNext;
  uint64_t target = 0;  // relative branches and calls
  bool prefixed = false;
  std::set<x86_reg> written;  // 64-bit families
  cs_x86 x86{};
};

// The whole of `code`, or nullopt with `reason` set.
std::optional<std::vector<Instruction>> decode(uint64_t address, const std::vector<uint8_t>& code,
                                               std::string& reason) {
  auto decoded = decode_x86(address, code, reason);
  if (!decoded) return std::nullopt;
  std::vector<Instruction> instructions;
  for (DecodedInstruction& in : *decoded) {
    Instruction instruction;
    instruction.offset = in.offset;
    instruction.size = in.size;
    instruction.id = in.id;
    instruction.mnemonic = std::move(in.mnemonic);
    instruction.flow = in.flow;
    instruction.target = in.target;
    instruction.prefixed = in.prefixed;
    for (x86_reg reg : in.written) instruction.written.insert(family(reg));
    instruction.x86 = in.x86;
    instructions.push_back(std::move(instruction));
  }
  return instructions;
}

bool is_register(const cs_x86_op& operand, x86_reg reg) {
  return operand.type == X86_OP_REG && family(operand.reg) == reg;
}

// `add $N, %rsp` (N > 0 when `sub`): how far it moves the stack down, or nullopt.
std::optional<int64_t> stack_adjustment(const Instruction& in) {
  if ((in.id != X86_INS_SUB && in.id != X86_INS_ADD) || in.x86.op_count != 2) return std::nullopt;
  if (!is_register(in.x86.operands[0], X86_REG_RSP) || in.x86.operands[0].reg != X86_REG_RSP ||
      in.x86.operands[1].type != X86_OP_IMM) {
    return std::nullopt;
  }
  int64_t amount = in.x86.operands[1].imm;
  return in.id == X86_INS_SUB ? amount : -amount;
}

// push or pop of a 64-bit register: +8 or -8, or nullopt.
std::optional<int64_t> push_pop(const Instruction& in) {
  if ((in.id != X86_INS_PUSH && in.id != X86_INS_POP) || in.prefixed || in.x86.op_count != 1 ||
      in.x86.operands[0].type != X86_OP_REG || in.x86.operands[0].size != 8) {
    return std::nullopt;
  }
  return in.id == X86_INS_PUSH ? 8 : -8;
}

}  // namespace

OperatorNewAnalysis analyse_operator_new(uint64_t address, const std::vector<uint8_t>& code,
                                         const std::function<std::string(uint64_t)>& callee_name) {
  OperatorNewAnalysis result;
  if (code.empty() || code.size() > kNewCodeBytes) {
    result.reason = "its code is " + std::to_string(code.size()) + " bytes, more than the " +
                    std::to_string(kNewCodeBytes) + " a return site checks";
    return result;
  }
  auto decoded = decode(address, code, result.reason);
  if (!decoded) return result;
  const std::vector<Instruction>& code_ = *decoded;
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < code_.size(); ++i) index[code_[i].offset] = i;
  auto inside = [&](uint64_t target) {
    return target >= address && index.count(target - address) > 0;
  };

  // Every path from the entry: the stack depth at each instruction, the same on every path.
  std::map<size_t, int64_t> depth{{0, 0}};
  std::vector<size_t> work{0};
  std::optional<size_t> malloc_call;
  auto reach = [&](size_t next, int64_t at) {
    auto [known, added] = depth.emplace(next, at);
    if (added) {
      work.push_back(next);
    } else if (known->second != at) {
      result.reason = "the stack depth at +0x" + hex(code_[next].offset) + " differs by path";
      return false;
    }
    return true;
  };
  while (!work.empty()) {
    size_t i = work.back();
    work.pop_back();
    const Instruction& in = code_[i];
    int64_t at = depth[i];
    std::string where = in.mnemonic + " at +0x" + hex(in.offset);
    if (in.written.count(X86_REG_RBP)) {
      result.reason = where + " writes %rbp";
      return result;
    }
    if (auto moved = push_pop(in)) {
      at += *moved;
    } else if (auto adjusted = stack_adjustment(in)) {
      at += *adjusted;
    } else if (in.written.count(X86_REG_RSP) && in.flow != Flow::kCall &&
               in.flow != Flow::kIndirectCall && in.flow != Flow::kRet) {
      result.reason = where + " moves %rsp";
      return result;
    }
    if (at < 0) {
      result.reason = where + " pops above the return address";
      return result;
    }
    switch (in.flow) {
      case Flow::kRet:
      case Flow::kStop:
        continue;
      case Flow::kIndirectJump:
        result.reason = "indirect jump at +0x" + hex(in.offset);
        return result;
      case Flow::kJump:
        if (!inside(in.target)) {
          if (callee_name(in.target) == "malloc") {
            result.reason = "it jumps to malloc at +0x" + hex(in.offset);
            return result;
          }
          continue;  // out of the function (the throw of bad_alloc)
        }
        if (!reach(index[in.target - address], at)) return result;
        continue;
      case Flow::kConditional:
        if (inside(in.target) && !reach(index[in.target - address], at)) return result;
        break;
      case Flow::kCall:
        if (callee_name(in.target) == "malloc") {
          if (malloc_call && *malloc_call != i) {
            result.reason = "it calls malloc twice";
            return result;
          }
          malloc_call = i;
        }
        break;
      default:
        break;
    }
    if (i + 1 >= code_.size()) {
      result.reason = "its code runs past its end at +0x" + hex(in.offset);
      return result;
    }
    if (!reach(i + 1, at)) return result;
  }
  if (!malloc_call) {
    result.reason = "it does not call malloc";
    return result;
  }
  const Instruction& call = code_[*malloc_call];
  int64_t call_depth = depth[*malloc_call];
  if (*malloc_call + 1 >= code_.size()) {
    result.reason = "nothing follows its call to malloc";
    return result;
  }
  // Every block it returns comes from that call: no path from the entry returns, or leaves the
  // function (a tail call), before it; only the NULL path after it may leave (the throw of
  // bad_alloc); and one ret is reached at all, the one after the call (checked below).
  std::set<size_t> before{0};
  std::vector<size_t> pending{0};
  size_t rets = 0;
  for (const auto& [reached, at] : depth) {
    if (code_[reached].flow == Flow::kRet) ++rets;
  }
  if (rets != 1) {
    result.reason = "it returns at " + std::to_string(rets) + " places";
    return result;
  }
  while (!pending.empty()) {
    size_t at = pending.back();
    pending.pop_back();
    const Instruction& in = code_[at];
    if (at == *malloc_call || in.flow == Flow::kStop) continue;
    bool leaves = (in.flow == Flow::kJump || in.flow == Flow::kConditional) && !inside(in.target);
    if (in.flow == Flow::kRet || leaves) {
      result.reason = in.mnemonic + " at +0x" + hex(in.offset) +
                      (leaves ? " leaves it" : " returns") + " before it calls malloc";
      return result;
    }
    std::vector<size_t> next;
    if (in.flow != Flow::kJump) next.push_back(at + 1);
    if ((in.flow == Flow::kJump || in.flow == Flow::kConditional) && inside(in.target)) {
      next.push_back(index[in.target - address]);
    }
    for (size_t successor : next) {
      if (successor < code_.size() && before.insert(successor).second) pending.push_back(successor);
    }
  }

  // After the call, while %rax is not NULL: to `ret`, %rax untouched, the stack unwound.
  size_t i = *malloc_call + 1;
  int64_t at = call_depth;
  bool tested = false;  // the flags say whether %rax is NULL
  for (int steps = 0; steps < 32; ++steps) {
    const Instruction& in = code_[i];
    std::string where = in.mnemonic + " at +0x" + hex(in.offset);
    if (in.flow == Flow::kRet) {
      if (at != 0) {
        result.reason = "its ret at +0x" + hex(in.offset) + " finds the stack " +
                        std::to_string(at) + " bytes below its entry's";
        return result;
      }
      NewViaMalloc proven;
      proven.address = address;
      proven.call_return = call.offset + call.size;
      proven.frame_skip = static_cast<uint32_t>(call_depth + 8);
      proven.code = code;
      result.via_malloc = proven;
      result.reason = "calls malloc at +0x" + hex(call.offset) + " and returns what it returns (" +
                      std::to_string(call_depth) + " bytes of its own on the stack)";
      return result;
    }
    if (in.written.count(X86_REG_RAX)) {
      result.reason = where + " changes the pointer malloc returned";
      return result;
    }
    if (in.id == X86_INS_TEST && in.x86.op_count == 2 && in.x86.operands[0].type == X86_OP_REG &&
        in.x86.operands[0].reg == X86_REG_RAX && in.x86.operands[1].type == X86_OP_REG &&
        in.x86.operands[1].reg == X86_REG_RAX) {
      tested = true;
      ++i;
      continue;
    }
    if (in.flow == Flow::kConditional && tested && (in.id == X86_INS_JE || in.id == X86_INS_JNE)) {
      // je: not taken while the pointer is not NULL; jne: taken.
      if (in.id == X86_INS_JE) {
        ++i;
      } else if (inside(in.target)) {
        i = index[in.target - address];
      } else {
        result.reason = where + " leaves the function with the pointer";
        return result;
      }
      continue;
    }
    if (in.flow == Flow::kJump && inside(in.target)) {
      i = index[in.target - address];
      continue;
    }
    if (in.flow != Flow::kNext) {
      result.reason = where + " after the call to malloc: not a plain return of its pointer";
      return result;
    }
    if (auto moved = push_pop(in)) {
      at += *moved;
    } else if (auto adjusted = stack_adjustment(in)) {
      at += *adjusted;
    } else if (in.written.count(X86_REG_RSP)) {
      result.reason = where + " moves %rsp";
      return result;
    }
    if (in.written.count(X86_REG_EFLAGS)) tested = false;
    ++i;
    if (i >= code_.size()) break;
  }
  result.reason = "no ret follows its call to malloc";
  return result;
}

std::optional<uint64_t> forwarding_jump(uint64_t address, const std::vector<uint8_t>& code) {
  std::string ignored;
  auto decoded = decode(address, code, ignored);
  if (!decoded) return std::nullopt;
  for (const Instruction& in : *decoded) {
    if (in.id == X86_INS_ENDBR64 || in.id == X86_INS_NOP) continue;
    if (in.flow == Flow::kJump) return in.target;
    bool register_move = in.id == X86_INS_MOV && in.x86.op_count == 2 &&
                         in.x86.operands[0].type == X86_OP_REG &&
                         in.x86.operands[1].type == X86_OP_REG;
    if (!register_move || family(in.x86.operands[0].reg) == X86_REG_RDI ||
        family(in.x86.operands[0].reg) == X86_REG_RSP) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace memtrail::inspect
