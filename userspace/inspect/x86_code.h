// SPDX-License-Identifier: Apache-2.0
// x86-64 code decoded for the analyses that place probes (return sites, C++ operators): each
// instruction's control flow, what it writes, and whether the kernel's uprobe emulates it.
#pragma once

#include <capstone/capstone.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace memtrail::inspect {

enum class Flow { kNext, kRet, kJump, kConditional, kCall, kIndirectCall, kIndirectJump, kStop };

struct DecodedInstruction {
  uint64_t offset = 0;  // from the address the code was decoded at
  uint32_t size = 0;
  unsigned id = 0;  // X86_INS_*
  std::string mnemonic;
  Flow flow = Flow::kNext;
  uint64_t target = 0;  // absolute, for relative jumps, conditional jumps and calls
  bool prefixed = false;
  // The kernel's uprobe emulates it instead of single-stepping it (arch/x86/kernel/uprobes.c):
  // relative jumps, conditional jumps and calls, the one-byte nop, and push of a 64-bit
  // register, none with a prefix (branch_setup_xol_ops refuses some, e.g. 0x66).
  bool emulated = false;
  std::vector<x86_reg> written;  // registers written, implicitly too, as capstone names them
  cs_x86 x86{};
};

// rax..r15 (not their 8-, 16- or 32-bit parts).
bool is_64bit_register(unsigned reg);

// The whole of `code` (which starts at `address`), or nullopt with `reason` set: no
// disassembler, an undecodable byte, or an instruction whose writes capstone cannot tell.
std::optional<std::vector<DecodedInstruction>> decode_x86(uint64_t address,
                                                          const std::vector<uint8_t>& code,
                                                          std::string& reason);

}  // namespace memtrail::inspect
