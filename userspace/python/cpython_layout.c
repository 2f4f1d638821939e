/* SPDX-License-Identifier: Apache-2.0 */
/* Compiled against the CPython headers CMake found (MEMTRAIL_CPYTHON_INCLUDE_DIR), with
 * Py_BUILD_CORE for the interpreter's internal structs: every offset memtrail uses to read a
 * CPython process comes from here. */
#define Py_BUILD_CORE 1
#include "cpython_layout.h"

#include <Python.h>
#include <internal/pycore_dict.h>
#include <internal/pycore_frame.h>
#include <internal/pycore_interp.h>
#include <internal/pycore_pymem.h>
#include <internal/pycore_runtime.h>
#include <stddef.h>
#include <string.h>

#if PY_MAJOR_VERSION != 3 || PY_MINOR_VERSION != 11
#error \
    "memtrail's Python frame walker knows CPython 3.11's frame chain; point MEMTRAIL_CPYTHON_INCLUDE_DIR at CPython 3.11 headers"
#endif

/* The position of the one bit set in a 32-bit word (state bit fields are compiler-laid). */
static unsigned bit_index(unsigned word) {
  unsigned index = 0;

  while (index < 32 && !(word & (1u << index))) index++;
  return index;
}

static unsigned state_word(const PyASCIIObject *object) {
  unsigned word;

  memcpy(&word, (const char *)object + offsetof(PyASCIIObject, state), sizeof(word));
  return word;
}

void memtrail_cpython_describe(struct memtrail_cpython_layout *layout) {
  PyASCIIObject probe;
  unsigned kind_mask;

  memset(layout, 0, sizeof(*layout));
  layout->major = PY_MAJOR_VERSION;
  layout->minor = PY_MINOR_VERSION;
  layout->version = PY_VERSION;

  layout->walker.runtime_tstate_current = offsetof(_PyRuntimeState, gilstate.tstate_current);
  layout->walker.runtime_interp_main = offsetof(_PyRuntimeState, interpreters.main);
  layout->walker.interp_threads_head = offsetof(PyInterpreterState, threads.head);
  layout->walker.tstate_next = offsetof(PyThreadState, next);
  layout->walker.tstate_thread_id = offsetof(PyThreadState, thread_id);
  layout->walker.tstate_cframe = offsetof(PyThreadState, cframe);
  layout->walker.cframe_current_frame = offsetof(_PyCFrame, current_frame);
  layout->walker.frame_code = offsetof(_PyInterpreterFrame, f_code);
  layout->walker.frame_previous = offsetof(_PyInterpreterFrame, previous);
  layout->walker.frame_prev_instr = offsetof(_PyInterpreterFrame, prev_instr);
  layout->walker.frame_is_entry = offsetof(_PyInterpreterFrame, is_entry);
  layout->walker.frame_owner = offsetof(_PyInterpreterFrame, owner);
  layout->walker.code_adaptive = offsetof(PyCodeObject, co_code_adaptive);
  layout->walker.owner_cstack = 255; /* 3.11 pushes no C-stack shim frames */
  layout->walker.tstate_datastack_chunk = offsetof(PyThreadState, datastack_chunk);
  layout->walker.tstate_datastack_limit = offsetof(PyThreadState, datastack_limit);
  layout->walker.frame_globals = offsetof(_PyInterpreterFrame, f_globals);

  layout->object_type = offsetof(PyObject, ob_type);
  layout->code_filename = offsetof(PyCodeObject, co_filename);
  layout->code_qualname = offsetof(PyCodeObject, co_qualname);
  layout->code_linetable = offsetof(PyCodeObject, co_linetable);
  layout->code_firstlineno = offsetof(PyCodeObject, co_firstlineno);
  layout->code_size = offsetof(PyCodeObject, co_code_adaptive);
  layout->var_size = offsetof(PyVarObject, ob_size);
  layout->bytes_data = offsetof(PyBytesObject, ob_sval);
  layout->unicode_length = offsetof(PyASCIIObject, length);
  layout->unicode_state = offsetof(PyASCIIObject, state);
  layout->ascii_data = sizeof(PyASCIIObject);
  layout->compact_data = sizeof(PyCompactUnicodeObject);

  layout->types.type_flags = offsetof(PyTypeObject, tp_flags);
  layout->types.have_gc = Py_TPFLAGS_HAVE_GC;
  layout->type_name = offsetof(PyTypeObject, tp_name);
  layout->type_basicsize = offsetof(PyTypeObject, tp_basicsize);
  layout->type_itemsize = offsetof(PyTypeObject, tp_itemsize);
  layout->managed_dict = Py_TPFLAGS_MANAGED_DICT;
  layout->gc_header_size = sizeof(PyGC_Head);
  layout->tracemalloc_tracing = offsetof(struct _PyTraceMalloc_Config, tracing);

  layout->dict_subclass = Py_TPFLAGS_DICT_SUBCLASS;
  layout->list_subclass = Py_TPFLAGS_LIST_SUBCLASS;
  layout->long_subclass = Py_TPFLAGS_LONG_SUBCLASS;
  layout->heap_type = Py_TPFLAGS_HEAPTYPE;
  layout->long_digits = offsetof(PyLongObject, ob_digit);
  layout->digit_size = sizeof(digit);
  layout->dict_keys = offsetof(PyDictObject, ma_keys);
  layout->dict_values = offsetof(PyDictObject, ma_values);
  layout->dict_version = offsetof(PyDictObject, ma_version_tag);
  /* ob_shash, just before ob_sval (named, it warns: deprecated in 3.11) */
  layout->bytes_hash = offsetof(PyBytesObject, ob_sval) - sizeof(Py_hash_t);
  layout->keys_refcnt = offsetof(PyDictKeysObject, dk_refcnt);
  layout->keys_log2_size = offsetof(PyDictKeysObject, dk_log2_size);
  layout->keys_log2_index_bytes = offsetof(PyDictKeysObject, dk_log2_index_bytes);
  layout->keys_kind = offsetof(PyDictKeysObject, dk_kind);
  layout->keys_usable = offsetof(PyDictKeysObject, dk_usable);
  layout->keys_nentries = offsetof(PyDictKeysObject, dk_nentries);
  layout->keys_size = sizeof(PyDictKeysObject);
  layout->keys_general = DICT_KEYS_GENERAL;
  layout->key_entry_size = sizeof(PyDictKeyEntry);
  layout->unicode_entry_size = sizeof(PyDictUnicodeEntry);
  layout->list_allocated = offsetof(PyListObject, allocated);
  layout->set_mask = offsetof(PySetObject, mask);
  layout->set_min_size = PySet_MINSIZE;
  layout->set_entry_size = sizeof(setentry);
  layout->bytearray_alloc = offsetof(PyByteArrayObject, ob_alloc);
  layout->dict_used = offsetof(PyDictObject, ma_used);
  layout->dict_size = sizeof(PyDictObject);
  layout->type_methods = offsetof(PyTypeObject, tp_methods);
  layout->type_base = offsetof(PyTypeObject, tp_base);
  layout->type_mro = offsetof(PyTypeObject, tp_mro);
  layout->type_dict = offsetof(PyTypeObject, tp_dict);
  layout->tuple_items = offsetof(PyTupleObject, ob_item);
  layout->keys_indices = offsetof(PyDictKeysObject, dk_indices);
  layout->key_entry_key = offsetof(PyDictKeyEntry, me_key);
  layout->unicode_entry_key = offsetof(PyDictUnicodeEntry, me_key);
  layout->method_def_size = sizeof(PyMethodDef);
  layout->method_name = offsetof(PyMethodDef, ml_name);
  layout->method_function = offsetof(PyMethodDef, ml_meth);
  layout->unicode_wstr = offsetof(PyASCIIObject, wstr);
  layout->compact_utf8_length = offsetof(PyCompactUnicodeObject, utf8_length);
  layout->compact_utf8 = offsetof(PyCompactUnicodeObject, utf8);
  layout->compact_wstr_length = offsetof(PyCompactUnicodeObject, wstr_length);
  layout->wchar_size = sizeof(wchar_t);
  layout->unicode_object_data = offsetof(PyUnicodeObject, data);
  layout->unicode_object_size = sizeof(PyUnicodeObject);
  layout->unicode_subclass = Py_TPFLAGS_UNICODE_SUBCLASS;

  memset(&probe, 0, sizeof(probe));
  probe.state.kind = 7;
  kind_mask = state_word(&probe);
  layout->state_kind_shift = bit_index(kind_mask);
  layout->state_kind_bits = 3;
  memset(&probe, 0, sizeof(probe));
  probe.state.compact = 1;
  layout->state_compact_bit = bit_index(state_word(&probe));
  memset(&probe, 0, sizeof(probe));
  probe.state.ascii = 1;
  layout->state_ascii_bit = bit_index(state_word(&probe));
  memset(&probe, 0, sizeof(probe));
  probe.state.ready = 1;
  layout->state_ready_bit = bit_index(state_word(&probe));
}
