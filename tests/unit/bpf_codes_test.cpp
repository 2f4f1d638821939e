// SPDX-License-Identifier: Apache-2.0
// The tracer's translation between BPF codes and memtrail's types: every code the BPF programs
// record maps to a type of its own and back, and every type maps to a code of its own.
#include "tracer/bpf_codes.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>

namespace memtrail::tracer::bpf {
namespace {

using model::AllocationKind;

TEST(BpfCodes, EveryAllocationKindCodeMapsToAKindAndBack) {
  std::set<AllocationKind> kinds;
  for (uint32_t code = 0; code <= MEMTRAIL_KIND_DYNAMIC_LAST; ++code) {
    AllocationKind kind = kind_from_code(code);
    if (code >= MEMTRAIL_KIND_COUNT && code < MEMTRAIL_KIND_DYNAMIC_FIRST) {
      EXPECT_EQ(kind, AllocationKind::kUnknown) << code;  // no program records these
      continue;
    }
    EXPECT_NE(kind, AllocationKind::kUnknown) << code;
    EXPECT_EQ(code_of(kind), code);
    EXPECT_TRUE(kinds.insert(kind).second) << "two codes for one kind: " << code;
  }
  EXPECT_EQ(kind_from_code(code_of(AllocationKind::kUnknown)), AllocationKind::kUnknown);
  // The regions the tracer rebuilds and the named kinds land where the model expects them.
  EXPECT_EQ(kind_from_code(MEMTRAIL_KIND_MMAP), AllocationKind::kMmap);
  EXPECT_EQ(kind_from_code(MEMTRAIL_KIND_BRK), AllocationKind::kBrk);
  EXPECT_EQ(kind_from_code(MEMTRAIL_KIND_DYNAMIC_FIRST), AllocationKind::kFirstNamed);
  EXPECT_EQ(kind_from_code(MEMTRAIL_KIND_DYNAMIC_LAST), AllocationKind::kLastNamed);
  EXPECT_TRUE(model::is_region(kind_from_code(MEMTRAIL_KIND_MMAP)));
  EXPECT_TRUE(model::is_region(kind_from_code(MEMTRAIL_KIND_BRK)));
}

TEST(BpfCodes, EveryModelKindMapsToACodeAndBack) {
  for (uint32_t value = 0; value <= static_cast<uint32_t>(AllocationKind::kLastNamed); ++value) {
    auto kind = static_cast<AllocationKind>(value);
    if (kind > AllocationKind::kUnknown && kind < AllocationKind::kFirstNamed) continue;  // gap
    EXPECT_EQ(kind_from_code(code_of(kind)), kind) << value;
  }
}

TEST(BpfCodes, ProbeCookiesAreTheKindOrWhatADeleteReleases) {
  using inspect::ProbeRole;
  EXPECT_EQ(probe_cookie(ProbeRole::kSizeAlloc, AllocationKind::kNew), MEMTRAIL_KIND_NEW);
  EXPECT_EQ(probe_cookie(ProbeRole::kCalloc, AllocationKind::kCalloc), MEMTRAIL_KIND_CALLOC);
  auto named = static_cast<AllocationKind>(static_cast<uint32_t>(AllocationKind::kFirstNamed) + 3);
  EXPECT_EQ(probe_cookie(ProbeRole::kRealloc, named), MEMTRAIL_KIND_DYNAMIC_FIRST + 3u);
  EXPECT_EQ(probe_cookie(ProbeRole::kDelete, AllocationKind::kNew), MEMTRAIL_DELETE_SCALAR);
  EXPECT_EQ(probe_cookie(ProbeRole::kDelete, AllocationKind::kNewArray), MEMTRAIL_DELETE_ARRAY);
}

TEST(BpfCodes, EveryPythonObjectCallHasItsOwnCode) {
  using model::PythonObjectCall;
  std::set<uint32_t> codes;
  for (auto call :
       {PythonObjectCall::kGenericAlloc, PythonObjectCall::kGcNew, PythonObjectCall::kGcNewVar}) {
    codes.insert(object_call_code(call));
  }
  EXPECT_EQ(codes, (std::set<uint32_t>{MEMTRAIL_PYTHON_GENERIC_ALLOC, MEMTRAIL_PYTHON_GC_NEW,
                                       MEMTRAIL_PYTHON_GC_NEWVAR}));
}

TEST(BpfCodes, PythonFramesAndFlagsAreUnpacked) {
  uint64_t code = 0x7f12'3456'7890;
  uint64_t globals = 0x7f12'3400'0040;
  auto frame = python_frame(code | (uint64_t{42} << MEMTRAIL_PYTHON_LASTI_SHIFT), globals);
  EXPECT_EQ(frame.code, code);
  EXPECT_EQ(frame.lasti, 42u);
  EXPECT_FALSE(frame.entry);
  EXPECT_EQ(frame.globals, globals);
  frame = python_frame(
      code | (MEMTRAIL_PYTHON_LASTI_MAX << MEMTRAIL_PYTHON_LASTI_SHIFT) | MEMTRAIL_PYTHON_ENTRY, 0);
  EXPECT_EQ(frame.code, code);
  EXPECT_EQ(frame.lasti, MEMTRAIL_PYTHON_LASTI_MAX);
  EXPECT_TRUE(frame.entry);
  EXPECT_EQ(frame.globals, 0u);

  // A stack's frames, each with its own module dict; only `depth` of them.
  memtrail_python_stack python{};
  python.depth = 2;
  python.frames[0] = code | MEMTRAIL_PYTHON_ENTRY;
  python.globals[0] = globals;
  python.frames[1] = code;
  python.globals[1] = globals + 0x100;
  python.frames[2] = code + 8;
  std::vector<model::PythonFrame> frames;
  python_frames(python, frames);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_TRUE(frames[0].entry && frames[0].globals == globals);
  EXPECT_TRUE(!frames[1].entry && frames[1].globals == globals + 0x100);

  model::Snapshot::Stack stack;
  read_python_flags(MEMTRAIL_PYTHON_TRUNCATED, stack);
  EXPECT_TRUE(stack.python_truncated && !stack.python_unreadable && !stack.python_no_thread);
  read_python_flags(MEMTRAIL_PYTHON_UNREADABLE, stack);
  EXPECT_TRUE(!stack.python_truncated && stack.python_unreadable && !stack.python_no_thread);
  read_python_flags(MEMTRAIL_PYTHON_NO_THREAD, stack);
  EXPECT_TRUE(!stack.python_truncated && !stack.python_unreadable && stack.python_no_thread);
}

TEST(BpfCodes, EveryTruncationReasonHasItsOwnName) {
  std::set<std::string> names;
  for (unsigned reason = 1; reason < MEMTRAIL_TRUNCATED_REASONS; ++reason) {
    model::Snapshot::Stack stack;
    read_stack_flags(
        static_cast<uint16_t>(MEMTRAIL_STACK_TRUNCATED | (reason << MEMTRAIL_STACK_REASON_SHIFT)),
        stack);
    EXPECT_TRUE(stack.truncated);
    EXPECT_FALSE(stack.used_tables);
    EXPECT_NE(stack.truncation_reason, "unknown") << reason;
    EXPECT_TRUE(names.insert(stack.truncation_reason).second) << stack.truncation_reason;
  }
  model::Snapshot::Stack whole;
  read_stack_flags(MEMTRAIL_STACK_USED_TABLES, whole);
  EXPECT_FALSE(whole.truncated);
  EXPECT_TRUE(whole.used_tables);
  EXPECT_TRUE(whole.truncation_reason.empty());
}

TEST(BpfCodes, UnwindRowsKeepEveryRuleAndOffset) {
  using unwind::CfaKind;
  using unwind::RbpKind;
  const CfaKind cfas[] = {CfaKind::kNone,  CfaKind::kRsp,       CfaKind::kRbp,
                          CfaKind::kPlt,   CfaKind::kOutermost, CfaKind::kUnsupported,
                          CfaKind::kSignal};
  const RbpKind rbps[] = {RbpKind::kUnchanged, RbpKind::kAtCfa, RbpKind::kUnknown};
  std::set<unsigned> cfa_codes, rbp_codes;
  for (CfaKind cfa : cfas) {
    for (RbpKind rbp : rbps) {
      unwind::Row row{0x12345678, 33360, cfa, rbp, -3};
      memtrail_unwind_row stored = unwind_row(row);
      EXPECT_EQ(stored.pc, row.pc);
      EXPECT_EQ(stored.cfa_offset, row.cfa_offset);
      EXPECT_EQ(stored.rbp_offset, row.rbp_offset);
      EXPECT_EQ(MEMTRAIL_UNWIND_CFA_KIND(&stored), cfa_code(cfa));
      EXPECT_EQ(MEMTRAIL_UNWIND_RBP_KIND(&stored), rbp_code(rbp));
      cfa_codes.insert(MEMTRAIL_UNWIND_CFA_KIND(&stored));
      rbp_codes.insert(MEMTRAIL_UNWIND_RBP_KIND(&stored));
    }
  }
  // One code per kind, and every code the walker knows is used.
  EXPECT_EQ(cfa_codes,
            (std::set<unsigned>{MEMTRAIL_UNWIND_CFA_NONE, MEMTRAIL_UNWIND_CFA_RSP,
                                MEMTRAIL_UNWIND_CFA_RBP, MEMTRAIL_UNWIND_CFA_PLT,
                                MEMTRAIL_UNWIND_CFA_OUTERMOST, MEMTRAIL_UNWIND_CFA_UNSUPPORTED,
                                MEMTRAIL_UNWIND_CFA_SIGNAL}));
  EXPECT_EQ(rbp_codes,
            (std::set<unsigned>{MEMTRAIL_UNWIND_RBP_UNCHANGED, MEMTRAIL_UNWIND_RBP_AT_CFA,
                                MEMTRAIL_UNWIND_RBP_UNKNOWN}));
}

TEST(BpfCodes, WalkerMappingsKeepEveryField) {
  using unwind::WalkMethod;
  std::set<uint32_t> methods;
  for (auto method : {WalkMethod::kTable, WalkMethod::kFramePointer, WalkMethod::kNothing}) {
    unwind::WalkerMapping mapping{0x1000, 0x2000, 0x3000, 4, 5, method, 6, 7, 8};
    memtrail_unwind_mapping stored = unwind_mapping(mapping);
    EXPECT_EQ(stored.start, 0x1000u);
    EXPECT_EQ(stored.end, 0x2000u);
    EXPECT_EQ(stored.bias, 0x3000u);
    EXPECT_EQ(stored.first_row, 4u);
    EXPECT_EQ(stored.rows, 5u);
    EXPECT_EQ(stored.first_page, 6u);
    EXPECT_EQ(stored.pages, 7u);
    EXPECT_EQ(stored.page_base, 8u);
    methods.insert(stored.method);
  }
  EXPECT_EQ(methods, (std::set<uint32_t>{MEMTRAIL_UNWIND_BY_TABLE, MEMTRAIL_UNWIND_BY_FRAME_POINTER,
                                         MEMTRAIL_UNWIND_BY_NOTHING}));
}

TEST(BpfCodes, PythonLayoutsKeepEveryOffset) {
  model::PythonFrameLayout layout{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  memtrail_python_layout stored = python_layout(layout);
  const uint32_t expected[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  static_assert(sizeof(stored) == sizeof(expected));
  EXPECT_EQ(std::memcmp(&stored, expected, sizeof(expected)), 0);
  memtrail_python_type_layout types = python_type_layout({168, 1ul << 14});
  EXPECT_EQ(types.type_flags, 168u);
  EXPECT_EQ(types.have_gc, 1ull << 14);
}

}  // namespace
}  // namespace memtrail::tracer::bpf
