// SPDX-License-Identifier: Apache-2.0
// C++ operators that only forward to malloc, free or one another: synthetic code, and
// libstdc++ as installed (Debian 12: libstdc++.so.6 of g++ 12).
#include "inspect/operator_new.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "inspect/elf_file.h"

namespace memtrail::inspect {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint64_t kAddress = 0x1000;
constexpr const char* kLibstdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

// The synthetic functions below call malloc with `call +0` at offset 4: its target, the next
// instruction, is named malloc.
OperatorNewAnalysis analyse(const Bytes& code, uint64_t malloc_at = kAddress + 9) {
  return analyse_operator_new(kAddress, code, [malloc_at](uint64_t target) {
    return target == malloc_at ? std::string("malloc") : std::string();
  });
}

// push %rbx; mov %rdi,%rbx; call malloc; test %rax,%rax; je null; pop %rbx; ret;
// null: ud2 (the new_handler and the throw, out of the analysis' way).
const Bytes kNew{0x53, 0x48, 0x89, 0xfb, 0xe8, 0x00, 0x00, 0x00, 0x00,
                 0x48, 0x85, 0xc0, 0x74, 0x02, 0x5b, 0xc3, 0x0f, 0x0b};

TEST(OperatorNew, CallingMallocAndReturningItsPointerIsProven) {
  OperatorNewAnalysis analysis = analyse(kNew);
  ASSERT_TRUE(analysis.via_malloc.has_value()) << analysis.reason;
  EXPECT_EQ(analysis.via_malloc->address, kAddress);
  EXPECT_EQ(analysis.via_malloc->call_return, 9u);  // after the call
  EXPECT_EQ(analysis.via_malloc->frame_skip, 16u);  // the pushed rbx and the return address
  EXPECT_EQ(analysis.via_malloc->code, kNew);
  EXPECT_NE(analysis.reason.find("calls malloc at +0x4"), std::string::npos) << analysis.reason;
}

TEST(OperatorNew, TheNonNullPathMayBeTheTakenBranch) {
  // push %rbx; call malloc; test %rax,%rax; jne out; ud2; out: pop %rbx; ret
  Bytes code{0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85,
             0xc0, 0x75, 0x02, 0x0f, 0x0b, 0x5b, 0xc3};
  OperatorNewAnalysis analysis = analyse(code, kAddress + 6);
  ASSERT_TRUE(analysis.via_malloc.has_value()) << analysis.reason;
  EXPECT_EQ(analysis.via_malloc->call_return, 6u);
  EXPECT_EQ(analysis.via_malloc->frame_skip, 16u);
}

TEST(OperatorNew, WhatIsNotProvenSaysWhy) {
  struct Case {
    const char* what;
    Bytes code;
    const char* reason;
  };
  Bytes pops_into_rax = kNew;
  pops_into_rax[14] = 0x58;  // pop %rax
  Bytes no_pop = kNew;
  no_pop[14] = 0x90;  // nop: ret finds the pushed rbx
  // push %rbp; mov %rsp,%rbp; then kNew's call and return.
  Bytes frame{0x55, 0x48, 0x89, 0xe5, 0xe8, 0x00, 0x00, 0x00, 0x00,
              0x48, 0x85, 0xc0, 0x74, 0x02, 0x5d, 0xc3, 0x0f, 0x0b};
  // kNew with a second call to malloc in place of its ud2.
  Bytes twice{0x53, 0x48, 0x89, 0xfb, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0,
              0x74, 0x02, 0x5b, 0xc3, 0xe8, 0xf4, 0xff, 0xff, 0xff, 0xeb, 0xf2};
  // push %rbx; call malloc; mov %rsp,%rbx; ... : the stack moved by a register.
  Bytes moves_rsp{0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x89, 0xdc, 0x5b, 0xc3};
  // test %rdi,%rdi; je out (outside: a tail call); then kNew.
  Bytes leaves{0x48, 0x85, 0xff, 0x0f, 0x84, 0xf7, 0x3f, 0x00, 0x00};
  leaves.insert(leaves.end(), kNew.begin(), kNew.end());
  // test %rdi,%rdi; jne new; xor %eax,%eax; ret; new: kNew (a second ret, and one before the
  // call to malloc).
  Bytes returns_early{0x48, 0x85, 0xff, 0x75, 0x03, 0x31, 0xc0, 0xc3};
  returns_early.insert(returns_early.end(), kNew.begin(), kNew.end());
  for (const Case& c : {Case{"the pointer changed", pops_into_rax, "changes the pointer"},
                        Case{"a tail call before malloc", leaves, "je at +0x3 leaves it before"},
                        Case{"two rets", returns_early, "it returns at 2 places"},
                        Case{"the stack not unwound", no_pop, "finds the stack 8 bytes below"},
                        Case{"rbp written", frame, "writes %rbp"},
                        Case{"malloc called twice", twice, "calls malloc twice"},
                        Case{"rsp moved", moves_rsp, "moves %rsp"},
                        Case{"too long", Bytes(65, 0x90), "more than the 64"}}) {
    SCOPED_TRACE(c.what);
    uint64_t malloc_at = c.code == moves_rsp       ? kAddress + 6
                         : c.code == leaves        ? kAddress + 9 + 9
                         : c.code == returns_early ? kAddress + 8 + 9
                                                   : kAddress + 9;
    OperatorNewAnalysis analysis = analyse(c.code, malloc_at);
    EXPECT_FALSE(analysis.via_malloc.has_value());
    EXPECT_NE(analysis.reason.find(c.reason), std::string::npos) << analysis.reason;
  }
  OperatorNewAnalysis elsewhere = analyse(kNew, 0x5000);
  EXPECT_FALSE(elsewhere.via_malloc.has_value());
  EXPECT_EQ(elsewhere.reason, "it does not call malloc");
}

TEST(OperatorNew, AForwardingJumpLeavesThePointerAndTheStackAlone) {
  // endbr64; mov %rdx,%rsi; jmp 0x5000
  Bytes forward{0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x89, 0xd6, 0xe9, 0, 0, 0, 0};
  int32_t displacement = 0x5000 - (kAddress + 12);
  std::memcpy(&forward[8], &displacement, 4);
  EXPECT_EQ(forwarding_jump(kAddress, forward), std::optional<uint64_t>(0x5000));
  Bytes writes_rdi = forward;
  writes_rdi[6] = 0xd7;  // mov %rdx,%rdi
  EXPECT_EQ(forwarding_jump(kAddress, writes_rdi), std::nullopt);
  // sub $8,%rsp; call: not a jump.
  EXPECT_EQ(forwarding_jump(kAddress, {0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0}), std::nullopt);
}

// The installed libstdc++: its operator new calls malloc; the variants that do not say why;
// new[], the sized and nothrow deletes jump to the operator of their kind.
class InstalledLibstdcxx : public ::testing::Test {
 protected:
  InstalledLibstdcxx() : elf_(ElfFile::open(kLibstdcxx)) {}
  std::vector<uint8_t> code_of(const char* name) {
    auto symbol = elf_.find_function(name);
    EXPECT_TRUE(symbol.has_value()) << name;
    address_ = symbol ? symbol->address : 0;
    return symbol ? elf_.read_code(symbol->address, symbol->size) : std::vector<uint8_t>{};
  }
  OperatorNewAnalysis analyse_installed(const char* name) {
    auto code = code_of(name);
    return analyse_operator_new(address_, code,
                                [this](uint64_t target) { return elf_.plt_target(target); });
  }
  std::string forwards_to(const char* name) {
    auto code = code_of(name);
    auto target = forwarding_jump(address_, code);
    return target ? elf_.plt_target(*target) : "(none)";
  }
  ElfFile elf_;
  uint64_t address_ = 0;
};

TEST_F(InstalledLibstdcxx, OperatorNewCallsMallocAndReturnsWhatItReturns) {
  OperatorNewAnalysis analysis = analyse_installed("_Znwm");
  ASSERT_TRUE(analysis.via_malloc.has_value()) << analysis.reason;
  const NewViaMalloc& proven = *analysis.via_malloc;
  // The bytes before the return address are a call (e8 rel32) to malloc's PLT stub.
  ASSERT_GE(proven.call_return, 5u);
  ASSERT_LE(proven.call_return, proven.code.size());
  EXPECT_EQ(proven.code[proven.call_return - 5], 0xe8);
  int32_t displacement = 0;
  std::memcpy(&displacement, &proven.code[proven.call_return - 4], 4);
  EXPECT_EQ(elf_.plt_target(address_ + proven.call_return + displacement), "malloc");
  // Its own frame: at least the return address, whole words.
  EXPECT_GE(proven.frame_skip, 8u);
  EXPECT_EQ(proven.frame_skip % 8, 0u);
  EXPECT_EQ(proven.code, code_of("_Znwm"));
}

TEST_F(InstalledLibstdcxx, TheVariantsNotCallingMallocKeepTheirProbesAndSayWhy) {
  // nothrow: calls operator new; aligned: aligned_alloc, and keeps the alignment in rbp.
  for (const char* name :
       {"_ZnwmRKSt9nothrow_t", "_ZnwmSt11align_val_tRKSt9nothrow_t", "_ZnwmSt11align_val_t"}) {
    OperatorNewAnalysis analysis = analyse_installed(name);
    EXPECT_FALSE(analysis.via_malloc.has_value()) << name;
    EXPECT_FALSE(analysis.reason.empty()) << name;
  }
}

TEST_F(InstalledLibstdcxx, NewArrayAndTheSizedAndNothrowDeletesOnlyJump) {
  EXPECT_EQ(forwards_to("_Znam"), "_Znwm");
  EXPECT_EQ(forwards_to("_ZdlPv"), "free");
  EXPECT_EQ(forwards_to("_ZdlPvm"), "_ZdlPv");
  EXPECT_EQ(forwards_to("_ZdlPvRKSt9nothrow_t"), "_ZdlPv");
  EXPECT_EQ(forwards_to("_ZdaPv"), "_ZdlPv");
  EXPECT_EQ(forwards_to("_ZdaPvm"), "_ZdaPv");
  EXPECT_EQ(forwards_to("_ZdlPvmSt11align_val_t"), "_ZdlPvSt11align_val_t");
  EXPECT_EQ(forwards_to("_ZnwmRKSt9nothrow_t"), "(none)");  // a call, in a try block
}

}  // namespace
}  // namespace memtrail::inspect
