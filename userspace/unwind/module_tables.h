// SPDX-License-Identifier: Apache-2.0
// Which module is unwound how (--unwind), the tables the BPF walker reads for each, and the
// per-process list of executable mappings that points the walker at them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/unique_fd.h"
#include "inspect/proc_maps.h"
#include "model/stack_modes.h"
#include "unwind/table_builder.h"

namespace memtrail::unwind {

// --unwind, parsed by cli/ (model/stack_modes.h).
using UnwindMode = model::UnwindMode;

// How the walker unwinds frames in one module, and why.
struct ModuleUnwind {
  std::string path;         // as the first process that mapped it sees it
  std::string method;       // "cfi", "frame_pointers" or "none"
  std::string reason;       // why this method (always set: the report shows it)
  uint32_t first_row = 0;   // in the walker's row map
  uint32_t rows = 0;        // 0 unless method is "cfi"
  uint32_t first_page = 0;  // its page index in the walker's page map
  uint32_t pages = 0;       // 0: no page index (it did not fit): the walker searches all rows
  uint32_t page_base = 0;
  double build_ms = 0;  // reading the CFI and building the rows
  std::vector<LoadSegment> segments;
};

// Where rows go: the tracer's BPF map (tests use a vector). Returns the index of the first row
// stored, or nullopt when the rows do not fit in what is left.
class RowStore {
 public:
  virtual ~RowStore() = default;
  virtual std::optional<uint32_t> store_rows(std::span<const Row> rows) = 0;
  virtual uint64_t row_capacity() const = 0;
  // The same for a module's page index (PageIndex::first_rows).
  virtual std::optional<uint32_t> store_page_index(std::span<const uint32_t> first_rows) = 0;
};

// How the walker unwinds a frame in one mapping.
enum class WalkMethod : uint8_t {
  kTable,         // rows [first_row, first_row + rows) of the row map
  kFramePointer,  // the module keeps frame pointers (auto mode), or it has no table and the
                  // mode allows the guess
  kNothing,       // no table and frame pointers not allowed: the walk ends here (no_cfi)
};

// The walker's view of one process mapping; the tracer hands the process's list to the walker.
struct WalkerMapping {
  uint64_t start = 0;  // runtime addresses [start, end)
  uint64_t end = 0;
  uint64_t bias = 0;  // runtime address - ELF virtual address: what the row pcs are relative to
  uint32_t first_row = 0;
  uint32_t rows = 0;
  WalkMethod method = WalkMethod::kTable;
  uint32_t first_page = 0;  // the module's page index in the walker's page map
  uint32_t pages = 0;       // 0: no page index (it did not fit): the search covers every row
  uint32_t page_base = 0;
};

// Mappings the walker holds per process (the rest is counted in mappings_beyond_limit).
inline constexpr size_t kMaxWalkerMappings = 512;

class ModuleTables {
 public:
  ModuleTables(UnwindMode mode, RowStore& store) : mode_(mode), store_(store) {}

  // The walker's entries for a process's executable file mappings, sorted by address: at most
  // kMaxWalkerMappings (the rest is counted in mappings_beyond_limit). Builds and
  // stores the table of every file not seen before; a file another process maps already (same
  // file, or same build id) shares its table. Files are opened through the process's
  // mappings (inspect/process_file.h).
  std::vector<WalkerMapping> mappings_for(uint32_t pid,
                                          const std::vector<inspect::Mapping>& mappings);

  UnwindMode mode() const { return mode_; }
  // Every module met so far, in the order first seen.
  const std::vector<ModuleUnwind>& modules() const { return modules_; }
  uint64_t rows_stored() const { return rows_stored_; }
  uint64_t mappings_beyond_limit() const { return mappings_beyond_limit_; }

 private:
  // Index into modules_ of the file that `mapping` of `pid` maps, building its table on first
  // sight; nullopt when the file cannot be opened (the process is gone).
  std::optional<size_t> module_for(uint32_t pid, const inspect::Mapping& mapping);
  ModuleUnwind describe(const std::string& path, UniqueFd fd);

  UnwindMode mode_;
  RowStore& store_;
  std::vector<ModuleUnwind> modules_;
  std::unordered_map<std::string, size_t> by_file_;  // "dev:inode:size:mtime"
  std::unordered_map<std::string, size_t> by_build_id_;
  uint64_t rows_stored_ = 0;
  uint64_t mappings_beyond_limit_ = 0;
};

// The walker's entry for `mapping` of a module whose PT_LOAD segments are `segments`: bias is
// what turns a runtime address into the ELF virtual address its rows are keyed by. nullopt when
// no segment holds the mapping's file offset.
std::optional<uint64_t> load_bias(const inspect::Mapping& mapping,
                                  std::span<const LoadSegment> segments);

}  // namespace memtrail::unwind
