// SPDX-License-Identifier: Apache-2.0
// The liveness read of CPython objects recorded at their creation: which still live, and their
// sizes as sys.getsizeof counts them, read from the processes' memory (process_vm_readv).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>

#include "model/python.h"
#include "python/cpython.h"

namespace memtrail::python {

// What an object's size needs of its type, read once per (process, type).
struct TypeFacts {
  std::string name;
  int64_t basic_size = 0, item_size = 0;
  uint64_t flags = 0;
  bool is_str = false;
};

// The bytes of an object read at once: refcount, type, ob_size (or a str's length), a str's
// hash and state.
inline constexpr size_t kObjectHeaderBytes = 40;

// The object's figures from its header and type: sys.getsizeof's size (with the GC header and
// a managed dict's pre-header, as --python-types counts them) and the bytes pymalloc served
// (the same, but the pre-headers are part of the block either way). nullopt for a str whose
// representation is not compact (legacy, never made by Python code).
struct ObjectSize {
  uint64_t size = 0;
  bool pymalloc = false;  // 512 bytes or less: pymalloc's block, not malloc's
};
std::optional<ObjectSize> object_size(const TypeFacts& type, std::span<const uint8_t> header);

// Is the object still the one recorded: refcount in [1, 2^32) and of the recorded type? A
// freed object has refcount 0 (free lists keep it so), or pymalloc's free-list link (an
// address) in its place, or another type once its memory is reused.
bool still_alive(uint64_t recorded_type, std::span<const uint8_t> header);

class ObjectLiveness : public model::PythonObjectJudge {
 public:
  // `interpreters`: the CPython processes traced, by pid (objects of others are judged dead).
  explicit ObjectLiveness(const std::unordered_map<uint32_t, Interpreter>& interpreters)
      : interpreters_(interpreters) {}
  void judge(std::span<model::TrackedPythonObject> objects) override;
  // The type's name (tp_name), once read; "?" when never read.
  std::string type_name(uint32_t pid, uint64_t type) const;
  void forget(uint32_t pid);

 private:
  const TypeFacts* facts(uint32_t pid, uint64_t type);
  const std::unordered_map<uint32_t, Interpreter>& interpreters_;
  std::map<std::pair<uint32_t, uint64_t>, std::optional<TypeFacts>> types_;
};

}  // namespace memtrail::python
