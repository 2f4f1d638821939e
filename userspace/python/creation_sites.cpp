// SPDX-License-Identifier: Apache-2.0
#include "python/creation_sites.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <set>

namespace memtrail::python {
namespace {

// Instructions looked at after the flag check, and on the way to the store.
constexpr int kMaxBetweenReadAndTest = 4;
constexpr int kMaxBeforeBranch = 3;
constexpr int kMaxToStore = 16;
// Instructions looked at after a load of _Py_tracemalloc_config's address, for the flag's read
// through it (-fPIC code schedules a push and the argument's copy in between).
constexpr int kMaxBetweenLoadAndRead = 6;

struct Disassembler {
  csh handle = 0;
  cs_insn* instruction = nullptr;
  bool ok = false;
  Disassembler() {
    if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle) != CS_ERR_OK) return;
    cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON);
    instruction = cs_malloc(handle);
    ok = instruction != nullptr;
  }
  ~Disassembler() {
    if (instruction) cs_free(instruction, 1);
    if (handle) cs_close(&handle);
  }
  Disassembler(const Disassembler&) = delete;
  Disassembler& operator=(const Disassembler&) = delete;
};

// The 64-bit register a (sub-)register belongs to; nullopt for rsp, rip and the rest.
std::optional<ObjectRegister> general_register(unsigned reg) {
  using R = ObjectRegister;
  switch (reg) {
    case X86_REG_RAX:
    case X86_REG_EAX:
    case X86_REG_AX:
    case X86_REG_AL:
    case X86_REG_AH:
      return R::kRax;
    case X86_REG_RBX:
    case X86_REG_EBX:
    case X86_REG_BX:
    case X86_REG_BL:
    case X86_REG_BH:
      return R::kRbx;
    case X86_REG_RCX:
    case X86_REG_ECX:
    case X86_REG_CX:
    case X86_REG_CL:
    case X86_REG_CH:
      return R::kRcx;
    case X86_REG_RDX:
    case X86_REG_EDX:
    case X86_REG_DX:
    case X86_REG_DL:
    case X86_REG_DH:
      return R::kRdx;
    case X86_REG_RSI:
    case X86_REG_ESI:
    case X86_REG_SI:
    case X86_REG_SIL:
      return R::kRsi;
    case X86_REG_RDI:
    case X86_REG_EDI:
    case X86_REG_DI:
    case X86_REG_DIL:
      return R::kRdi;
    case X86_REG_RBP:
    case X86_REG_EBP:
    case X86_REG_BP:
    case X86_REG_BPL:
      return R::kRbp;
    case X86_REG_R8:
    case X86_REG_R8D:
    case X86_REG_R8W:
    case X86_REG_R8B:
      return R::kR8;
    case X86_REG_R9:
    case X86_REG_R9D:
    case X86_REG_R9W:
    case X86_REG_R9B:
      return R::kR9;
    case X86_REG_R10:
    case X86_REG_R10D:
    case X86_REG_R10W:
    case X86_REG_R10B:
      return R::kR10;
    case X86_REG_R11:
    case X86_REG_R11D:
    case X86_REG_R11W:
    case X86_REG_R11B:
      return R::kR11;
    case X86_REG_R12:
    case X86_REG_R12D:
    case X86_REG_R12W:
    case X86_REG_R12B:
      return R::kR12;
    case X86_REG_R13:
    case X86_REG_R13D:
    case X86_REG_R13W:
    case X86_REG_R13B:
      return R::kR13;
    case X86_REG_R14:
    case X86_REG_R14D:
    case X86_REG_R14W:
    case X86_REG_R14B:
      return R::kR14;
    case X86_REG_R15:
    case X86_REG_R15D:
    case X86_REG_R15W:
    case X86_REG_R15B:
      return R::kR15;
    default:
      return std::nullopt;
  }
}

class Scanner {
 public:
  Scanner(std::span<const uint8_t> code, uint64_t code_address, const TracingFlag& flag)
      : code_(code), base_(code_address), flag_(flag) {}

  bool ready() const { return disassembler_.ok; }

  // Decodes the instruction at `address`; false when it is outside the code or invalid.
  bool decode(uint64_t address) {
    if (address < base_ || address >= base_ + code_.size()) return false;
    const uint8_t* bytes = code_.data() + (address - base_);
    size_t left = code_.size() - (address - base_);
    uint64_t at = address;
    return cs_disasm_iter(disassembler_.handle, &bytes, &left, &at, disassembler_.instruction);
  }
  const cs_insn& current() const { return *disassembler_.instruction; }
  const cs_x86& x86() const { return disassembler_.instruction->detail->x86; }

  bool reads_flag() const {
    for (uint8_t i = 0; i < x86().op_count; ++i) {
      const cs_x86_op& op = x86().operands[i];
      if (op.type == X86_OP_MEM && op.mem.base == X86_REG_RIP && op.mem.index == X86_REG_INVALID &&
          current().address + current().size + static_cast<uint64_t>(op.mem.disp) ==
              flag_.address) {
        return true;
      }
    }
    return false;
  }

  // `mov slot(%rip), %reg` from one of the config's GOT slots, or `lea config(%rip), %reg`:
  // the 64-bit register that then holds _Py_tracemalloc_config's address.
  std::optional<unsigned> loads_config_address() const {
    const cs_x86& ops = x86();
    if (ops.op_count != 2 || ops.operands[0].type != X86_OP_REG || ops.operands[0].size != 8) {
      return std::nullopt;
    }
    const cs_x86_op& source = ops.operands[1];
    if (source.type != X86_OP_MEM || source.mem.base != X86_REG_RIP ||
        source.mem.index != X86_REG_INVALID) {
      return std::nullopt;
    }
    uint64_t target = current().address + current().size + static_cast<uint64_t>(source.mem.disp);
    bool from_slot = current().id == X86_INS_MOV &&
                     std::find(flag_.config_slots.begin(), flag_.config_slots.end(), target) !=
                         flag_.config_slots.end();
    bool direct = current().id == X86_INS_LEA && flag_.config && target == flag_.config;
    if (!from_slot && !direct) return std::nullopt;
    return ops.operands[0].reg;
  }

  // From a load of the config's address just decoded (loads_config_address): the instruction
  // that reads the flag at its offset through the loaded register, within a few instructions,
  // before any branch or other write of the register.
  std::optional<uint64_t> flag_read_after_config_load() {
    auto loaded = loads_config_address();
    auto holder = loaded ? general_register(*loaded) : std::nullopt;
    if (!holder || flag_.address < flag_.config) return std::nullopt;
    auto offset = static_cast<int64_t>(flag_.address - flag_.config);
    uint64_t next = current().address + current().size;
    for (int i = 0; i < kMaxBetweenLoadAndRead; ++i) {
      if (!decode(next)) return std::nullopt;
      next = current().address + current().size;
      for (uint8_t k = 0; k < x86().op_count; ++k) {
        const cs_x86_op& op = x86().operands[k];
        if (op.type == X86_OP_MEM && op.mem.base == *loaded && op.mem.index == X86_REG_INVALID &&
            op.mem.segment == X86_REG_INVALID && op.mem.disp == offset) {
          return current().address;
        }
      }
      if (is_branch() || written().count(*holder)) return std::nullopt;
    }
    return std::nullopt;
  }

  // The registers that hold a function's first argument at `until`, on the straight way from
  // its start `from`: rdi, and the registers it was copied to (-fPIC code keeps it in rbx
  // across the call to tracemalloc). Empty when a branch or an undecodable byte comes first.
  std::set<ObjectRegister> argument_registers(uint64_t from, uint64_t until) {
    std::set<ObjectRegister> holding{ObjectRegister::kRdi};
    uint64_t at = from;
    while (at < until) {
      if (!decode(at) || is_branch()) return {};
      at = current().address + current().size;
      const cs_x86& ops = x86();
      std::optional<ObjectRegister> copy;
      if (current().id == X86_INS_MOV && ops.op_count == 2 && ops.operands[0].type == X86_OP_REG &&
          ops.operands[1].type == X86_OP_REG && ops.operands[0].size == 8) {
        auto source = general_register(ops.operands[1].reg);
        if (source && holding.count(*source)) copy = general_register(ops.operands[0].reg);
      }
      for (ObjectRegister written_register : written()) holding.erase(written_register);
      if (copy) holding.insert(*copy);
    }
    return at == until ? holding : std::set<ObjectRegister>{};
  }

  bool is_branch() const {
    return cs_insn_group(disassembler_.handle, &current(), CS_GRP_JUMP) ||
           cs_insn_group(disassembler_.handle, &current(), CS_GRP_CALL) ||
           cs_insn_group(disassembler_.handle, &current(), CS_GRP_RET) ||
           cs_insn_group(disassembler_.handle, &current(), CS_GRP_INT);
  }

  // The 64-bit registers the current instruction writes.
  std::set<ObjectRegister> written() const {
    cs_regs reads, writes;
    uint8_t read_count = 0, write_count = 0;
    std::set<ObjectRegister> out;
    if (cs_regs_access(disassembler_.handle, &current(), reads, &read_count, writes,
                       &write_count) != CS_ERR_OK) {
      return out;
    }
    for (uint8_t i = 0; i < write_count; ++i) {
      if (auto reg = general_register(writes[i])) out.insert(*reg);
    }
    return out;
  }

  // `movq $1, (reg)`: ob_refcnt = 1.
  std::optional<ObjectRegister> refcount_store() const {
    if (current().id != X86_INS_MOV || x86().op_count != 2) return std::nullopt;
    const cs_x86_op& target = x86().operands[0];
    const cs_x86_op& value = x86().operands[1];
    if (target.type != X86_OP_MEM || target.size != 8 || target.mem.index != X86_REG_INVALID ||
        target.mem.disp != 0 || target.mem.segment != X86_REG_INVALID || value.type != X86_OP_IMM ||
        value.imm != 1) {
      return std::nullopt;
    }
    return general_register(target.mem.base);
  }

  // From the flag-reading instruction just decoded: the creation site it guards, if it is one.
  std::optional<CreationSite> site_from_flag_read() {
    uint64_t next = current().address + current().size;
    if (current().id == X86_INS_CMP) {
      // cmpl $0, tracing(%rip)
      const cs_x86_op& value = x86().operands[1];
      if (x86().op_count != 2 || value.type != X86_OP_IMM || value.imm != 0) return std::nullopt;
    } else if (current().id == X86_INS_MOV && x86().operands[0].type == X86_OP_REG) {
      // mov tracing(%rip), %reg; ...; test %reg, %reg
      unsigned loaded = x86().operands[0].reg;
      bool tested = false;
      for (int i = 0; i < kMaxBetweenReadAndTest && !tested; ++i) {
        if (!decode(next) || is_branch()) return std::nullopt;
        next = current().address + current().size;
        const cs_x86& ops = x86();
        if (current().id == X86_INS_TEST && ops.op_count == 2 &&
            ops.operands[0].type == X86_OP_REG && ops.operands[1].type == X86_OP_REG &&
            ops.operands[0].reg == loaded && ops.operands[1].reg == loaded) {
          tested = true;
        } else if (auto reg = general_register(loaded); reg && written().count(*reg)) {
          return std::nullopt;
        }
      }
      if (!tested) return std::nullopt;
    } else {
      return std::nullopt;  // a write of the flag, or another use
    }
    // The branch on the flag, maybe after a few moves (which leave the flags alone).
    bool jump_if_zero = false;
    uint64_t branch = 0, target = 0;
    for (int i = 0; i <= kMaxBeforeBranch && !branch; ++i) {
      if (!decode(next)) return std::nullopt;
      next = current().address + current().size;
      if (current().id == X86_INS_JE || current().id == X86_INS_JNE) {
        if (x86().op_count != 1 || x86().operands[0].type != X86_OP_IMM) return std::nullopt;
        branch = current().address;
        target = static_cast<uint64_t>(x86().operands[0].imm);
        jump_if_zero = current().id == X86_INS_JE;
      } else if (current().id != X86_INS_MOV && current().id != X86_INS_LEA) {
        return std::nullopt;
      }
    }
    if (!branch) return std::nullopt;
    // The path taken when tracemalloc is off leads to the store; the register holding the
    // object there must be unchanged from the branch on.
    uint64_t at = jump_if_zero ? target : next;
    std::set<ObjectRegister> changed;
    for (int i = 0; i < kMaxToStore; ++i) {
      if (!decode(at)) return std::nullopt;
      if (auto reg = refcount_store()) {
        if (changed.count(*reg)) return std::nullopt;
        return CreationSite{branch, current().address, *reg};
      }
      if (current().id == X86_INS_JMP && x86().op_count == 1 &&
          x86().operands[0].type == X86_OP_IMM) {
        at = static_cast<uint64_t>(x86().operands[0].imm);
        continue;
      }
      if (is_branch()) return std::nullopt;
      auto writes = written();
      changed.insert(writes.begin(), writes.end());
      at = current().address + current().size;
    }
    return std::nullopt;
  }

 private:
  std::span<const uint8_t> code_;
  uint64_t base_;
  const TracingFlag& flag_;
  Disassembler disassembler_;
};

}  // namespace

const char* register_name(ObjectRegister reg) {
  static const char* const names[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
                                      "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  auto index = static_cast<size_t>(reg);
  return index < std::size(names) ? names[index] : "?";
}

CreationScan scan_creation_sites(std::span<const uint8_t> code, uint64_t code_address,
                                 const TracingFlag& flag, uint64_t new_reference,
                                 uint64_t new_reference_size) {
  CreationScan scan;
  Scanner scanner(code, code_address, flag);
  if (!scanner.ready()) {
    scan.refusal = "the disassembler (capstone) could not be opened";
    return scan;
  }
  // A linear sweep of megabytes of code with full decoding takes seconds: look for the flag's
  // rip-relative displacement first. An instruction reading it ends 4 bytes after the
  // displacement (mov, test) or 5 (cmp with an 8-bit immediate), and starts 2 or 3 bytes
  // before it (opcode, ModRM, maybe a REX prefix). A load of the config's address (mov from its
  // GOT slot, or lea) is 7 bytes: REX.W, opcode, ModRM, then the displacement; the flag's read
  // through the loaded register follows within a few instructions.
  std::set<uint64_t> flag_reads;
  auto is_config_address = [&](uint64_t target) {
    return (flag.config && target == flag.config) ||
           std::find(flag.config_slots.begin(), flag.config_slots.end(), target) !=
               flag.config_slots.end();
  };
  for (size_t at = 0; at + 4 <= code.size(); ++at) {
    int32_t displacement = 0;
    std::memcpy(&displacement, code.data() + at, 4);
    for (uint64_t tail : {4u, 5u}) {
      if (code_address + at + tail + static_cast<uint64_t>(static_cast<int64_t>(displacement)) !=
          flag.address) {
        continue;
      }
      for (uint64_t back : {2u, 3u}) {
        if (at < back) continue;
        uint64_t start = code_address + at - back;
        if (scanner.decode(start) && scanner.current().size == back + tail &&
            scanner.reads_flag()) {
          flag_reads.insert(start);
        }
      }
    }
    uint64_t after =
        code_address + at + 4 + static_cast<uint64_t>(static_cast<int64_t>(displacement));
    if (at >= 3 && is_config_address(after) && scanner.decode(code_address + at - 3) &&
        scanner.current().size == 7 && scanner.loads_config_address()) {
      if (auto read = scanner.flag_read_after_config_load()) flag_reads.insert(*read);
    }
  }
  scan.flag_reads = flag_reads.size();
  std::set<uint64_t> branches;
  for (uint64_t read : flag_reads) {
    if (!scanner.decode(read)) continue;
    auto site = scanner.site_from_flag_read();
    if (site && branches.insert(site->branch).second) scan.sites.push_back(*site);
  }
  std::sort(scan.sites.begin(), scan.sites.end(),
            [](const auto& a, const auto& b) { return a.branch < b.branch; });
  if (scan.sites.empty()) {
    scan.refusal = flag_reads.empty()
                       ? "no instruction reads _Py_tracemalloc_config.tracing"
                       : "none of the " + std::to_string(flag_reads.size()) +
                             " reads of _Py_tracemalloc_config.tracing guards a store of "
                             "ob_refcnt = 1";
    return scan;
  }
  bool out_of_line = std::any_of(scan.sites.begin(), scan.sites.end(), [&](const auto& site) {
    return site.branch >= new_reference && site.branch < new_reference + new_reference_size &&
           scanner.argument_registers(new_reference, site.branch).count(site.object);
  });
  if (!new_reference || !out_of_line) {
    scan.refusal =
        "_Py_NewReference does not check _Py_tracemalloc_config.tracing before "
        "setting ob_refcnt of its argument (rdi, or a copy of it) as expected";
    scan.sites.clear();
  }
  return scan;
}

}  // namespace memtrail::python
