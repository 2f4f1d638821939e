// SPDX-License-Identifier: Apache-2.0
#include "unwind/module_tables.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "inspect/process_file.h"

namespace memtrail::unwind {

std::optional<uint64_t> load_bias(const inspect::Mapping& mapping,
                                  std::span<const LoadSegment> segments) {
  auto vaddr = inspect::address_at_file_offset(segments, mapping.file_offset);
  if (!vaddr) return std::nullopt;
  return mapping.start - *vaddr;  // modulo 2^64, as the walker subtracts it
}

ModuleUnwind ModuleTables::describe(const std::string& path, UniqueFd fd) {
  ModuleUnwind module;
  module.path = path;
  bool guess_allowed = mode_ != UnwindMode::kDwarf;
  auto started = std::chrono::steady_clock::now();
  UnwindTable table;
  try {
    table = build_unwind_table(inspect::ElfFile::open(std::move(fd), path));
  } catch (const Error& error) {
    module.method = guess_allowed ? "frame_pointers" : "none";
    module.reason = error.what();
    return module;
  }
  module.build_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  module.segments = std::move(table.segments);
  if (!table.build_id.empty()) {
    // The same binary under another path (a container's copy of a library): same rows.
    auto twin = by_build_id_.find(table.build_id);
    if (twin != by_build_id_.end()) {
      ModuleUnwind shared = modules_[twin->second];
      shared.path = path;
      shared.build_ms = module.build_ms;
      shared.reason += "; shares the table of " + modules_[twin->second].path + " (same build id)";
      return shared;
    }
    by_build_id_.emplace(table.build_id, modules_.size());
  }
  if (mode_ == UnwindMode::kFramePointers) {
    module.method = "frame_pointers";
    module.reason = "--unwind fp";
    return module;
  }
  if (mode_ == UnwindMode::kAuto && table.keeps_frame_pointers()) {
    module.method = "frame_pointers";
    module.reason = std::to_string(table.fdes_with_frame_pointer) + " of " +
                    std::to_string(table.fdes) + " functions keep a frame pointer";
    return module;
  }
  if (table.rows.empty()) {
    module.method = guess_allowed ? "frame_pointers" : "none";
    module.reason = table.no_cfi_reason;
    return module;
  }
  if (table.rows.size() > UINT32_MAX) {
    module.method = guess_allowed ? "frame_pointers" : "none";
    module.reason = "table of " + std::to_string(table.rows.size()) + " rows is too large";
    return module;
  }
  auto first = store_.store_rows(table.rows);
  if (!first) {
    module.method = guess_allowed ? "frame_pointers" : "none";
    module.reason = "the unwind table map is full (" + std::to_string(store_.row_capacity()) +
                    " rows): its " + std::to_string(table.rows.size()) +
                    " rows did not fit; raise --unwind-table-mib";
    return module;
  }
  module.method = "cfi";
  module.first_row = *first;
  module.rows = static_cast<uint32_t>(table.rows.size());
  // Without its page index (no room left) the walker still finds rows, by a longer search.
  PageIndex index = build_page_index(table.rows);
  if (auto first_page = store_.store_page_index(index.first_rows)) {
    module.first_page = *first_page;
    module.pages = static_cast<uint32_t>(index.first_rows.size() - 1);
    module.page_base = index.page_base;
  }
  rows_stored_ += module.rows;
  module.reason = std::to_string(table.fdes) + " functions with CFI" +
                  (table.used_debug_frame ? " (.eh_frame and .debug_frame)" : "") +
                  (table.unsupported_rows ? ", " + std::to_string(table.unsupported_rows) +
                                                " rows the walker cannot follow"
                                          : "") +
                  (table.limit_reached.empty() ? "" : "; " + table.limit_reached);
  return module;
}

std::optional<size_t> ModuleTables::module_for(uint32_t pid, const inspect::Mapping& mapping) {
  std::optional<inspect::OpenedFile> file;
  try {
    file = inspect::open_file(inspect::mapped_file(pid, mapping));
  } catch (const Error&) {
    return std::nullopt;  // gone with its process, or not a regular file: nothing to build
  }
  struct stat status {};
  if (::fstat(file->fd.get(), &status) != 0) return std::nullopt;
  std::string file_key = std::to_string(status.st_dev) + ":" + std::to_string(status.st_ino) + ":" +
                         std::to_string(status.st_size) + ":" +
                         std::to_string(status.st_mtim.tv_sec) + "." +
                         std::to_string(status.st_mtim.tv_nsec);
  auto known = by_file_.find(file_key);
  if (known != by_file_.end()) return known->second;
  ModuleUnwind module = describe(mapping.path, std::move(file->fd));
  size_t index = modules_.size();
  modules_.push_back(std::move(module));
  by_file_.emplace(file_key, index);
  return index;
}

std::vector<WalkerMapping> ModuleTables::mappings_for(
    uint32_t pid, const std::vector<inspect::Mapping>& mappings) {
  std::vector<WalkerMapping> entries;
  for (const auto& mapping : mappings) {
    if (!mapping.executable || !mapping.is_file()) continue;
    auto index = module_for(pid, mapping);
    if (!index) continue;
    const ModuleUnwind& module = modules_[*index];
    auto bias = load_bias(mapping, module.segments);
    if (!bias) continue;  // no segment holds it: left to the walker's unknown-code rule
    WalkerMapping entry{};
    entry.start = mapping.start;
    entry.end = mapping.end;
    entry.bias = *bias;
    if (module.method == "cfi") {
      entry.method = WalkMethod::kTable;
      entry.first_row = module.first_row;
      entry.rows = module.rows;
      entry.first_page = module.first_page;
      entry.pages = module.pages;
      entry.page_base = module.page_base;
    } else {
      entry.method =
          module.method == "frame_pointers" ? WalkMethod::kFramePointer : WalkMethod::kNothing;
    }
    entries.push_back(entry);
  }
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.start < b.start; });
  if (entries.size() > kMaxWalkerMappings) {
    mappings_beyond_limit_ += entries.size() - kMaxWalkerMappings;
    entries.resize(kMaxWalkerMappings);
  }
  return entries;
}

}  // namespace memtrail::unwind
