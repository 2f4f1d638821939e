// SPDX-License-Identifier: Apache-2.0
// --unwind policy: which module gets a CFI table, which is walked by frame pointers, how rows
// are shared, and how a process mapping turns into the walker's entry (bias, rows, method).
#include "unwind/module_tables.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

namespace memtrail::unwind {
namespace {

// Rows land in a vector instead of a BPF map; `capacity` rows fit.
class VectorStore : public RowStore {
 public:
  explicit VectorStore(uint64_t capacity) : capacity_(capacity) {}
  std::optional<uint32_t> store_rows(std::span<const Row> rows) override {
    if (rows.size() > capacity_ - stored.size()) return std::nullopt;
    auto first = static_cast<uint32_t>(stored.size());
    stored.insert(stored.end(), rows.begin(), rows.end());
    ++stores;
    return first;
  }
  uint64_t row_capacity() const override { return capacity_; }
  // As the tracer: one entry per page (its bounds), the index's own first_rows kept here.
  std::optional<uint32_t> store_page_index(std::span<const uint32_t> first_rows) override {
    auto first = static_cast<uint32_t>(pages.size());
    pages.insert(pages.end(), first_rows.begin(), first_rows.end() - 1);
    ends[first] = first_rows.back();
    return first;
  }
  std::map<uint32_t, uint32_t> ends;  // by first entry: the index's last value (the row count)
  std::vector<Row> stored;
  std::vector<uint32_t> pages;
  int stores = 0;

 private:
  uint64_t capacity_;
};

// The mappings text_mapping() made, as (start, end).
std::vector<std::pair<uint64_t, uint64_t>> test_mappings;

// How a process maps `path`'s text, the way the kernel lays out a PIE or library: the
// executable PT_LOAD (the second one, at its own file offset) at `base` + its vaddr. Mapped for
// real in this process (read-only), since memtrail opens a module through the mapping itself
// (/proc/PID/map_files), never by its name; it stays until a later call maps over it.
inspect::Mapping text_mapping(const std::string& path, uint64_t base) {
  UnwindTable table = build_unwind_table(path);
  inspect::Mapping mapping;
  for (const auto& segment : table.segments) {
    if (segment.file_offset == 0) continue;  // the read-only headers
    mapping.start = base + segment.vaddr;
    mapping.end = mapping.start + ((segment.file_size + 4095) & ~uint64_t{4095});
    mapping.file_offset = segment.file_offset;
    break;
  }
  mapping.readable = mapping.executable = true;
  mapping.path = std::filesystem::absolute(path).string();
  // Earlier calls' mappings that overlap this one go first: this process's own are left alone.
  for (auto it = test_mappings.begin(); it != test_mappings.end();) {
    if (it->first < mapping.end && mapping.start < it->second) {
      munmap(reinterpret_cast<void*>(it->first), it->second - it->first);
      it = test_mappings.erase(it);
    } else {
      ++it;
    }
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat status {};
  EXPECT_EQ(fstat(fd, &status), 0) << path;
  void* where =
      mmap(reinterpret_cast<void*>(mapping.start), mapping.end - mapping.start, PROT_READ,
           MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, static_cast<off_t>(mapping.file_offset));
  EXPECT_EQ(where, reinterpret_cast<void*>(mapping.start))
      << "cannot map " << path << " at 0x" << std::hex << mapping.start << ": "
      << std::strerror(errno);
  if (where != MAP_FAILED) test_mappings.push_back({mapping.start, mapping.end});
  close(fd);
  mapping.device = status.st_dev;
  mapping.inode = status.st_ino;
  return mapping;
}

// Unmaps a mapping made by text_mapping(): its process no longer maps the file.
void unmap(const inspect::Mapping& mapping) {
  munmap(reinterpret_cast<void*>(mapping.start), mapping.end - mapping.start);
  std::erase(test_mappings, std::make_pair(mapping.start, mapping.end));
}

TEST(UnwindMode, ParsesTheThreeModesAndNothingElse) {
  EXPECT_EQ(model::parse_unwind_mode("fp"), UnwindMode::kFramePointers);
  EXPECT_EQ(model::parse_unwind_mode("dwarf"), UnwindMode::kDwarf);
  EXPECT_EQ(model::parse_unwind_mode("auto"), UnwindMode::kAuto);
  EXPECT_FALSE(model::parse_unwind_mode("DWARF"));
  EXPECT_FALSE(model::parse_unwind_mode(""));
  EXPECT_STREQ(model::unwind_mode_name(UnwindMode::kDwarf), "dwarf");
}

TEST(LoadBias, MapsTheSegmentHoldingTheMappingsFileOffset) {
  std::vector<LoadSegment> segments{{0x0, 0x0, 0x1000}, {0x2000, 0x1000, 0x500}};
  inspect::Mapping text;
  text.start = 0x7f0000002000;
  text.end = 0x7f0000003000;
  text.file_offset = 0x1000;
  // Runtime 0x7f0000002000 holds vaddr 0x2000: every runtime address minus the bias is a vaddr.
  EXPECT_EQ(load_bias(text, segments), 0x7f0000000000u);
  // A segment whose vaddr and file offset differ (lld's layout) is handled the same way.
  segments[1] = {0x3000, 0x1000, 0x500};
  EXPECT_EQ(load_bias(text, segments), 0x7f0000002000u - 0x3000);
  text.file_offset = 0x9000;  // beyond every segment
  EXPECT_FALSE(load_bias(text, segments));
}

TEST(ModuleTables, DwarfModeStoresEachFilesRowsOnceAndPointsEveryProcessAtThem) {
  VectorStore store(1u << 20);
  ModuleTables tables(UnwindMode::kDwarf, store);
  auto lib = text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7f0000000000);
  auto exe = text_mapping(UNWIND_FIXTURE_O0, 0x555500000000);
  auto first = tables.mappings_for(getpid(), {lib, exe});
  ASSERT_EQ(first.size(), 2u);
  // Sorted by address, whatever the order of the maps file.
  EXPECT_EQ(first[0].start, exe.start);
  EXPECT_EQ(first[1].start, lib.start);
  for (const auto& entry : first) {
    EXPECT_EQ(entry.method, WalkMethod::kTable);  // dwarf: frame pointers or not
    EXPECT_GT(entry.rows, 0u);
  }
  UnwindTable lib_table = build_unwind_table(UNWIND_FIXTURE_LIB_O2);
  EXPECT_EQ(first[1].rows, lib_table.rows.size());
  EXPECT_EQ(first[1].bias, 0x7f0000000000u);
  // The rows stored are the builder's, at the entry's first_row.
  ASSERT_LE(first[1].first_row + first[1].rows, store.stored.size());
  for (size_t i = 0; i < lib_table.rows.size(); ++i) {
    EXPECT_EQ(store.stored[first[1].first_row + i].pc, lib_table.rows[i].pc);
    EXPECT_EQ(store.stored[first[1].first_row + i].cfa, lib_table.rows[i].cfa);
    EXPECT_EQ(store.stored[first[1].first_row + i].rbp, lib_table.rows[i].rbp);
  }

  // Its page index is stored too, and narrows every search to the row find_row finds.
  ASSERT_GT(first[1].pages, 0u);
  std::vector<uint32_t> stored_index(store.pages.begin() + first[1].first_page,
                                     store.pages.begin() + first[1].first_page + first[1].pages);
  stored_index.push_back(store.ends.at(first[1].first_page));
  PageIndex expected = build_page_index(lib_table.rows);
  EXPECT_EQ(stored_index, expected.first_rows);
  EXPECT_EQ(first[1].page_base, expected.page_base);

  // A second process mapping the same library elsewhere shares the rows: nothing stored again.
  int stores = store.stores;
  auto moved = text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7e0000000000);
  auto second = tables.mappings_for(getpid(), {moved});
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(store.stores, stores);
  EXPECT_EQ(second[0].first_row, first[1].first_row);
  EXPECT_EQ(second[0].bias, 0x7e0000000000u);
  EXPECT_EQ(tables.modules().size(), 2u);
  EXPECT_EQ(tables.rows_stored(), store.stored.size());
}

TEST(ModuleTables, AutoModeWalksFramePointerBuildsByFramePointer) {
  VectorStore store(1u << 20);
  ModuleTables tables(UnwindMode::kAuto, store);
  auto entries =
      tables.mappings_for(getpid(), {text_mapping(UNWIND_FIXTURE_LIB_O0, 0x7f0000000000),
                                     text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7e0000000000)});
  ASSERT_EQ(entries.size(), 2u);
  // O2 (no frame pointers) at the lower address: a table; O0 (frame pointers): none needed.
  EXPECT_EQ(entries[0].method, WalkMethod::kTable);
  EXPECT_EQ(entries[1].method, WalkMethod::kFramePointer);
  EXPECT_EQ(entries[1].rows, 0u);
  const auto& modules = tables.modules();
  ASSERT_EQ(modules.size(), 2u);
  EXPECT_EQ(modules[0].method, "frame_pointers");
  EXPECT_NE(modules[0].reason.find("keep a frame pointer"), std::string::npos) << modules[0].reason;
  EXPECT_EQ(modules[1].method, "cfi");
  EXPECT_EQ(store.stored.size(), modules[1].rows);  // only the O2 library's rows
}

TEST(ModuleTables, AModuleWithoutCfiIsGuessedInAutoModeAndNotInDwarfMode) {
  for (auto [mode, method, walker] :
       {std::tuple{UnwindMode::kAuto, "frame_pointers", WalkMethod::kFramePointer},
        std::tuple{UnwindMode::kDwarf, "none", WalkMethod::kNothing}}) {
    VectorStore store(1u << 20);
    ModuleTables tables(mode, store);
    auto entries =
        tables.mappings_for(getpid(), {text_mapping(UNWIND_FIXTURE_NO_CFI, 0x7f0000000000)});
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].method, walker);
    EXPECT_EQ(tables.modules().at(0).method, method);
    EXPECT_FALSE(tables.modules().at(0).reason.empty());
  }
}

TEST(ModuleTables, AFullRowMapIsSaidAndTheModuleFallsBack) {
  VectorStore store(10);  // far too small for any table
  ModuleTables tables(UnwindMode::kDwarf, store);
  auto entries =
      tables.mappings_for(getpid(), {text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7f0000000000)});
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].method, WalkMethod::kNothing);
  EXPECT_NE(tables.modules().at(0).reason.find("--unwind-table-mib"), std::string::npos);
  EXPECT_TRUE(store.stored.empty());
}

TEST(ModuleTables, FilesThatAreGoneOrNotCodeAreSkipped) {
  VectorStore store(1u << 20);
  ModuleTables tables(UnwindMode::kDwarf, store);
  // A file no longer mapped, nor anywhere under its name.
  std::string copy = testing::TempDir() + "/libgone.so";
  std::filesystem::copy_file(UNWIND_FIXTURE_LIB_O2, copy,
                             std::filesystem::copy_options::overwrite_existing);
  auto gone = text_mapping(copy, 0x7f0000000000);
  unmap(gone);
  std::filesystem::remove(copy);
  auto data = text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7e0000000000);
  data.executable = false;
  inspect::Mapping anonymous;
  anonymous.start = 0x1000;
  anonymous.end = 0x2000;
  anonymous.executable = true;
  EXPECT_TRUE(tables.mappings_for(getpid(), {gone, data, anonymous}).empty());
  EXPECT_TRUE(tables.modules().empty());
}

TEST(ModuleTables, AnotherCopyOfTheSameBinarySharesRowsByBuildId) {
  VectorStore store(1u << 20);
  ModuleTables tables(UnwindMode::kDwarf, store);
  std::string copy = testing::TempDir() + "/libcopy.so";
  std::filesystem::copy_file(UNWIND_FIXTURE_LIB_O2, copy,
                             std::filesystem::copy_options::overwrite_existing);
  auto original =
      tables.mappings_for(getpid(), {text_mapping(UNWIND_FIXTURE_LIB_O2, 0x7f0000000000)});
  int stores = store.stores;
  auto copied = tables.mappings_for(getpid(), {text_mapping(copy, 0x7e0000000000)});
  ASSERT_EQ(copied.size(), 1u);
  EXPECT_EQ(store.stores, stores);
  EXPECT_EQ(copied[0].first_row, original[0].first_row);
  EXPECT_NE(tables.modules().back().reason.find("same build id"), std::string::npos);
  std::filesystem::remove(copy);
}

}  // namespace
}  // namespace memtrail::unwind
