// SPDX-License-Identifier: Apache-2.0
// Allocator discovery in real ELF files, and placement of entry probes on emulated instructions.
#include "target/allocator.h"

#include <unistd.h>

#include <gtest/gtest.h>
#include <set>

#include "alloc_events.h"
#include "common/error.h"
#include "target/elf_file.h"

namespace memtrail::target {
namespace {

using Bytes = std::vector<uint8_t>;

TEST(ProbePlacement, PushAtEntryIsProbedAtEntry) {
  EXPECT_EQ(choose_probe_placement(ProbeRole::kSizeAlloc, Bytes{0x41, 0x54, 0x55}).offset, 0u);
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, Bytes{0x55, 0x48, 0x89, 0xe5}).offset, 0u);
}

TEST(ProbePlacement, FreeSkipsNullCheckWithRel32Jump) {
  // glibc 2.36: test %rdi,%rdi; je rel32; push %rbp
  Bytes code{0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77};
  Placement placement = choose_probe_placement(ProbeRole::kFree, code);
  EXPECT_EQ(placement.offset, 9u);
  EXPECT_NE(placement.reason.find("NULL check"), std::string::npos);
}

TEST(ProbePlacement, FreeSkipsNullCheckWithRel8Jump) {
  Bytes code{0x48, 0x85, 0xff, 0x74, 0x10, 0x41, 0x54, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, code).offset, 5u);
}

TEST(ProbePlacement, FallsBackToEntryWhenTheInstructionAfterTheCheckIsNotEmulated) {
  Bytes code{0x48, 0x85, 0xff, 0x74, 0x10, 0x48, 0x8b, 0x07, 0x90, 0x90, 0x90, 0x90, 0x90};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, code).offset, 0u);
}

TEST(ProbePlacement, FallsBackToEntryWhenABranchLandsOnTheProbedInstruction) {
  // test %rdi,%rdi; je +4; push %rbp; nop; jmp back to the push; ret
  Bytes code{0x48, 0x85, 0xff, 0x74, 0x04, 0x55, 0x90, 0xeb, 0xfc, 0xc3};
  Placement placement = choose_probe_placement(ProbeRole::kFree, code);
  EXPECT_EQ(placement.offset, 0u);
  EXPECT_NE(placement.reason.find("branch"), std::string::npos) << placement.reason;
}

TEST(ProbePlacement, OnlyFreeMaySkipItsFirstInstructions) {
  // For malloc, skipping code would miss calls (malloc(0) is a real allocation).
  Bytes code{0x48, 0x85, 0xff, 0x74, 0x10, 0x55, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kSizeAlloc, code).offset, 0u);
}

// Code built for CET starts with endbr64 (single-stepped): libstdc++'s operators.
TEST(ProbePlacement, SkipsEndbr64WhenTheNextInstructionIsEmulated) {
  // endbr64; jmp free@plt (operator delete)
  Placement jump = choose_probe_placement(ProbeRole::kDelete,
                                          Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x87, 0x2f, 0xff, 0xff});
  EXPECT_EQ(jump.offset, 4u);
  EXPECT_EQ(jump.reason, "after endbr64, on an emulated jmp");
  // endbr64; push %rbx
  EXPECT_EQ(choose_probe_placement(ProbeRole::kSizeAlloc, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0x53}).offset,
            4u);
  // endbr64; test %rdi,%rdi (operator new): no emulated instruction to move to.
  Placement entry = choose_probe_placement(
      ProbeRole::kSizeAlloc, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 1, 0, 0, 0});
  EXPECT_EQ(entry.offset, 0u);
  EXPECT_EQ(entry.reason, "entry (endbr64, single-stepped)");
  // An indirect jump is not emulated.
  EXPECT_EQ(choose_probe_placement(ProbeRole::kDelete, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0xff, 0xe0})
                .offset,
            0u);
}

TEST(ProbePlacement, ShortOrEmptyCodeIsProbedAtEntry) {
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, Bytes{}).offset, 0u);
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, Bytes{0x48, 0x85, 0xff}).offset, 0u);
}

// The C library this test itself runs on, found the way memtrail finds a target's.
AllocatorModule own_allocator() {
  auto mappings = read_proc_maps(static_cast<uint32_t>(getpid()));
  EXPECT_TRUE(mappings.has_value());
  return find_allocator(static_cast<uint32_t>(getpid()), *mappings);
}

TEST(AllocatorDiscovery, FindsTheCLibraryOfALiveProcess) {
  AllocatorModule module = own_allocator();
  EXPECT_NE(module.path.find("libc.so"), std::string::npos) << module.path;
  EXPECT_EQ(module.open_path, "/proc/" + std::to_string(getpid()) + "/root" + module.path);
  std::set<std::string> names;
  std::set<uint64_t> entries;
  for (const auto& function : module.functions) {
    names.insert(function.name);
    EXPECT_TRUE(entries.insert(function.entry_offset).second)
        << function.name << " shares its address with another probed function";
    EXPECT_GE(function.probe_offset, function.entry_offset);
    EXPECT_LT(function.probe_offset, function.entry_offset + 16);
    EXPECT_FALSE(function.placement.empty());
  }
  for (const char* required : {"malloc", "calloc", "realloc", "free", "posix_memalign"}) {
    EXPECT_TRUE(names.count(required)) << required;
  }
}

TEST(AllocatorDiscovery, EntryOffsetsMatchTheSymbolTable) {
  AllocatorModule module = own_allocator();
  ElfFile elf = ElfFile::open(module.open_path);
  for (const auto& function : module.functions) {
    auto symbol = elf.find_function(function.name);
    ASSERT_TRUE(symbol.has_value()) << function.name;
    EXPECT_EQ(elf.file_offset_of(symbol->address), function.entry_offset) << function.name;
    // The placement is the one the decoder picks for the function's real first bytes.
    Placement expected = choose_probe_placement(function.role, elf.read_code(symbol->address, 16));
    EXPECT_EQ(function.probe_offset - function.entry_offset, expected.offset) << function.name;
  }
}

TEST(AllocatorDiscovery, FileWithoutMallocIsNotAnAllocator) {
  // The dynamic loader has its own minimal allocator but exports no malloc.
  std::string loader = "/lib64/ld-linux-x86-64.so.2";
  if (access(loader.c_str(), R_OK) == 0) {
    EXPECT_FALSE(allocator_in_file(loader, loader).has_value());
  }
}

TEST(AllocatorDiscovery, NonElfFileIsAClearError) {
  try {
    allocator_in_file("/etc/hostname", "/etc/hostname");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("not an ELF file"), std::string::npos) << error.what();
  }
}

TEST(AllocatorDiscovery, MissingFileIsAClearError) {
  try {
    allocator_in_file("/nonexistent/lib.so", "/nonexistent/lib.so");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/lib.so"), std::string::npos);
  }
}

TEST(AllocatorDiscovery, NoAllocatorAmongMappingsIsAClearError) {
  std::vector<Mapping> mappings{{0x1000, 0x2000, 0, true, true, 1, "/etc/hostname"}};
  try {
    find_allocator(static_cast<uint32_t>(getpid()), mappings);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("no allocator found"), std::string::npos);
    EXPECT_FALSE(error.hint().empty());
  }
}

TEST(AllocatorKinds, EveryKindHasItsFunctionName) {
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_MALLOC), "malloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_CALLOC), "calloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_REALLOC), "realloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_REALLOCARRAY), "reallocarray");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_POSIX_MEMALIGN), "posix_memalign");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_ALIGNED_ALLOC), "aligned_alloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_MEMALIGN), "memalign");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_VALLOC), "valloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_PVALLOC), "pvalloc");
  EXPECT_EQ(kind_name(MEMTRAIL_KIND_COUNT), "unknown");
}

}  // namespace
}  // namespace memtrail::target
