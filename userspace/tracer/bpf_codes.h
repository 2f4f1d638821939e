// SPDX-License-Identifier: Apache-2.0
// The one place where BPF codes and layouts meet memtrail's own types: the tracer translates
// what it reads from the maps into model types, and model, target, unwind and Python types into
// the codes, cookies and structs of the BPF programs. Only userspace/tracer/ includes the BPF
// ABI headers (bpf/alloc_events.h, bpf/unwind_table.h), and only through this header.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "alloc_events.h"
#include "inspect/allocator.h"
#include "model/python.h"
#include "model/snapshot.h"
#include "unwind/module_tables.h"
#include "unwind/table_builder.h"
#include "unwind_table.h"

namespace memtrail::tracer::bpf {

// ---- Allocation kinds: recorded with each block (the attach cookie of its probe) ----

inline constexpr uint32_t kNamedKinds =
    MEMTRAIL_KIND_DYNAMIC_LAST - MEMTRAIL_KIND_DYNAMIC_FIRST + 1;
static_assert(kNamedKinds == static_cast<uint32_t>(model::AllocationKind::kLastNamed) -
                                 static_cast<uint32_t>(model::AllocationKind::kFirstNamed) + 1,
              "the model names as many extension functions as the BPF programs can record");

// The kind of a code read from the allocations table (8 bits of size_kind) or a region.
constexpr model::AllocationKind kind_from_code(uint32_t code) {
  using Kind = model::AllocationKind;
  if (code >= MEMTRAIL_KIND_DYNAMIC_FIRST && code <= MEMTRAIL_KIND_DYNAMIC_LAST) {
    return static_cast<Kind>(static_cast<uint32_t>(Kind::kFirstNamed) +
                             (code - MEMTRAIL_KIND_DYNAMIC_FIRST));
  }
  switch (code) {
    case MEMTRAIL_KIND_MALLOC:
      return Kind::kMalloc;
    case MEMTRAIL_KIND_CALLOC:
      return Kind::kCalloc;
    case MEMTRAIL_KIND_REALLOC:
      return Kind::kRealloc;
    case MEMTRAIL_KIND_REALLOCARRAY:
      return Kind::kReallocArray;
    case MEMTRAIL_KIND_POSIX_MEMALIGN:
      return Kind::kPosixMemalign;
    case MEMTRAIL_KIND_ALIGNED_ALLOC:
      return Kind::kAlignedAlloc;
    case MEMTRAIL_KIND_MEMALIGN:
      return Kind::kMemalign;
    case MEMTRAIL_KIND_VALLOC:
      return Kind::kValloc;
    case MEMTRAIL_KIND_PVALLOC:
      return Kind::kPvalloc;
    case MEMTRAIL_KIND_NEW:
      return Kind::kNew;
    case MEMTRAIL_KIND_NEW_ARRAY:
      return Kind::kNewArray;
    case MEMTRAIL_KIND_MMAP:
      return Kind::kMmap;
    case MEMTRAIL_KIND_BRK:
      return Kind::kBrk;
    case MEMTRAIL_KIND_PYTHON_OBJECT:
      return Kind::kPythonObject;
  }
  return Kind::kUnknown;
}

// The code the allocation programs record for `kind`. kUnknown is never attached; it gets a
// code no program records (MEMTRAIL_KIND_COUNT), which reads back as kUnknown.
constexpr uint32_t code_of(model::AllocationKind kind) {
  using Kind = model::AllocationKind;
  if (kind >= Kind::kFirstNamed) {
    return MEMTRAIL_KIND_DYNAMIC_FIRST +
           (static_cast<uint32_t>(kind) - static_cast<uint32_t>(Kind::kFirstNamed));
  }
  switch (kind) {
    case Kind::kMalloc:
      return MEMTRAIL_KIND_MALLOC;
    case Kind::kCalloc:
      return MEMTRAIL_KIND_CALLOC;
    case Kind::kRealloc:
      return MEMTRAIL_KIND_REALLOC;
    case Kind::kReallocArray:
      return MEMTRAIL_KIND_REALLOCARRAY;
    case Kind::kPosixMemalign:
      return MEMTRAIL_KIND_POSIX_MEMALIGN;
    case Kind::kAlignedAlloc:
      return MEMTRAIL_KIND_ALIGNED_ALLOC;
    case Kind::kMemalign:
      return MEMTRAIL_KIND_MEMALIGN;
    case Kind::kValloc:
      return MEMTRAIL_KIND_VALLOC;
    case Kind::kPvalloc:
      return MEMTRAIL_KIND_PVALLOC;
    case Kind::kNew:
      return MEMTRAIL_KIND_NEW;
    case Kind::kNewArray:
      return MEMTRAIL_KIND_NEW_ARRAY;
    case Kind::kMmap:
      return MEMTRAIL_KIND_MMAP;
    case Kind::kBrk:
      return MEMTRAIL_KIND_BRK;
    case Kind::kPythonObject:
      return MEMTRAIL_KIND_PYTHON_OBJECT;
    default:
      break;  // kUnknown, and the gap before kFirstNamed
  }
  return MEMTRAIL_KIND_COUNT;
}

// Every code a program may record maps to a kind of its own and back; the others are unknown.
constexpr bool every_kind_code_round_trips() {
  for (uint32_t code = 0; code <= MEMTRAIL_KIND_DYNAMIC_LAST; ++code) {
    bool known = code < MEMTRAIL_KIND_COUNT || code >= MEMTRAIL_KIND_DYNAMIC_FIRST;
    model::AllocationKind kind = kind_from_code(code);
    if (known ? code_of(kind) != code : kind != model::AllocationKind::kUnknown) return false;
  }
  return true;
}
static_assert(every_kind_code_round_trips());

// The attach cookie of an allocator function's probes: the kind its blocks are recorded with,
// or for operator delete and delete[], the delete kind (which blocks it releases).
constexpr uint64_t probe_cookie(inspect::ProbeRole role, model::AllocationKind kind) {
  if (role == inspect::ProbeRole::kDelete) {
    return kind == model::AllocationKind::kNewArray ? MEMTRAIL_DELETE_ARRAY
                                                    : MEMTRAIL_DELETE_SCALAR;
  }
  return code_of(kind);
}

// The cookie bits saying that a size register holds a size class (usable_size), the class
// size table's slot in class_size_tables (bpf/alloc.bpf.c) for its index.
constexpr uint64_t usable_size_bits(inspect::UsableSize usable, uint32_t class_table_slot) {
  switch (usable) {
    case inspect::UsableSize::kNo:
      return 0;
    case inspect::UsableSize::kClassSizeInRegister:
      return MEMTRAIL_SITE_SIZE_USABLE;
    case inspect::UsableSize::kClassIndexInRegister:
      return MEMTRAIL_SITE_SIZE_CLASS_INDEX |
             uint64_t{class_table_slot & (MEMTRAIL_CLASS_TABLES - 1)}
                 << MEMTRAIL_SITE_CLASS_TABLE_SHIFT;
  }
  return 0;
}

// The attach cookie of a return-site probe (bpf/alloc_events.h, MEMTRAIL_SITE_*);
// `class_table_slot` for a site reading a class size table (UsableSize::kClassIndexInRegister).
constexpr uint64_t site_cookie(model::AllocationKind kind, const inspect::ReturnSite& site,
                               uint32_t class_table_slot = 0) {
  uint64_t cookie = code_of(kind) & MEMTRAIL_SITE_KIND_MASK;
  cookie |= usable_size_bits(site.usable_size, class_table_slot);
  cookie |= uint64_t{site.pointer_register} << MEMTRAIL_SITE_POINTER_SHIFT;
  cookie |= uint64_t{site.size_register.value_or(0)} << MEMTRAIL_SITE_SIZE_SHIFT;
  cookie |= uint64_t{site.frame_bytes & 0xffff} << MEMTRAIL_SITE_FRAME_SHIFT;
  if (site.saved_bp_offset) {
    cookie |= uint64_t{*site.saved_bp_offset & 0xffff} << MEMTRAIL_SITE_BP_SHIFT;
    cookie |= MEMTRAIL_SITE_BP_SAVED;
  }
  if (site.condition) {
    cookie |= uint64_t{*site.condition & 0xfu} << MEMTRAIL_SITE_CONDITION_SHIFT;
    cookie |= MEMTRAIL_SITE_CONDITIONAL;
  }
  return cookie;
}

// The attach cookie of handoff_enter: the kind, and the register holding the size or the flag
// saying that site_take_size took it.
constexpr uint64_t handoff_cookie(model::AllocationKind kind, const inspect::HandOff& handoff,
                                  uint32_t class_table_slot = 0) {
  uint64_t cookie = code_of(kind) & MEMTRAIL_SITE_KIND_MASK;
  cookie |= usable_size_bits(handoff.usable_size, class_table_slot);
  if (handoff.size_register) {
    cookie |= uint64_t{*handoff.size_register} << MEMTRAIL_SITE_SIZE_SHIFT;
  } else if (handoff.size_is_arguments_product) {
    cookie |= MEMTRAIL_HANDOFF_SIZE_PRODUCT;
  } else {
    cookie |= MEMTRAIL_HANDOFF_SIZE_TAKEN;
  }
  return cookie;
}

// The attach cookie of site_take_size: the register holding the size, where the return
// address is (a site cookie's fields).
constexpr uint64_t capture_cookie(const inspect::SizeCapture& capture) {
  return uint64_t{capture.size_register} << MEMTRAIL_SITE_SIZE_SHIFT |
         uint64_t{capture.frame_bytes & 0xffff} << MEMTRAIL_SITE_FRAME_SHIFT;
}

// ---- Stacks: flags of the native walk, and the Python frames of CPython processes ----

// Why a walk stopped before the outermost frame (bits 8..11 of memtrail_stack.flags), as the
// report names it.
constexpr const char* truncation_reason_name(unsigned reason) {
  switch (reason) {
    case MEMTRAIL_TRUNCATED_DEPTH:
      return "depth";
    case MEMTRAIL_TRUNCATED_NO_CFI:
      return "no_cfi";
    case MEMTRAIL_TRUNCATED_UNSUPPORTED:
      return "unsupported_cfi";
    case MEMTRAIL_TRUNCATED_RBP_UNKNOWN:
      return "rbp_unknown";
    case MEMTRAIL_TRUNCATED_UNREADABLE:
      return "unreadable";
    case MEMTRAIL_TRUNCATED_BAD_FRAME_POINTER:
      return "bad_frame_pointer";
    case MEMTRAIL_TRUNCATED_NO_MAPPING:
      return "unknown_code";
    case MEMTRAIL_TRUNCATED_LOOP:
      return "loop";
  }
  return "unknown";
}

// The flags of a stack (MEMTRAIL_STACK_*) into its model fields.
inline void read_stack_flags(uint16_t flags, model::Snapshot::Stack& stack) {
  stack.truncated = (flags & MEMTRAIL_STACK_TRUNCATED) != 0;
  stack.used_tables = (flags & MEMTRAIL_STACK_USED_TABLES) != 0;
  if (stack.truncated) {
    stack.truncation_reason =
        truncation_reason_name((flags >> MEMTRAIL_STACK_REASON_SHIFT) & MEMTRAIL_STACK_REASON_MASK);
  }
}

static_assert(MEMTRAIL_PYTHON_LASTI_MAX == model::kPythonLastiSaturated,
              "the code reader knows where the walker saturates lasti");

// One Python frame as the walker packs it: the code object's address (low 48 bits), its last
// instruction (15 bits) and the eval loop's entry flag (bit 63); with its f_globals.
constexpr model::PythonFrame python_frame(uint64_t packed, uint64_t globals) {
  return {
      packed & MEMTRAIL_PYTHON_CODE_MASK,
      static_cast<uint32_t>((packed >> MEMTRAIL_PYTHON_LASTI_SHIFT) & MEMTRAIL_PYTHON_LASTI_MAX),
      (packed & MEMTRAIL_PYTHON_ENTRY) != 0, globals};
}

// The frames of a Python stack the walker recorded, innermost first.
inline void python_frames(const memtrail_python_stack& python,
                          std::vector<model::PythonFrame>& frames) {
  uint32_t depth = std::min<uint32_t>(python.depth, MEMTRAIL_MAX_PYTHON_DEPTH);
  frames.resize(depth);
  for (uint32_t i = 0; i < depth; ++i)
    frames[i] = python_frame(python.frames[i], python.globals[i]);
}

// The flags of a Python stack (MEMTRAIL_PYTHON_*) into its model fields.
inline void read_python_flags(uint16_t flags, model::Snapshot::Stack& stack) {
  stack.python_truncated = (flags & MEMTRAIL_PYTHON_TRUNCATED) != 0;
  stack.python_unreadable = (flags & MEMTRAIL_PYTHON_UNREADABLE) != 0;
  stack.python_no_thread = (flags & MEMTRAIL_PYTHON_NO_THREAD) != 0;
}

// ---- Python layouts (rodata) and object calls (attach cookies) ----

inline memtrail_python_layout python_layout(const model::PythonFrameLayout& layout) {
  memtrail_python_layout out{};
  out.runtime_tstate_current = layout.runtime_tstate_current;
  out.runtime_interp_main = layout.runtime_interp_main;
  out.interp_threads_head = layout.interp_threads_head;
  out.tstate_next = layout.tstate_next;
  out.tstate_thread_id = layout.tstate_thread_id;
  out.tstate_cframe = layout.tstate_cframe;
  out.cframe_current_frame = layout.cframe_current_frame;
  out.frame_code = layout.frame_code;
  out.frame_previous = layout.frame_previous;
  out.frame_prev_instr = layout.frame_prev_instr;
  out.frame_is_entry = layout.frame_is_entry;
  out.frame_owner = layout.frame_owner;
  out.code_adaptive = layout.code_adaptive;
  out.owner_cstack = layout.owner_cstack;
  out.tstate_datastack_chunk = layout.tstate_datastack_chunk;
  out.tstate_datastack_limit = layout.tstate_datastack_limit;
  out.frame_globals = layout.frame_globals;
  return out;
}
static_assert(sizeof(memtrail_python_layout) == 17 * sizeof(uint32_t),
              "python_layout() copies every field of the BPF struct");

inline memtrail_python_type_layout python_type_layout(const model::PythonTypeLayout& layout) {
  memtrail_python_type_layout out{};
  out.type_flags = layout.type_flags;
  out.have_gc = layout.have_gc;
  return out;
}

constexpr uint32_t object_call_code(model::PythonObjectCall call) {
  switch (call) {
    case model::PythonObjectCall::kGenericAlloc:
      return MEMTRAIL_PYTHON_GENERIC_ALLOC;
    case model::PythonObjectCall::kGcNew:
      return MEMTRAIL_PYTHON_GC_NEW;
    case model::PythonObjectCall::kGcNewVar:
      return MEMTRAIL_PYTHON_GC_NEWVAR;
  }
  return MEMTRAIL_PYTHON_GENERIC_ALLOC;
}

// ---- Unwind tables: rows, page indexes and per-process mappings for the walker ----

static_assert(unwind::kPageShift == MEMTRAIL_UNWIND_PAGE_SHIFT);
static_assert(unwind::kMaxSearchSteps == MEMTRAIL_UNWIND_MAX_SEARCH_STEPS);
static_assert(unwind::kMaxWalkerMappings == MEMTRAIL_UNWIND_MAX_MAPPINGS);

constexpr uint8_t cfa_code(unwind::CfaKind kind) {
  switch (kind) {
    case unwind::CfaKind::kNone:
      return MEMTRAIL_UNWIND_CFA_NONE;
    case unwind::CfaKind::kRsp:
      return MEMTRAIL_UNWIND_CFA_RSP;
    case unwind::CfaKind::kRbp:
      return MEMTRAIL_UNWIND_CFA_RBP;
    case unwind::CfaKind::kPlt:
      return MEMTRAIL_UNWIND_CFA_PLT;
    case unwind::CfaKind::kOutermost:
      return MEMTRAIL_UNWIND_CFA_OUTERMOST;
    case unwind::CfaKind::kUnsupported:
      return MEMTRAIL_UNWIND_CFA_UNSUPPORTED;
    case unwind::CfaKind::kSignal:
      return MEMTRAIL_UNWIND_CFA_SIGNAL;
  }
  return MEMTRAIL_UNWIND_CFA_UNSUPPORTED;
}

constexpr uint8_t rbp_code(unwind::RbpKind kind) {
  switch (kind) {
    case unwind::RbpKind::kUnchanged:
      return MEMTRAIL_UNWIND_RBP_UNCHANGED;
    case unwind::RbpKind::kAtCfa:
      return MEMTRAIL_UNWIND_RBP_AT_CFA;
    case unwind::RbpKind::kUnknown:
      return MEMTRAIL_UNWIND_RBP_UNKNOWN;
  }
  return MEMTRAIL_UNWIND_RBP_UNKNOWN;
}

// A row as the walker reads it; written once per row into the mmapped row map.
constexpr memtrail_unwind_row unwind_row(const unwind::Row& row) {
  return {row.pc, row.cfa_offset,
          static_cast<__u8>(MEMTRAIL_UNWIND_RULES(cfa_code(row.cfa), rbp_code(row.rbp))),
          row.rbp_offset};
}

constexpr uint32_t walk_method_code(unwind::WalkMethod method) {
  switch (method) {
    case unwind::WalkMethod::kTable:
      return MEMTRAIL_UNWIND_BY_TABLE;
    case unwind::WalkMethod::kFramePointer:
      return MEMTRAIL_UNWIND_BY_FRAME_POINTER;
    case unwind::WalkMethod::kNothing:
      return MEMTRAIL_UNWIND_BY_NOTHING;
  }
  return MEMTRAIL_UNWIND_BY_NOTHING;
}

constexpr memtrail_unwind_mapping unwind_mapping(const unwind::WalkerMapping& mapping) {
  memtrail_unwind_mapping out{};
  out.start = mapping.start;
  out.end = mapping.end;
  out.bias = mapping.bias;
  out.first_row = mapping.first_row;
  out.rows = mapping.rows;
  out.method = walk_method_code(mapping.method);
  out.first_page = mapping.first_page;
  out.pages = mapping.pages;
  out.page_base = mapping.page_base;
  return out;
}

}  // namespace memtrail::tracer::bpf
