// SPDX-License-Identifier: Apache-2.0
// The symbolizer against a live fixture process: functions, C++ names, lines, inlined frames,
// stripped libraries, unknown addresses, and symbolization after the process exited; and the
// assemble stage's use of it: the mapped files a report (and its pprof) carries.
#include "symbolizer/symbolizer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <sstream>

#include "aggregator/aggregator.h"
#include "assemble/report_builder.h"
#include "inspect/elf_file.h"
#include "inspect/proc_maps.h"
#include "profile.pb.h"
#include "report/formats.h"

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

TEST_F(SymbolizerTest, MappingsAreFoundByAddressAndTheExecutableByItsName) {
  uint32_t pid = fixture_.pid();
  const auto* main = symbolizer_.mapping_at(pid, fixture_.value("build_return"));
  ASSERT_NE(main, nullptr);
  EXPECT_EQ(main->path, MEMTRAIL_SYMBOLIZE_FIXTURE);
  EXPECT_TRUE(main->executable);
  EXPECT_EQ(symbolizer_.executable_mapping(pid, MEMTRAIL_SYMBOLIZE_FIXTURE), main);
  // /proc/PID/exe of a replaced program says so; the maps' names do not.
  EXPECT_EQ(symbolizer_.executable_mapping(pid, MEMTRAIL_SYMBOLIZE_FIXTURE " (deleted)"), main);
  const auto* library = symbolizer_.mapping_at(pid, fixture_.value("library_function"));
  ASSERT_NE(library, nullptr);
  EXPECT_NE(library->path.find("libsymbolize_fixture_lib.so"), std::string::npos);
  EXPECT_EQ(symbolizer_.mapping_at(pid, 0x10), nullptr);
  EXPECT_EQ(symbolizer_.mapping_at(999999999, fixture_.value("build_return")), nullptr);
  EXPECT_FALSE(symbolizer_.knows(999999999));
}

// A snapshot of the fixture: site 1 (a block outstanding, called from the library and main)
// and site 2 (called from main, everything freed).
model::Snapshot fixture_snapshot(const Fixture& fixture) {
  model::Snapshot snapshot;
  snapshot.taken_at_ns = 100'000'000'000;
  snapshot.stacks[1].addresses = {fixture.value("library_function") + 1,
                                  fixture.value("build_return")};
  snapshot.stacks[2].addresses = {fixture.value("build_return")};
  snapshot.allocations = {
      {fixture.pid(), 0x1000, 64, 50'000'000'000, 1, model::AllocationKind::kMalloc}};
  snapshot.sites = {{fixture.pid(), 1, 64, 1, 0}, {fixture.pid(), 2, 48000, 1000, 0}};
  return snapshot;
}

// The object probes' counts reach the report, and objects created without a readable type
// (not recorded) are said in a note, never dropped in silence.
TEST_F(SymbolizerTest, PythonObjectCountsAndUntypedObjectsAreSaid) {
  model::Snapshot snapshot = fixture_snapshot(fixture_);
  snapshot.counters.python_objects = 1200;
  snapshot.counters.python_objects_untyped = 7;
  snapshot.counters.python_objects_dead = 900;
  aggregator::Aggregate aggregate = aggregator::aggregate(snapshot, 0);
  assemble::ReportContext context;
  context.python_objects = model::PythonObjectsCoverage{};
  model::Report report = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  ASSERT_TRUE(report.python_objects);
  EXPECT_EQ(report.python_objects->recorded, 1200u);
  EXPECT_EQ(report.python_objects->untyped, 7u);
  EXPECT_EQ(report.python_objects->found_dead, 900u);
  bool said = false;
  for (const auto& note : report.notes) {
    said = said || note.find("7 Python objects were created without a readable type") == 0;
  }
  EXPECT_TRUE(said);
  // Live objects beyond the bound of the window closes' watch list: counted and said.
  EXPECT_EQ(report.python_objects->unwatched, 0u);
  snapshot.counters.python_unwatched = 5000;
  report = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  EXPECT_EQ(report.python_objects->unwatched, 5000u);
  bool unwatched_said = false;
  for (const auto& note : report.notes) {
    unwatched_said =
        unwatched_said || note.find("5,000 live Python objects no content identifies") == 0;
  }
  EXPECT_TRUE(unwatched_said);
  // Without object probes: no such figures, no note.
  context.python_objects.reset();
  report = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  EXPECT_FALSE(report.python_objects);
  for (const auto& note : report.notes)
    EXPECT_EQ(note.find("Python objects were created"), std::string::npos);
}

// Blocks recorded at the allocator's usable size (glibc's chunk header, tcmalloc's size class)
// reach the totals and a note of the text report; none, no note.
TEST_F(SymbolizerTest, BlocksRecordedAtTheUsableSizeAreCountedAndSaid) {
  model::Snapshot snapshot = fixture_snapshot(fixture_);
  snapshot.counters.usable_size_allocations = 65;
  aggregator::Aggregate aggregate = aggregator::aggregate(snapshot, 0);
  assemble::ReportContext context;
  model::Report report = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  EXPECT_EQ(report.totals.usable_size_allocations, 65u);
  auto said = [](const model::Report& report) {
    for (const auto& note : report.notes) {
      if (note.find("65 allocations were recorded at the allocator's usable size (the size asked "
                    "for rounded up to its chunk size or size class)") == 0) {
        return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(said(report));
  snapshot.counters.usable_size_allocations = 0;
  report = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  EXPECT_EQ(report.totals.usable_size_allocations, 0u);
  for (const auto& note : report.notes) EXPECT_EQ(note.find("usable size"), std::string::npos);
}

// An interpreter whose OrderedDict.__sizeof__ memtrail cannot read (python/sizeof_code.h): its
// OrderedDicts' sizes are lower bounds, and the report says so, with the reason.
TEST_F(SymbolizerTest, OrderedDictSizesThatAreLowerBoundsAreSaid) {
  model::Snapshot snapshot = fixture_snapshot(fixture_);
  aggregator::Aggregate aggregate = aggregator::aggregate(snapshot, 0);
  assemble::ReportContext context;
  model::Target target;
  target.pid = fixture_.pid();
  target.python = model::PythonRuntime{"3.11.2", "/usr/bin/python3.11", true, ""};
  context.targets = {target};
  auto said = [&](const model::Report& report) {
    for (const auto& note : report.notes) {
      if (note.find("its OrderedDict objects are sized as the dicts they are") !=
          std::string::npos) {
        return note;
      }
    }
    return std::string();
  };
  EXPECT_EQ(said(assemble::build_report(snapshot, aggregate, symbolizer_, context, 0)), "");
  context.targets[0].python_sizes_reason =
      "OrderedDict's __sizeof__ is not the code memtrail knows";
  std::string note = said(assemble::build_report(snapshot, aggregate, symbolizer_, context, 0));
  EXPECT_NE(note.find("(lower bounds of sys.getsizeof): OrderedDict's __sizeof__ is not the code "
                      "memtrail knows."),
            std::string::npos)
      << note;
}

// Each target carries its executable's code mapping first, then the files its frames point
// into, with their real ranges; the pprof made from it names the executable first and puts
// every location in its mapping; a site that freed everything counts in alloc_space.
TEST_F(SymbolizerTest, TheReportCarriesTheMappedFilesAndSitesThatFreedEverything) {
  uint32_t pid = fixture_.pid();
  model::Snapshot snapshot = fixture_snapshot(fixture_);
  aggregator::Aggregate aggregate = aggregator::aggregate(snapshot, 0);
  assemble::ReportContext context;
  model::Target target;
  target.pid = pid;
  target.exe = MEMTRAIL_SYMBOLIZE_FIXTURE;
  context.targets = {target};
  context.final = true;
  model::Report report =
      assemble::build_report(snapshot, aggregate, symbolizer_, context, SIZE_MAX);

  ASSERT_EQ(report.leaks.size(), 1u);
  ASSERT_EQ(report.freed_sites.size(), 1u);
  const auto& churn = report.freed_sites[0];
  EXPECT_EQ(churn.total_allocated_bytes, 48000u);
  EXPECT_EQ(churn.total_allocations, 1000u);
  EXPECT_EQ(churn.freed_allocations, 1000u);
  EXPECT_EQ(churn.outstanding_bytes, 0u);
  ASSERT_FALSE(churn.stack.empty());
  EXPECT_EQ(churn.stack[0].function, "main");

  const auto* main = symbolizer_.mapping_at(pid, fixture_.value("build_return"));
  const auto* library = symbolizer_.mapping_at(pid, fixture_.value("library_function"));
  ASSERT_TRUE(main && library);
  const auto& mappings = report.targets[0].mappings;
  ASSERT_EQ(mappings.size(), 2u);
  EXPECT_EQ(mappings[0].path, MEMTRAIL_SYMBOLIZE_FIXTURE);
  EXPECT_EQ(mappings[0].start, main->start);
  EXPECT_EQ(mappings[0].limit, main->end);
  EXPECT_EQ(mappings[0].file_offset, main->file_offset);
  EXPECT_NE(mappings[0].file_offset, 0u) << "the code segment of a PIE starts past its headers";
  EXPECT_EQ(mappings[1].path, library->path);
  EXPECT_EQ(mappings[1].start, library->start);

  perftools::profiles::Profile profile;
  ASSERT_TRUE(profile.ParseFromString(report::gunzip(report::to_pprof(report))));
  ASSERT_EQ(profile.mapping_size(), 2);
  EXPECT_EQ(profile.string_table(static_cast<int>(profile.mapping(0).filename())),
            MEMTRAIL_SYMBOLIZE_FIXTURE);
  EXPECT_EQ(profile.mapping(0).memory_start(), main->start);
  EXPECT_EQ(profile.mapping(0).memory_limit(), main->end);
  for (const auto& location : profile.location()) {
    const auto& mapping = profile.mapping(static_cast<int>(location.mapping_id()) - 1);
    EXPECT_GE(location.address(), mapping.memory_start());
    EXPECT_LT(location.address(), mapping.memory_limit());
  }
  ASSERT_EQ(profile.sample_size(), 2);
  EXPECT_EQ(profile.sample(1).value(1), 48000);  // alloc_space
  EXPECT_EQ(profile.sample(1).value(3), 0);      // inuse_space

  // Once the process is gone and forgotten, the report keeps the mappings it had.
  symbolizer_.forget_process(pid);
  context.targets = report.targets;
  model::Report later = assemble::build_report(snapshot, aggregate, symbolizer_, context, 0);
  ASSERT_EQ(later.targets[0].mappings.size(), 2u);
  EXPECT_EQ(later.targets[0].mappings[0].start, main->start);
}

// At most kMaxFreedSites are listed, the most bytes first; the others are counted.
TEST(FreedSites, AreBoundedTheBiggestKeptAndTheRestCounted) {
  model::Report report;
  std::vector<model::LeakSite> sites(model::Report::kMaxFreedSites + 5);
  for (size_t i = 0; i < sites.size(); ++i) {
    sites[i].pid = 7;
    sites[i].total_allocated_bytes = 1000 + i;
    sites[i].total_allocations = 2;
  }
  assemble::add_freed_sites(report, sites, {1, 10, 100});
  ASSERT_EQ(report.freed_sites.size(), model::Report::kMaxFreedSites);
  EXPECT_EQ(report.freed_sites.front().total_allocated_bytes, 1000 + sites.size() - 1);
  EXPECT_EQ(report.freed_sites.back().total_allocated_bytes, 1005u);
  EXPECT_EQ(report.freed_omitted.sites, 6u);
  EXPECT_EQ(report.freed_omitted.allocations, 10u + 5 * 2);
  EXPECT_EQ(report.freed_omitted.bytes, 100u + 1000 + 1001 + 1002 + 1003 + 1004);
}

}  // namespace
}  // namespace memtrail::symbolizer
