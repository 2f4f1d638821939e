// SPDX-License-Identifier: Apache-2.0
// Find the allocator a process uses and where to probe its functions.
#include "target/allocator.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <memory>
#include <set>
#include <unordered_map>

#include "alloc_events.h"
#include "common/error.h"
#include "target/elf_file.h"

namespace memtrail::target {
namespace {

struct FunctionSpec {
  const char* name;
  ProbeRole role;
  uint32_t kind;
};

// Order matters where two names share an address: the first name is used in reports.
const std::vector<FunctionSpec>& function_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"malloc", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_MALLOC},
      {"calloc", ProbeRole::kCalloc, MEMTRAIL_KIND_CALLOC},
      {"realloc", ProbeRole::kRealloc, MEMTRAIL_KIND_REALLOC},
      {"reallocarray", ProbeRole::kReallocArray, MEMTRAIL_KIND_REALLOCARRAY},
      {"posix_memalign", ProbeRole::kPosixMemalign, MEMTRAIL_KIND_POSIX_MEMALIGN},
      {"aligned_alloc", ProbeRole::kAlignedAlloc, MEMTRAIL_KIND_ALIGNED_ALLOC},
      {"memalign", ProbeRole::kAlignedAlloc, MEMTRAIL_KIND_MEMALIGN},
      {"valloc", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_VALLOC},
      {"pvalloc", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_PVALLOC},
      {"free", ProbeRole::kFree, 0},
  };
  return specs;
}

// operator new and delete as the Itanium C++ ABI mangles them (libstdc++ and libc++ alike).
// Every new takes the size first, every delete the pointer first: the malloc and free programs
// serve them. Variants that call another (new[] -> new, sized delete -> delete) nest, and the
// BPF side accounts the outermost.
const std::vector<FunctionSpec>& cxx_specs() {
  static const std::vector<FunctionSpec> specs = {
      {"_Znwm", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW},
      {"_Znam", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW_ARRAY},
      {"_ZnwmRKSt9nothrow_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW},
      {"_ZnamRKSt9nothrow_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW_ARRAY},
      {"_ZnwmSt11align_val_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW},
      {"_ZnamSt11align_val_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW_ARRAY},
      {"_ZnwmSt11align_val_tRKSt9nothrow_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW},
      {"_ZnamSt11align_val_tRKSt9nothrow_t", ProbeRole::kSizeAlloc, MEMTRAIL_KIND_NEW_ARRAY},
      {"_ZdlPv", ProbeRole::kDelete, MEMTRAIL_DELETE_SCALAR},
      {"_ZdlPvm", ProbeRole::kDelete, MEMTRAIL_DELETE_SCALAR},
      {"_ZdlPvSt11align_val_t", ProbeRole::kDelete, MEMTRAIL_DELETE_SCALAR},
      {"_ZdlPvmSt11align_val_t", ProbeRole::kDelete, MEMTRAIL_DELETE_SCALAR},
      {"_ZdlPvRKSt9nothrow_t", ProbeRole::kDelete, MEMTRAIL_DELETE_SCALAR},
      {"_ZdaPv", ProbeRole::kDelete, MEMTRAIL_DELETE_ARRAY},
      {"_ZdaPvm", ProbeRole::kDelete, MEMTRAIL_DELETE_ARRAY},
      {"_ZdaPvSt11align_val_t", ProbeRole::kDelete, MEMTRAIL_DELETE_ARRAY},
      {"_ZdaPvmSt11align_val_t", ProbeRole::kDelete, MEMTRAIL_DELETE_ARRAY},
      {"_ZdaPvRKSt9nothrow_t", ProbeRole::kDelete, MEMTRAIL_DELETE_ARRAY},
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
    return {0, std::string("entry (") + raw[0].mnemonic + ", single-stepped)"};
  }
  uint64_t target = raw[first + 2].address;
  if (auto from = branch_lands_on(target)) {
    return {0, "entry (a branch at +" + std::to_string(*from) + " lands past the NULL check)"};
  }
  return {target, prefix + "after the NULL check (test %rdi,%rdi; je), on an emulated " +
                      raw[first + 2].mnemonic};
}


const std::vector<std::string>& traced_function_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& spec : function_specs()) out.emplace_back(spec.name);
    return out;
  }();
  return names;
}

std::string kind_name(uint32_t kind) {
  if (kind == MEMTRAIL_KIND_NEW) return "new";
  if (kind == MEMTRAIL_KIND_NEW_ARRAY) return "new[]";
  for (const auto& spec : function_specs()) {
    if (spec.role != ProbeRole::kFree && spec.kind == kind) return spec.name;
  }
  return "unknown";
}

namespace {

// The probes of `specs` that `elf` defines, each placed (see choose_probe_placement).
std::vector<FunctionProbe> probes_in(const ElfFile& elf, const std::vector<FunctionSpec>& specs) {
  std::vector<FunctionProbe> probes;
  std::set<uint64_t> probed_addresses;
  for (const auto& spec : specs) {
    auto symbol = elf.find_function(spec.name);
    if (!symbol || !probed_addresses.insert(symbol->address).second) continue;
    auto entry = elf.file_offset_of(symbol->address);
    if (!entry) continue;
    // The whole function is decoded to verify a placement past the entry; bounded, since a
    // symbol's size can be wrong in hand-written assembly.
    size_t code_size = std::clamp<size_t>(symbol->size, 16, 64 * 1024);
    Placement placement =
        choose_probe_placement(spec.role, elf.read_code(symbol->address, code_size));
    probes.push_back(FunctionProbe{spec.name, spec.role, spec.kind, *entry,
                                   *entry + placement.offset, placement.reason});
  }
  return probes;
}

}  // namespace

std::optional<AllocatorModule> allocator_in_file(const std::string& path,
                                                 const std::string& open_path) {
  ElfFile elf = ElfFile::open(open_path);
  if (!elf.find_function("malloc") || !elf.find_function("free")) return std::nullopt;

  return AllocatorModule{path, open_path, probes_in(elf, function_specs())};
}

std::optional<AllocatorModule> find_cxx_runtime(uint32_t pid,
                                                const std::vector<Mapping>& mappings) {
  std::set<std::string> seen;
  for (const Mapping& mapping : mappings) {
    if (!mapping.is_file() || !seen.insert(mapping.path).second) continue;
    try {
      std::string open_path = path_in_process_root(pid, mapping.path);
      ElfFile elf = ElfFile::open(open_path);
      if (!elf.find_function("_Znwm")) continue;
      return AllocatorModule{mapping.path, open_path, probes_in(elf, cxx_specs())};
    } catch (const Error&) {
      continue;  // an unreadable file cannot be the runtime we probe
    }
  }
  return std::nullopt;
}

AllocatorModule find_allocator(uint32_t pid, const std::vector<Mapping>& mappings) {
  std::set<std::string> seen;
  std::vector<std::string> unreadable;
  for (const Mapping& mapping : mappings) {
    if (!mapping.is_file() || !seen.insert(mapping.path).second) continue;
    try {
      auto module = allocator_in_file(mapping.path, path_in_process_root(pid, mapping.path));
      if (module) return *module;
    } catch (const Error& error) {
      unreadable.push_back(error.what());  // an unreadable file cannot be the allocator we probe
    }
  }
  std::string message = "no allocator found in process " + std::to_string(pid) +
                        ": none of its " + std::to_string(seen.size()) +
                        " mapped files defines malloc and free";
  if (!unreadable.empty()) message += " (" + unreadable.front() + ")";
  throw Error(message,
              "memtrail traces glibc's malloc family; a program without it (or with a stripped "
              "static allocator) cannot be traced");
}

}  // namespace memtrail::target
