// SPDX-License-Identifier: Apache-2.0
#include "python/cpython.h"

#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "common/error.h"
#include "inspect/elf_file.h"
#include "inspect/process_file.h"

namespace memtrail::python {
namespace {

constexpr size_t kMaxNameBytes = 4096;          // a qualified name or a file name
constexpr size_t kMaxLineTableBytes = 1 << 20;  // a huge module's location table

bool read_memory(uint32_t pid, uint64_t address, void* buffer, size_t size) {
  if (size == 0) return true;
  iovec local{buffer, size};
  iovec remote{reinterpret_cast<void*>(address), size};
  return ::process_vm_readv(static_cast<pid_t>(pid), &local, 1, &remote, 1, 0) ==
         static_cast<ssize_t>(size);
}

template <typename T>
T field(const std::vector<uint8_t>& raw, size_t offset) {
  T value{};
  if (offset + sizeof(T) <= raw.size()) std::memcpy(&value, raw.data() + offset, sizeof(T));
  return value;
}

void append_utf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

// A str object (compact: every name the compiler makes is) as UTF-8.
std::optional<std::string> read_str(uint32_t pid, uint64_t address) {
  const auto& layout = built_layout();
  if (!address) return std::nullopt;
  std::vector<uint8_t> header(layout.compact_data);
  if (!read_memory(pid, address, header.data(), header.size())) return std::nullopt;
  auto state = field<uint32_t>(header, layout.unicode_state);
  auto length = field<int64_t>(header, layout.unicode_length);
  unsigned kind = (state >> layout.state_kind_shift) & ((1u << layout.state_kind_bits) - 1);
  bool compact = (state >> layout.state_compact_bit) & 1;
  bool ascii = (state >> layout.state_ascii_bit) & 1;
  if (!compact || length < 0 || (kind != 1 && kind != 2 && kind != 4)) return std::nullopt;
  size_t characters = std::min<size_t>(static_cast<size_t>(length), kMaxNameBytes);
  std::vector<uint8_t> data(characters * kind);
  if (!read_memory(pid, address + (ascii ? layout.ascii_data : layout.compact_data), data.data(),
                   data.size())) {
    return std::nullopt;
  }
  std::string text;
  text.reserve(characters);
  for (size_t i = 0; i < characters; ++i) {
    uint32_t code_point = 0;
    std::memcpy(&code_point, data.data() + i * kind, kind);  // little-endian
    append_utf8(text, code_point);
  }
  return text;
}

std::optional<std::string> read_bytes(uint32_t pid, uint64_t address) {
  const auto& layout = built_layout();
  if (!address) return std::nullopt;
  std::vector<uint8_t> header(layout.bytes_data);
  if (!read_memory(pid, address, header.data(), header.size())) return std::nullopt;
  auto size = field<int64_t>(header, layout.var_size);
  if (size < 0 || static_cast<size_t>(size) > kMaxLineTableBytes) return std::nullopt;
  std::string data(static_cast<size_t>(size), '\0');
  if (!read_memory(pid, address + layout.bytes_data, data.data(), data.size())) return std::nullopt;
  return data;
}

std::string base_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// "python3.11", "libpython3.11.so.1.0", "python3.11d": a file that may define _PyRuntime.
bool may_be_interpreter(const std::string& path) {
  auto name = base_name(path);
  return name.rfind("python", 0) == 0 || name.rfind("libpython", 0) == 0;
}

// "3.9" from "libpython3.9.so.1.0" or "python3.9": for versions without Py_Version.
std::string version_from_name(const std::string& path) {
  auto name = base_name(path);
  auto at = name.find("python");
  std::string version;
  for (size_t i = at + 6;
       i < name.size() && (std::isdigit(static_cast<unsigned char>(name[i])) || name[i] == '.');
       ++i) {
    version += name[i];
  }
  while (!version.empty() && version.back() == '.') version.pop_back();
  return version.empty() ? "unknown" : version;
}

// The location table's variable-length integers (CPython's Objects/locations.md).
struct TableCursor {
  std::string_view table;
  size_t at = 0;
  bool done() const { return at >= table.size(); }
  uint8_t byte() { return done() ? 0 : static_cast<uint8_t>(table[at++]); }
  uint32_t varint() {
    uint8_t read = byte();
    uint32_t value = read & 63;
    unsigned shift = 6;
    while ((read & 64) && !done() && shift < 32) {
      read = byte();
      value |= static_cast<uint32_t>(read & 63) << shift;
      shift += 6;
    }
    return value;
  }
  int32_t signed_varint() {
    uint32_t value = varint();
    return (value & 1) ? -static_cast<int32_t>(value >> 1) : static_cast<int32_t>(value >> 1);
  }
};

constexpr const char* kEvalLoop = "_PyEval_EvalFrameDefault";

bool is_eval_loop(const model::Frame& frame) {
  return !frame.inlined && frame.function && *frame.function == kEvalLoop;
}

}  // namespace

const memtrail_cpython_layout& built_layout() {
  static const memtrail_cpython_layout layout = [] {
    memtrail_cpython_layout described;
    memtrail_cpython_describe(&described);
    return described;
  }();
  return layout;
}

model::PythonFrameLayout frame_layout() {
  const auto& walker = built_layout().walker;
  return {walker.runtime_tstate_current, walker.runtime_interp_main,
          walker.interp_threads_head,    walker.tstate_next,
          walker.tstate_thread_id,       walker.tstate_cframe,
          walker.cframe_current_frame,   walker.frame_code,
          walker.frame_previous,         walker.frame_prev_instr,
          walker.frame_is_entry,         walker.frame_owner,
          walker.code_adaptive,          walker.owner_cstack,
          walker.tstate_datastack_chunk, walker.tstate_datastack_limit,
          walker.frame_globals};
}

model::PythonTypeLayout type_layout() {
  const auto& types = built_layout().types;
  return {types.type_flags, types.have_gc};
}

CreationScan scan_interpreter(const inspect::ElfFile& file) {
  CreationScan refused;
  auto config = file.find_object("_Py_tracemalloc_config");
  auto new_reference = file.find_function("_Py_NewReference");
  auto text = file.find_section(".text");
  if (!config || !new_reference || !text) {
    refused.refusal = std::string(!config          ? "_Py_tracemalloc_config"
                                  : !new_reference ? "_Py_NewReference"
                                                   : "the .text section") +
                      " not found";
    return refused;
  }
  Elf_Data* data = file.section_data(*text);
  if (!data || !data->d_buf) {
    refused.refusal = "the .text section could not be read";
    return refused;
  }
  std::span<const uint8_t> code(static_cast<const uint8_t*>(data->d_buf), data->d_size);
  TracingFlag flag{config->address + built_layout().tracemalloc_tracing, config->address,
                   file.got_slots_of("_Py_tracemalloc_config")};
  return scan_creation_sites(code, text->header.sh_addr, flag, new_reference->address,
                             new_reference->size);
}

std::optional<Interpreter::ExitFunction> exit_function_in(const inspect::ElfFile& elf,
                                                          const inspect::ProcessFile& file) {
  auto function = elf.find_function("_exit");
  auto offset = function ? elf.file_offset_of(function->address) : std::nullopt;
  if (!offset) return std::nullopt;
  return Interpreter::ExitFunction{file, *offset};
}

std::optional<Interpreter::ExitFunction> exit_function_in(const inspect::ProcessFile& file) {
  try {
    return exit_function_in(*inspect::ElfFile::open_shared(inspect::open_file(file).fd, file.path),
                            file);
  } catch (const Error&) {
    return std::nullopt;
  }
}

namespace {

// libc's _exit in process `pid`: in the interpreter's own file when that defines it (a static
// build), or in the C library it maps (libc.so.*; not yet at the first instruction of its
// program: CodeMaps then looks in the libc its load order names).
std::optional<Interpreter::ExitFunction> find_exit_function(
    uint32_t pid, const std::vector<inspect::Mapping>& mappings,
    const inspect::ProcessFile& interpreter_file, const inspect::ElfFile& interpreter) {
  if (auto own = exit_function_in(interpreter, interpreter_file)) return own;
  for (const auto& mapping : mappings) {
    if (mapping.executable && mapping.is_file() &&
        std::filesystem::path(mapping.path).filename().string().rfind("libc.so", 0) == 0) {
      return exit_function_in(inspect::mapped_file(pid, mapping));
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Interpreter> find_interpreter(uint32_t pid,
                                            const std::vector<inspect::Mapping>& mappings) {
  std::set<std::string> seen;
  for (const auto& mapping : mappings) {
    if (!mapping.executable || !mapping.is_file() || !may_be_interpreter(mapping.path) ||
        !seen.insert(mapping.path).second) {
      continue;
    }
    inspect::ProcessFile module_file = inspect::mapped_file(pid, mapping);
    std::shared_ptr<const inspect::ElfFile> file;
    try {
      file = inspect::ElfFile::open_shared(inspect::open_file(module_file).fd, mapping.path);
    } catch (const Error&) {
      continue;
    }
    auto runtime = file->find_object("_PyRuntime");
    if (!runtime) continue;
    // The load bias, from any mapping of the file whose offset a segment holds.
    std::optional<uint64_t> bias;
    for (const auto& other : mappings) {
      if (other.path != mapping.path || other.inode != mapping.inode) continue;
      if (auto address = file->address_at_file_offset(other.file_offset)) {
        bias = other.start - *address;
        break;
      }
    }
    if (!bias) continue;
    Interpreter interpreter;
    interpreter.module = mapping.path;
    interpreter.file = module_file;
    interpreter.runtime_address = *bias + runtime->address;
    if (auto code_type = file->find_object("PyCode_Type")) {
      interpreter.code_type_address = *bias + code_type->address;
    }
    // The function mix_frames() replaces by Python frames (is_eval_loop), by the same symbol.
    if (auto eval_loop = file->find_function(kEvalLoop); eval_loop && eval_loop->size) {
      interpreter.eval_loop_start = *bias + eval_loop->address;
      interpreter.eval_loop_end = interpreter.eval_loop_start + eval_loop->size;
    }
    unsigned major = 0, minor = 0;
    if (auto version_symbol = file->find_object("Py_Version")) {  // PY_VERSION_HEX, 3.11 on
      auto bytes = file->read_code(version_symbol->address, 4);
      if (bytes.size() == 4) {
        uint32_t hex = 0;
        std::memcpy(&hex, bytes.data(), 4);
        major = hex >> 24;
        minor = (hex >> 16) & 0xff;
        interpreter.version = std::to_string(major) + "." + std::to_string(minor) + "." +
                              std::to_string((hex >> 8) & 0xff);
      }
    }
    if (interpreter.version.empty()) interpreter.version = version_from_name(mapping.path);
    const auto& layout = built_layout();
    interpreter.supported = major == layout.major && minor == layout.minor;
    // The object allocators, for --python-types.
    struct Wanted {
      const char* name;
      bool release;
      model::PythonObjectCall call;
    };
    using Call = model::PythonObjectCall;
    for (const Wanted& wanted : {Wanted{"PyType_GenericAlloc", false, Call::kGenericAlloc},
                                 Wanted{"_PyObject_GC_New", false, Call::kGcNew},
                                 Wanted{"_PyObject_GC_NewVar", false, Call::kGcNewVar},
                                 Wanted{"PyObject_GC_Del", true, Call::kGenericAlloc}}) {
      auto function = file->find_function(wanted.name);
      auto offset = function ? file->file_offset_of(function->address) : std::nullopt;
      if (!offset) {
        interpreter.object_probes.clear();
        interpreter.types_reason = std::string(wanted.name) + " not found in " + mapping.path;
        break;
      }
      interpreter.object_probes.push_back({wanted.name, *offset, wanted.release, wanted.call});
    }
    if (auto finalize = file->find_function("Py_FinalizeEx")) {
      interpreter.finalize_offset = file->file_offset_of(finalize->address);
    }
    interpreter.exit_function = find_exit_function(pid, mappings, module_file, *file);
    if (auto unicode_type = file->find_object("PyUnicode_Type")) {
      interpreter.unicode_type_address = *bias + unicode_type->address;
    }
    for (auto [name, address] : {std::pair{"PySet_Type", &interpreter.set_type_address},
                                 std::pair{"PyFrozenSet_Type", &interpreter.frozenset_type_address},
                                 std::pair{"PyByteArray_Type", &interpreter.bytearray_type_address},
                                 std::pair{"PyBytes_Type", &interpreter.bytes_type_address},
                                 std::pair{"PyLong_Type", &interpreter.long_type_address},
                                 std::pair{"PyFloat_Type", &interpreter.float_type_address},
                                 std::pair{"PyTuple_Type", &interpreter.tuple_type_address}}) {
      if (auto type = file->find_object(name)) *address = *bias + type->address;
    }
    if (interpreter.supported) {
      if (auto odict_type = file->find_object("PyODict_Type")) {
        interpreter.odict_type_address = *bias + odict_type->address;
      }
      MemoryReader read_file = [&](uint64_t address, size_t length) {
        return file->read_code(address, length);
      };
      for (const char* owner :
           {"PyBaseObject_Type", "PyUnicode_Type", "PyDict_Type", "PyODict_Type", "PyList_Type",
            "PySet_Type", "PyFrozenSet_Type", "PyByteArray_Type", "PyBytes_Type", "PyLong_Type",
            "PyTuple_Type", "PyFloat_Type", "PyComplex_Type"}) {
        auto type_symbol = file->find_object(owner);
        if (!type_symbol) continue;
        auto methods = read_file(type_symbol->address + layout.type_methods, 8);
        uint64_t table = 0;
        if (methods.size() == 8) std::memcpy(&table, methods.data(), 8);
        if (uint64_t function = sizeof_method(table, read_file)) {
          interpreter.sizeof_owners.emplace(*bias + function, owner);
        }
      }
      if (auto long_from = file->find_function("PyLong_FromSsize_t")) {
        interpreter.long_from_ssize_address = *bias + long_from->address;
      }
      OrderedDictScan odict = scan_ordered_dict(*file);
      interpreter.odict_sizing = odict.sizing;
      interpreter.odict_reason = odict.refusal;
      CreationScan scan = scan_interpreter(*file);
      for (const auto& site : scan.sites) {
        if (auto offset = file->file_offset_of(site.branch)) {
          interpreter.object_sites.push_back({*offset, site.object});
        }
      }
      interpreter.objects_reason = scan.refusal;
      if (!scan.refusal.empty()) interpreter.objects_reason += " in " + mapping.path;
    } else {
      interpreter.objects_reason = "CPython " + interpreter.version + " is not supported";
    }
    if (!interpreter.supported) {
      interpreter.reason = "CPython " + interpreter.version + " is not supported (memtrail " +
                           "knows the frame layout of CPython " + std::to_string(layout.major) +
                           "." + std::to_string(layout.minor) + "): its stacks show the " +
                           "interpreter's native frames only, and its Python objects are not " +
                           "traced (its native allocations are)";
    }
    return interpreter;
  }
  return std::nullopt;
}

std::optional<uint32_t> line_of(std::string_view table, int first_line, uint32_t lasti) {
  TableCursor cursor{table};
  int line = first_line;
  uint64_t start = 0;  // code units
  while (!cursor.done()) {
    uint8_t first = cursor.byte();
    if (!(first & 0x80)) return std::nullopt;  // not the start of an entry: a bad table
    unsigned code = (first >> 3) & 15;
    uint64_t length = (first & 7) + 1u;
    bool no_line = false;
    switch (code) {
      case 15:  // no location
        no_line = true;
        break;
      case 14:  // long form: line delta, end line delta, column, end column
        line += cursor.signed_varint();
        cursor.varint();
        cursor.varint();
        cursor.varint();
        break;
      case 13:  // no columns
        line += cursor.signed_varint();
        break;
      case 10:
      case 11:
      case 12:  // one line form: the delta is in the code, two column bytes
        line += static_cast<int>(code) - 10;
        cursor.byte();
        cursor.byte();
        break;
      default:  // short form: same line, one column byte
        cursor.byte();
        break;
    }
    if (lasti >= start && lasti < start + length) {
      if (no_line || line <= 0) return std::nullopt;
      return static_cast<uint32_t>(line);
    }
    start += length;
  }
  return std::nullopt;
}

std::optional<CodeReader::Code> CodeReader::read_code(uint32_t pid, const Interpreter& interpreter,
                                                      uint64_t address) {
  const auto& layout = built_layout();
  std::vector<uint8_t> raw(layout.code_size);
  if (!read_memory(pid, address, raw.data(), raw.size())) return std::nullopt;
  Code code;
  // A code object freed since (its memory reused) is not named after whatever lies there now.
  if (interpreter.code_type_address &&
      field<uint64_t>(raw, layout.object_type) != interpreter.code_type_address) {
    code.gone = true;
    return code;
  }
  auto qualname = read_str(pid, field<uint64_t>(raw, layout.code_qualname));
  auto filename = read_str(pid, field<uint64_t>(raw, layout.code_filename));
  auto linetable = read_bytes(pid, field<uint64_t>(raw, layout.code_linetable));
  if (!qualname) return std::nullopt;
  code.qualname = std::move(*qualname);
  code.filename = filename.value_or("");
  code.linetable = linetable.value_or("");
  code.first_line = field<int32_t>(raw, layout.code_firstlineno);
  code.units = static_cast<uint64_t>(std::max<int64_t>(field<int64_t>(raw, layout.var_size), 0));
  return code;
}

model::Frame CodeReader::frame(uint32_t pid, const Interpreter& interpreter,
                               const model::PythonFrame& recorded) {
  auto key = std::make_tuple(pid, recorded.code, recorded.globals);
  auto it = codes_.find(key);
  if (it == codes_.end()) {
    it = codes_.emplace(key, read_code(pid, interpreter, recorded.code)).first;
  }
  model::Frame frame;
  frame.python = true;
  frame.address = recorded.code;
  frame.module = "[python]";
  frame.offset = uint64_t{recorded.lasti} * 2;  // the bytecode offset, as dis shows it
  if (!it->second) {
    frame.function = "<unreadable code object>";
    return frame;
  }
  const Code& code = *it->second;
  if (code.gone ||
      (recorded.lasti < model::kPythonLastiSaturated && recorded.lasti >= code.units)) {
    frame.function = kGoneCode;
    return frame;
  }
  frame.function = code.qualname;
  if (!code.filename.empty()) frame.file = code.filename;
  frame.line = line_of(code.linetable, code.first_line, recorded.lasti);
  return frame;
}

void CodeReader::forget(uint32_t pid) {
  codes_.erase(codes_.lower_bound({pid, 0, 0}), codes_.lower_bound({pid + 1, 0, 0}));
}

void TypeTracker::record(double t_s, const std::vector<model::Snapshot::PythonTypeCounts>& counts,
                         const std::unordered_map<uint32_t, Interpreter>& interpreters) {
  const auto& layout = built_layout();
  for (const auto& count : counts) {
    auto key = std::make_pair(count.pid, count.type);
    auto it = types_.find(key);
    if (it == types_.end()) {
      if (!interpreters.count(count.pid)) continue;  // not a process memtrail walks (any more)
      Tracked tracked;
      std::vector<uint8_t> raw(std::max({layout.type_name, layout.type_basicsize,
                                         layout.type_itemsize, layout.types.type_flags}) +
                               8);
      if (!read_memory(count.pid, count.type, raw.data(), raw.size())) continue;  // next time
      uint64_t name_address = field<uint64_t>(raw, layout.type_name);
      char name[128] = {};
      if (!name_address || !read_memory(count.pid, name_address, name, sizeof(name) - 1)) {
        // A name across the end of a mapping: read less.
        if (!name_address || !read_memory(count.pid, name_address, name, 16)) continue;
      }
      name[sizeof(name) - 1] = '\0';
      tracked.info.name = std::string(name, strnlen(name, sizeof(name) - 1));
      tracked.info.basic_size = field<int64_t>(raw, layout.type_basicsize);
      tracked.info.item_size = field<int64_t>(raw, layout.type_itemsize);
      uint64_t flags = field<uint64_t>(raw, layout.types.type_flags);
      tracked.info.pre_header =
          layout.gc_header_size + ((flags & layout.managed_dict) ? 2 * sizeof(void*) : 0);
      it = types_.emplace(key, std::move(tracked)).first;
    }
    auto& tracked = it->second;
    tracked.last = count;
    if (tracked.series.size() >= 480) {  // a long run: every other point, the whole span kept
      for (size_t i = 0; i < tracked.series.size() / 2; ++i)
        tracked.series[i] = tracked.series[2 * i];
      tracked.series.resize(tracked.series.size() / 2);
    }
    tracked.series.emplace_back(t_s,
                                static_cast<double>(count.made) - static_cast<double>(count.freed));
  }
}

std::vector<model::PythonType> TypeTracker::report() const {
  std::vector<model::PythonType> types;
  for (const auto& [key, tracked] : types_) {
    model::PythonType type;
    type.pid = key.first;
    type.type = tracked.info.name;
    type.made = tracked.last.made;
    type.freed = tracked.last.freed;
    type.outstanding_objects =
        static_cast<int64_t>(tracked.last.made) - static_cast<int64_t>(tracked.last.freed);
    int64_t items = tracked.info.item_size ? static_cast<int64_t>(tracked.last.items_made) -
                                                 static_cast<int64_t>(tracked.last.items_freed)
                                           : 0;
    type.outstanding_bytes =
        type.outstanding_objects * (tracked.info.basic_size + tracked.info.pre_header) +
        items * tracked.info.item_size;
    // Their own size, whatever their __sizeof__ adds (a dict's table, a list's items).
    type.sizing = model::PythonType::kSizingEstimated;
    // Least-squares slope of outstanding objects over time.
    const auto& series = tracked.series;
    if (series.size() >= 2) {
      double n = static_cast<double>(series.size()), sum_t = 0, sum_y = 0, sum_tt = 0, sum_ty = 0;
      for (const auto& [t, y] : series) {
        sum_t += t;
        sum_y += y;
        sum_tt += t * t;
        sum_ty += t * y;
      }
      double denominator = n * sum_tt - sum_t * sum_t;
      if (denominator > 0) type.growth_objects_per_s = (n * sum_ty - sum_t * sum_y) / denominator;
    }
    types.push_back(std::move(type));
  }
  std::sort(types.begin(), types.end(), [](const auto& a, const auto& b) {
    if (a.growth_objects_per_s != b.growth_objects_per_s) {
      return a.growth_objects_per_s > b.growth_objects_per_s;
    }
    return a.outstanding_objects > b.outstanding_objects;
  });
  return types;
}

std::vector<model::Frame> mix_frames(const std::vector<model::Frame>& native,
                                     const std::vector<model::Frame>& python,
                                     const std::vector<bool>& entries,
                                     const std::string& interpreter_module, FramesMode mode) {
  if (python.empty() || mode == FramesMode::kNative) return native;
  if (mode == FramesMode::kPython) return python;
  std::vector<model::Frame> mixed;
  mixed.reserve(native.size() + python.size());
  size_t next_python = 0;
  bool in_python = false;  // outside the innermost C code: the interpreter's frames are plumbing
  for (const auto& frame : native) {
    if (is_eval_loop(frame)) {
      in_python = true;
      while (next_python < python.size()) {
        mixed.push_back(python[next_python]);
        bool entry = next_python < entries.size() && entries[next_python];
        ++next_python;
        if (entry) break;
      }
      continue;
    }
    if (in_python && frame.module == interpreter_module) continue;
    mixed.push_back(frame);
  }
  // Frames of eval-loop calls the native walk did not reach (it stopped early).
  mixed.insert(mixed.end(), python.begin() + static_cast<std::ptrdiff_t>(next_python),
               python.end());
  return mixed;
}

}  // namespace memtrail::python
