// SPDX-License-Identifier: Apache-2.0
#include "python/sizeof_code.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "inspect/x86_code.h"
#include "python/cpython.h"

namespace memtrail::python {
namespace {

// Instructions followed at most: odict_sizeof is a dozen.
constexpr int kMaxInstructions = 64;
// Bytes of the function read (it is short; the walk stops at its tail call).
constexpr size_t kCodeBytes = 256;
// Entries of a method table looked at, and the longest method name compared.
constexpr size_t kMaxMethods = 128;

// One term of a value: `factor` times a quantity, maybe only when a field of the object is
// not 0 (`unless_zero`: that field's offset).
struct Term {
  // kBasicSize: the tp_basicsize of the object's type; kQuotient: a count computed from the
  // object's fields by a division (a shift), not followed further (a deque's blocks).
  enum Kind { kConstant, kDictSize, kField, kBasicSize, kQuotient } kind = kConstant;
  int64_t field = 0;  // kField: the offset of the 8-byte field of the object
  int64_t factor = 1;
  std::optional<int64_t> unless_zero;
  bool same_quantity(const Term& other) const {
    return kind == other.kind && field == other.field && unless_zero == other.unless_zero;
  }
  bool operator==(const Term& other) const {
    return same_quantity(other) && factor == other.factor;
  }
};

// What a register holds: the object (the method's first argument), its type (with the type's
// offsets known: TypeOffsets), a sum of terms, or nothing known.
struct Value {
  enum Kind { kUnknown, kObject, kType, kSum } kind = kUnknown;
  std::vector<Term> terms;

  static Value sum(std::vector<Term> terms) { return {kSum, std::move(terms)}; }
  void add(const Term& term) {
    for (auto& mine : terms) {
      if (mine.same_quantity(term)) {
        mine.factor += term.factor;
        return;
      }
    }
    terms.push_back(term);
  }
  void scale(int64_t by) {
    for (auto& term : terms) term.factor *= by;
  }
};

Value add(const Value& a, const Value& b) {
  Value out = a;
  for (const auto& term : b.terms) out.add(term);
  return out;
}

// Where an object's type and the type's basic size lie (PyObject.ob_type,
// PyTypeObject.tp_basicsize): with them, the analysis follows a read of the basic size.
struct TypeOffsets {
  int64_t object_type = 0, basic_size = 0;
};

class Analysis {
 public:
  Analysis(std::span<const uint8_t> code, uint64_t address,
           const std::function<std::string(uint64_t)>& function_at,
           std::optional<TypeOffsets> types = std::nullopt)
      : code_(code), base_(address), function_at_(function_at), types_(types) {}

  // The value passed to PyLong_FromSsize_t, or nullopt with `refusal_` set.
  std::optional<Value> run() {
    csh handle = 0;
    if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle) != CS_ERR_OK) {
      refusal_ = "the disassembler (capstone) could not be opened";
      return std::nullopt;
    }
    cs_option(handle, CS_OPT_DETAIL, CS_OPT_ON);
    cs_insn* instruction = cs_malloc(handle);
    auto result = walk(handle, instruction);
    cs_free(instruction, 1);
    cs_close(&handle);
    return result;
  }
  const std::string& refusal() const { return refusal_; }

 private:
  std::optional<Value> refuse(const std::string& why) {
    refusal_ = why;
    return std::nullopt;
  }
  std::optional<Value> refuse_instruction(const cs_insn& in) {
    char at[24];
    std::snprintf(at, sizeof(at), "0x%llx", static_cast<unsigned long long>(in.address));
    return refuse(std::string("it does not follow `") + in.mnemonic + " " + in.op_str + "` at " +
                  at);
  }

  Value& reg(unsigned id) { return registers_[id]; }

  // A memory operand [object + disp], 8 bytes: its offset.
  std::optional<int64_t> object_field(const cs_x86_op& op) {
    if (op.type != X86_OP_MEM || op.size != 8 || op.mem.index != X86_REG_INVALID ||
        op.mem.segment != X86_REG_INVALID || !inspect::is_64bit_register(op.mem.base) ||
        reg(op.mem.base).kind != Value::kObject) {
      return std::nullopt;
    }
    return op.mem.disp;
  }

  // What an 8-byte memory operand reads: a field of the object, the object's type, or the
  // type's basic size; nullopt for anything else.
  std::optional<Value> memory_value(const cs_x86_op& op) {
    if (auto field = object_field(op)) {
      if (types_ && *field == types_->object_type) return Value{Value::kType, {}};
      return Value::sum({Term{Term::kField, *field, 1, {}}});
    }
    if (types_ && op.type == X86_OP_MEM && op.size == 8 && op.mem.index == X86_REG_INVALID &&
        op.mem.segment == X86_REG_INVALID && inspect::is_64bit_register(op.mem.base) &&
        reg(op.mem.base).kind == Value::kType && op.mem.disp == types_->basic_size) {
      return Value::sum({Term{Term::kBasicSize, 0, 1, {}}});
    }
    return std::nullopt;
  }

  // The field a value is, alone (for a test of it against 0).
  static std::optional<int64_t> lone_field(const Value& value) {
    if (value.kind != Value::kSum || value.terms.size() != 1) return std::nullopt;
    const Term& term = value.terms[0];
    if (term.kind != Term::kField || term.factor != 1 || term.unless_zero) return std::nullopt;
    return term.field;
  }

  // The registers a call may change (the System V ABI's caller-saved ones).
  void clobber_caller_saved() {
    for (unsigned id : {X86_REG_RAX, X86_REG_RCX, X86_REG_RDX, X86_REG_RSI, X86_REG_RDI, X86_REG_R8,
                        X86_REG_R9, X86_REG_R10, X86_REG_R11}) {
      registers_.erase(id);
    }
  }

  // Joins the state saved at a `je` over a guarded stretch with the one at its end: what the
  // stretch added counts only when the tested field is not 0.
  bool join_guarded() {
    for (unsigned id : {X86_REG_RAX, X86_REG_RBX, X86_REG_RCX, X86_REG_RDX, X86_REG_RSI,
                        X86_REG_RDI, X86_REG_RBP, X86_REG_R8, X86_REG_R9, X86_REG_R10, X86_REG_R11,
                        X86_REG_R12, X86_REG_R13, X86_REG_R14, X86_REG_R15}) {
      Value skipped = guard_->saved.count(id) ? guard_->saved[id] : Value{};
      Value through = registers_.count(id) ? registers_[id] : Value{};
      if (skipped.kind == through.kind && skipped.terms == through.terms) continue;
      // Changed in the stretch: a sum grown by terms (the skipped path's kept whole) is the
      // sum plus the guarded terms; anything else is not known after the join.
      if (skipped.kind != Value::kSum || through.kind != Value::kSum) {
        registers_.erase(id);  // unknown after the join
        continue;
      }
      Value joined = skipped;
      std::vector<Term> extra = through.terms;
      bool grown = true;
      for (const auto& term : skipped.terms) {
        auto it = std::find_if(extra.begin(), extra.end(),
                               [&](const Term& t) { return t.same_quantity(term); });
        if (it == extra.end()) {
          grown = false;
          break;
        }
        it->factor -= term.factor;
        if (it->factor == 0) extra.erase(it);
      }
      if (!grown) {
        registers_.erase(id);  // replaced in the stretch: unknown after the join
        continue;
      }
      for (auto term : extra) {
        if (term.unless_zero) return false;  // nested guards: not the shape known
        term.unless_zero = guard_->field;
        joined.add(term);
      }
      registers_[id] = joined;
    }
    guard_.reset();
    return true;
  }

  std::optional<Value> walk(csh handle, cs_insn* in) {
    registers_[X86_REG_RDI] = Value{Value::kObject, {}};
    std::optional<int64_t> tested;  // the field last compared with 0
    uint64_t at = base_;
    for (int count = 0; count < kMaxInstructions; ++count) {
      if (guard_ && at == guard_->end && !join_guarded()) {
        return refuse("a guarded stretch does more than add to a sum");
      }
      if (at < base_ || at >= base_ + code_.size())
        return refuse("its code runs past what was read");
      const uint8_t* bytes = code_.data() + (at - base_);
      size_t left = code_.size() - (at - base_);
      uint64_t next = at;
      if (!cs_disasm_iter(handle, &bytes, &left, &next, in)) {
        return refuse("an undecodable instruction in it");
      }
      const cs_x86& x86 = in->detail->x86;
      const cs_x86_op* ops = x86.operands;
      auto reg_op = [&](int i) {
        return x86.op_count > i && ops[i].type == X86_OP_REG &&
               inspect::is_64bit_register(ops[i].reg);
      };
      auto imm_op = [&](int i) { return x86.op_count > i && ops[i].type == X86_OP_IMM; };
      // mov, lea, push and pop leave the flags as the last test set them; the rest here
      // change them (or branch).
      std::optional<int64_t> was_tested = tested;
      if (in->id != X86_INS_MOV && in->id != X86_INS_LEA && in->id != X86_INS_PUSH &&
          in->id != X86_INS_POP && in->id != X86_INS_NOP && in->id != X86_INS_ENDBR64) {
        tested.reset();
      }
      switch (in->id) {
        case X86_INS_ENDBR64:
        case X86_INS_NOP:
          break;
        case X86_INS_PUSH:
          if (!reg_op(0)) return refuse_instruction(*in);
          break;  // the stack is not modelled: nothing is read back from it but by pop
        case X86_INS_POP:
          if (!reg_op(0)) return refuse_instruction(*in);
          registers_.erase(ops[0].reg);
          break;
        case X86_INS_MOV:
          // Intel operand order (capstone): destination first.
          if (x86.op_count != 2 || !reg_op(0)) return refuse_instruction(*in);
          if (reg_op(1)) {
            reg(ops[0].reg) = reg(ops[1].reg);
          } else if (auto value = memory_value(ops[1])) {
            reg(ops[0].reg) = *value;
          } else {
            return refuse_instruction(*in);
          }
          break;
        case X86_INS_CMP:
          if (x86.op_count == 2 && imm_op(1) && ops[1].imm == 0) {
            if (auto field = object_field(ops[0])) {
              tested = field;
              break;
            }
            if (reg_op(0)) {
              if (auto field = lone_field(reg(ops[0].reg))) {
                tested = field;
                break;
              }
            }
          }
          return refuse_instruction(*in);
        case X86_INS_TEST:
          if (x86.op_count == 2 && reg_op(0) && reg_op(1) && ops[0].reg == ops[1].reg) {
            if (auto field = lone_field(reg(ops[0].reg))) {
              tested = field;
              break;
            }
          }
          return refuse_instruction(*in);
        case X86_INS_LEA: {
          if (x86.op_count != 2 || !reg_op(0) || ops[1].type != X86_OP_MEM ||
              ops[1].mem.segment != X86_REG_INVALID || ops[1].mem.base == X86_REG_RIP) {
            return refuse_instruction(*in);
          }
          const x86_op_mem& mem = ops[1].mem;
          Value value = Value::sum({});
          if (mem.base != X86_REG_INVALID) {
            if (!inspect::is_64bit_register(mem.base) || reg(mem.base).kind != Value::kSum) {
              return refuse_instruction(*in);
            }
            value = reg(mem.base);
          }
          if (mem.index != X86_REG_INVALID) {
            if (!inspect::is_64bit_register(mem.index) || reg(mem.index).kind != Value::kSum) {
              return refuse_instruction(*in);
            }
            Value index = reg(mem.index);
            index.scale(mem.scale);
            value = add(value, index);
          }
          if (mem.disp) value.add(Term{Term::kConstant, 0, mem.disp, {}});
          reg(ops[0].reg) = value;
          break;
        }
        case X86_INS_SHR:
          // An unsigned division of a sum by a power of two: a count, not followed further.
          if (x86.op_count != 2 || !reg_op(0) || !imm_op(1) || ops[1].imm < 1 || ops[1].imm > 32 ||
              reg(ops[0].reg).kind != Value::kSum) {
            return refuse_instruction(*in);
          }
          reg(ops[0].reg) = Value::sum({Term{Term::kQuotient, 0, 1, {}}});
          break;
        case X86_INS_SHL:
          if (x86.op_count != 2 || !reg_op(0) || !imm_op(1) || ops[1].imm < 0 || ops[1].imm > 16 ||
              reg(ops[0].reg).kind != Value::kSum) {
            return refuse_instruction(*in);
          }
          reg(ops[0].reg).scale(int64_t{1} << ops[1].imm);
          break;
        case X86_INS_IMUL:
          if (x86.op_count != 3 || !reg_op(0) || !reg_op(1) || !imm_op(2) ||
              reg(ops[1].reg).kind != Value::kSum) {
            return refuse_instruction(*in);
          }
          reg(ops[0].reg) = reg(ops[1].reg);
          reg(ops[0].reg).scale(ops[2].imm);
          break;
        case X86_INS_ADD:
          if (x86.op_count != 2 || !reg_op(0) || reg(ops[0].reg).kind != Value::kSum) {
            return refuse_instruction(*in);
          }
          if (reg_op(1) && reg(ops[1].reg).kind == Value::kSum) {
            reg(ops[0].reg) = add(reg(ops[0].reg), reg(ops[1].reg));
          } else if (auto value = x86.op_count == 2 && ops[1].type == X86_OP_MEM
                                      ? memory_value(ops[1])
                                      : std::nullopt;
                     value && value->kind == Value::kSum) {
            reg(ops[0].reg) = add(reg(ops[0].reg), *value);
          } else if (imm_op(1)) {
            reg(ops[0].reg).add(Term{Term::kConstant, 0, ops[1].imm, {}});
          } else {
            return refuse_instruction(*in);
          }
          break;
        case X86_INS_JE: {
          // Forward over a stretch run only when the tested field is not 0.
          if (!was_tested || !imm_op(0) || guard_) return refuse_instruction(*in);
          auto target = static_cast<uint64_t>(ops[0].imm);
          if (target <= next) return refuse_instruction(*in);
          guard_ = Guard{*was_tested, target, registers_};
          break;
        }
        case X86_INS_CALL:
        case X86_INS_JMP: {
          if (!imm_op(0)) return refuse_instruction(*in);
          auto target = static_cast<uint64_t>(ops[0].imm);
          std::string callee = function_at_(target);
          if (callee == "PyLong_FromSsize_t") {
            if (guard_) return refuse("it returns inside a guarded stretch");
            if (reg(X86_REG_RDI).kind != Value::kSum) {
              return refuse("what it passes to PyLong_FromSsize_t is not a size it follows");
            }
            return reg(X86_REG_RDI);
          }
          if (in->id == X86_INS_CALL && callee == "_PyDict_SizeOf") {
            if (reg(X86_REG_RDI).kind != Value::kObject) {
              return refuse("it calls _PyDict_SizeOf with something else than the object");
            }
            // The object stays where the code keeps it across the call (a callee-saved
            // register, as compilers do); the caller-saved ones are gone.
            clobber_caller_saved();
            reg(X86_REG_RAX) = Value::sum({Term{Term::kDictSize, 0, 1, {}}});
            break;
          }
          if (in->id == X86_INS_JMP && target > next) {
            if (guard_) return refuse_instruction(*in);
            next = target;
            break;
          }
          return refuse("it calls " +
                        (callee.empty() ? std::string("an unknown function") : callee));
        }
        default:
          return refuse_instruction(*in);
      }
      at = next;
    }
    return refuse("it is longer than expected");
  }

  struct Guard {
    int64_t field = 0;  // the stretch runs when this field of the object is not 0
    uint64_t end = 0;   // where the skipping jump lands
    std::map<unsigned, Value> saved;
  };

  std::span<const uint8_t> code_;
  uint64_t base_;
  const std::function<std::string(uint64_t)>& function_at_;
  std::optional<TypeOffsets> types_;
  std::map<unsigned, Value> registers_;
  std::optional<Guard> guard_;
  std::string refusal_;
};

}  // namespace

OrderedDictScan analyse_ordered_dict_sizeof(std::span<const uint8_t> code, uint64_t address,
                                            const std::function<std::string(uint64_t)>& function_at,
                                            unsigned dict_used, unsigned dict_size) {
  OrderedDictScan scan;
  Analysis analysis(code, address, function_at);
  auto value = analysis.run();
  if (!value) {
    scan.refusal = "OrderedDict's __sizeof__ is not the code memtrail knows: " + analysis.refusal();
    return scan;
  }
  // Expected: the dict's size, once; a field past the dict times a slot's bytes; and, guarded
  // by another field past the dict, ma_used times a node's bytes.
  const Term *dict = nullptr, *fast = nullptr, *nodes = nullptr;
  bool other = false;
  for (const auto& term : value->terms) {
    if (term.kind == Term::kDictSize && term.factor == 1 && !term.unless_zero && !dict) {
      dict = &term;
    } else if (term.kind == Term::kField && !term.unless_zero && !fast) {
      fast = &term;
    } else if (term.kind == Term::kField && term.unless_zero && !nodes) {
      nodes = &term;
    } else {
      other = true;
    }
  }
  auto private_field = [&](int64_t offset) {
    return offset >= static_cast<int64_t>(dict_size) && offset < 4096 && offset % 8 == 0;
  };
  if (other || !dict || !fast || !nodes || nodes->field != static_cast<int64_t>(dict_used) ||
      !private_field(fast->field) || !private_field(*nodes->unless_zero) ||
      fast->field == *nodes->unless_zero || fast->factor <= 0 || fast->factor > 64 ||
      nodes->factor <= 0 || nodes->factor > 4096) {
    scan.refusal =
        "OrderedDict's __sizeof__ does not compute _PyDict_SizeOf + fast nodes + "
        "(first node ? ma_used nodes : 0) as memtrail knows it";
    return scan;
  }
  scan.sizing = OrderedDictSizing{
      static_cast<unsigned>(*nodes->unless_zero), static_cast<unsigned>(fast->field),
      static_cast<unsigned>(fast->factor), static_cast<unsigned>(nodes->factor)};
  return scan;
}

BufferedSizeofScan analyse_buffered_sizeof(std::span<const uint8_t> code, uint64_t address,
                                           const std::function<std::string(uint64_t)>& function_at,
                                           unsigned object_type, unsigned type_basicsize,
                                           int64_t basic_size, uint64_t pymalloc_largest) {
  BufferedSizeofScan scan;
  Analysis analysis(code, address, function_at,
                    TypeOffsets{object_type, static_cast<int64_t>(type_basicsize)});
  auto value = analysis.run();
  if (!value) {
    scan.refusal = "code memtrail does not follow: " + analysis.refusal();
    return scan;
  }
  // Expected: the basic size once (read from the object's type, or the type's own as a
  // constant), and counts of units over pymalloc's largest block.
  bool basic = false;
  for (const auto& term : value->terms) {
    bool is_basic = (term.kind == Term::kBasicSize && term.factor == 1) ||
                    (term.kind == Term::kConstant && term.factor == basic_size);
    if (is_basic && !term.unless_zero && !basic) {
      basic = true;
      continue;
    }
    if (term.kind == Term::kConstant || term.kind == Term::kBasicSize ||
        term.kind == Term::kDictSize) {
      scan.refusal = "it adds more than the basic size and whole buffers over " +
                     std::to_string(pymalloc_largest) + " bytes";
      return scan;
    }
    if (term.factor <= static_cast<int64_t>(pymalloc_largest)) {
      scan.refusal = "it counts memory in units of " + std::to_string(term.factor) +
                     " bytes, which pymalloc may serve (" + std::to_string(pymalloc_largest) +
                     " bytes or less): memtrail does not read them";
      return scan;
    }
    if (!scan.unit_bytes || static_cast<uint64_t>(term.factor) < scan.unit_bytes) {
      scan.unit_bytes = static_cast<uint64_t>(term.factor);
    }
  }
  if (!basic) {
    scan.refusal = "it does not count the type's basic size";
    return scan;
  }
  scan.exact = true;
  return scan;
}

uint64_t sizeof_method(uint64_t methods, const MemoryReader& read) {
  const auto& layout = built_layout();
  auto read_u64 = [&](uint64_t address) -> std::optional<uint64_t> {
    auto bytes = read(address, 8);
    if (bytes.size() != 8) return std::nullopt;
    uint64_t value = 0;
    std::memcpy(&value, bytes.data(), 8);
    return value;
  };
  for (size_t i = 0; methods && i < kMaxMethods; ++i) {
    uint64_t entry = methods + i * layout.method_def_size;
    auto name = read_u64(entry + layout.method_name);
    if (!name || !*name) return 0;
    auto text = read(*name, sizeof("__sizeof__"));
    if (text.size() == sizeof("__sizeof__") &&
        std::memcmp(text.data(), "__sizeof__", sizeof("__sizeof__")) == 0) {
      return read_u64(entry + layout.method_function).value_or(0);
    }
  }
  return 0;
}

OrderedDictScan scan_ordered_dict(const inspect::ElfFile& file) {
  const auto& layout = built_layout();
  OrderedDictScan refused;
  MemoryReader read = [&](uint64_t address, size_t length) {
    return file.read_code(address, length);
  };
  auto type = file.find_object("PyODict_Type");
  if (!type) {
    refused.refusal = "PyODict_Type not found in " + file.path();
    return refused;
  }
  // tp_methods as the file stores it: an address the linker wrote (for a shared library, the
  // addend its relative relocation repeats).
  auto methods = read(type->address + layout.type_methods, 8);
  uint64_t table = 0;
  if (methods.size() == 8) std::memcpy(&table, methods.data(), 8);
  uint64_t sizeof_function = sizeof_method(table, read);
  if (!sizeof_function) {
    refused.refusal = "OrderedDict's __sizeof__ not found in its method table in " + file.path();
    return refused;
  }
  auto code = file.read_code(sizeof_function, kCodeBytes);
  auto dict_sizeof = file.find_function("_PyDict_SizeOf");
  auto long_from = file.find_function("PyLong_FromSsize_t");
  auto function_at = [&](uint64_t address) -> std::string {
    if (dict_sizeof && address == dict_sizeof->address) return "_PyDict_SizeOf";
    if (long_from && address == long_from->address) return "PyLong_FromSsize_t";
    return file.plt_target(address);
  };
  auto scan = analyse_ordered_dict_sizeof(code, sizeof_function, function_at, layout.dict_used,
                                          layout.dict_size);
  if (!scan.sizing) scan.refusal += " (in " + file.path() + ")";
  return scan;
}

}  // namespace memtrail::python
