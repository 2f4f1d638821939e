// SPDX-License-Identifier: Apache-2.0
// Find the allocator a process uses and where to probe its functions.
#include "inspect/allocator.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

#include "common/error.h"
#include "inspect/elf_file.h"

namespace memtrail::inspect {
namespace {

using Kind = model::AllocationKind;

// A kind named after the function when it is first probed (see intern_kind).
constexpr std::optional<Kind> kNamedKind = std::nullopt;
// What a free records: nothing (its programs take no kind).
constexpr Kind kNoKind = Kind::kMalloc;

struct FunctionSpec {
  const char* name;
  ProbeRole role;
  std::optional<Kind> kind;  // kNamedKind: named after the function
};

// Order matters where two names share an address: the first name is used in reports.
const std::vector<FunctionSpec>& function_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"malloc", ProbeRole::kSizeAlloc, Kind::kMalloc},
      {"calloc", ProbeRole::kCalloc, Kind::kCalloc},
      {"realloc", ProbeRole::kRealloc, Kind::kRealloc},
      {"reallocarray", ProbeRole::kReallocArray, Kind::kReallocArray},
      {"posix_memalign", ProbeRole::kPosixMemalign, Kind::kPosixMemalign},
      {"aligned_alloc", ProbeRole::kAlignedAlloc, Kind::kAlignedAlloc},
      {"memalign", ProbeRole::kAlignedAlloc, Kind::kMemalign},
      {"valloc", ProbeRole::kSizeAlloc, Kind::kValloc},
      {"pvalloc", ProbeRole::kSizeAlloc, Kind::kPvalloc},
      {"free", ProbeRole::kFree, kNoKind},
  };
  return specs;
}

// operator new and delete as the Itanium C++ ABI mangles them (libstdc++ and libc++ alike).
// Every new takes the size first, every delete the pointer first: the malloc and free programs
// serve them. Variants that call another (new[] -> new, sized delete -> delete) nest, and the
// BPF side accounts the outermost.
const std::vector<FunctionSpec>& cxx_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"_Znwm", ProbeRole::kSizeAlloc, Kind::kNew},
      {"_Znam", ProbeRole::kSizeAlloc, Kind::kNewArray},
      {"_ZnwmRKSt9nothrow_t", ProbeRole::kSizeAlloc, Kind::kNew},
      {"_ZnamRKSt9nothrow_t", ProbeRole::kSizeAlloc, Kind::kNewArray},
      {"_ZnwmSt11align_val_t", ProbeRole::kSizeAlloc, Kind::kNew},
      {"_ZnamSt11align_val_t", ProbeRole::kSizeAlloc, Kind::kNewArray},
      {"_ZnwmSt11align_val_tRKSt9nothrow_t", ProbeRole::kSizeAlloc, Kind::kNew},
      {"_ZnamSt11align_val_tRKSt9nothrow_t", ProbeRole::kSizeAlloc, Kind::kNewArray},
      {"_ZdlPv", ProbeRole::kDelete, Kind::kNew},
      {"_ZdlPvm", ProbeRole::kDelete, Kind::kNew},
      {"_ZdlPvSt11align_val_t", ProbeRole::kDelete, Kind::kNew},
      {"_ZdlPvmSt11align_val_t", ProbeRole::kDelete, Kind::kNew},
      {"_ZdlPvRKSt9nothrow_t", ProbeRole::kDelete, Kind::kNew},
      {"_ZdaPv", ProbeRole::kDelete, Kind::kNewArray},
      {"_ZdaPvm", ProbeRole::kDelete, Kind::kNewArray},
      {"_ZdaPvSt11align_val_t", ProbeRole::kDelete, Kind::kNewArray},
      {"_ZdaPvmSt11align_val_t", ProbeRole::kDelete, Kind::kNewArray},
      {"_ZdaPvRKSt9nothrow_t", ProbeRole::kDelete, Kind::kNewArray},
  };
  return specs;
}

struct CapstoneCloser {
  void operator()(csh* handle) const { cs_close(handle); }
};
struct InstructionsFree {
  size_t count;
  void operator()(cs_insn* instructions) const { cs_free(instructions, count); }
};

// Instructions the x86 uprobe code emulates instead of single-stepping (arch/x86/kernel/
// uprobes.c): push of a register, nop, and relative jumps and calls.
bool is_emulated(const cs_insn& instruction) {
  switch (instruction.id) {
    case X86_INS_PUSH:
      return instruction.detail->x86.op_count == 1 &&
             instruction.detail->x86.operands[0].type == X86_OP_REG;
    case X86_INS_NOP:
      return true;
    case X86_INS_JMP:
    case X86_INS_CALL:  // relative forms only: the kernel emulates those, not indirect ones
      return instruction.detail->x86.op_count == 1 &&
             instruction.detail->x86.operands[0].type == X86_OP_IMM;
    default:
      return false;
  }
}

bool is_test_rdi_rdi(const cs_insn& instruction) {
  const cs_x86& x86 = instruction.detail->x86;
  return instruction.id == X86_INS_TEST && x86.op_count == 2 &&
         x86.operands[0].type == X86_OP_REG && x86.operands[0].reg == X86_REG_RDI &&
         x86.operands[1].type == X86_OP_REG && x86.operands[1].reg == X86_REG_RDI;
}

// free reads only its argument: its probe may go on the first jump (relative, conditional or
// not, or a call: the kernel emulates those) of the straight code it starts with, if nothing
// before it writes rdi and no branch lands on the way there (the probe would fire twice, or
// be passed by). jemalloc's and tcmalloc's free start with loads and arithmetic, which the
// kernel single-steps: several times an emulated trap's cost here. The jump's index, if any.
std::optional<size_t> first_jump_keeping_rdi(csh handle, const cs_insn* raw, size_t count,
                                             size_t first) {
  constexpr size_t kLongestRun = 24;
  for (size_t i = first; i < count && i < first + kLongestRun; ++i) {
    const cs_insn& in = raw[i];
    const cs_x86& x86 = in.detail->x86;
    bool prefixed = x86.prefix[0] || x86.prefix[1] || x86.prefix[2] || x86.prefix[3];
    bool relative = x86.op_count == 1 && x86.operands[0].type == X86_OP_IMM;
    bool branch =
        cs_insn_group(handle, &in, CS_GRP_JUMP) || cs_insn_group(handle, &in, CS_GRP_CALL) ||
        cs_insn_group(handle, &in, CS_GRP_RET) || cs_insn_group(handle, &in, CS_GRP_INT) ||
        in.id == X86_INS_HLT || in.id == X86_INS_UD2;
    if (branch) {
      // Conditional jumps on the counter register (jrcxz, loop) are not emulated.
      bool emulated = relative && !prefixed && in.id != X86_INS_JRCXZ && in.id != X86_INS_JECXZ &&
                      in.id != X86_INS_JCXZ && in.id != X86_INS_LOOP && in.id != X86_INS_LOOPE &&
                      in.id != X86_INS_LOOPNE;
      if (!emulated || i == first) return std::nullopt;  // at the first: entry placement's case
      // No branch of the function lands after the entry and up to the jump.
      for (size_t j = 0; j < count; ++j) {
        const cs_x86& other = raw[j].detail->x86;
        bool lands = (cs_insn_group(handle, &raw[j], CS_GRP_JUMP) ||
                      cs_insn_group(handle, &raw[j], CS_GRP_CALL)) &&
                     other.op_count == 1 && other.operands[0].type == X86_OP_IMM &&
                     static_cast<uint64_t>(other.operands[0].imm) > raw[first].address &&
                     static_cast<uint64_t>(other.operands[0].imm) <= in.address;
        if (lands) return std::nullopt;
      }
      return i;
    }
    cs_regs read_regs, write_regs;
    uint8_t read_count = 0, write_count = 0;
    if (cs_regs_access(handle, &in, read_regs, &read_count, write_regs, &write_count) !=
        CS_ERR_OK) {
      return std::nullopt;
    }
    for (uint8_t w = 0; w < write_count; ++w) {
      switch (write_regs[w]) {
        case X86_REG_RDI:
        case X86_REG_EDI:
        case X86_REG_DI:
        case X86_REG_DIL:
          return std::nullopt;
        default:
          break;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

Placement choose_probe_placement(ProbeRole role, const std::vector<uint8_t>& code) {
  csh handle = 0;
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle) != CS_ERR_OK) return {0, "entry (no disassembler)"};
  std::unique_ptr<csh, CapstoneCloser> closer(&handle);
  cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON);
  cs_insn* raw = nullptr;
  size_t count = cs_disasm(handle, code.data(), code.size(), 0, 0, &raw);
  std::unique_ptr<cs_insn, InstructionsFree> instructions(raw, InstructionsFree{count});
  if (count == 0) return {0, "entry (code could not be decoded)"};
  // A branch inside the function to the probed instruction would make the probe fire twice.
  auto branch_lands_on = [&](uint64_t target) -> std::optional<uint64_t> {
    for (size_t i = 0; i < count; ++i) {
      const cs_x86& x86 = raw[i].detail->x86;
      bool branch = cs_insn_group(handle, &raw[i], CS_GRP_JUMP) ||
                    cs_insn_group(handle, &raw[i], CS_GRP_CALL);
      if (branch && x86.op_count == 1 && x86.operands[0].type == X86_OP_IMM &&
          static_cast<uint64_t>(x86.operands[0].imm) == target) {
        return raw[i].address;
      }
    }
    return std::nullopt;
  };
  // Code built for CET (libstdc++, ...) starts with endbr64, which the kernel single-steps; it
  // does nothing a tracer needs, so the probe may go on the next instruction instead.
  size_t first = 0;
  std::string prefix;
  if (raw[0].id == X86_INS_ENDBR64 && count > 1) {
    first = 1;
    prefix = "after endbr64, ";
  }
  if (is_emulated(raw[first])) {
    if (first == 0) return {0, std::string("entry (") + raw[0].mnemonic + ", emulated)"};
    if (auto from = branch_lands_on(raw[first].address)) {
      return {0, "entry (endbr64, single-stepped: a branch at +" + std::to_string(*from) +
                     " lands after it)"};
    }
    return {raw[first].address, prefix + "on an emulated " + raw[first].mnemonic};
  }
  if (role != ProbeRole::kFree || count < first + 3 || !is_test_rdi_rdi(raw[first]) ||
      raw[first + 1].id != X86_INS_JE || !is_emulated(raw[first + 2])) {
    if (role == ProbeRole::kFree) {
      if (auto jump = first_jump_keeping_rdi(handle, raw, count, first)) {
        return {raw[*jump].address, prefix + "on the first jump, an emulated " +
                                        raw[*jump].mnemonic + ", with the pointer still in rdi"};
      }
    }
    return {0, std::string("entry (") + raw[0].mnemonic + ", single-stepped)"};
  }
  uint64_t target = raw[first + 2].address;
  if (auto from = branch_lands_on(target)) {
    return {0, "entry (a branch at +" + std::to_string(*from) + " lands past the NULL check)"};
  }
  return {target, prefix + "after the NULL check (test %rdi,%rdi; je), on an emulated " +
                      raw[first + 2].mnemonic};
}

namespace {

// Extension functions get a kind named after them when first probed (see AllocationKind).
std::vector<std::string>& named_kinds() {
  static std::vector<std::string> names;
  return names;
}

constexpr size_t kFirstNamed = static_cast<size_t>(Kind::kFirstNamed);
constexpr size_t kLastNamed = static_cast<size_t>(Kind::kLastNamed);

Kind named_kind(size_t index) { return static_cast<Kind>(kFirstNamed + index); }

Kind intern_kind(const std::string& name) {
  auto& names = named_kinds();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return named_kind(i);
  }
  if (kFirstNamed + names.size() > kLastNamed) {
    return Kind::kMalloc;  // 240 distinct names in one run: report the rest as malloc
  }
  names.push_back(name);
  return named_kind(names.size() - 1);
}

// jemalloc's non-standard API (Debian's libjemalloc2 exports it unprefixed). xallocx resizes in
// place and returns the new usable size: not traced (the block keeps its recorded size).
const std::vector<FunctionSpec>& jemalloc_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"mallocx", ProbeRole::kSizeAlloc, kNamedKind},  // (size, flags)
      {"rallocx", ProbeRole::kRealloc, kNamedKind},    // (ptr, size, flags)
      {"dallocx", ProbeRole::kFree, kNoKind},          // (ptr, flags)
      {"sdallocx", ProbeRole::kFree, kNoKind},         // (ptr, size, flags)
  };
  return specs;
}

// gperftools' tc_* names: aliases of malloc & co. in the same library, so they are probed under
// their own name only where the standard name binds elsewhere (tcmalloc loaded after libc).
const std::vector<FunctionSpec>& tcmalloc_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"tc_malloc", ProbeRole::kSizeAlloc, kNamedKind},
      {"tc_malloc_skip_new_handler", ProbeRole::kSizeAlloc, kNamedKind},
      {"tc_calloc", ProbeRole::kCalloc, kNamedKind},
      {"tc_realloc", ProbeRole::kRealloc, kNamedKind},
      {"tc_memalign", ProbeRole::kAlignedAlloc, kNamedKind},
      {"tc_posix_memalign", ProbeRole::kPosixMemalign, kNamedKind},
      {"tc_valloc", ProbeRole::kSizeAlloc, kNamedKind},
      {"tc_pvalloc", ProbeRole::kSizeAlloc, kNamedKind},
      {"tc_free", ProbeRole::kFree, kNoKind},
      {"tc_cfree", ProbeRole::kFree, kNoKind},
      {"tc_free_sized", ProbeRole::kFree, kNoKind},
      {"cfree", ProbeRole::kFree, kNoKind},
  };
  return specs;
}

// mimalloc's mi_* API. With its override (Debian's libmimalloc.so.2), mi_malloc and malloc are
// one function; without it, or where libc binds malloc first, programs call these directly.
// mi_heap_destroy releases a heap's blocks without a free call: they stay outstanding.
const std::vector<FunctionSpec>& mimalloc_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"mi_malloc", ProbeRole::kSizeAlloc, kNamedKind},
      {"mi_zalloc", ProbeRole::kSizeAlloc, kNamedKind},
      {"mi_malloc_small", ProbeRole::kSizeAlloc, kNamedKind},
      {"mi_zalloc_small", ProbeRole::kSizeAlloc, kNamedKind},
      {"mi_malloc_aligned", ProbeRole::kSizeAlloc, kNamedKind},  // (size, alignment)
      {"mi_zalloc_aligned", ProbeRole::kSizeAlloc, kNamedKind},
      {"mi_calloc", ProbeRole::kCalloc, kNamedKind},
      {"mi_mallocn", ProbeRole::kCalloc, kNamedKind},         // (count, size)
      {"mi_calloc_aligned", ProbeRole::kCalloc, kNamedKind},  // (count, size, alignment)
      {"mi_realloc", ProbeRole::kRealloc, kNamedKind},
      {"mi_rezalloc", ProbeRole::kRealloc, kNamedKind},
      {"mi_realloc_aligned", ProbeRole::kRealloc, kNamedKind},  // (ptr, size, alignment)
      {"mi_reallocn", ProbeRole::kReallocArray, kNamedKind},    // (ptr, count, size)
      {"mi_recalloc", ProbeRole::kReallocArray, kNamedKind},
      {"mi_heap_malloc", ProbeRole::kHeapAlloc, kNamedKind},  // (heap, size)
      {"mi_heap_zalloc", ProbeRole::kHeapAlloc, kNamedKind},
      {"mi_free", ProbeRole::kFree, kNoKind},
      {"mi_free_size", ProbeRole::kFree, kNoKind},
      {"mi_free_aligned", ProbeRole::kFree, kNoKind},
      {"mi_free_size_aligned", ProbeRole::kFree, kNoKind},
  };
  return specs;
}

struct RoleSpec {
  const char* name;
  ProbeRole role;
};

const std::vector<RoleSpec>& custom_roles() {
  static const std::vector<RoleSpec> roles = {
      {"malloc", ProbeRole::kSizeAlloc},
      {"calloc", ProbeRole::kCalloc},
      {"realloc", ProbeRole::kRealloc},
      {"reallocarray", ProbeRole::kReallocArray},
      {"posix_memalign", ProbeRole::kPosixMemalign},
      {"aligned_alloc", ProbeRole::kAlignedAlloc},
      {"memalign", ProbeRole::kAlignedAlloc},
      {"valloc", ProbeRole::kSizeAlloc},
      {"pvalloc", ProbeRole::kSizeAlloc},
      {"free", ProbeRole::kFree},
  };
  return roles;
}

bool is_cxx_runtime_name(const std::string& name) {
  return name == "libstdc++" || name == "libc++" || name == "C++ runtime";
}

}  // namespace

const std::vector<std::string>& traced_function_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& spec : function_specs()) out.emplace_back(spec.name);
    return out;
  }();
  return names;
}

const std::vector<std::string>& custom_role_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& role : custom_roles()) out.emplace_back(role.name);
    return out;
  }();
  return names;
}

std::string kind_name(Kind kind) {
  if (kind == Kind::kNew) return "new";
  if (kind == Kind::kNewArray) return "new[]";
  if (kind == Kind::kMmap) return "mmap";
  if (kind == Kind::kBrk) return "brk";
  if (kind == Kind::kPythonObject) return "python_object";
  for (const auto& spec : function_specs()) {
    if (spec.role != ProbeRole::kFree && spec.kind == kind) return spec.name;
  }
  auto index = static_cast<size_t>(kind) - kFirstNamed;
  if (kind >= Kind::kFirstNamed && index < named_kinds().size()) return named_kinds()[index];
  return "unknown";
}

TailCall classify_tail_call(const ElfFile& elf, uint64_t target) {
  std::string name = elf.plt_target(target);
  if (name.empty()) {
    // A direct jump: to one of the allocator functions memtrail probes in this file?
    for (const auto* specs :
         {&function_specs(), &jemalloc_specs(), &tcmalloc_specs(), &mimalloc_specs()}) {
      for (const auto& spec : *specs) {
        if (spec.role == ProbeRole::kFree) continue;
        auto symbol = elf.find_function(spec.name);
        if (symbol && symbol->address == target) return TailCall::kRecordedElsewhere;
      }
    }
    return TailCall::kUnknown;
  }
  size_t start = name.find_first_not_of('_');
  std::string core = start == std::string::npos ? name : name.substr(start);
  if (core.rfind("GI_", 0) == 0) core = core.substr(3);
  if (core == "memset" || core == "memcpy" || core == "memmove") {
    return TailCall::kReturnsFirstArgument;
  }
  if (core == "stack_chk_fail" || core == "abort" || core == "assert_fail") {
    return TailCall::kNoReturn;
  }
  for (const auto& spec : function_specs()) {
    if (spec.role != ProbeRole::kFree && name == spec.name) return TailCall::kRecordedElsewhere;
  }
  return TailCall::kUnknown;
}

const AllocatorModule* ProcessAllocators::primary() const {
  for (const auto& module : modules) {
    for (const auto& function : module.functions) {
      if (function.name == "malloc") return &module;
    }
  }
  return modules.empty() ? nullptr : &modules.front();
}

namespace {

// Whether `spec`'s calls may be recorded at return sites: malloc and calloc and their
// equivalents. C++'s new calls malloc without an entry probe of its own to tell, and the other
// functions (realloc, memalign, ...) keep their entry probes: the old pointer, the alignment.
bool return_sites_apply(const FunctionSpec& spec) {
  if (spec.role != ProbeRole::kSizeAlloc && spec.role != ProbeRole::kCalloc) return false;
  return spec.kind != Kind::kNew && spec.kind != Kind::kNewArray && spec.kind != Kind::kValloc &&
         spec.kind != Kind::kPvalloc;
}

// A probe for `spec` at `symbol` in `elf`, placed (see choose_probe_placement).
std::optional<FunctionProbe> probe_for(const ElfFile& elf, const FunctionSpec& spec,
                                       const FunctionSymbol& symbol, const std::string& name,
                                       bool return_sites) {
  auto entry = elf.file_offset_of(symbol.address);
  if (!entry) return std::nullopt;
  // The whole function is decoded to verify a placement past the entry; bounded, since a
  // symbol's size can be wrong in hand-written assembly.
  size_t code_size = std::clamp<size_t>(symbol.size, 16, 64 * 1024);
  auto key = std::make_pair(symbol.address, static_cast<int>(spec.role));
  auto known = elf.placements.find(key);
  if (known == elf.placements.end()) {
    Placement chosen = choose_probe_placement(spec.role, elf.read_code(symbol.address, code_size));
    known = elf.placements.emplace(key, std::make_pair(chosen.offset, chosen.reason)).first;
  }
  Placement placement{known->second.first, known->second.second};
  Kind kind = spec.kind ? *spec.kind : intern_kind(name);
  FunctionProbe probe;
  probe.name = name;
  probe.role = spec.role;
  probe.kind = kind;
  probe.entry_offset = *entry;
  probe.probe_offset = *entry + placement.offset;
  probe.placement = placement.reason;
  bool glibc = elf.find_function("__libc_malloc").has_value();
  // jemalloc, tcmalloc and mimalloc: their malloc and calloc, which tests trace both ways (their
  // extension functions keep entry and return probes).
  bool other_allocator = (elf.find_function("mallocx") && elf.find_function("sdallocx")) ||
                         elf.find_function("tc_calloc") || elf.find_function("mi_malloc");
  bool analysed = glibc || (other_allocator && (name == "malloc" || name == "calloc"));
  if (!return_sites_apply(spec)) {
  } else if (!return_sites) {
    probe.return_sites_reason = "return sites are off here (--no-return-sites, or --mmap)";
  } else if (!analysed) {
    probe.return_sites_reason =
        "return sites are used in the malloc and calloc of glibc, jemalloc, tcmalloc and "
        "mimalloc only";
  } else {
    auto known_sites = elf.return_sites.find(symbol.address);
    if (known_sites == elf.return_sites.end()) {
      ReturnSiteQuery query;
      query.address = symbol.address;
      query.code = elf.read_code(symbol.address, code_size);
      query.product_of_arguments = spec.role == ProbeRole::kCalloc;
      // glibc's chunk header precedes every block it returns: the usable size is there.
      query.chunk_header_sizes = glibc;
      // tcmalloc's size classes, as its nallocx reads them: where no register holds the size
      // asked for, the block's class gives its usable size.
      bool tcmalloc = elf.find_function("tc_calloc").has_value();
      if (tcmalloc) {
        if (auto nallocx = elf.find_function("tc_nallocx")) {
          query.size_classes = find_size_class_tables(
              nallocx->address,
              elf.read_code(nallocx->address, std::clamp<size_t>(nallocx->size, 16, 4096)));
        }
      }
      query.classify_tail_call = [&elf](uint64_t target) {
        return classify_tail_call(elf, target);
      };
      ReturnSiteAnalysis analysis = find_return_sites(query);
      if (tcmalloc && !query.size_classes && !analysis.captures.empty()) {
        analysis.reason +=
            "; sizes are taken, not read from a size class: tc_nallocx does not read its class "
            "tables the way memtrail recognises (a byte table, then an int32 table by that byte)";
      }
      known_sites = elf.return_sites.emplace(symbol.address, std::move(analysis)).first;
    }
    probe.return_sites = known_sites->second.sites;
    probe.size_captures = known_sites->second.captures;
    probe.handoffs = known_sites->second.handoffs;
    probe.failure_offsets = known_sites->second.failure_offsets;
    probe.return_sites_reason = known_sites->second.reason;
  }
  return probe;
}

// The probes of `specs` that `elf` defines, each placed.
std::vector<FunctionProbe> probes_in(const ElfFile& elf, const std::vector<FunctionSpec>& specs) {
  std::vector<FunctionProbe> probes;
  std::set<uint64_t> probed_addresses;
  for (const auto& spec : specs) {
    auto symbol = elf.find_function(spec.name);
    if (!symbol || !probed_addresses.insert(symbol->address).second) continue;
    if (auto probe = probe_for(elf, spec, *symbol, spec.name, false)) probes.push_back(*probe);
  }
  return probes;
}

std::string classify(const ElfFile& elf, const std::string& path, bool main_program,
                     bool static_executable) {
  auto has = [&](const char* name) { return elf.find_function(name).has_value(); };
  std::string name;
  if (has("mallocx") && has("sdallocx")) {
    name = "jemalloc";
  } else if (has("tc_malloc")) {
    name = "tcmalloc";
  } else if (has("mi_malloc")) {
    name = "mimalloc";
  } else if (has("malloc") && has("free")) {
    name = has("__libc_malloc") ? "glibc" : "other";
  } else if (has("_Znwm")) {
    std::string file = path.substr(path.rfind('/') + 1);
    name = file.rfind("libstdc++", 0) == 0 ? "libstdc++"
           : file.rfind("libc++", 0) == 0  ? "libc++"
                                           : "C++ runtime";
    return name;
  }
  if (!name.empty() && main_program && static_executable) name = "static " + name;
  return name;
}

// The name of what code at `target` in module `index` (`elf`) calls or jumps to: through the
// PLT, the symbol the dynamic linker binds; directly, a C++ operator or malloc defined there,
// if that module is the one its name binds to (else the direct jump bypasses the binding, and
// is not known).
std::string callee_name(const ElfFile& elf, uint64_t target, size_t index,
                        const std::unordered_map<std::string, size_t>& binder) {
  std::string name = elf.plt_target(target);
  if (!name.empty()) return name;
  std::vector<const char*> names{"malloc"};
  for (const auto& spec : cxx_specs()) names.push_back(spec.name);
  for (const char* candidate : names) {
    auto symbol = elf.find_function(candidate);
    auto bound = binder.find(candidate);
    if (symbol && symbol->address == target && bound != binder.end() && bound->second == index) {
      return candidate;
    }
  }
  return "";
}

// What the code of a C++ operator proves (operator_new.h), before it is known what the others
// it leads to proved (settle_cxx_operators).
void analyse_cxx_operator(const ElfFile& elf, const FunctionSymbol& symbol, size_t index,
                          const std::unordered_map<std::string, size_t>& binder,
                          FunctionProbe& probe) {
  bool new_kind = probe.kind == Kind::kNew || probe.kind == Kind::kNewArray;
  if (!(probe.role == ProbeRole::kSizeAlloc && new_kind) && probe.role != ProbeRole::kDelete) {
    return;
  }
  auto name_of = [&](uint64_t target) { return callee_name(elf, target, index, binder); };
  std::vector<uint8_t> code = elf.read_code(symbol.address, std::min<size_t>(symbol.size, 4096));
  if (probe.kind == Kind::kNew && probe.role == ProbeRole::kSizeAlloc) {
    OperatorNewAnalysis analysis = analyse_operator_new(symbol.address, code, name_of);
    probe.new_via_malloc = analysis.via_malloc;
    probe.cxx_reason = analysis.reason;
    return;
  }
  auto target = forwarding_jump(symbol.address, code);
  probe.forwards_to = target ? name_of(*target) : "";
  probe.cxx_reason = !target                     ? "it does more than jump to another function"
                     : probe.forwards_to.empty() ? "it jumps to code that is not a known operator"
                                                 : "";
}

// A function releasing as free does that only jumps to another of the module's (mimalloc's
// mi_free_size, its sized and aligned deletes, cfree: `jmp mi_free`) would release the block a
// second time through that one's probe, and count it as unmatched: it needs no probe of its own.
void jumps_to_free(const ElfFile& elf, const FunctionSymbol& symbol, size_t index,
                   const std::unordered_map<std::string, size_t>& binder,
                   const std::set<uint64_t>& free_addresses, FunctionProbe& probe) {
  auto target = forwarding_jump(symbol.address,
                                elf.read_code(symbol.address, std::min<size_t>(symbol.size, 4096)));
  if (!target) return;
  std::string name = elf.plt_target(*target);
  bool to_free = *target != symbol.address && free_addresses.count(*target) > 0;
  if (!name.empty()) {
    // Through the PLT: to a function of this module that releases as free, bound here.
    auto defined = elf.find_function(name);
    auto bound = binder.find(name);
    to_free = defined && defined->address != symbol.address &&
              free_addresses.count(defined->address) && bound != binder.end() &&
              bound->second == index;
  }
  if (!to_free) return;
  probe.forwards_to = "free";
  probe.cxx_reason =
      "jumps to " + (name.empty() ? std::string("free") : name) + ", which releases as free does";
}

// Which C++ operators go without probes, now that every module's are analysed: operator new
// calling malloc, if that malloc is probed at its return sites alone; new[] jumping to such a
// new; a delete jumping, directly or through others, to a probed delete of the same kind.
void settle_cxx_operators(ProcessAllocators& result) {
  std::unordered_map<std::string, FunctionProbe*> bound;
  for (auto& module : result.modules) {
    for (auto& function : module.functions) bound.emplace(function.name, &function);
  }
  auto malloc_probe = bound.find("malloc");
  bool malloc_sites = malloc_probe != bound.end() && !malloc_probe->second->return_sites.empty() &&
                      malloc_probe->second->handoffs.empty();
  for (auto& [name, function] : bound) {
    if (function->new_via_malloc && !malloc_sites) {
      function->new_via_malloc.reset();
      function->cxx_reason = "the malloc it calls is not probed at its return sites alone";
    }
  }
  for (auto& [name, function] : bound) {
    if (function->role == ProbeRole::kSizeAlloc && function->kind == Kind::kNewArray &&
        !function->forwards_to.empty()) {
      auto target = bound.find(function->forwards_to);
      if (target != bound.end() && target->second->new_via_malloc) {
        function->array_of = target->second->new_via_malloc;
        function->cxx_reason = "jumps to " + function->forwards_to + ", which calls malloc";
      } else {
        function->cxx_reason = "jumps to " + function->forwards_to + ", which keeps its probes";
      }
      function->forwards_to.clear();
    }
  }
  // A delete's jumps, to the first delete of the same kind that is probed itself: one that
  // jumps to free, to code not known, or to a delete of another kind (delete[] to delete).
  std::map<std::string, std::string> settled;  // name -> the delete probed, or "" for itself
  std::function<std::string(const FunctionProbe&, int)> probed_delete =
      [&](const FunctionProbe& function, int hops) -> std::string {
    if (auto known = settled.find(function.name); known != settled.end()) return known->second;
    auto next = bound.find(function.forwards_to);
    std::string probed;
    if (hops < 8 && next != bound.end() && next->second->role == ProbeRole::kDelete &&
        next->second->kind == function.kind) {
      std::string further = probed_delete(*next->second, hops + 1);
      probed = further.empty() ? next->second->name : further;
    }
    settled.emplace(function.name, probed);
    return probed;
  };
  for (auto& [name, function] : bound) {
    if (function->role == ProbeRole::kDelete) probed_delete(*function, 0);
  }
  for (auto& [name, final] : settled) {
    FunctionProbe* function = bound[name];
    if (function->forwards_to.empty()) continue;
    function->cxx_reason = final.empty() ? "it jumps to " + function->forwards_to +
                                               ", not to a delete of the same kind"
                                         : "jumps to " + final + ", which is probed";
    function->forwards_to = final;
  }
}

}  // namespace

std::optional<AllocatorModule> allocator_in_file(const ProcessFile& file) {
  OpenedFile opened = open_file(file);
  ElfFile elf = ElfFile::open(std::move(opened.fd), file.path);
  if (!elf.find_function("malloc") || !elf.find_function("free")) return std::nullopt;
  return AllocatorModule{file.path, std::move(opened.file), classify(elf, file.path, false, false),
                         probes_in(elf, function_specs()), ""};
}

std::string classify_allocator(const ProcessFile& file, bool main_program, bool static_executable) {
  ElfFile elf = ElfFile::open(open_file(file).fd, file.path);
  return classify(elf, file.path, main_program, static_executable);
}

ProcessAllocators resolve_allocators(uint32_t pid, const LoadOrder& order, bool cxx,
                                     const std::vector<CustomAllocator>& custom,
                                     bool return_sites) {
  struct Loaded {
    ProcessFile file;  // as opened: its device and inode known
    std::shared_ptr<const ElfFile> elf;
    std::string name;
  };
  std::vector<Loaded> loaded;
  std::vector<std::string> unreadable;
  for (const ModuleFile& module : order.modules) {
    try {
      OpenedFile opened = open_file(module.file);
      auto elf = ElfFile::open_shared(std::move(opened.fd), module.file.path);
      std::string name =
          classify(*elf, module.file.path, module.main_program, order.static_executable);
      loaded.push_back(Loaded{std::move(opened.file), std::move(elf), std::move(name)});
    } catch (const Error& error) {
      unreadable.push_back(error.what());  // an unreadable file cannot be the allocator we probe
    }
  }

  // Every name goes to the first module that exports it, as the dynamic linker binds it.
  std::vector<const std::vector<FunctionSpec>*> groups{&function_specs(), &jemalloc_specs(),
                                                       &tcmalloc_specs(), &mimalloc_specs()};
  if (cxx) groups.push_back(&cxx_specs());
  struct Bound {
    FunctionSpec spec;
    FunctionSymbol symbol;
  };
  std::vector<std::vector<Bound>> bound(loaded.size());
  std::unordered_map<std::string, size_t> binder;  // name -> module index
  for (const auto* group : groups) {
    for (const FunctionSpec& spec : *group) {
      for (size_t i = 0; i < loaded.size(); ++i) {
        auto symbol = loaded[i].elf->find_function(spec.name);
        if (!symbol || !(order.static_executable || symbol->exported)) continue;
        bound[i].push_back(Bound{spec, *symbol});
        binder.emplace(spec.name, i);
        break;
      }
    }
  }
  if ((!binder.count("malloc") || !binder.count("free")) && custom.empty()) {
    std::string message = "no allocator found in " +
                          (pid ? "process " + std::to_string(pid) : std::string("the command")) +
                          ": none of its " + std::to_string(order.modules.size()) +
                          " modules defines malloc and free";
    if (!unreadable.empty()) message += " (" + unreadable.front() + ")";
    throw NoAllocatorFound(
        message,
        "memtrail traces the malloc family (glibc, jemalloc, tcmalloc, mimalloc); for "
        "another allocator name its functions with --allocator PATH:SYMBOLS");
  }

  ProcessAllocators result;
  result.order_source = order.source;
  for (size_t i = 0; i < loaded.size(); ++i) {
    if (bound[i].empty()) continue;
    AllocatorModule module{loaded[i].file.path, loaded[i].file, loaded[i].name, {}, ""};
    // tcmalloc and mimalloc make operator delete the same function as free (and new[] the
    // same as new): one probe serves both, so it cannot tell delete from free. Their new is
    // then probed as a plain allocation named "new", and mismatched pairs go undetected.
    std::set<uint64_t> free_addresses;
    for (const auto& entry : bound[i]) {
      if (entry.spec.role == ProbeRole::kFree) free_addresses.insert(entry.symbol.address);
    }
    bool delete_is_free = false;
    for (const auto& entry : bound[i]) {
      delete_is_free |=
          entry.spec.role == ProbeRole::kDelete && free_addresses.count(entry.symbol.address) > 0;
    }
    std::set<uint64_t> probed;
    for (auto entry : bound[i]) {
      bool released_as_free = delete_is_free && entry.spec.role == ProbeRole::kDelete;
      if (released_as_free) {
        entry.spec.role = ProbeRole::kFree;
        entry.spec.kind = kNoKind;
      }
      std::string name = entry.spec.name;
      if (delete_is_free && (entry.spec.kind == Kind::kNew || entry.spec.kind == Kind::kNewArray)) {
        entry.spec.kind = intern_kind(entry.spec.kind == Kind::kNew ? "new" : "new[]");
      }
      if (!probed.insert(entry.symbol.address).second) continue;  // an alias: probed once
      if (auto probe = probe_for(*loaded[i].elf, entry.spec, entry.symbol, name, return_sites)) {
        if (!delete_is_free) analyse_cxx_operator(*loaded[i].elf, entry.symbol, i, binder, *probe);
        if (released_as_free || entry.spec.role == ProbeRole::kFree) {
          jumps_to_free(*loaded[i].elf, entry.symbol, i, binder, free_addresses, *probe);
        }
        module.functions.push_back(*probe);
      }
    }
    if (delete_is_free) {
      module.note =
          "its operator delete is free itself: mismatched new/free pairs cannot be "
          "told apart here";
    }
    result.modules.push_back(std::move(module));
  }

  if (cxx) settle_cxx_operators(result);

  for (const CustomAllocator& allocator : custom) {
    // The file the process maps under that name, if it does: that one runs.
    ProcessFile where = allocator.file;
    for (const auto* files : {&order.modules, &order.unlinked}) {
      for (const ModuleFile& module : *files) {
        if (module.file.path == allocator.path) where = module.file;
      }
    }
    ElfFile elf = [&] {
      try {
        OpenedFile opened = open_file(where);
        where = opened.file;  // its device and inode, for probing the very file read
        return ElfFile::open(std::move(opened.fd), allocator.path);
      } catch (const Error& error) {
        throw Error(std::string("--allocator ") + allocator.path + ": " + error.what(),
                    "give the path of the allocator's file as the process sees it");
      }
    }();
    auto existing = std::find_if(result.modules.begin(), result.modules.end(),
                                 [&](const auto& module) { return module.path == allocator.path; });
    if (existing == result.modules.end()) {
      result.modules.push_back(AllocatorModule{allocator.path, where, "custom", {}, ""});
      existing = result.modules.end() - 1;
    }
    std::set<uint64_t> probed;
    for (const auto& function : existing->functions) probed.insert(function.entry_offset);
    for (const auto& function : allocator.functions) {
      auto symbol = elf.find_function(function.symbol);
      auto role = std::find_if(custom_roles().begin(), custom_roles().end(),
                               [&](const auto& r) { return function.role == r.name; });
      if (!symbol) {
        throw Error("--allocator " + allocator.path + " defines no function " + function.symbol,
                    "list the functions it defines with: nm -D --defined-only " + allocator.path);
      }
      if (role == custom_roles().end()) {
        throw Error("--allocator: unknown role " + function.role + " for " + function.symbol);
      }
      FunctionSpec spec{function.symbol.c_str(), role->role,
                        role->role == ProbeRole::kFree ? kNoKind : kNamedKind};
      auto probe = probe_for(elf, spec, *symbol, function.symbol, return_sites);
      if (!probe) {
        throw Error("--allocator " + allocator.path + ": " + function.symbol +
                    " is not in a loadable segment");
      }
      if (!probed.insert(probe->entry_offset).second) continue;  // already traced
      existing->functions.push_back(*probe);
    }
  }

  // Allocators that are there but get no probe: say so, never trace them silently.
  const AllocatorModule* primary = result.primary();
  std::string primary_name = primary ? primary->name : "";
  for (size_t i = 0; i < loaded.size(); ++i) {
    if (!bound[i].empty() || loaded[i].name.empty() || is_cxx_runtime_name(loaded[i].name)) {
      continue;
    }
    UntracedAllocator untraced{loaded[i].name, loaded[i].file.path, "", false};
    untraced.reason = "its functions are shadowed: every one of them binds to " +
                      (primary_name.empty() ? std::string("another module") : primary_name) +
                      " earlier in load order; calls that bypass symbol binding (dlsym, "
                      "RTLD_DEEPBIND, its own internal calls) are not traced";
    untraced.expected = loaded[i].name == "glibc";
    result.untraced.push_back(std::move(untraced));
  }
  for (const ModuleFile& module : order.unlinked) {
    try {
      std::string name = classify_allocator(module.file, false, false);
      if (name.empty() || is_cxx_runtime_name(name)) continue;
      result.untraced.push_back(UntracedAllocator{
          name, module.file.path,
          "mapped outside the dynamic linker's link map (dlmopen, or mapped by hand): its "
          "functions are not probed; name them with --allocator to trace them",
          false});
    } catch (const Error&) {
      continue;  // not an ELF file: not an allocator
    }
  }
  return result;
}

}  // namespace memtrail::inspect
