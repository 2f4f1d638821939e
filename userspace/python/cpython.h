// SPDX-License-Identifier: Apache-2.0
// CPython processes seen from outside: find a process's interpreter, name the code objects the
// BPF walker recorded (qualified name, file, line), and put Python frames in the native stack.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inspect/elf_file.h"
#include "inspect/proc_maps.h"
#include "inspect/process_file.h"
#include "model/python.h"
#include "model/report.h"
#include "model/snapshot.h"
#include "model/stack_modes.h"
#include "python/cpython_layout.h"
#include "python/creation_sites.h"
#include "python/sizeof_code.h"

namespace memtrail::python {

// --python-frames, parsed by cli/ (model/stack_modes.h).
using FramesMode = model::PythonFramesMode;

// The CPython layout memtrail was built against (userspace/python/cpython_layout.c).
const memtrail_cpython_layout& built_layout();
// Its offsets as the tracer takes them: what the Python frame walker reads (--python-frames),
// and what the object counters read of a type (--python-types).
model::PythonFrameLayout frame_layout();
model::PythonTypeLayout type_layout();

// A function of the interpreter's file that --python-types probes.
struct ObjectProbe {
  std::string function;
  uint64_t file_offset = 0;  // where the uprobe goes
  bool release = false;      // PyObject_GC_Del: an object freed; else one made
  // The function, for the ones that make.
  model::PythonObjectCall call = model::PythonObjectCall::kGenericAlloc;
};

// A process's interpreter: the module defining _PyRuntime (the python executable, or
// libpython for embedders), where that lies in the process, and whether memtrail walks it.
struct Interpreter {
  std::string module;            // path as the process sees it
  inspect::ProcessFile file;     // the module's file, as memtrail opens and probes it
  std::string version;           // "3.11.2", from Py_Version; "3.9" from the file name when older
  uint64_t runtime_address = 0;  // &_PyRuntime in the process
  // _PyEval_EvalFrameDefault's code in the process, [start, end): the native walk of a Python
  // stack ends at its outermost frame (0, 0 when the symbol is missing: the walk goes on).
  uint64_t eval_loop_start = 0, eval_loop_end = 0;
  uint64_t code_type_address = 0;  // &PyCode_Type: what a live code object's ob_type is
  bool supported = false;
  std::string reason;  // why not, when not supported
  // The object allocators and PyObject_GC_Del, for --python-types; empty when one is missing
  // (types_reason says which).
  std::vector<ObjectProbe> object_probes;
  std::string types_reason;
  // Where it creates objects (python/creation_sites.h), as file offsets of the probed branches;
  // empty when the scan refused the file (objects_reason says why).
  struct ObjectSite {
    uint64_t file_offset = 0;
    ObjectRegister object = ObjectRegister::kRax;
  };
  std::vector<ObjectSite> object_sites;
  std::string objects_reason;
  // Py_FinalizeEx's file offset: where a program ending (returning from its main module, or
  // sys.exit) starts to free what its modules keep; nullopt when the symbol is missing.
  std::optional<uint64_t> finalize_offset;
  // libc's _exit, where a program that ends without finalizing (os._exit) still passes: the
  // file that defines it as the process maps it, and its file offset; nullopt when not found.
  struct ExitFunction {
    inspect::ProcessFile file;
    uint64_t file_offset = 0;
  };
  std::optional<ExitFunction> exit_function;
  uint64_t unicode_type_address = 0;  // &PyUnicode_Type: str sizes are computed, not basic
  // &PySet_Type, &PyFrozenSet_Type, &PyByteArray_Type: their sizes add a buffer of their own
  // (dict and list are known by their type flags).
  uint64_t set_type_address = 0, frozenset_type_address = 0, bytearray_type_address = 0;
  // &PyBytes_Type, &PyLong_Type, &PyFloat_Type, &PyTuple_Type: immutable, so their content
  // tells one object from another at the same address (python/objects.h, Identity).
  uint64_t bytes_type_address = 0, long_type_address = 0, float_type_address = 0,
           tuple_type_address = 0;
  // &PyODict_Type, and what its __sizeof__ adds to a dict's, read from its code
  // (python/sizeof_code.h); without it (odict_reason says why) an OrderedDict, or an instance
  // of a subclass, is sized as the dict it is: its nodes and fast-nodes array are not counted.
  uint64_t odict_type_address = 0;
  std::optional<OrderedDictSizing> odict_sizing;
  std::string odict_reason;
  // The __sizeof__ functions of the built-in types memtrail sizes as they do, in the process,
  // by the type they belong to ("PyBaseObject_Type", "PyUnicode_Type", ...): an object whose
  // type's __sizeof__ is another is sized by estimate (python/objects.h, TypeFacts::exact).
  std::map<uint64_t, std::string> sizeof_owners;
  // PyLong_FromSsize_t in the process: where another C __sizeof__ ends (python/sizeof_code.h,
  // analyse_buffered_sizeof); 0 when not found (such types are then sized by estimate).
  uint64_t long_from_ssize_address = 0;
};

// The creation sites of an interpreter's file (python/creation_sites.h), as `file` links them.
// Refused (sites empty, refusal set) when a symbol the scan needs is missing.
CreationScan scan_interpreter(const inspect::ElfFile& file);

// libc's _exit in `file` (opened through it), as an Interpreter::exit_function; nullopt when
// the file does not define it or cannot be read.
std::optional<Interpreter::ExitFunction> exit_function_in(const inspect::ProcessFile& file);

// The CPython interpreter `pid` runs, from its mappings (files opened through them:
// inspect/process_file.h); nullopt when it maps none. Throws nothing.
std::optional<Interpreter> find_interpreter(uint32_t pid,
                                            const std::vector<inspect::Mapping>& mappings);

// The line of the instruction at `lasti` (in code units) in a code object whose co_linetable
// (CPython 3.11's location table) is `table` and co_firstlineno `first_line`; nullopt for an
// instruction without a line (or past the table).
std::optional<uint32_t> line_of(std::string_view table, int first_line, uint32_t lasti);

// Names the code objects of live processes by reading their memory (process_vm_readv), and
// remembers what it read: a code object lives as long as its function, and a site's frames
// are named once, while the process runs. Code objects die and others take their addresses
// (a module's <module> code after its import, exec'd code): what was read is remembered by
// code address and module dict (f_globals), so that another module's code at a reused address
// is read again, not named after the code that lay there before.
class CodeReader {
 public:
  // A frame for `frame` of process `pid`: module "[python]", function the qualified name, file
  // and line. The function is "<unreadable code object>" when the memory cannot be read, and
  // kGoneCode when what lies there now cannot be the code that ran: not a code object, or one
  // too short for the frame's last instruction (the code was freed before it was named).
  model::Frame frame(uint32_t pid, const Interpreter& interpreter, const model::PythonFrame& frame);
  void forget(uint32_t pid);

  static constexpr const char* kGoneCode = "<code object gone>";

 private:
  struct Code {
    bool gone = false;  // another object lies there now
    std::string qualname, filename, linetable;
    int first_line = 0;
    uint64_t units = 0;  // its bytecode's length in code units (ob_size)
  };
  std::optional<Code> read_code(uint32_t pid, const Interpreter& interpreter, uint64_t address);
  // By (pid, code address, f_globals).
  std::map<std::tuple<uint32_t, uint64_t, uint64_t>, std::optional<Code>> codes_;
};

// CPython objects by type over the run (--python-types), from the kernel's counts at each
// interval: names the types (read from the live process once), and keeps each one's outstanding
// objects over time for its growth.
class TypeTracker {
 public:
  void record(double t_s, const std::vector<model::Snapshot::PythonTypeCounts>& counts,
              const std::unordered_map<uint32_t, Interpreter>& interpreters);
  // Every type seen, fastest growing first (then most objects).
  std::vector<model::PythonType> report() const;

 private:
  struct TypeInfo {
    std::string name;
    int64_t basic_size = 0, item_size = 0, pre_header = 0;
  };
  struct Tracked {
    TypeInfo info;
    model::Snapshot::PythonTypeCounts last;
    std::vector<std::pair<double, double>> series;  // (t_s, outstanding objects)
  };
  std::map<std::pair<uint32_t, uint64_t>, Tracked> types_;
};

// The stack of a site as --python-frames shows it. `native` is symbolized, innermost first;
// `python` the Python frames, innermost first, with `entries` saying which begin an eval-loop
// call. Mixed: each native frame of the eval loop (_PyEval_EvalFrameDefault) gives way to the
// Python frames it ran (up to its entry frame); the interpreter's other frames outside the
// innermost C code (calls, vectorcall plumbing, its main) are left out; frames of other modules
// (extensions, libffi, libc) stay. Python frames the native walk did not reach go last.
std::vector<model::Frame> mix_frames(const std::vector<model::Frame>& native,
                                     const std::vector<model::Frame>& python,
                                     const std::vector<bool>& entries,
                                     const std::string& interpreter_module, FramesMode mode);

}  // namespace memtrail::python
