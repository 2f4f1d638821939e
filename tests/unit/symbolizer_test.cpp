// SPDX-License-Identifier: Apache-2.0
// The symbolizer against a live fixture process: functions, C++ names, lines, inlined frames,
// stripped libraries, unknown addresses, and symbolization after the process exited.
#include "symbolizer/symbolizer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <sstream>

#include "inspect/elf_file.h"
#include "inspect/proc_maps.h"

namespace memtrail::symbolizer {
namespace {

// The fixture, running, with what it printed: name -> numbers (address first).
class Fixture {
 public:
  Fixture() {
    int to_child[2], from_child[2];
    EXPECT_EQ(pipe(to_child), 0);
    EXPECT_EQ(pipe(from_child), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      execl(MEMTRAIL_SYMBOLIZE_FIXTURE, MEMTRAIL_SYMBOLIZE_FIXTURE, nullptr);
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    stdin_ = to_child[1];
    FILE* out = fdopen(from_child[0], "r");
    char line[256];
    while (out && std::fgets(line, sizeof(line), out)) {
      std::istringstream words(line);
      std::string name;
      words >> name;
      if (name == "ready") break;
      std::string address;
      words >> address;
      values_[name].push_back(std::stoull(address, nullptr, 16));
      uint64_t number;
      while (words >> number) values_[name].push_back(number);
    }
    if (out) std::fclose(out);
  }
  ~Fixture() { stop(); }
  void stop() {
    if (pid_ > 0) {
      close(stdin_);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  uint32_t pid() const { return static_cast<uint32_t>(pid_); }
  uint64_t value(const std::string& name, size_t index = 0) const {
    auto it = values_.find(name);
    EXPECT_NE(it, values_.end()) << name;
    return it == values_.end() ? 0 : it->second.at(index);
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::map<std::string, std::vector<uint64_t>> values_;
};

std::string base_name(const std::optional<std::string>& path) {
  if (!path) return "";
  return path->substr(path->rfind('/') + 1);
}

class SymbolizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mappings = inspect::read_proc_maps(fixture_.pid());
    ASSERT_TRUE(mappings.has_value());
    symbolizer_.set_process_mappings(fixture_.pid(), *mappings);
  }
  Fixture fixture_;
  Symbolizer symbolizer_;
};

TEST_F(SymbolizerTest, ReturnAddressGivesTheCallingFunctionAndTheLineOfTheCall) {
  auto frames = symbolizer_.symbolize(fixture_.pid(), fixture_.value("build_return"));
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].function, "main");
  EXPECT_EQ(base_name(frames[0].file), "symbolize_fixture.cpp");
  EXPECT_EQ(frames[0].line, fixture_.value("build_return", 1));
  EXPECT_EQ(frames[0].address, fixture_.value("build_return"));
  EXPECT_EQ(frames[0].module, MEMTRAIL_SYMBOLIZE_FIXTURE);
  EXPECT_FALSE(frames[0].inlined);
}

TEST_F(SymbolizerTest, CxxNamesAreDemangledAndOffsetsAreElfAddresses) {
  uint64_t address = fixture_.value("build_function");
  auto frames = symbolizer_.symbolize(fixture_.pid(), address, /*is_return_address=*/false);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].function, "fixture::Widget::build(int)");
  // The offset is what the ELF symbol table says, whatever address the PIE was loaded at.
  auto elf = inspect::ElfFile::open(MEMTRAIL_SYMBOLIZE_FIXTURE);
  auto symbol = elf.find_function("_ZN7fixture6Widget5buildEi");
  ASSERT_TRUE(symbol.has_value());
  EXPECT_EQ(frames[0].offset, symbol->address);
  EXPECT_NE(frames[0].address, frames[0].offset) << "a PIE is loaded away from its ELF address";
}

TEST_F(SymbolizerTest, InlinedFunctionsAreTheirOwnFramesInnermostFirst) {
  auto frames = symbolizer_.symbolize(fixture_.pid(), fixture_.value("inline_return"));
  ASSERT_EQ(frames.size(), 2u);
  // A static function has no linkage name in DWARF: its plain name is what there is.
  EXPECT_EQ(frames[0].function, "inlined_helper");
  EXPECT_TRUE(frames[0].inlined);
  EXPECT_EQ(frames[0].line, fixture_.value("inline_return", 1));
  EXPECT_EQ(frames[1].function, "outer_function(int*, int*)");
  EXPECT_FALSE(frames[1].inlined);
  EXPECT_EQ(frames[1].line, fixture_.value("inline_return", 2));
  EXPECT_EQ(frames[0].address, frames[1].address);
}

TEST_F(SymbolizerTest, StrippedLibraryIsNamedFromItsSymbolTable) {
  uint64_t address = fixture_.value("library_function");
  auto frames = symbolizer_.symbolize(fixture_.pid(), address, /*is_return_address=*/false);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].function, "library_function");
  EXPECT_FALSE(frames[0].file.has_value());
  EXPECT_FALSE(frames[0].line.has_value());
  EXPECT_EQ(base_name(frames[0].module), "libsymbolize_fixture_lib.so");
}

TEST_F(SymbolizerTest, AddressOutsideEveryModuleIsUnknown) {
  auto frames = symbolizer_.symbolize(fixture_.pid(), 0x10);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].module, "[unknown]");
  EXPECT_FALSE(frames[0].function.has_value());
  auto other = symbolizer_.symbolize(999999999, 0x1234);
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].module, "[unknown]");
  EXPECT_EQ(other[0].offset, 0x1234u);
}

TEST_F(SymbolizerTest, StillWorksAfterTheProcessExited) {
  uint64_t address = fixture_.value("build_return");
  uint32_t pid = fixture_.pid();
  fixture_.stop();
  auto frames = symbolizer_.symbolize(pid, address);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].function, "main");
  EXPECT_EQ(frames[0].line, fixture_.value("build_return", 1));
}

TEST_F(SymbolizerTest, RepeatedLookupsGiveTheSameFrames) {
  uint64_t address = fixture_.value("inline_return");
  auto first = symbolizer_.symbolize(fixture_.pid(), address);
  auto second = symbolizer_.symbolize(fixture_.pid(), address);
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].function, second[i].function);
    EXPECT_EQ(first[i].line, second[i].line);
  }
}

}  // namespace
}  // namespace memtrail::symbolizer
