// SPDX-License-Identifier: Apache-2.0
// What sys.getsizeof adds for types whose struct CPython keeps private to a C file
// (OrderedDict), read from the machine code of their own __sizeof__: no header gives it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "inspect/elf_file.h"

namespace memtrail::python {

// CPython 3.11's odict_sizeof: _PyDict_SizeOf(od) + od_fast_nodes_size * sizeof(_ODictNode *)
// + (od_first ? ma_used * sizeof(_ODictNode) : 0). The offsets of the private fields and the
// two sizes, as the interpreter's own code has them.
struct OrderedDictSizing {
  unsigned first = 0;            // od_first: the list of nodes counts only when it is not NULL
  unsigned fast_nodes_size = 0;  // od_fast_nodes_size: slots of its fast-nodes array
  unsigned fast_node_bytes = 0;  // bytes per slot: sizeof(_ODictNode *)
  unsigned node_bytes = 0;       // sizeof(_ODictNode): one block per item (ma_used)
};

struct OrderedDictScan {
  std::optional<OrderedDictSizing> sizing;
  std::string refusal;  // why not, when not
};

// Follows the code of OrderedDict's __sizeof__ (`code`, loaded at `address`) as a small
// symbolic run: values are sums of constants times the dict's size (what a call of
// _PyDict_SizeOf with the object returns) or a field of the object, some only when another
// field is not 0; it ends at the call of PyLong_FromSsize_t, whose argument is the size.
// `function_at` names the function a call or jump goes to ("" when unknown). `dict_used` and
// `dict_size` are offsetof(PyDictObject, ma_used) and sizeof(PyDictObject) from the headers.
// Refuses (sizing empty, refusal set) on any instruction it does not follow, a call of
// anything else, or a result of another shape: code built differently is not guessed at.
// Pure: no I/O.
OrderedDictScan analyse_ordered_dict_sizeof(std::span<const uint8_t> code, uint64_t address,
                                            const std::function<std::string(uint64_t)>& function_at,
                                            unsigned dict_used, unsigned dict_size);

// What the C __sizeof__ of a type memtrail sizes by its basic size adds, read from its code:
// CPython 3.11's deque_sizeof is _PyObject_SIZE(Py_TYPE(deque)) + blocks * sizeof(block),
// blocks being (leftindex + Py_SIZE(deque) + BLOCKLEN - 1) / BLOCKLEN.
struct BufferedSizeofScan {
  // It returns the basic size plus counts of units each over pymalloc's largest block: memory
  // in buffers over 512 bytes, which malloc serves and memtrail counts at malloc's sites, so the
  // object's own block is exactly what it charges (python/objects.h, ObjectSize::charged).
  bool exact = false;
  uint64_t unit_bytes = 0;  // the smallest such unit (a deque's block: 528 bytes)
  std::string refusal;      // why not, when not
};

// Follows `code` (loaded at `address`) as analyse_ordered_dict_sizeof does, also through a
// read of the object's type (`object_type`: offsetof(PyObject, ob_type)) and of its basic size
// (`type_basicsize`: offsetof(PyTypeObject, tp_basicsize)), an unsigned division by a power of
// two (a count, not followed further) and additions of fields. Exact only for the basic size
// (read, or the constant `basic_size`) once and every other term a count times more than
// `pymalloc_largest` bytes; refused on anything else. Pure: no I/O.
BufferedSizeofScan analyse_buffered_sizeof(std::span<const uint8_t> code, uint64_t address,
                                           const std::function<std::string(uint64_t)>& function_at,
                                           unsigned object_type, unsigned type_basicsize,
                                           int64_t basic_size, uint64_t pymalloc_largest);

// Reads `length` bytes at `address` (an interpreter's file, or a live process): fewer when it
// cannot.
using MemoryReader = std::function<std::vector<uint8_t>(uint64_t address, size_t length)>;

// The function a method table (tp_methods: PyMethodDef entries up to a NULL name) names for
// "__sizeof__"; 0 when it has none, or the table cannot be read.
uint64_t sizeof_method(uint64_t methods, const MemoryReader& read);

// The same for an interpreter's file: its PyODict_Type's __sizeof__ found through the type's
// method table (tp_methods, as the file stores it), then analysed. Refused when a symbol, the
// method or its code is not found.
OrderedDictScan scan_ordered_dict(const inspect::ElfFile& file);

}  // namespace memtrail::python
