// SPDX-License-Identifier: Apache-2.0
// x86-64 code decoded with capstone for the probe-placement analyses.
#include "inspect/x86_code.h"

#include <cstdio>
#include <functional>
#include <memory>

namespace memtrail::inspect {
bool is_64bit_register(unsigned reg) {
  switch (reg) {
    case X86_REG_RAX:
    case X86_REG_RBX:
    case X86_REG_RCX:
    case X86_REG_RDX:
    case X86_REG_RSI:
    case X86_REG_RDI:
    case X86_REG_RBP:
    case X86_REG_RSP:
    case X86_REG_R8:
    case X86_REG_R9:
    case X86_REG_R10:
    case X86_REG_R11:
    case X86_REG_R12:
    case X86_REG_R13:
    case X86_REG_R14:
    case X86_REG_R15:
      return true;
    default:
      return false;
  }
}

std::optional<std::vector<DecodedInstruction>> decode_x86(uint64_t address,
                                                          const std::vector<uint8_t>& code,
                                                          std::string& reason) {
  csh handle = 0;
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle) != CS_ERR_OK) {
    reason = "no disassembler";
    return std::nullopt;
  }
  struct Closer {
    csh* handle;
    ~Closer() { cs_close(handle); }
  } closer{&handle};
  cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON);
  cs_insn* raw = nullptr;
  size_t count = cs_disasm(handle, code.data(), code.size(), address, 0, &raw);
  std::unique_ptr<cs_insn, std::function<void(cs_insn*)>> owned(
      raw, [count](cs_insn* p) { cs_free(p, count); });
  std::vector<DecodedInstruction> decoded;
  uint64_t end = 0;
  for (size_t i = 0; i < count; ++i) {
    const cs_insn& in = raw[i];
    DecodedInstruction instruction;
    instruction.offset = in.address - address;
    instruction.size = in.size;
    instruction.id = in.id;
    instruction.mnemonic = in.mnemonic;
    instruction.x86 = in.detail->x86;
    const cs_x86& x86 = in.detail->x86;
    bool relative = x86.op_count == 1 && x86.operands[0].type == X86_OP_IMM;
    instruction.prefixed = x86.prefix[0] || x86.prefix[1] || x86.prefix[2] || x86.prefix[3];
    if (in.id == X86_INS_RET) {
      instruction.flow = Flow::kRet;
    } else if (in.id == X86_INS_JMP) {
      instruction.flow = relative ? Flow::kJump : Flow::kIndirectJump;
    } else if (cs_insn_group(handle, &in, CS_GRP_JUMP)) {
      instruction.flow = relative ? Flow::kConditional : Flow::kIndirectJump;
    } else if (in.id == X86_INS_CALL) {
      instruction.flow = relative ? Flow::kCall : Flow::kIndirectCall;
    } else if (in.id == X86_INS_HLT || in.id == X86_INS_UD2 || in.id == X86_INS_INT3) {
      instruction.flow = Flow::kStop;
    }
    if (relative && instruction.flow != Flow::kNext) {
      instruction.target = static_cast<uint64_t>(x86.operands[0].imm);
    }
    switch (in.id) {
      case X86_INS_PUSH:
        instruction.emulated = !instruction.prefixed && x86.op_count == 1 &&
                               x86.operands[0].type == X86_OP_REG &&
                               is_64bit_register(x86.operands[0].reg);
        break;
      case X86_INS_NOP:
        instruction.emulated = in.size == 1;
        break;
      default:
        instruction.emulated =
            !instruction.prefixed && relative &&
            (instruction.flow == Flow::kJump || instruction.flow == Flow::kConditional ||
             instruction.flow == Flow::kCall);
    }
    cs_regs read_regs, write_regs;
    uint8_t read_count = 0, write_count = 0;
    if (cs_regs_access(handle, &in, read_regs, &read_count, write_regs, &write_count) !=
        CS_ERR_OK) {
      reason = "capstone cannot say which registers " + instruction.mnemonic + " writes";
      return std::nullopt;
    }
    for (uint8_t w = 0; w < write_count; ++w) {
      instruction.written.push_back(static_cast<x86_reg>(write_regs[w]));
    }
    decoded.push_back(std::move(instruction));
    end = in.address - address + in.size;
  }
  if (end < code.size()) {
    char text[24];
    std::snprintf(text, sizeof(text), "%llx", static_cast<unsigned long long>(end));
    reason = std::string("undecodable byte at +0x") + text;
    return std::nullopt;
  }
  return decoded;
}

}  // namespace memtrail::inspect
