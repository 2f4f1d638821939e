// SPDX-License-Identifier: Apache-2.0
// CPython as the tracer sees it: the offsets its walker reads, the frames it records and the
// object calls it counts. Plain data; the tracer turns it into (and out of) BPF's encoding.
#pragma once

#include <cstdint>
#include <span>

namespace memtrail::model {

// Where each field lies, as the CPython headers memtrail was built with say (python/): what the
// Python frame walker reads (--python-frames).
struct PythonFrameLayout {
  uint32_t runtime_tstate_current = 0;  // _PyRuntimeState.gilstate.tstate_current
  uint32_t runtime_interp_main = 0;     // _PyRuntimeState.interpreters.main
  uint32_t interp_threads_head = 0;     // PyInterpreterState.threads.head
  uint32_t tstate_next = 0;             // PyThreadState.next
  uint32_t tstate_thread_id = 0;        // PyThreadState.thread_id: pthread_self()
  uint32_t tstate_cframe = 0;           // PyThreadState.cframe
  uint32_t cframe_current_frame = 0;    // _PyCFrame.current_frame
  uint32_t frame_code = 0;              // _PyInterpreterFrame.f_code
  uint32_t frame_previous = 0;          // _PyInterpreterFrame.previous
  uint32_t frame_prev_instr = 0;        // _PyInterpreterFrame.prev_instr
  uint32_t frame_is_entry = 0;          // _PyInterpreterFrame.is_entry: first frame of an eval loop
  uint32_t frame_owner = 0;             // _PyInterpreterFrame.owner
  uint32_t code_adaptive = 0;           // PyCodeObject.co_code_adaptive: the first instruction
  uint32_t owner_cstack = 0;            // owner of a C-stack shim frame (none in 3.11: 255)
  uint32_t tstate_datastack_chunk = 0;  // PyThreadState.datastack_chunk: the frames' chunk
  uint32_t tstate_datastack_limit = 0;  // PyThreadState.datastack_limit: that chunk's end
  uint32_t frame_globals = 0;           // _PyInterpreterFrame.f_globals: the module's dict
};

// Where the object counters (--python-types) read a type's flags (PyTypeObject.tp_flags), and
// the flag of the types the garbage collector tracks.
struct PythonTypeLayout {
  uint32_t type_flags = 0;
  uint64_t have_gc = 0;  // Py_TPFLAGS_HAVE_GC
};

// The CPython function an object-making probe of --python-types sits on.
enum class PythonObjectCall : uint8_t {
  kGenericAlloc,  // PyType_GenericAlloc(type, nitems): GC types only
  kGcNew,         // _PyObject_GC_New(type)
  kGcNewVar,      // _PyObject_GC_NewVar(type, nitems)
};

// The walker's last instruction index saturates there: only below it is it exact.
inline constexpr uint32_t kPythonLastiSaturated = 0x7fff;

// One Python frame as the walker recorded it.
struct PythonFrame {
  uint64_t code = 0;   // the code object's address in the process
  uint32_t lasti = 0;  // its last instruction, in code units (saturated: kPythonLastiSaturated)
  bool entry = false;  // the first frame of an eval-loop call
  // The frame's f_globals, its module's dict: a code object freed and another made at its
  // address (a module's <module> code after its import, exec'd code) is told apart by it.
  uint64_t globals = 0;
};

// What identifies one CPython object among those of its type that take the same address in
// turn (python/objects.h, object_identity).
enum class ObjectIdentity : uint8_t {
  kNone,     // nothing known: a list, a class instance, a set (mutable, no version); or an
             // immutable object not complete yet (a tuple with an empty item)
  kContent,  // a digest of an immutable object's content (str, bytes, int, float, tuple): a
             // different digest is a different object
  kVersion,  // a dict's version tag: the same tag is the same dict; another is a change to it
             // or another dict, which cannot be told apart
};

// An object's content is read as its identity only once its creator is done filling it. The
// object probe fires at _Py_NewReference, before that: PyUnicode_New returns a str whose
// characters its caller writes next, PyTuple_New a tuple whose items its caller sets (an empty
// item says so: python::object_identity gives kNone), a bytes or an int is filled the same way.
// A str read half-written carries a digest its finished content does not match, and once the
// probes have been detached in between, that mismatch is taken for another object at the
// address (the record removed as replaced): a live object lost. Filling takes microseconds (a
// memcpy of characters the C function has at hand); kIdentitySettleNs leaves room for the
// creating thread being preempted in between for a scheduler slice (EEVDF's default base slice:
// 0.75 ms times 1 + log2 of the CPUs, up to 8: 0.75-3 ms, 1.5 ms on 2 CPUs). An object younger
// than that at its read gets kNone: not proved, counted at risk if a detached time follows,
// never removed; its content is taken at a later read. Not a bound: content written while
// Python code runs (a str built piece by piece by a formatter calling __format__) can take
// longer.
inline constexpr uint64_t kIdentitySettleNs = 2'000'000;
// The identity `kind` read for an object created at `created_ns`, with the reads of its
// memory begun at `reads_began_ns` (CLOCK_MONOTONIC both; the reads of a batch take up to tens
// of milliseconds, so a time taken after them would age it by as much): kNone while it is
// younger than kIdentitySettleNs at the reads' start.
inline ObjectIdentity settled_identity(ObjectIdentity kind, uint64_t created_ns,
                                       uint64_t reads_began_ns) {
  // A creation time after the reads began (the object was made while they ran) is younger.
  if (reads_began_ns < created_ns || reads_began_ns - created_ns < kIdentitySettleNs) {
    return ObjectIdentity::kNone;
  }
  return kind;
}

// A CPython object recorded at its creation, as the liveness read judges it (no probe sees an
// object die: the tracer asks a judge every interval).
struct TrackedPythonObject {
  uint32_t pid = 0;
  uint64_t address = 0;
  uint64_t type = 0;      // its PyTypeObject, as recorded at creation
  bool alive = false;     // judged: refcount in [1, 2^32) and still of that type
  uint64_t size = 0;      // judged: sys.getsizeof's figure
  bool pymalloc = false;  // judged: its memory came from pymalloc (512 bytes or less); larger
                          // objects are malloc'd blocks, counted on the malloc path
  // judged: its block starts at the object (no GC header or other pre-header before it): a
  // malloc'd block's record in the table is then this object's creation record.
  bool block_at_object = false;
  bool gone = false;  // its process's memory is gone (it exited): not judged, not dead
  // judged, for live objects: what tells this object from another of its type created later at
  // the same address (while the object probes were detached, no creation is seen):
  ObjectIdentity identity_kind = ObjectIdentity::kNone;
  uint64_t identity = 0;
};

class PythonObjectJudge {
 public:
  virtual ~PythonObjectJudge() = default;
  // Sets alive, size and pymalloc of each object (sorted by pid) from the process's memory.
  virtual void judge(std::span<TrackedPythonObject> objects) = 0;
};

}  // namespace memtrail::model
