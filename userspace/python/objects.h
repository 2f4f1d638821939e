// SPDX-License-Identifier: Apache-2.0
// The liveness read of CPython objects recorded at their creation: which still live, and their
// sizes as sys.getsizeof counts them, read from the processes' memory (process_vm_readv).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/python.h"
#include "python/cpython.h"
#include "python/sizeof_code.h"

namespace memtrail::python {

// How sys.getsizeof sizes an object of a type: its basic and item sizes (object.__sizeof__),
// or, for the common types whose __sizeof__ adds a buffer of their own, from their fields.
enum class Sizing : uint8_t {
  kBasic,        // tp_basicsize + |ob_size| * tp_itemsize (float, tuple, bytes, instances)
  kStr,          // str and its subclasses: header, characters, UTF-8 and wchar_t caches
  kDict,         // dict and its subclasses: the keys table it owns, a split table's values
  kOrderedDict,  // OrderedDict and its subclasses: a dict's, its nodes and fast-nodes array
  kList,         // list and its subclasses: the item array (allocated, not ob_size)
  kSet,          // set, frozenset: the hash table when it is not the one inside the object
  kByteArray,    // bytearray: ob_alloc bytes
  kInt,          // int and its subclasses: PyLongObject's header and digits, not a subclass's slots
};

// What tells one object of a type from another made later at the same address (with the
// object probes detached, a new object there is not seen): model::ObjectIdentity.
enum class IdentityBy : uint8_t {
  kNothing,  // mutable and unversioned: lists, class instances, sets, subclasses of the below
  kStr,      // exact str: its length, kind and characters (not its hash or UTF-8 caches)
  kBytes,    // exact bytes: its size and bytes (not its cached hash)
  kFields,   // exact int, float, tuple: every byte past the type (size, digits, value, items)
  kVersion,  // dict and its subclasses: ma_version_tag
};

// What an object's size needs of its type, read once per (process, type).
struct TypeFacts {
  std::string name;
  int64_t basic_size = 0, item_size = 0;
  uint64_t flags = 0;
  Sizing sizing = Sizing::kBasic;
  IdentityBy identity = IdentityBy::kNothing;
  bool tuple = false;       // its items must all be set before its content identifies it
  OrderedDictSizing odict;  // kOrderedDict: what its __sizeof__ adds (python/sizeof_code.h)
  // Its __sizeof__ (the first along its MRO: in a class's own dict, or a C method table) is
  // the one `sizing` computes as it does: its objects' sizes are sys.getsizeof's. Else they
  // are estimates: its basic and item sizes, for a type whose __sizeof__ adds memory memtrail
  // does not read (array.array, a class defining __sizeof__ in Python). Another C __sizeof__
  // is exact when its code, read from the process, adds to the basic size only buffers over
  // 512 bytes, which malloc serves and memtrail counts at malloc's sites (a deque's blocks:
  // python/sizeof_code.h, analyse_buffered_sizeof).
  bool exact = true;
  // Why its C __sizeof__'s code was not found to be so, when it was read (empty otherwise).
  std::string estimate_reason;
};

// Does `owner`'s __sizeof__ (a type Interpreter::sizeof_owners names) compute what `sizing`
// does?
bool sizeof_matches(const std::string& owner, Sizing sizing);

// The bytes of an object read at once: refcount, type, ob_size (or a str's length), a str's
// hash and state; a list's allocated, a set's mask, a dict's keys pointer, a bytearray's
// ob_alloc.
inline constexpr size_t kObjectHeaderBytes = 40;
// A str's header read at once: on to its caches' pointers and lengths (3.11's
// PyCompactUnicodeObject, built_layout().compact_data). Every str is that long but a short ASCII
// one, whose PyASCIIObject (ascii_data) is all its header.
inline constexpr size_t kStrHeaderBytes = 72;
// A str that is not compact (a str subclass's instance): its header is PyUnicodeObject
// (built_layout().unicode_object_size), read in a second pass.
inline constexpr size_t kUnicodeObjectBytes = 80;
// How far apart the headers read lie in the reads' buffer: the longest header read first.
inline constexpr size_t kObjectReadBytes = kStrHeaderBytes;

// What a dict's size needs beyond its header: whether its table is split (ma_values), and its
// keys object's header (PyDictKeysObject), read in a second pass.
struct DictTable {
  bool split = false;
  int64_t keys_refcount = 0;
  uint8_t log2_size = 0, log2_index_bytes = 0, kind = 0;
  int64_t usable = 0, entries = 0;
  // An OrderedDict's (Sizing::kOrderedDict): is its list of nodes started (od_first), and
  // the slots of its fast-nodes array (od_fast_nodes_size).
  bool odict_nodes = false;
  int64_t odict_fast_nodes = 0;
};
// The bytes of a dict's keys object read for it.
inline constexpr size_t kDictKeysHeaderBytes = 32;

// The object's figures from its header and type: sys.getsizeof's size (with the GC header and
// a managed dict's pre-header), whether the object's own block is pymalloc's (512 bytes or
// less; larger ones are malloc'd blocks on the malloc path), and how many of those bytes are in
// separate buffers over 512 bytes (a large dict's keys table, a long list's item array): malloc
// serves those, so they are counted at malloc's sites, not again with the object. `dict` is the
// dict's table (nullptr: not read; its keys and values then count for nothing). nullopt for a
// str that is not compact (a subclass's instance) whose header is shorter than
// kUnicodeObjectBytes. `address`: the object's (a str's caches may be its characters).
struct ObjectSize {
  uint64_t size = 0;
  bool pymalloc = false;
  uint64_t malloc_bytes = 0;
  uint64_t charged() const { return size - malloc_bytes; }  // what the object's site holds
};
std::optional<ObjectSize> object_size(const TypeFacts& type, uint64_t address,
                                      std::span<const uint8_t> header,
                                      const DictTable* dict = nullptr);

// The bytes from the object's address that its identity reads (IdentityBy kStr, kBytes,
// kFields), from its header: 0 when its type has no content identity or the header is not sane.
// At most the object itself (pymalloc's objects: 512 bytes or less).
size_t identity_bytes(const TypeFacts& type, std::span<const uint8_t> header);
// The object's identity from `object` (identity_bytes() of it, from its address; for kVersion,
// its header): kNone when its type has none or it is not complete yet (a tuple with an empty
// item, just created and still being filled). A 64-bit digest of the content: two objects of
// equal content have the same (such a reuse cannot be seen; see README "Python objects").
std::pair<model::ObjectIdentity, uint64_t> object_identity(const TypeFacts& type,
                                                           std::span<const uint8_t> object);

// Is the object still the one recorded: refcount in [1, 2^32) and of the recorded type? A
// freed object has refcount 0 (free lists keep it so), or pymalloc's free-list link (an
// address) in its place, or another type once its memory is reused.
bool still_alive(uint64_t recorded_type, std::span<const uint8_t> header);

class ObjectLiveness : public model::PythonObjectJudge {
 public:
  // `interpreters`: the CPython processes traced, by pid (objects of others are judged dead).
  explicit ObjectLiveness(const std::unordered_map<uint32_t, Interpreter>& interpreters)
      : interpreters_(interpreters) {}
  // Also read each live object's identity (model::TrackedPythonObject::identity): needed when
  // the object probes are detached part of the time (--python-objects on), and a read more.
  void set_read_identities(bool read) { read_identities_ = read; }
  void judge(std::span<model::TrackedPythonObject> objects) override;
  // The type's name (tp_name), once read; "?" when never read.
  std::string type_name(uint32_t pid, uint64_t type) const;
  // Are the sizes of the type's objects sys.getsizeof's (TypeFacts::exact)? False when the type
  // was never read: nothing proves them.
  bool sized_exactly(uint32_t pid, uint64_t type) const;
  // The types of process `pid` whose objects were sized by estimate (TypeFacts::exact false),
  // sorted: each one's name, and why when its __sizeof__'s code was read and not followed.
  std::vector<std::string> estimated_types(uint32_t pid) const;
  void forget(uint32_t pid);

 private:
  const TypeFacts* facts(uint32_t pid, uint64_t type);
  // Sets the identity of each live object of `batch` (one process; types[i] non-null: alive).
  void read_identities(uint32_t pid, std::span<model::TrackedPythonObject> batch,
                       const std::vector<const TypeFacts*>& types,
                       const std::function<std::span<const uint8_t>(size_t)>& header_of);
  const std::unordered_map<uint32_t, Interpreter>& interpreters_;
  std::map<std::pair<uint32_t, uint64_t>, std::optional<TypeFacts>> types_;
  bool read_identities_ = false;
};

}  // namespace memtrail::python
