// SPDX-License-Identifier: Apache-2.0
#include "python/objects.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <string_view>
#include <tuple>
#include <vector>

namespace memtrail::python {
namespace {

// pymalloc serves requests up to this size; larger ones go to malloc (SMALL_REQUEST_THRESHOLD).
constexpr uint64_t kPymallocLargest = 512;
// Remote pieces read with one process_vm_readv (IOV_MAX).
constexpr size_t kObjectsPerRead = 1024;
// The headers of the objects within one page are read as one piece.
constexpr uint64_t kPageBytes = 4096;

template <typename T>
T at(std::span<const uint8_t> raw, size_t offset) {
  T value{};
  if (offset + sizeof(T) <= raw.size()) std::memcpy(&value, raw.data() + offset, sizeof(T));
  return value;
}

bool read_memory(uint32_t pid, uint64_t address, void* buffer, size_t size) {
  iovec local{buffer, size};
  iovec remote{reinterpret_cast<void*>(address), size};
  return ::process_vm_readv(static_cast<pid_t>(pid), &local, 1, &remote, 1, 0) ==
         static_cast<ssize_t>(size);
}

// Reads `pieces` (address, length) of process `pid` into `out` (each piece at its own offset,
// the lengths summed); a piece that cannot be read keeps `readable` false. The kernel stops a
// read at the first remote piece it cannot read: the read goes on after it.
struct Piece {
  uint64_t address = 0;
  size_t length = 0;
};
void read_pieces(uint32_t pid, std::span<const Piece> pieces, std::vector<uint8_t>& out,
                 std::vector<bool>& readable) {
  size_t total = 0;
  std::vector<size_t> offsets(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    offsets[i] = total;
    total += pieces[i].length;
  }
  out.assign(total, 0);
  readable.assign(pieces.size(), false);
  size_t next = 0;
  std::vector<iovec> remote;
  while (next < pieces.size()) {
    size_t count = std::min(kObjectsPerRead, pieces.size() - next);
    remote.resize(count);
    size_t bytes = 0;
    for (size_t i = 0; i < count; ++i) {
      remote[i] = {reinterpret_cast<void*>(pieces[next + i].address), pieces[next + i].length};
      bytes += pieces[next + i].length;
    }
    iovec local{out.data() + offsets[next], bytes};
    ssize_t got = ::process_vm_readv(static_cast<pid_t>(pid), &local, 1, remote.data(),
                                     static_cast<unsigned long>(count), 0);
    if (got < 0) {
      // The first piece cannot be read (or the process is gone: then none can).
      if (errno == ESRCH) return;
      ++next;
      continue;
    }
    size_t whole = 0;
    for (size_t left = static_cast<size_t>(got);
         whole < count && left >= pieces[next + whole].length; ++whole) {
      left -= pieces[next + whole].length;
      readable[next + whole] = true;
    }
    next += whole;
    if (whole < count) ++next;  // the piece that stopped the read
  }
}

// Reads the headers of `objects` at `indexes` (one process), one remote piece of `length(index)`
// bytes per object, into `headers` (kObjectReadBytes apart); an object whose memory cannot be
// read keeps `readable` false. The kernel stops a read at the first remote piece it cannot
// read: the read goes on after it.
bool read_headers_one_by_one(uint32_t pid, std::span<const model::TrackedPythonObject> objects,
                             std::span<const size_t> indexes,
                             const std::function<size_t(size_t)>& length,
                             std::vector<uint8_t>& headers, std::vector<bool>& readable) {
  std::vector<iovec> local, remote;
  size_t next = 0;
  while (next < indexes.size()) {
    size_t count = std::min(kObjectsPerRead, indexes.size() - next);
    local.resize(count);
    remote.resize(count);
    for (size_t i = 0; i < count; ++i) {
      size_t index = indexes[next + i];
      local[i] = {headers.data() + index * kObjectReadBytes, length(index)};
      remote[i] = {reinterpret_cast<void*>(objects[index].address), length(index)};
    }
    ssize_t got = ::process_vm_readv(static_cast<pid_t>(pid), local.data(), count, remote.data(),
                                     static_cast<unsigned long>(count), 0);
    if (got < 0) {
      // The first piece cannot be read (or the process is gone: then none can).
      if (errno == ESRCH) return false;
      ++next;
      continue;
    }
    size_t whole = 0;
    for (size_t left = static_cast<size_t>(got); whole < count && left >= local[whole].iov_len;
         ++whole) {
      left -= local[whole].iov_len;
      readable[indexes[next + whole]] = true;
    }
    next += whole;
    if (whole < count) ++next;  // the piece that stopped the read
  }
  return true;
}

// Reads the headers of `objects` (one process) into `headers`. Objects lie packed in
// pymalloc's pools: the headers within one page are read as one remote piece, from the first
// to the end of the last (one piece per object cost about 8 µs an object, seconds for a few
// hundred thousand). A piece that cannot be read whole (the end of a mapping) is read again
// object by object. A str's header is longer (kStrHeaderBytes, to its caches) than a short
// ASCII str: read alone, it falls back to that str's whole header, PyASCIIObject. `str_type`:
// the recorded type of strs. False when the process's memory is gone (it exited).
bool read_headers(uint32_t pid, std::span<const model::TrackedPythonObject> objects,
                  uint64_t str_type, std::vector<uint8_t>& headers, std::vector<bool>& readable) {
  auto header_length = [&](size_t index) {
    return objects[index].type == str_type ? kStrHeaderBytes : kObjectHeaderBytes;
  };
  headers.assign(objects.size() * kObjectReadBytes, 0);
  readable.assign(objects.size(), false);
  std::vector<size_t> order(objects.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return objects[a].address < objects[b].address; });
  struct PagePiece {
    uint64_t start = 0, end = 0;
    size_t first = 0, last = 0;  // in `order`, last excluded
  };
  std::vector<PagePiece> pieces;
  for (size_t k = 0; k < order.size(); ++k) {
    uint64_t address = objects[order[k]].address;
    if (pieces.empty() || address / kPageBytes != pieces.back().start / kPageBytes ||
        address < pieces.back().start) {
      pieces.push_back({address, address, k, k});
    }
    PagePiece& piece = pieces.back();
    piece.end = std::max(piece.end, address + header_length(order[k]));
    piece.last = k + 1;
  }
  std::vector<uint8_t> buffer;
  std::vector<iovec> remote;
  std::vector<size_t> retry;
  size_t next = 0;
  while (next < pieces.size()) {
    size_t count = std::min(kObjectsPerRead, pieces.size() - next);
    remote.resize(count);
    size_t bytes = 0;
    for (size_t i = 0; i < count; ++i) {
      const PagePiece& piece = pieces[next + i];
      remote[i] = {reinterpret_cast<void*>(piece.start), piece.end - piece.start};
      bytes += piece.end - piece.start;
    }
    buffer.resize(bytes);
    iovec local{buffer.data(), bytes};
    ssize_t got = ::process_vm_readv(static_cast<pid_t>(pid), &local, 1, remote.data(),
                                     static_cast<unsigned long>(count), 0);
    if (got < 0 && errno == ESRCH) return false;  // the process is gone
    size_t copied = got < 0 ? 0 : static_cast<size_t>(got), offset = 0, i = 0;
    for (; i < count; ++i) {
      const PagePiece& piece = pieces[next + i];
      size_t length = piece.end - piece.start;
      if (offset + length > copied) break;  // this piece stopped the read
      for (size_t k = piece.first; k < piece.last; ++k) {
        size_t index = order[k];
        std::memcpy(headers.data() + index * kObjectReadBytes,
                    buffer.data() + offset + (objects[index].address - piece.start),
                    header_length(index));
        readable[index] = true;
      }
      offset += length;
    }
    if (i < count) {
      const PagePiece& piece = pieces[next + i];
      for (size_t k = piece.first; k < piece.last; ++k) retry.push_back(order[k]);
      ++i;
    }
    next += i;
  }
  if (retry.empty()) return true;
  if (!read_headers_one_by_one(pid, objects, retry, header_length, headers, readable)) {
    return false;
  }
  std::vector<size_t> short_strs;
  for (size_t index : retry) {
    if (!readable[index] && objects[index].type == str_type) short_strs.push_back(index);
  }
  size_t ascii_header = built_layout().ascii_data;
  return short_strs.empty() ||
         read_headers_one_by_one(
             pid, objects, short_strs, [&](size_t) { return ascii_header; }, headers, readable);
}

// The table of a dict from its header, and its keys object's (nullopt: not a sane one).
std::optional<DictTable> dict_table(uint64_t values, std::span<const uint8_t> keys) {
  const auto& layout = built_layout();
  DictTable table;
  table.split = values != 0;
  table.keys_refcount = at<int64_t>(keys, layout.keys_refcnt);
  table.log2_size = at<uint8_t>(keys, layout.keys_log2_size);
  table.log2_index_bytes = at<uint8_t>(keys, layout.keys_log2_index_bytes);
  table.kind = at<uint8_t>(keys, layout.keys_kind);
  table.usable = at<int64_t>(keys, layout.keys_usable);
  table.entries = at<int64_t>(keys, layout.keys_nentries);
  // A keys object being freed or reused as the dict is read: its size is not believed.
  if (table.keys_refcount < 1 || table.log2_size > 40 || table.log2_index_bytes > 43 ||
      table.usable < 0 || table.entries < 0) {
    return std::nullopt;
  }
  return table;
}

}  // namespace

namespace {

// A compact str's characters: where they start and how many bytes (nullopt: not compact).
std::optional<std::pair<size_t, size_t>> str_characters(std::span<const uint8_t> header) {
  const auto& layout = built_layout();
  auto state = at<uint32_t>(header, layout.unicode_state);
  auto length = at<int64_t>(header, layout.unicode_length);
  unsigned kind = (state >> layout.state_kind_shift) & ((1u << layout.state_kind_bits) - 1);
  bool compact = (state >> layout.state_compact_bit) & 1;
  bool ascii = (state >> layout.state_ascii_bit) & 1;
  if (!compact || length < 0 || length > static_cast<int64_t>(kPymallocLargest) ||
      (kind != 1 && kind != 2 && kind != 4)) {
    return std::nullopt;
  }
  return std::pair{size_t{ascii ? layout.ascii_data : layout.compact_data},
                   static_cast<size_t>(length) * kind};
}

// A 64-bit digest of byte ranges (murmur3's finalizer over 8-byte words): not cryptographic,
// only unlikely to match by chance.
class Digest {
 public:
  void add(std::span<const uint8_t> bytes) {
    for (size_t i = 0; i < bytes.size(); i += 8) {
      uint64_t word = 0;
      std::memcpy(&word, bytes.data() + i, std::min<size_t>(8, bytes.size() - i));
      mix(word);
    }
    mix(bytes.size());
  }
  uint64_t value() const { return state_; }

 private:
  void mix(uint64_t word) {
    uint64_t x = state_ ^ word;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    state_ = x + 0x9E3779B97F4A7C15ULL;
  }
  uint64_t state_ = 0;
};

}  // namespace

size_t identity_bytes(const TypeFacts& type, std::span<const uint8_t> header) {
  const auto& layout = built_layout();
  size_t bytes = 0;
  switch (type.identity) {
    case IdentityBy::kStr: {
      auto characters = str_characters(header);
      if (!characters) return 0;
      bytes = characters->first + characters->second;
      break;
    }
    case IdentityBy::kBytes:
    case IdentityBy::kFields: {
      // ob_size only where there are items (a float's value lies there).
      auto items = type.item_size > 0 ? at<int64_t>(header, layout.var_size) : 0;
      if (type.basic_size <= 0 || items < -static_cast<int64_t>(kPymallocLargest) ||
          items > static_cast<int64_t>(kPymallocLargest)) {
        return 0;
      }
      bytes = static_cast<size_t>(type.basic_size) +
              static_cast<size_t>(items < 0 ? -items : items) *
                  static_cast<size_t>(std::max<int64_t>(type.item_size, 0));
      break;
    }
    default:
      return 0;
  }
  return bytes <= kPymallocLargest ? bytes : 0;
}

std::pair<model::ObjectIdentity, uint64_t> object_identity(const TypeFacts& type,
                                                           std::span<const uint8_t> object) {
  const auto& layout = built_layout();
  constexpr std::pair none{model::ObjectIdentity::kNone, uint64_t{0}};
  if (type.identity == IdentityBy::kVersion) {
    if (object.size() < layout.dict_version + sizeof(uint64_t)) return none;
    return {model::ObjectIdentity::kVersion, at<uint64_t>(object, layout.dict_version)};
  }
  size_t length = identity_bytes(type, object);
  if (length == 0 || object.size() < length) return none;
  Digest digest;
  switch (type.identity) {
    case IdentityBy::kStr: {
      // The length, kind and characters; not the hash, the interned state or the UTF-8 and
      // wchar_t caches, which CPython fills in later on the same object.
      auto characters = str_characters(object);
      auto state = at<uint32_t>(object, layout.unicode_state);
      uint32_t kept = (((1u << layout.state_kind_bits) - 1) << layout.state_kind_shift) |
                      (1u << layout.state_compact_bit) | (1u << layout.state_ascii_bit);
      uint64_t fixed[2] = {at<uint64_t>(object, layout.unicode_length), state & kept};
      digest.add({reinterpret_cast<const uint8_t*>(fixed), sizeof(fixed)});
      digest.add(object.subspan(characters->first, characters->second));
      break;
    }
    case IdentityBy::kBytes:
      // The size and the bytes, not the cached hash between them.
      digest.add(object.subspan(layout.var_size, sizeof(int64_t)));
      digest.add(object.subspan(layout.bytes_data, length - layout.bytes_data));
      break;
    case IdentityBy::kFields:
      if (type.tuple) {
        // PyTuple_New leaves the items empty for its caller to fill: not complete yet.
        for (size_t item = static_cast<size_t>(type.basic_size); item + 8 <= length; item += 8) {
          if (at<uint64_t>(object, item) == 0) return none;
        }
      }
      digest.add(object.subspan(layout.object_type + sizeof(uint64_t),
                                length - layout.object_type - sizeof(uint64_t)));
      break;
    default:
      return none;
  }
  return {model::ObjectIdentity::kContent, digest.value()};
}

bool still_alive(uint64_t recorded_type, std::span<const uint8_t> header) {
  auto refcount = at<uint64_t>(header, 0);
  auto type = at<uint64_t>(header, built_layout().object_type);
  return refcount >= 1 && refcount < (uint64_t{1} << 32) && type == recorded_type;
}

std::optional<ObjectSize> object_size(const TypeFacts& type, uint64_t address,
                                      std::span<const uint8_t> header, const DictTable* dict) {
  const auto& layout = built_layout();
  uint64_t size = 0;
  // Buffers of the object's own (their sizes as __sizeof__ counts them): any over pymalloc's
  // largest block is malloc's.
  uint64_t malloc_bytes = 0;
  auto buffer = [&](uint64_t bytes) {
    size += bytes;
    if (bytes > kPymallocLargest) malloc_bytes += bytes;
  };
  auto field = [&](unsigned offset) { return at<int64_t>(header, offset); };
  if (type.sizing == Sizing::kStr) {
    auto state = at<uint32_t>(header, layout.unicode_state);
    auto length = at<int64_t>(header, layout.unicode_length);
    unsigned kind = (state >> layout.state_kind_shift) & ((1u << layout.state_kind_bits) - 1);
    bool compact = (state >> layout.state_compact_bit) & 1;
    bool ascii = (state >> layout.state_ascii_bit) & 1;
    if (length < 0 || (kind != 1 && kind != 2 && kind != 4)) return std::nullopt;
    if (!compact && header.size() < kUnicodeObjectBytes) return std::nullopt;
    // Not compact: PyUnicodeObject, its characters counted below (a block of their own).
    size = !compact ? layout.unicode_object_size
           : ascii  ? layout.ascii_data + static_cast<uint64_t>(length) + 1
                    : layout.compact_data + (static_cast<uint64_t>(length) + 1) * kind;
  } else if (type.sizing == Sizing::kInt) {
    // int.__sizeof__: the header and digits, whatever slots a subclass adds.
    auto digits = field(layout.var_size);
    if (digits == INT64_MIN) return std::nullopt;
    size = layout.long_digits +
           static_cast<uint64_t>(digits < 0 ? -digits : digits) * layout.digit_size;
  } else {
    if (type.basic_size <= 0) return std::nullopt;
    size = static_cast<uint64_t>(type.basic_size);
    if (type.item_size > 0) {
      auto items = field(layout.var_size);
      if (items == INT64_MIN) return std::nullopt;
      size +=
          static_cast<uint64_t>(items < 0 ? -items : items) * static_cast<uint64_t>(type.item_size);
    }
  }
  if (type.flags & layout.types.have_gc) size += layout.gc_header_size;
  if (type.flags & layout.managed_dict) size += 2 * sizeof(void*);
  bool pymalloc = size <= kPymallocLargest;  // the object's own block
  switch (type.sizing) {
    case Sizing::kStr: {
      // CPython 3.11's unicode_sizeof: the caches with memory of their own, as they are now
      // (CPython fills them on demand, on the same object). The UTF-8 copy: never a compact
      // ASCII str's (its characters are its UTF-8). The wchar_t copy: unless it is the
      // characters themselves (a UCS4 str's, wchar_t being 4 bytes); a compact ASCII str keeps
      // its length in `length`.
      // A str that is not compact has its characters in a block of their own (`data`).
      auto state = at<uint32_t>(header, layout.unicode_state);
      bool ascii = (state >> layout.state_ascii_bit) & 1;
      bool ready = (state >> layout.state_ready_bit) & 1;
      bool compact = (state >> layout.state_compact_bit) & 1;
      unsigned kind = (state >> layout.state_kind_shift) & ((1u << layout.state_kind_bits) - 1);
      auto length = at<int64_t>(header, layout.unicode_length);
      uint64_t data = !compact ? at<uint64_t>(header, layout.unicode_object_data)
                      : ascii  ? address + layout.ascii_data
                               : address + layout.compact_data;
      if (!compact && data) buffer((static_cast<uint64_t>(length) + 1) * kind);
      bool compact_ascii = compact && ascii;
      if (!compact_ascii) {
        auto utf8 = at<uint64_t>(header, layout.compact_utf8);
        auto utf8_length = at<int64_t>(header, layout.compact_utf8_length);
        if (utf8 && utf8 != data) {
          if (utf8_length < 0) return std::nullopt;
          buffer(static_cast<uint64_t>(utf8_length) + 1);
        }
      }
      auto wstr = at<uint64_t>(header, layout.unicode_wstr);
      if (wstr && (!ready || wstr != data)) {
        auto units = compact_ascii ? length : at<int64_t>(header, layout.compact_wstr_length);
        if (units < 0) return std::nullopt;
        buffer((static_cast<uint64_t>(units) + 1) * layout.wchar_size);
      }
      break;
    }
    case Sizing::kDict:
    case Sizing::kOrderedDict:
      // CPython 3.11's _PyDict_SizeOf: a split table's values, and the keys when the dict
      // owns them (a split table's keys belong to its class; the empty keys are shared).
      if (dict) {
        if (dict->split) buffer(static_cast<uint64_t>(dict->entries + dict->usable) * 8);
        if (dict->keys_refcount == 1) {
          uint64_t entry =
              dict->kind == layout.keys_general ? layout.key_entry_size : layout.unicode_entry_size;
          uint64_t slots = uint64_t{1} << dict->log2_size;
          buffer(layout.keys_size + (uint64_t{1} << dict->log2_index_bytes) +
                 (slots << 1) / 3 * entry);  // USABLE_FRACTION
        }
      }
      // odict_sizeof: its fast-nodes array (one block), and a node (a block each) per item
      // once its list is started.
      if (dict && type.sizing == Sizing::kOrderedDict) {
        const OrderedDictSizing& odict = type.odict;
        if (dict->odict_fast_nodes < 0) return std::nullopt;
        buffer(static_cast<uint64_t>(dict->odict_fast_nodes) * odict.fast_node_bytes);
        auto used = field(layout.dict_used);
        if (used < 0) return std::nullopt;
        if (dict->odict_nodes) {
          for (int64_t node = 0; node < used; ++node) buffer(odict.node_bytes);
        }
      }
      break;
    case Sizing::kList: {
      auto allocated = field(layout.list_allocated);
      if (allocated < 0) return std::nullopt;
      buffer(static_cast<uint64_t>(allocated) * sizeof(void*));
      break;
    }
    case Sizing::kSet: {
      // The table is the one inside the object (smalltable) exactly when it has
      // PySet_MINSIZE slots: set_table_resize takes smalltable for that size only.
      auto mask = field(layout.set_mask);
      if (mask < 0) return std::nullopt;
      if (static_cast<uint64_t>(mask) + 1 != layout.set_min_size) {
        buffer((static_cast<uint64_t>(mask) + 1) * layout.set_entry_size);
      }
      break;
    }
    case Sizing::kByteArray: {
      auto allocated = field(layout.bytearray_alloc);
      if (allocated < 0) return std::nullopt;
      buffer(static_cast<uint64_t>(allocated));
      break;
    }
    default:
      break;
  }
  return ObjectSize{size, pymalloc, malloc_bytes};
}

bool sizeof_matches(const std::string& owner, Sizing sizing) {
  static const std::map<std::string, Sizing> computes = {
      {"PyBaseObject_Type", Sizing::kBasic}, {"PyUnicode_Type", Sizing::kStr},
      {"PyDict_Type", Sizing::kDict},        {"PyODict_Type", Sizing::kOrderedDict},
      {"PyList_Type", Sizing::kList},        {"PySet_Type", Sizing::kSet},
      {"PyFrozenSet_Type", Sizing::kSet},    {"PyByteArray_Type", Sizing::kByteArray},
      {"PyBytes_Type", Sizing::kBasic},      {"PyLong_Type", Sizing::kInt},
      {"PyTuple_Type", Sizing::kBasic},      {"PyFloat_Type", Sizing::kBasic},
      {"PyComplex_Type", Sizing::kBasic}};
  auto it = computes.find(owner);
  return it != computes.end() && it->second == sizing;
}

namespace {

// The generations of tp_base followed at most.
constexpr int kMaxGenerations = 32;

// The largest class dict and MRO looked through.
constexpr int64_t kMaxClassEntries = 4096;
constexpr int64_t kMaxMro = 64;
// What resolve_sizeof returns for a __sizeof__ in a class's own dict (defined in Python, or
// a heap type's C method): never a function's address.
constexpr uint64_t kClassSizeof = 1;

// Does the dict at `dict` (a class's attributes) hold the key "__sizeof__"? nullopt: it
// cannot be read.
std::optional<bool> dict_has_sizeof(uint32_t pid, uint64_t dict) {
  const auto& layout = built_layout();
  constexpr std::string_view kName = "__sizeof__";
  uint64_t keys = 0;
  std::vector<uint8_t> header(kDictKeysHeaderBytes);
  if (!read_memory(pid, dict + layout.dict_keys, &keys, sizeof(keys)) ||
      !read_memory(pid, keys, header.data(), header.size())) {
    return std::nullopt;
  }
  auto table = dict_table(0, header);
  if (!table || table->entries > kMaxClassEntries || table->log2_index_bytes > 20) {
    return std::nullopt;
  }
  bool general = table->kind == layout.keys_general;
  size_t entry = general ? layout.key_entry_size : layout.unicode_entry_size;
  size_t key_at = general ? layout.key_entry_key : layout.unicode_entry_key;
  std::vector<uint8_t> entries(static_cast<size_t>(table->entries) * entry);
  uint64_t first = keys + layout.keys_indices + (uint64_t{1} << table->log2_index_bytes);
  if (!entries.empty() && !read_memory(pid, first, entries.data(), entries.size())) {
    return std::nullopt;
  }
  std::vector<uint8_t> key(layout.ascii_data + kName.size());
  for (size_t offset = 0; offset < entries.size(); offset += entry) {
    uint64_t address = at<uint64_t>(entries, offset + key_at);
    if (!address || !read_memory(pid, address, key.data(), key.size())) continue;
    auto state = at<uint32_t>(key, layout.unicode_state);
    if (at<int64_t>(key, layout.unicode_length) == static_cast<int64_t>(kName.size()) &&
        ((state >> layout.state_compact_bit) & 1) && ((state >> layout.state_ascii_bit) & 1) &&
        std::memcmp(key.data() + layout.ascii_data, kName.data(), kName.size()) == 0) {
      return true;
    }
  }
  return false;
}

// The __sizeof__ sys.getsizeof finds for objects of `type`, as CPython looks it up: along
// its MRO, the first class whose own dict holds one (kClassSizeof), or the first C method
// table that has one (its function); 0 when none is found or what it needs cannot be read.
uint64_t resolve_sizeof(uint32_t pid, uint64_t type) {
  const auto& layout = built_layout();
  MemoryReader read = [pid](uint64_t address, size_t length) {
    std::vector<uint8_t> bytes(length);
    if (!read_memory(pid, address, bytes.data(), length)) bytes.clear();
    return bytes;
  };
  uint64_t mro = 0;
  int64_t count = 0;
  if (!read_memory(pid, type + layout.type_mro, &mro, sizeof(mro)) || !mro ||
      !read_memory(pid, mro + layout.var_size, &count, sizeof(count)) || count < 1 ||
      count > kMaxMro) {
    return 0;
  }
  std::vector<uint64_t> classes(static_cast<size_t>(count));
  if (!read_memory(pid, mro + layout.tuple_items, classes.data(), classes.size() * 8)) return 0;
  for (uint64_t klass : classes) {
    uint64_t flags = 0, methods = 0, dict = 0;
    if (!read_memory(pid, klass + layout.types.type_flags, &flags, sizeof(flags)) ||
        !read_memory(pid, klass + layout.type_methods, &methods, sizeof(methods)) ||
        !read_memory(pid, klass + layout.type_dict, &dict, sizeof(dict))) {
      return 0;
    }
    if ((flags & layout.heap_type) && dict) {
      auto has = dict_has_sizeof(pid, dict);
      if (!has) return 0;
      if (*has) return kClassSizeof;
    }
    if (uint64_t function = sizeof_method(methods, read)) return function;
  }
  return 0;
}

// A C __sizeof__ of no type memtrail knows (`function`, in process `pid`), for a type sized
// by its basic size: exact when its code adds only buffers over pymalloc's largest block.
BufferedSizeofScan scan_other_sizeof(uint32_t pid, uint64_t function, const Interpreter& process,
                                     int64_t basic_size) {
  constexpr size_t kCodeBytes = 256, kShortCode = 64;
  std::vector<uint8_t> code(kCodeBytes);
  // The function may end near the end of its mapping: a shorter read then.
  if (!read_memory(pid, function, code.data(), code.size())) {
    code.resize(kShortCode);
    if (!read_memory(pid, function, code.data(), code.size())) {
      BufferedSizeofScan refused;
      refused.refusal = "its code could not be read";
      return refused;
    }
  }
  auto function_at = [&process](uint64_t address) -> std::string {
    return address && address == process.long_from_ssize_address ? "PyLong_FromSsize_t" : "";
  };
  const auto& layout = built_layout();
  return analyse_buffered_sizeof(code, function, function_at, layout.object_type,
                                 layout.type_basicsize, basic_size, kPymallocLargest);
}

// Is `type` `base`, or derived from it (through tp_base, as far as a few generations)?
bool is_or_derives_from(uint32_t pid, uint64_t type, uint64_t base) {
  for (int i = 0; i < kMaxGenerations && type && base; ++i) {
    if (type == base) return true;
    uint64_t next = 0;
    if (!read_memory(pid, type + built_layout().type_base, &next, sizeof(next))) return false;
    type = next;
  }
  return false;
}

}  // namespace

const TypeFacts* ObjectLiveness::facts(uint32_t pid, uint64_t type) {
  auto key = std::make_pair(pid, type);
  auto it = types_.find(key);
  if (it != types_.end()) return it->second ? &*it->second : nullptr;
  auto interpreter = interpreters_.find(pid);
  if (interpreter == interpreters_.end()) return nullptr;  // not cached: it may come
  const auto& layout = built_layout();
  std::vector<uint8_t> raw(std::max({layout.type_name, layout.type_basicsize, layout.type_itemsize,
                                     layout.types.type_flags}) +
                           8);
  std::optional<TypeFacts> facts;
  if (read_memory(pid, type, raw.data(), raw.size())) {
    TypeFacts read;
    read.basic_size = at<int64_t>(raw, layout.type_basicsize);
    read.item_size = at<int64_t>(raw, layout.type_itemsize);
    read.flags = at<uint64_t>(raw, layout.types.type_flags);
    const Interpreter& process = interpreter->second;
    if (type == process.unicode_type_address || (read.flags & layout.unicode_subclass)) {
      read.sizing = Sizing::kStr;
    } else if (read.flags & layout.dict_subclass) {
      read.sizing = Sizing::kDict;
      if (process.odict_sizing && is_or_derives_from(pid, type, process.odict_type_address)) {
        read.sizing = Sizing::kOrderedDict;
        read.odict = *process.odict_sizing;
      }
    } else if (read.flags & layout.list_subclass) {
      read.sizing = Sizing::kList;
    } else if (type == process.set_type_address || type == process.frozenset_type_address) {
      read.sizing = Sizing::kSet;
    } else if (type == process.bytearray_type_address) {
      read.sizing = Sizing::kByteArray;
    } else if (read.flags & layout.long_subclass) {
      read.sizing = Sizing::kInt;
    }
    // Exact types only: a subclass's instances may carry a dict of attributes, changed freely.
    if (type == process.unicode_type_address) {
      read.identity = IdentityBy::kStr;
    } else if (read.flags & layout.dict_subclass) {
      read.identity = IdentityBy::kVersion;
    } else if (type == process.bytes_type_address) {
      read.identity = IdentityBy::kBytes;
    } else if (type == process.long_type_address || type == process.float_type_address ||
               type == process.tuple_type_address) {
      read.identity = IdentityBy::kFields;
      read.tuple = type == process.tuple_type_address;
    }
    char name[128] = {};
    uint64_t name_address = at<uint64_t>(raw, layout.type_name);
    if (name_address && (read_memory(pid, name_address, name, sizeof(name) - 1) ||
                         read_memory(pid, name_address, name, 16))) {
      read.name.assign(name, strnlen(name, sizeof(name) - 1));
    }
    if (read.name.empty()) read.name.push_back('?');
    uint64_t function = resolve_sizeof(pid, type);
    auto owner = process.sizeof_owners.find(function);
    if (owner != process.sizeof_owners.end()) {
      read.exact = sizeof_matches(owner->second, read.sizing);
    } else if (function > kClassSizeof && read.sizing == Sizing::kBasic) {
      // Another C __sizeof__ (a deque's, an extension's): exact only as its code shows.
      auto scan = scan_other_sizeof(pid, function, process, read.basic_size);
      read.exact = scan.exact;
      read.estimate_reason = scan.refusal;
    } else {
      read.exact = false;
    }
    facts = std::move(read);
  }
  // A type that cannot be read is not a type: the objects recorded with it are judged dead.
  return types_.emplace(key, std::move(facts)).first->second ? &*types_[key] : nullptr;
}

void ObjectLiveness::judge(std::span<model::TrackedPythonObject> objects) {
  const auto& layout = built_layout();
  std::vector<uint8_t> headers, tables;
  std::vector<bool> readable, tables_readable;
  std::vector<Piece> pieces;
  std::vector<size_t> dicts;  // of the batch: the live dicts, whose tables are read next
  size_t begin = 0;
  while (begin < objects.size()) {
    uint32_t pid = objects[begin].pid;
    size_t end = begin;
    while (end < objects.size() && objects[end].pid == pid) ++end;
    auto batch = objects.subspan(begin, end - begin);
    auto interpreter = interpreters_.find(pid);
    uint64_t str_type =
        interpreter != interpreters_.end() ? interpreter->second.unicode_type_address : 0;
    bool gone = !read_headers(pid, batch, str_type, headers, readable);
    // The whole PyUnicodeObject of the strs that are not compact, read after their type.
    std::unordered_map<size_t, std::vector<uint8_t>> unicode_objects;
    auto header_of = [&](size_t i) {
      if (auto it = unicode_objects.find(i); it != unicode_objects.end()) {
        return std::span<const uint8_t>(it->second);
      }
      return std::span<const uint8_t>(headers.data() + i * kObjectReadBytes, kObjectReadBytes);
    };
    std::vector<const TypeFacts*> types(batch.size(), nullptr);
    dicts.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].gone = gone;
      batch[i].alive = false;
      if (!readable[i] || !still_alive(batch[i].type, header_of(i))) continue;
      types[i] = facts(pid, batch[i].type);
      if (types[i] &&
          (types[i]->sizing == Sizing::kDict || types[i]->sizing == Sizing::kOrderedDict)) {
        dicts.push_back(i);
      }
    }
    // A str that is not compact (a str subclass's instance) needs its PyUnicodeObject past
    // the header read: its data pointer and caches.
    pieces.clear();
    std::vector<size_t> unicode;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!types[i] || types[i]->sizing != Sizing::kStr) continue;
      auto state = at<uint32_t>(header_of(i), layout.unicode_state);
      if ((state >> layout.state_compact_bit) & 1) continue;
      unicode.push_back(i);
      pieces.push_back(
          {batch[i].address + kObjectHeaderBytes, kUnicodeObjectBytes - kObjectHeaderBytes});
    }
    read_pieces(pid, pieces, tables, tables_readable);
    for (size_t k = 0; k < unicode.size(); ++k) {
      if (!tables_readable[k]) continue;
      std::vector<uint8_t> whole(kUnicodeObjectBytes);
      std::memcpy(whole.data(), headers.data() + unicode[k] * kObjectReadBytes, kObjectHeaderBytes);
      std::memcpy(whole.data() + kObjectHeaderBytes,
                  tables.data() + k * (kUnicodeObjectBytes - kObjectHeaderBytes),
                  kUnicodeObjectBytes - kObjectHeaderBytes);
      unicode_objects.emplace(unicode[k], std::move(whole));
    }
    // A dict's size needs its ma_values (past the header) and its keys object's header; an
    // OrderedDict's also its first node and its fast-nodes array's size.
    pieces.clear();
    std::vector<size_t> first_piece;  // of each dict's pieces
    for (size_t i : dicts) {
      first_piece.push_back(pieces.size());
      pieces.push_back({batch[i].address + layout.dict_values, sizeof(uint64_t)});
      pieces.push_back({at<uint64_t>(header_of(i), layout.dict_keys), kDictKeysHeaderBytes});
      if (types[i]->sizing == Sizing::kOrderedDict) {
        pieces.push_back({batch[i].address + types[i]->odict.first, sizeof(uint64_t)});
        pieces.push_back({batch[i].address + types[i]->odict.fast_nodes_size, sizeof(uint64_t)});
      }
    }
    first_piece.push_back(pieces.size());
    read_pieces(pid, pieces, tables, tables_readable);
    std::vector<std::optional<DictTable>> dict_tables(batch.size());
    size_t offset = 0;
    for (size_t k = 0; k < dicts.size(); ++k) {
      size_t piece = first_piece[k], count = first_piece[k + 1] - piece;
      std::vector<std::span<const uint8_t>> parts;
      for (size_t p = piece; p < piece + count; ++p) {
        parts.emplace_back(tables.data() + offset, pieces[p].length);
        offset += pieces[p].length;
      }
      bool all = true;
      for (size_t p = piece; p < piece + count; ++p) all = all && tables_readable[p];
      if (!all) continue;
      auto table = dict_table(at<uint64_t>(parts[0], 0), parts[1]);
      if (table && count == 4) {
        table->odict_nodes = at<uint64_t>(parts[2], 0) != 0;
        table->odict_fast_nodes = at<int64_t>(parts[3], 0);
      }
      dict_tables[dicts[k]] = table;
    }
    if (read_identities_) read_identities(pid, batch, types, header_of);
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!types[i]) continue;
      auto& object = batch[i];
      auto size = object_size(*types[i], object.address, header_of(i),
                              dict_tables[i] ? &*dict_tables[i] : nullptr);
      object.alive = true;
      object.size = size ? size->charged() : 0;
      object.pymalloc = size && size->pymalloc;
      object.block_at_object = !(types[i]->flags & (layout.types.have_gc | layout.managed_dict));
    }
    begin = end;
  }
}

void ObjectLiveness::read_identities(
    uint32_t pid, std::span<model::TrackedPythonObject> batch,
    const std::vector<const TypeFacts*>& types,
    const std::function<std::span<const uint8_t>(size_t)>& header_of) {
  // A dict's version is in its header; the others' content is read whole, in one more pass.
  std::vector<Piece> pieces;
  std::vector<size_t> read;  // of the batch
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].identity_kind = model::ObjectIdentity::kNone;
    if (!types[i]) continue;
    if (types[i]->identity == IdentityBy::kVersion) {
      std::tie(batch[i].identity_kind, batch[i].identity) =
          object_identity(*types[i], header_of(i));
    } else if (size_t length = identity_bytes(*types[i], header_of(i))) {
      pieces.push_back({batch[i].address, length});
      read.push_back(i);
    }
  }
  if (pieces.empty()) return;
  std::vector<uint8_t> content;
  std::vector<bool> readable;
  read_pieces(pid, pieces, content, readable);
  size_t offset = 0;
  for (size_t k = 0; k < read.size(); ++k) {
    std::span<const uint8_t> object(content.data() + offset, pieces[k].length);
    offset += pieces[k].length;
    if (!readable[k]) continue;
    auto& target = batch[read[k]];
    std::tie(target.identity_kind, target.identity) = object_identity(*types[read[k]], object);
  }
}

std::string ObjectLiveness::type_name(uint32_t pid, uint64_t type) const {
  auto it = types_.find({pid, type});
  return it != types_.end() && it->second ? it->second->name : "?";
}

bool ObjectLiveness::sized_exactly(uint32_t pid, uint64_t type) const {
  auto it = types_.find({pid, type});
  return it != types_.end() && it->second && it->second->exact;
}

std::vector<std::string> ObjectLiveness::estimated_types(uint32_t pid) const {
  std::vector<std::string> names;
  for (auto it = types_.lower_bound({pid, 0}); it != types_.end() && it->first.first == pid; ++it) {
    if (!it->second || it->second->exact) continue;
    const auto& facts = *it->second;
    names.push_back(facts.estimate_reason.empty()
                        ? facts.name
                        : facts.name + " (its __sizeof__: " + facts.estimate_reason + ")");
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

void ObjectLiveness::forget(uint32_t pid) {
  types_.erase(types_.lower_bound({pid, 0}), types_.lower_bound({pid + 1, 0}));
}

}  // namespace memtrail::python
