/* SPDX-License-Identifier: Apache-2.0 */
/* The layout of the CPython memtrail was built against, taken from that CPython's own headers
 * (internal ones included) by cpython_layout.c: offsets are never guessed. Plain C, because
 * CPython's internal headers are C. */
#ifndef MEMTRAIL_CPYTHON_LAYOUT_H
#define MEMTRAIL_CPYTHON_LAYOUT_H

#ifdef __cplusplus
extern "C" {
#endif

/* What the Python frame walker reads (--python-frames): python/cpython.cpp hands it to the
 * tracer as a model::PythonFrameLayout, field for field. */
struct memtrail_cpython_walker_offsets {
  unsigned runtime_tstate_current; /* _PyRuntimeState.gilstate.tstate_current */
  unsigned runtime_interp_main;    /* _PyRuntimeState.interpreters.main */
  unsigned interp_threads_head;    /* PyInterpreterState.threads.head */
  unsigned tstate_next;            /* PyThreadState.next */
  unsigned tstate_thread_id;       /* PyThreadState.thread_id: pthread_self() */
  unsigned tstate_cframe;          /* PyThreadState.cframe */
  unsigned cframe_current_frame;   /* _PyCFrame.current_frame */
  unsigned frame_code;             /* _PyInterpreterFrame.f_code */
  unsigned frame_previous;         /* _PyInterpreterFrame.previous */
  unsigned frame_prev_instr;       /* _PyInterpreterFrame.prev_instr */
  unsigned frame_is_entry;         /* _PyInterpreterFrame.is_entry */
  unsigned frame_owner;            /* _PyInterpreterFrame.owner */
  unsigned code_adaptive;          /* PyCodeObject.co_code_adaptive */
  unsigned owner_cstack;           /* owner of a C-stack shim frame (none in 3.11: 255) */
  unsigned tstate_datastack_chunk; /* PyThreadState.datastack_chunk: the frames' chunk */
  unsigned tstate_datastack_limit; /* PyThreadState.datastack_limit: that chunk's end */
  unsigned frame_globals;          /* _PyInterpreterFrame.f_globals: the module's dict */
};

/* What the object counters read of a type (--python-types): a model::PythonTypeLayout. */
struct memtrail_cpython_type_offsets {
  unsigned type_flags;   /* PyTypeObject.tp_flags */
  unsigned long have_gc; /* Py_TPFLAGS_HAVE_GC */
};

struct memtrail_cpython_layout {
  unsigned major, minor; /* the CPython version of the headers: only it is walked */
  const char *version;   /* PY_VERSION of the headers, e.g. "3.11.2" */
  struct memtrail_cpython_walker_offsets walker; /* what the BPF walker reads */
  /* What userspace reads of code objects to name a frame. */
  unsigned object_type;      /* PyObject.ob_type */
  unsigned code_filename;    /* PyCodeObject.co_filename (str) */
  unsigned code_qualname;    /* PyCodeObject.co_qualname (str) */
  unsigned code_linetable;   /* PyCodeObject.co_linetable (bytes) */
  unsigned code_firstlineno; /* PyCodeObject.co_firstlineno (int) */
  unsigned code_size;        /* offsetof co_code_adaptive: the fixed part read at once */
  unsigned var_size;         /* PyVarObject.ob_size */
  unsigned bytes_data;       /* PyBytesObject.ob_sval */
  unsigned unicode_length;   /* PyASCIIObject.length (code points) */
  unsigned unicode_state;    /* PyASCIIObject.state (a 32-bit word of bit fields) */
  unsigned ascii_data;       /* sizeof(PyASCIIObject): a compact ASCII string's characters */
  unsigned compact_data;     /* sizeof(PyCompactUnicodeObject): other compact strings' */
  unsigned state_kind_shift, state_kind_bits; /* PyASCIIObject.state.kind: 1, 2 or 4 bytes */
  unsigned state_compact_bit, state_ascii_bit, state_ready_bit;
  /* A str's caches, which sys.getsizeof counts where they have memory of their own (3.11's
   * unicode_sizeof): the wchar_t copy (PyASCIIObject.wstr, any str) and, past a compact
   * non-ASCII str's PyASCIIObject, the UTF-8 copy and the wchar_t copy's length. */
  unsigned unicode_wstr;        /* PyASCIIObject.wstr */
  unsigned compact_utf8_length; /* PyCompactUnicodeObject.utf8_length (bytes, without NUL) */
  unsigned compact_utf8;        /* PyCompactUnicodeObject.utf8 */
  unsigned compact_wstr_length; /* PyCompactUnicodeObject.wstr_length (wchar_t units) */
  unsigned wchar_size;          /* sizeof(wchar_t) */
  /* A str that is not compact (a str subclass's instance; the legacy API's): its characters
   * in a block of their own. */
  unsigned unicode_object_data;   /* PyUnicodeObject.data */
  unsigned unicode_object_size;   /* sizeof(PyUnicodeObject) */
  unsigned long unicode_subclass; /* Py_TPFLAGS_UNICODE_SUBCLASS */
  /* Types (--python-types): their name, sizes and flags. */
  struct memtrail_cpython_type_offsets types; /* what the BPF programs read */
  unsigned type_name;                         /* PyTypeObject.tp_name (const char *) */
  unsigned type_basicsize;                    /* PyTypeObject.tp_basicsize */
  unsigned type_itemsize;                     /* PyTypeObject.tp_itemsize */
  unsigned long managed_dict; /* Py_TPFLAGS_MANAGED_DICT: two pointers before the GC header */
  unsigned gc_header_size;    /* sizeof(PyGC_Head), before every GC object */
  /* sys.getsizeof of the containers whose __sizeof__ adds a buffer of their own (python/objects.h):
   * dict (and subclasses: Py_TPFLAGS_DICT_SUBCLASS), list (Py_TPFLAGS_LIST_SUBCLASS), set and
   * frozenset, bytearray. */
  unsigned long dict_subclass, list_subclass;
  /* int and its subclasses (Py_TPFLAGS_LONG_SUBCLASS): int.__sizeof__ counts the digits after
   * PyLongObject's header, not a subclass's basic size (its __dict__ and weakref slots). */
  unsigned long long_subclass;
  unsigned long heap_type; /* Py_TPFLAGS_HEAPTYPE: a class (made at run time) */
  unsigned long_digits;    /* offsetof(PyLongObject, ob_digit) */
  unsigned digit_size;     /* sizeof(digit) */
  unsigned dict_keys;      /* PyDictObject.ma_keys */
  unsigned dict_values;    /* PyDictObject.ma_values: a split table's values */
  /* PyDictObject.ma_version_tag: every dict created, and every change to one, takes the next
   * value of one interpreter-wide counter, so an unchanged tag is the same dict. */
  unsigned dict_version;
  unsigned bytes_hash;     /* PyBytesObject.ob_shash: a cache (-1 until hashed), not content */
  unsigned keys_refcnt;    /* PyDictKeysObject.dk_refcnt: 1 when the dict owns its keys */
  unsigned keys_log2_size; /* .dk_log2_size */
  unsigned keys_log2_index_bytes; /* .dk_log2_index_bytes */
  unsigned keys_kind;             /* .dk_kind */
  unsigned keys_usable;           /* .dk_usable */
  unsigned keys_nentries;         /* .dk_nentries */
  unsigned keys_size;             /* sizeof(PyDictKeysObject), before its indices */
  unsigned keys_general;          /* DICT_KEYS_GENERAL: entries are PyDictKeyEntry */
  unsigned key_entry_size;        /* sizeof(PyDictKeyEntry) */
  unsigned unicode_entry_size;    /* sizeof(PyDictUnicodeEntry) */
  unsigned list_allocated;        /* PyListObject.allocated */
  unsigned set_mask;              /* PySetObject.mask: table size - 1 */
  unsigned set_min_size;          /* PySet_MINSIZE: the table inside the object */
  unsigned set_entry_size;        /* sizeof(setentry) */
  unsigned bytearray_alloc;       /* PyByteArrayObject.ob_alloc */
  unsigned dict_used;             /* PyDictObject.ma_used: its items */
  unsigned dict_size;             /* sizeof(PyDictObject): where a subclass's fields begin */
  /* A type's methods (PyTypeObject.tp_methods, an array of PyMethodDef ending in a NULL
   * name): where the private layouts of OrderedDict are read from its __sizeof__'s code
   * (python/sizeof_code.h). */
  unsigned type_methods;
  unsigned type_base;         /* PyTypeObject.tp_base: is a type OrderedDict or a subclass */
  unsigned type_mro;          /* PyTypeObject.tp_mro: the tuple sys.getsizeof's lookup follows */
  unsigned type_dict;         /* PyTypeObject.tp_dict: a class's own attributes */
  unsigned tuple_items;       /* PyTupleObject.ob_item */
  unsigned keys_indices;      /* PyDictKeysObject.dk_indices: its entries follow them */
  unsigned key_entry_key;     /* PyDictKeyEntry.me_key */
  unsigned unicode_entry_key; /* PyDictUnicodeEntry.me_key */
  unsigned method_def_size;   /* sizeof(PyMethodDef) */
  unsigned method_name;       /* PyMethodDef.ml_name */
  unsigned method_function;   /* PyMethodDef.ml_meth */
  /* The creation-site scan (python/creation_sites.h): _PyTraceMalloc_Config.tracing, the flag
   * every _Py_NewReference checks. */
  unsigned tracemalloc_tracing;
};

/* Fills `layout` from the headers compiled in. */
void memtrail_cpython_describe(struct memtrail_cpython_layout *layout);

#ifdef __cplusplus
}
#endif

#endif
