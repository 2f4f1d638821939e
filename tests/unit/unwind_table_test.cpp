// SPDX-License-Identifier: Apache-2.0
// Unwind tables of real binaries checked row by row against `readelf --debug-dump=frames-interp`.
#include <fcntl.h>
#include <gelf.h>
#include <gtest/gtest.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "unwind/table_builder.h"

namespace memtrail::unwind {
namespace {

std::string run_command(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return {};
  std::string output;
  char buffer[65536];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe.get())) > 0) output.append(buffer, n);
  return output;
}

// One row of readelf's interpreted CFI: the rule text of the CFA, rbp and ra columns ("" when
// readelf shows no column, i.e. no instruction of the CIE or FDE mentions the register).
struct ReadelfRow {
  uint64_t location = 0;
  std::string cfa, rbp, ra;
};

struct ReadelfFde {
  std::string section;
  uint64_t start = 0, end = 0;
  std::vector<ReadelfRow> rows;
};

// Parses `readelf --debug-dump=frames-interp`: per section, CIEs (whose rows are the initial
// rules) and FDEs, each followed by a "LOC CFA reg... ra" table. readelf prints no table for an
// FDE without instructions: its rules are its CIE's.
std::vector<ReadelfFde> readelf_fdes(const std::string& path) {
  std::istringstream output(
      run_command("readelf --wide --debug-dump=frames-interp '" + path + "' 2>/dev/null"));
  // "00000018 0000000000000024 0000001c FDE cie=00000000 pc=0000000000026000..0000000000026360"
  static const std::regex entry_header(R"(^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ (CIE|FDE))"
                                       R"(( cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+))?)");
  static const std::regex row_start(R"(^[0-9a-f]{16} )");  // a LOC, not "000000e8 ZERO ..."
  std::map<std::pair<std::string, uint64_t>, std::vector<ReadelfRow>> cie_rows;
  std::vector<std::pair<ReadelfFde, uint64_t>> fdes;  // with their CIE's offset
  std::string section;
  std::vector<std::string> columns;
  std::vector<ReadelfRow>* rows = nullptr;
  std::string line;
  while (std::getline(output, line)) {
    std::smatch match;
    if (line.rfind("Contents of the ", 0) == 0) {
      section = line.substr(16, line.find(' ', 16) - 16);
      rows = nullptr;
    } else if (std::regex_search(line, match, entry_header)) {
      if (match[2] == "CIE") {
        rows = &cie_rows[{section, std::stoull(match[1], nullptr, 16)}];
      } else {
        ReadelfFde fde{
            section, std::stoull(match[5], nullptr, 16), std::stoull(match[6], nullptr, 16), {}};
        fdes.emplace_back(fde, std::stoull(match[4], nullptr, 16));
        rows = &fdes.back().first.rows;
      }
      columns.clear();
    } else if (line.rfind("   LOC", 0) == 0) {
      std::istringstream header(line);
      std::string column;
      header >> column;  // LOC
      while (header >> column) columns.push_back(column);
    } else if (rows && !columns.empty() && std::regex_search(line, row_start)) {
      std::istringstream fields(line);
      std::string location;
      fields >> location;
      ReadelfRow row{std::stoull(location, nullptr, 16), {}, {}, {}};
      // A register rule prints as "r10 (r10)": the parenthesized name is not a column.
      std::vector<std::string> values;
      std::string value;
      while (fields >> value) {
        if (value[0] == '(' && !values.empty())
          values.back() += " " + value;
        else
          values.push_back(value);
      }
      for (size_t i = 0; i < columns.size() && i < values.size(); ++i) {
        const std::string& column = columns[i];
        value = values[i];
        if (column == "CFA") row.cfa = value;
        if (column == "rbp") row.rbp = value;
        if (column == "ra") row.ra = value;
      }
      // readelf prints a row per location advance; a later row at the same location wins.
      if (!rows->empty() && rows->back().location == row.location) rows->pop_back();
      rows->push_back(row);
    }
  }
  std::vector<ReadelfFde> result;
  for (auto& [fde, cie] : fdes) {
    if (fde.rows.empty()) {
      const auto& initial = cie_rows[{fde.section, cie}];
      if (!initial.empty()) {
        fde.rows.push_back(initial.back());
        fde.rows.back().location = fde.start;
      }
    }
    result.push_back(std::move(fde));
  }
  return result;
}

// What a row must say, derived from readelf's text the way the header documents the format.
struct Expected {
  std::vector<CfaKind> cfa_kinds;  // any of these
  uint16_t cfa_offset = 0;
  RbpKind rbp = RbpKind::kUnchanged;
  int8_t rbp_slots = 0;
};

Expected expected_row(const ReadelfRow& row) {
  Expected expected;
  if (row.ra == "u") {
    expected.cfa_kinds = {CfaKind::kOutermost};
    return expected;
  }
  static const std::regex register_plus(R"(^(r\w+)\+(-?\d+)$)");
  std::smatch match;
  long long offset = 0;
  if (row.cfa == "exp") {
    // Only the PLT's and the signal trampoline's expressions are understood; which one it is,
    // the PLT test and the signal frame test check.
    expected.cfa_kinds = {CfaKind::kPlt, CfaKind::kSignal, CfaKind::kUnsupported};
    return expected;
  }
  if (!std::regex_match(row.cfa, match, register_plus) ||
      (match[1] != "rsp" && match[1] != "rbp") || (offset = std::stoll(match[2])) < 0 ||
      offset > 65535 || row.ra != "c-8") {
    expected.cfa_kinds = {CfaKind::kUnsupported};
    return expected;
  }
  expected.cfa_kinds = {match[1] == "rsp" ? CfaKind::kRsp : CfaKind::kRbp};
  expected.cfa_offset = static_cast<uint16_t>(offset);
  // "u" is both "never mentioned" and DW_CFA_undefined in readelf; GCC only writes the former
  // for rbp, which the ABI makes "unchanged" (rbp is callee-saved).
  if (row.rbp.empty() || row.rbp == "u" || row.rbp == "s") return expected;
  long long rbp_offset = 0;
  if (row.rbp[0] == 'c' && (rbp_offset = std::stoll(row.rbp.substr(1))) % 8 == 0 &&
      rbp_offset >= -1024 && rbp_offset <= 1016) {
    expected.rbp = RbpKind::kAtCfa;
    expected.rbp_slots = static_cast<int8_t>(rbp_offset / 8);
  } else {
    expected.rbp = RbpKind::kUnknown;
  }
  return expected;
}

std::string describe(const Row& row) {
  std::ostringstream out;
  out << "{pc 0x" << std::hex << row.pc << std::dec << " cfa kind " << static_cast<int>(row.cfa)
      << " +" << row.cfa_offset << " rbp kind " << static_cast<int>(row.rbp) << " "
      << int{row.rbp_offset} << "}";
  return out.str();
}

// Checks the table at the first and the last address of every readelf row of every FDE, and
// that the address right after an FDE has no rules unless another FDE starts there. Returns
// the number of rows checked; records at most a few failures so that one bug stays readable.
size_t expect_matches_readelf(const std::string& path, const UnwindTable& table,
                              size_t sample_every = 1) {
  std::vector<ReadelfFde> fdes = readelf_fdes(path);
  EXPECT_FALSE(fdes.empty()) << "readelf printed no FDE for " << path;
  // .eh_frame wins where both sections describe a function, as in the builder.
  std::map<uint64_t, uint64_t> eh_ranges;
  for (const ReadelfFde& fde : fdes)
    if (fde.section == ".eh_frame" && fde.end > fde.start) eh_ranges[fde.start] = fde.end;
  std::map<uint64_t, bool> starts;
  for (const ReadelfFde& fde : fdes) starts[fde.start] = true;

  size_t checked = 0, failures = 0;
  auto check = [&](uint64_t pc, const ReadelfRow& readelf_row, const ReadelfFde& fde) {
    ++checked;
    Expected expected = expected_row(readelf_row);
    std::optional<Row> row = find_row(table.rows, pc);
    bool ok = row.has_value();
    if (ok) {
      CfaKind kind = row->cfa;
      ok = std::find(expected.cfa_kinds.begin(), expected.cfa_kinds.end(), kind) !=
           expected.cfa_kinds.end();
      if (ok && (kind == CfaKind::kRsp || kind == CfaKind::kRbp)) {
        ok = row->cfa_offset == expected.cfa_offset && row->rbp == expected.rbp &&
             (expected.rbp != RbpKind::kAtCfa || row->rbp_offset == expected.rbp_slots);
      }
    }
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << path << " " << fde.section << " FDE 0x" << std::hex << fde.start << "..0x"
                    << fde.end << " at pc 0x" << pc << std::dec << ": readelf says CFA "
                    << readelf_row.cfa << " rbp '" << readelf_row.rbp << "' ra " << readelf_row.ra
                    << ", table says " << (row ? describe(*row) : std::string("nothing"));
    }
  };

  size_t index = 0;
  for (const ReadelfFde& fde : fdes) {
    if (fde.end <= fde.start || fde.rows.empty()) continue;  // the builder skips empty FDEs
    if (fde.section == ".debug_frame") {
      auto next = eh_ranges.upper_bound(fde.start);
      bool covered = next != eh_ranges.begin() && std::prev(next)->second > fde.start;
      if (covered || (next != eh_ranges.end() && next->first < fde.end)) continue;
    }
    if (index++ % sample_every != 0) continue;
    for (size_t i = 0; i < fde.rows.size(); ++i) {
      const ReadelfRow& row = fde.rows[i];
      if (row.location >= fde.end) break;
      uint64_t last =
          (i + 1 < fde.rows.size() ? std::min(fde.rows[i + 1].location, fde.end) : fde.end) - 1;
      check(row.location, row, fde);
      if (last != row.location) check(last, row, fde);
    }
    if (!starts.count(fde.end)) {
      std::optional<Row> after = find_row(table.rows, fde.end);
      EXPECT_TRUE(after && after->cfa == CfaKind::kNone)
          << path << ": address 0x" << std::hex << fde.end << " right after an FDE has rules";
    }
  }
  return checked;
}

void expect_well_formed(const UnwindTable& table) {
  for (size_t i = 1; i < table.rows.size(); ++i) {
    const Row& a = table.rows[i - 1];
    const Row& b = table.rows[i];
    ASSERT_LT(a.pc, b.pc) << "rows must be sorted and unique, at index " << i;
    EXPECT_FALSE(a.cfa == b.cfa && a.rbp == b.rbp && a.cfa_offset == b.cfa_offset &&
                 a.rbp_offset == b.rbp_offset)
        << "identical adjacent rows must be merged: " << describe(a) << " " << describe(b);
  }
  if (!table.rows.empty()) {
    EXPECT_EQ(table.rows.back().cfa, CfaKind::kNone);
  }
}

struct Symbol {
  uint64_t address = 0, size = 0;
};

// Function symbols of `path` by name, from `nm` (.symtab: the fixtures are not stripped).
std::map<std::string, Symbol> functions_of(const std::string& path) {
  std::map<std::string, Symbol> symbols;
  std::istringstream output(run_command("nm -S --defined-only '" + path + "' 2>/dev/null"));
  std::string address, size, type, name;
  std::string line;
  while (std::getline(output, line)) {
    std::istringstream fields(line);
    if (fields >> address >> size >> type >> name && (type == "T" || type == "t"))
      symbols[name] = {std::stoull(address, nullptr, 16), std::stoull(size, nullptr, 16)};
  }
  return symbols;
}

// The rows that apply somewhere inside a function.
std::vector<Row> rows_of(const UnwindTable& table, const Symbol& function) {
  std::vector<Row> rows;
  for (uint64_t pc = function.address; pc < function.address + function.size; ++pc) {
    std::optional<Row> row = find_row(table.rows, pc);
    if (row && (rows.empty() || rows.back().pc != row->pc)) rows.push_back(*row);
  }
  return rows;
}

struct Section {
  uint64_t address = 0;
  std::vector<uint8_t> bytes;
};

std::optional<Section> read_section(const std::string& path, const char* wanted) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  elf_version(EV_CURRENT);
  Elf* elf = elf_begin(fd, ELF_C_READ, nullptr);
  std::optional<Section> found;
  size_t names = 0;
  if (elf && elf_getshdrstrndx(elf, &names) == 0) {
    for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn && !found; scn = elf_nextscn(elf, scn)) {
      GElf_Shdr header;
      const char* name =
          gelf_getshdr(scn, &header) ? elf_strptr(elf, names, header.sh_name) : nullptr;
      Elf_Data* data = name && std::strcmp(name, wanted) == 0 ? elf_getdata(scn, nullptr) : nullptr;
      if (data && data->d_buf) {
        const auto* begin = static_cast<const uint8_t*>(data->d_buf);
        found = Section{header.sh_addr, {begin, begin + data->d_size}};
      }
    }
  }
  if (elf) elf_end(elf);
  close(fd);
  return found;
}

// The path of a library this test process has loaded, e.g. "/libc.so.6"; empty if none.
std::string loaded_library(const char* suffix) {
  struct Search {
    const char* suffix;
    std::string path;
  } search{suffix, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* wanted = static_cast<Search*>(data);
        if (info->dlpi_name && std::strstr(info->dlpi_name, wanted->suffix)) {
          wanted->path = info->dlpi_name;
          return 1;
        }
        return 0;
      },
      &search);
  return search.path;
}

// --- lookup -------------------------------------------------------------------------------

Row make_row(uint32_t pc, CfaKind cfa, uint16_t offset) {
  return Row{pc, offset, cfa, RbpKind::kUnchanged, 0};
}

TEST(UnwindLookup, FindsTheLastRowStartingAtOrBeforeThePc) {
  std::vector<Row> rows = {make_row(0x1000, CfaKind::kRsp, 8), make_row(0x1004, CfaKind::kRsp, 16),
                           make_row(0x1010, CfaKind::kNone, 0), make_row(0x2000, CfaKind::kRbp, 16),
                           make_row(0x2100, CfaKind::kNone, 0)};
  EXPECT_FALSE(find_row(rows, 0x0fff)) << "before the first row nothing applies";
  EXPECT_EQ(find_row(rows, 0x1000)->cfa_offset, 8);
  EXPECT_EQ(find_row(rows, 0x1003)->cfa_offset, 8);
  EXPECT_EQ(find_row(rows, 0x1004)->cfa_offset, 16);
  EXPECT_EQ(find_row(rows, 0x100f)->cfa_offset, 16);
  EXPECT_EQ(find_row(rows, 0x1010)->cfa, CfaKind::kNone) << "gap between FDEs";
  EXPECT_EQ(find_row(rows, 0x1fff)->cfa, CfaKind::kNone);
  EXPECT_EQ(find_row(rows, 0x2050)->cfa, CfaKind::kRbp);
  EXPECT_EQ(find_row(rows, 0xffffffff)->cfa, CfaKind::kNone);
  EXPECT_FALSE(find_row(rows, 0x100000000)) << "a u32 table cannot describe this address";
  EXPECT_FALSE(find_row({}, 0x1000));
  std::vector<Row> one = {make_row(0x10, CfaKind::kRsp, 8)};
  EXPECT_FALSE(find_row(one, 0xf));
  EXPECT_TRUE(find_row(one, 0x10));
}

// The walker's two-level search (page index, then a few rows) finds the row the plain search
// finds, at every row's start, just before it, and between rows, in libc's 28,000 rows.
TEST(UnwindLookup, ThePageIndexFindsTheSameRowAsTheFullSearch) {
  std::string libc = loaded_library("/libc.so.6");
  ASSERT_FALSE(libc.empty());
  UnwindTable table = build_unwind_table(libc);
  PageIndex index = build_page_index(table.rows);
  ASSERT_FALSE(index.first_rows.empty());
  EXPECT_EQ(index.first_rows.back(), table.rows.size());
  auto same = [&](uint64_t pc) {
    auto full = find_row(table.rows, pc), paged = find_row_paged(table.rows, index, pc);
    ASSERT_EQ(full.has_value(), paged.has_value()) << "pc 0x" << std::hex << pc;
    if (full) {
      EXPECT_EQ(full->pc, paged->pc) << "pc 0x" << std::hex << pc;
    }
  };
  for (const Row& row : table.rows) {
    same(row.pc);
    same(row.pc - 1);
    same(row.pc + 3);
  }
  same(0);
  same(table.rows.back().pc + 100000);  // beyond the last page: the full search
  // The index makes searches short: about one entry per 256 bytes of code.
  uint64_t code_bytes = uint64_t{table.rows.back().pc} - table.rows.front().pc;
  EXPECT_LE(index.first_rows.size(), code_bytes / 256 + 2);
  EXPECT_TRUE(build_page_index({}).first_rows.empty());
}

TEST(UnwindLookup, ComputesTheCfaOfEachKind) {
  Row rsp = make_row(0, CfaKind::kRsp, 24);
  Row rbp = make_row(0, CfaKind::kRbp, 16);
  Row plt = make_row(0, CfaKind::kPlt, 8);
  plt.rbp_offset = 11;
  EXPECT_EQ(compute_cfa(rsp, 0x1234, 0x7000, 0x9000), 0x7000u + 24);
  EXPECT_EQ(compute_cfa(rbp, 0x1234, 0x7000, 0x9000), 0x9000u + 16);
  // A PLT entry pushes its relocation index at byte 6..10: from byte 11 on, 8 more bytes.
  EXPECT_EQ(compute_cfa(plt, 0x1020, 0x7000, 0), 0x7008u);
  EXPECT_EQ(compute_cfa(plt, 0x102a, 0x7000, 0), 0x7008u);
  EXPECT_EQ(compute_cfa(plt, 0x102b, 0x7000, 0), 0x7010u);
  EXPECT_EQ(compute_cfa(plt, 0x102f, 0x7000, 0), 0x7010u);
  for (auto stop : {CfaKind::kNone, CfaKind::kOutermost, CfaKind::kUnsupported})
    EXPECT_FALSE(compute_cfa(make_row(0, stop, 8), 0, 0x7000, 0x9000)) << static_cast<int>(stop);
}

// --- errors and files without CFI ---------------------------------------------------------------

TEST(UnwindTable, UnreadableFileIsAnError) {
  try {
    build_unwind_table("/nonexistent/libnothing.so");
    FAIL() << "no error for a missing file";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/libnothing.so"), std::string::npos);
    EXPECT_NE(std::string(error.what()).find("No such file"), std::string::npos) << error.what();
  }
  std::string source = std::string(MEMTRAIL_SOURCE_DIR) + "/tests/unit/unwind_table_test.cpp";
  try {
    build_unwind_table(source);
    FAIL() << "no error for a file that is not ELF";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("not an ELF file"), std::string::npos) << error.what();
  }
}

TEST(UnwindTable, FileWithoutCfiYieldsNoRowsAndSaysWhy) {
  UnwindTable table = build_unwind_table(UNWIND_FIXTURE_NO_CFI);
  EXPECT_TRUE(table.rows.empty());
  EXPECT_NE(table.no_cfi_reason.find(".eh_frame"), std::string::npos) << table.no_cfi_reason;
  EXPECT_EQ(table.fdes, 0u);
}

// --- fixtures against readelf ----------------------------------------------------------------

class UnwindFixture : public testing::TestWithParam<const char*> {};

TEST_P(UnwindFixture, EveryRowMatchesReadelf) {
  UnwindTable table = build_unwind_table(GetParam());
  ASSERT_FALSE(table.rows.empty()) << table.no_cfi_reason;
  EXPECT_TRUE(table.no_cfi_reason.empty());
  expect_well_formed(table);
  EXPECT_GT(expect_matches_readelf(GetParam(), table), table.fdes);
  EXPECT_EQ(table.unsupported_rows, 0u) << "compiled C code needs nothing the walker lacks";
  EXPECT_EQ(table.skipped.bad_cie + table.skipped.unreadable_sections, 0u);
}

INSTANTIATE_TEST_SUITE_P(Binaries, UnwindFixture,
                         testing::Values(UNWIND_FIXTURE_O2, UNWIND_FIXTURE_O0,
                                         UNWIND_FIXTURE_LIB_O2, UNWIND_FIXTURE_LIB_O0,
                                         UNWIND_FIXTURE_LIB_DEBUG_FRAME));

TEST(UnwindTable, OmittedFramePointerShapes) {
  UnwindTable table = build_unwind_table(UNWIND_FIXTURE_LIB_O2);
  std::map<std::string, Symbol> functions = functions_of(UNWIND_FIXTURE_LIB_O2);
  for (const char* name : {"unwind_lib_leaf", "unwind_lib_pressure", "unwind_lib_alloca",
                           "unwind_lib_big_frame", "unwind_lib_chain1"})
    ASSERT_TRUE(functions.count(name)) << name << " not found by nm";

  // A leaf has no frame: the return address is right at rsp throughout.
  for (const Row& row : rows_of(table, functions["unwind_lib_leaf"])) {
    EXPECT_EQ(row.cfa, CfaKind::kRsp) << describe(row);
    EXPECT_EQ(row.cfa_offset, 8) << describe(row);
  }
  // Without frame pointers rbp is just another callee-saved register, pushed and restored.
  bool rbp_saved = false;
  for (const Row& row : rows_of(table, functions["unwind_lib_pressure"])) {
    EXPECT_EQ(row.cfa, CfaKind::kRsp) << describe(row);
    rbp_saved |= row.rbp == RbpKind::kAtCfa;
  }
  EXPECT_TRUE(rbp_saved);
  // alloca needs a frame pointer, whatever the flags say.
  bool rbp_based = false;
  for (const Row& row : rows_of(table, functions["unwind_lib_alloca"]))
    rbp_based |= row.cfa == CfaKind::kRbp && row.cfa_offset == 16;
  EXPECT_TRUE(rbp_based);
  // A 40,000-byte frame: beyond s16, within the row's u16.
  uint16_t largest = 0;
  for (const Row& row : rows_of(table, functions["unwind_lib_big_frame"]))
    if (row.cfa == CfaKind::kRsp) largest = std::max(largest, row.cfa_offset);
  EXPECT_GT(largest, 40000);
}

TEST(UnwindTable, FramePointerBuildsUseRbpAfterThePrologue) {
  // The program defines main and helper; the library its seven unwind_lib_* functions.
  for (auto [path, functions] : {std::pair{UNWIND_FIXTURE_O0, 2u}, {UNWIND_FIXTURE_LIB_O0, 7u}}) {
    UnwindTable table = build_unwind_table(path);
    size_t seen = 0;
    for (const auto& [name, function] : functions_of(path)) {
      if (name != "main" && name != "helper" && name.rfind("unwind_lib_", 0) != 0) continue;
      ++seen;
      std::vector<Row> rows = rows_of(table, function);
      ASSERT_FALSE(rows.empty()) << name;
      // push %rbp; mov %rsp,%rbp: CFA = rsp+8, then rsp+16 with rbp at CFA-16, then rbp+16.
      EXPECT_EQ(rows.front().cfa, CfaKind::kRsp) << name;
      EXPECT_EQ(rows.front().cfa_offset, 8) << name;
      bool framed = false;
      for (const Row& row : rows)
        framed |= row.cfa == CfaKind::kRbp && row.cfa_offset == 16 && row.rbp == RbpKind::kAtCfa &&
                  row.rbp_offset == -2;
      EXPECT_TRUE(framed) << name << " never has CFA = rbp+16 with rbp at CFA-16";
    }
    EXPECT_EQ(seen, functions) << path;
  }
}

TEST(UnwindTable, DebugFrameFillsWhatEhFrameLacks) {
  UnwindTable table = build_unwind_table(UNWIND_FIXTURE_LIB_DEBUG_FRAME);
  EXPECT_TRUE(table.used_debug_frame);
  std::map<std::string, Symbol> functions = functions_of(UNWIND_FIXTURE_LIB_DEBUG_FRAME);
  ASSERT_TRUE(functions.count("unwind_lib_pressure"));
  std::optional<Row> row = find_row(table.rows, functions["unwind_lib_pressure"].address);
  ASSERT_TRUE(row);
  EXPECT_EQ(row->cfa, CfaKind::kRsp) << describe(*row);
}

TEST(UnwindTable, CompressedDebugFrameGivesTheSameRows) {
  // A separate debug-info file, or `objcopy --compress-debug-sections`, compresses .debug_frame.
  char directory[] = "/tmp/memtrail-unwind-XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr);
  std::string compressed = std::string(directory) + "/libcompressed.so";
  std::string output =
      run_command("objcopy --compress-debug-sections=zlib '" +
                  std::string(UNWIND_FIXTURE_LIB_DEBUG_FRAME) + "' '" + compressed + "' 2>&1");
  std::optional<inspect::ElfSection> section;
  UnwindTable plain, table;
  try {
    inspect::ElfFile elf = inspect::ElfFile::open(compressed);
    section = elf.find_section(".debug_frame");
    plain = build_unwind_table(UNWIND_FIXTURE_LIB_DEBUG_FRAME);
    table = build_unwind_table(compressed);
  } catch (const Error& error) {
    ADD_FAILURE() << error.what() << "\n" << output;
  }
  unlink(compressed.c_str());
  rmdir(directory);
  ASSERT_TRUE(section) << output;
  ASSERT_TRUE(section->header.sh_flags & SHF_COMPRESSED) << "objcopy left .debug_frame as it was";
  EXPECT_TRUE(table.used_debug_frame);
  EXPECT_EQ(table.skipped.unreadable_sections, 0u);
  ASSERT_EQ(table.rows.size(), plain.rows.size());
  for (size_t i = 0; i < table.rows.size(); ++i) {
    EXPECT_EQ(describe(table.rows[i]), describe(plain.rows[i])) << i;
  }
}

// --- PLT ------------------------------------------------------------------------------------

// A lazy PLT entry after PLT0 is `jmp *GOT(%rip)` (6 bytes), `push $index` (5 bytes, opcode
// 0x68), `jmp PLT0`: the CFA grows by 8 exactly where the push has executed.
void expect_plt_rows(const std::string& path) {
  std::optional<Section> plt = read_section(path, ".plt");
  ASSERT_TRUE(plt) << path << " has no .plt";
  ASSERT_GE(plt->bytes.size(), 32u);
  UnwindTable table = build_unwind_table(path);
  EXPECT_GE(table.plt_rows, 1u);
  for (size_t entry = 16; entry + 16 <= plt->bytes.size(); entry += 16) {
    uint64_t address = plt->address + entry;
    std::optional<Row> row = find_row(table.rows, address);
    ASSERT_TRUE(row) << std::hex << address;
    ASSERT_EQ(row->cfa, CfaKind::kPlt) << path << " " << describe(*row);
    // The IBT variant (-z ibtplt, Ubuntu's default) starts with endbr64 and pushes at byte 4;
    // its threshold is ld's to choose, so there only the entry's two ends are checked.
    const uint8_t* code = &plt->bytes[entry];
    bool classic = code[0] == 0xff && code[1] == 0x25 && code[6] == 0x68;
    for (uint64_t byte = 0; byte < 16; ++byte) {
      if (!classic && byte != 0 && byte != 15) continue;
      std::optional<Row> at = find_row(table.rows, address + byte);
      ASSERT_TRUE(at);
      EXPECT_EQ(compute_cfa(*at, address + byte, 0x7000, 0), byte < 11 ? 0x7008u : 0x7010u)
          << path << " PLT entry 0x" << std::hex << address << " byte " << byte;
    }
  }
  // PLT0 (push GOT+8; jmp *GOT+16) has ordinary rows: CFA = rsp+16, then rsp+24.
  std::optional<Row> plt0 = find_row(table.rows, plt->address);
  ASSERT_TRUE(plt0);
  EXPECT_EQ(plt0->cfa, CfaKind::kRsp);
  EXPECT_EQ(plt0->cfa_offset, 16);
  EXPECT_EQ(compute_cfa(*find_row(table.rows, plt->address + 6), plt->address + 6, 0x7000, 0),
            0x7000u + 24);
}

TEST(UnwindTable, PltStubsGetPltRows) {
  expect_plt_rows(UNWIND_FIXTURE_O2);
  expect_plt_rows(UNWIND_FIXTURE_LIB_O2);
}

// --- the system's libraries ------------------------------------------------------------------

// Debian's glibc and libstdc++ are built -O2 without frame pointers: what issue 8 is about.
TEST(UnwindTable, SystemLibcMatchesReadelf) {
  std::string libc = loaded_library("/libc.so.6");
  ASSERT_FALSE(libc.empty()) << "the test process maps no libc.so.6";
  UnwindTable table = build_unwind_table(libc);
  expect_well_formed(table);
  EXPECT_GT(table.fdes, 1000u);
  EXPECT_GT(expect_matches_readelf(libc, table), 10000u);
  // glibc's hand-written code has outermost frames (_start, clone) and a few the walker cannot
  // follow (the signal trampoline's CFA is an expression, clone3's child switches stacks,
  // makecontext's frames keep the return address elsewhere): a handful, counted, never more
  // than a sliver of the table.
  EXPECT_GE(table.outermost_rows, 1u);
  EXPECT_LT(table.unsupported_rows * 100, table.dwarf_rows);
  expect_plt_rows(libc);
  // The signal trampoline (__restore_rt, from its CIE's 'S' augmentation and the rt_sigframe
  // expression) is one SIGNAL row, which the walker follows through the saved registers.
  EXPECT_EQ(table.signal_rows, 1u);
  size_t signal_rows = 0;
  for (const auto& row : table.rows) signal_rows += row.cfa == CfaKind::kSignal;
  EXPECT_EQ(signal_rows, 1u);
}

TEST(UnwindTable, SystemLibstdcxxMatchesReadelf) {
  std::string libstdcxx = loaded_library("/libstdc++.so.6");
  ASSERT_FALSE(libstdcxx.empty()) << "the test process maps no libstdc++.so.6";
  UnwindTable table = build_unwind_table(libstdcxx);
  expect_well_formed(table);
  // Every third FDE: libstdc++'s rows are as regular as libc's and the test stays quick.
  EXPECT_GT(expect_matches_readelf(libstdcxx, table, 3), 5000u);
  EXPECT_EQ(table.unsupported_rows, 0u);
}

}  // namespace
}  // namespace memtrail::unwind
