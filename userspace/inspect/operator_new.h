// SPDX-License-Identifier: Apache-2.0
// C++ operators new and delete that only forward to malloc, free or one another: proven from
// their code, so that they need no probe of their own (--cxx, issue 21).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace memtrail::inspect {

// An operator new that calls malloc and returns its result unchanged (libstdc++'s and libc++'s
// `operator new(size_t)`: malloc in a loop on the new_handler). malloc's return sites see the
// call come back to `call_return` inside it: the block is then operator new's, and operator
// new's own caller, `frame_skip` bytes further up the stack, is the allocation's caller.
struct NewViaMalloc {
  uint64_t address = 0;      // ELF virtual address of the function
  uint64_t call_return = 0;  // offset of the instruction after `call malloc`, from the start
  // From the stack slot of that return address to the slot of operator new's own.
  uint32_t frame_skip = 0;
  // The function's bytes, all of it: at run time the code that called malloc must be these
  // very bytes (the analysis holds for them only).
  std::vector<uint8_t> code;
};

struct OperatorNewAnalysis {
  std::optional<NewViaMalloc> via_malloc;  // nullopt: not proven, see reason
  std::string reason;                      // one line for -v
};

// Most bytes of operator new that malloc's return sites can check (one read of user memory).
inline constexpr size_t kNewCodeBytes = 64;

// Decodes `code` (the whole function at `address`, at most kNewCodeBytes) and proves that:
// exactly one instruction calls malloc (`callee_name` of a call target: the PLT's symbol, or a
// direct call's), none jumps to it; no path returns or leaves the function before that call,
// and it has one reachable ret; the stack depth at that call is the same on every path from
// the entry (only push, pop and add/sub of a constant move %rsp; calls return to the next
// instruction); no instruction writes %rbp (the caller's %rbp stays where malloc's return sites
// find it); and after the call, on the path where %rax is not NULL (`test %rax,%rax` and
// je/jne), only pops, adds to %rsp and moves that leave %rax alone lead to `ret`, with the stack
// back at the entry's. A NULL path may do anything (new_handler, throw): malloc's failure is
// counted by its own probes.
OperatorNewAnalysis analyse_operator_new(uint64_t address, const std::vector<uint8_t>& code,
                                         const std::function<std::string(uint64_t)>& callee_name);

// A function that only hands its arguments on to another: `endbr64` and nops, moves between
// registers that leave %rdi (the pointer of a delete, the size of a new) and %rsp alone, then
// one relative `jmp`. The address jumped to, or nullopt.
std::optional<uint64_t> forwarding_jump(uint64_t address, const std::vector<uint8_t>& code);

}  // namespace memtrail::inspect
