// SPDX-License-Identifier: Apache-2.0
// Allocator discovery in real ELF files, and placement of entry probes on emulated instructions.
#include "inspect/allocator.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "common/error.h"
#include "common/unique_fd.h"
#include "inspect/elf_file.h"

namespace memtrail::inspect {
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

// The instruction after the NULL check is single-stepped: the check's je itself (emulated) is
// probed, the pointer still in rdi (free's program ignores a NULL).
TEST(ProbePlacement, FreeIsProbedOnItsNullChecksJumpWhenTheInstructionAfterIsNotEmulated) {
  Bytes code{0x48, 0x85, 0xff, 0x74, 0x10, 0x48, 0x8b, 0x07, 0x90, 0x90, 0x90, 0x90, 0x90};
  Placement placement = choose_probe_placement(ProbeRole::kFree, code);
  EXPECT_EQ(placement.offset, 3u);
  EXPECT_EQ(placement.reason, "on the first jump, an emulated je, with the pointer still in rdi");
}

// jemalloc 5.3's free: loads and arithmetic (single-stepped) up to a jne, rdi untouched.
TEST(ProbePlacement, FreeIsProbedOnTheFirstJumpOfItsStraightCode) {
  // mov %rdi,%rax; mov %rdi,%rcx; shr $0x1a,%rax; cmp %rcx,%rax; jne +0x10; ret
  Bytes code{0x48, 0x89, 0xf8, 0x48, 0x89, 0xf9, 0x48, 0xc1,
             0xe8, 0x1a, 0x48, 0x39, 0xc8, 0x75, 0x10, 0xc3};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, code).offset, 13u);
  // Not when rdi is written on the way (lea -1(%rdi),%rdi), nor for malloc.
  Bytes writes{0x48, 0x8d, 0x7f, 0xff, 0x75, 0x10, 0xc3};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, writes).offset, 0u);
  EXPECT_EQ(choose_probe_placement(ProbeRole::kSizeAlloc, code).offset, 0u);
  // Nor when a branch lands on the way: mov %rdi,%rax; cmp %rcx,%rax; jne; jmp back to the
  // cmp; ret
  Bytes lands{0x48, 0x89, 0xf8, 0x48, 0x39, 0xc8, 0x75, 0x10, 0xeb, 0xf9, 0xc3};
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, lands).offset, 0u);
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
  Placement jump = choose_probe_placement(
      ProbeRole::kDelete, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x87, 0x2f, 0xff, 0xff});
  EXPECT_EQ(jump.offset, 4u);
  EXPECT_EQ(jump.reason, "after endbr64, on an emulated jmp");
  // endbr64; push %rbx
  EXPECT_EQ(
      choose_probe_placement(ProbeRole::kSizeAlloc, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0x53}).offset,
      4u);
  // endbr64; test %rdi,%rdi (operator new): no emulated instruction to move to.
  Placement entry = choose_probe_placement(
      ProbeRole::kSizeAlloc, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 1, 0, 0, 0});
  EXPECT_EQ(entry.offset, 0u);
  EXPECT_EQ(entry.reason, "entry (endbr64, single-stepped)");
  // An indirect jump is not emulated.
  EXPECT_EQ(
      choose_probe_placement(ProbeRole::kDelete, Bytes{0xf3, 0x0f, 0x1e, 0xfa, 0xff, 0xe0}).offset,
      0u);
}

TEST(ProbePlacement, ShortOrEmptyCodeIsProbedAtEntry) {
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, Bytes{}).offset, 0u);
  EXPECT_EQ(choose_probe_placement(ProbeRole::kFree, Bytes{0x48, 0x85, 0xff}).offset, 0u);
}

// The C library this test itself runs on, found the way memtrail finds a target's.
ProcessAllocators own_allocators() {
  auto pid = static_cast<uint32_t>(getpid());
  auto mappings = read_proc_maps(pid);
  EXPECT_TRUE(mappings.has_value());
  return resolve_allocators(pid, process_load_order(pid, *mappings), false, {});
}

AllocatorModule own_allocator() {
  ProcessAllocators allocators = own_allocators();
  EXPECT_NE(allocators.primary(), nullptr);
  return allocators.primary() ? *allocators.primary() : AllocatorModule{};
}

TEST(AllocatorDiscovery, FindsTheCLibraryOfALiveProcess) {
  AllocatorModule module = own_allocator();
  EXPECT_NE(module.path.find("libc.so"), std::string::npos) << module.path;
  // Opened and probed through the process's own mapping of the file, not by its name.
  EXPECT_TRUE(module.file.mapped());
  EXPECT_EQ(module.file.pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(module.file.path, module.path);
  EXPECT_NE(module.file.inode, 0u);
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
  ElfFile elf = ElfFile::open(open_file(module.file).fd, module.path);
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
    EXPECT_FALSE(allocator_in_file(file_in_root(0, loader)).has_value());
  }
}

TEST(AllocatorDiscovery, NonElfFileIsAClearError) {
  try {
    allocator_in_file(file_in_root(0, "/etc/hostname"));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("not an ELF file"), std::string::npos) << error.what();
  }
}

TEST(AllocatorDiscovery, MissingFileIsAClearError) {
  try {
    allocator_in_file(file_in_root(0, "/nonexistent/lib.so"));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/lib.so"), std::string::npos);
  }
}

TEST(AllocatorDiscovery, NoAllocatorAmongMappingsIsAClearError) {
  LoadOrder order;
  order.modules.push_back({file_in_root(0, "/etc/hostname"), true});
  order.modules.push_back({file_in_root(0, "/lib64/ld-linux-x86-64.so.2"), false});
  try {
    resolve_allocators(static_cast<uint32_t>(getpid()), order, false, {});
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("no allocator found"), std::string::npos);
    EXPECT_FALSE(error.hint().empty());
  }
}

TEST(AllocatorKinds, EveryKindHasItsFunctionName) {
  EXPECT_EQ(kind_name(model::AllocationKind::kMalloc), "malloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kCalloc), "calloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kRealloc), "realloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kReallocArray), "reallocarray");
  EXPECT_EQ(kind_name(model::AllocationKind::kPosixMemalign), "posix_memalign");
  EXPECT_EQ(kind_name(model::AllocationKind::kAlignedAlloc), "aligned_alloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kMemalign), "memalign");
  EXPECT_EQ(kind_name(model::AllocationKind::kValloc), "valloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kPvalloc), "pvalloc");
  EXPECT_EQ(kind_name(model::AllocationKind::kUnknown), "unknown");
}

}  // namespace
}  // namespace memtrail::inspect

// ---- load order and binding (no root: this process's own memory, Debian's libraries) ----

namespace memtrail::inspect {
namespace {

std::string real(const std::string& path) {
  char resolved[PATH_MAX];
  return ::realpath(path.c_str(), resolved) ? resolved : path;
}

// DT_NEEDED entries of a file, in order, as readelf prints them.
std::vector<std::string> needed_of(const std::string& path) {
  std::vector<std::string> needed;
  std::string command = "readelf -d '" + path + "' 2>/dev/null";
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof(line), pipe)) {
      std::string text = line;
      size_t open = text.find("Shared library: [");
      if (open == std::string::npos) continue;
      open += 17;
      needed.push_back(text.substr(open, text.find(']', open) - open));
    }
    pclose(pipe);
  }
  return needed;
}

std::string soname_of(const std::string& path) {
  std::string command = "readelf -d '" + path + "' 2>/dev/null";
  std::string soname;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof(line), pipe)) {
      std::string text = line;
      size_t open = text.find("Library soname: [");
      if (open != std::string::npos) {
        open += 17;
        soname = text.substr(open, text.find(']', open) - open);
      }
    }
    pclose(pipe);
  }
  return soname;
}

std::string file_name(const std::string& path) { return path.substr(path.rfind('/') + 1); }

TEST(LoadOrder, ALiveProcessIsItsExecutableThenItsNeededLibrariesInOrder) {
  auto pid = static_cast<uint32_t>(getpid());
  auto mappings = read_proc_maps(pid);
  ASSERT_TRUE(mappings.has_value());
  LoadOrder order = process_load_order(pid, *mappings);
  EXPECT_NE(order.source.find("link map"), std::string::npos) << order.source;
  EXPECT_FALSE(order.static_executable);
  ASSERT_GE(order.modules.size(), 3u);
  EXPECT_TRUE(order.modules[0].main_program);
  EXPECT_EQ(order.modules[0].file.path, real("/proc/self/exe"));
  // Breadth first: right after the executable come its own DT_NEEDED libraries, in its order
  // (this test runs without LD_PRELOAD), whatever addresses the kernel mapped them at.
  std::vector<std::string> needed = needed_of(order.modules[0].file.path);
  ASSERT_FALSE(needed.empty());
  for (size_t i = 0; i < needed.size(); ++i) {
    ASSERT_LT(i + 1, order.modules.size());
    // The maps name the real file (libelf-0.188.so), DT_NEEDED its soname (libelf.so.1).
    EXPECT_EQ(soname_of(order.modules[i + 1].file.path), needed[i])
        << "position " << i + 1 << ": " << order.modules[i + 1].file.path << ", expected "
        << needed[i];
  }
}

TEST(LoadOrder, TheLoaderListIsParsedInItsOrder) {
  std::string text =
      "\tlinux-vdso.so.1 (0x00007ffd1d5f2000)\n"
      "\t/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f0a3c400000)\n"
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a3c21f000)\n"
      "\tlibmissing.so.1 => not found\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0a3c87c000)\n";
  std::vector<std::string> expected{"/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                                    "/lib/x86_64-linux-gnu/libc.so.6",
                                    "/lib64/ld-linux-x86-64.so.2"};
  EXPECT_EQ(parse_loader_list(text), expected);
}

TEST(LoadOrder, ACommandIsOrderedByItsOwnLoader) {
  LoadOrder order = command_load_order(real("/proc/self/exe"));
  ASSERT_GE(order.modules.size(), 2u);
  EXPECT_TRUE(order.modules[0].main_program);
  bool libc = false;
  for (const auto& module : order.modules) libc |= file_name(module.file.path) == "libc.so.6";
  EXPECT_TRUE(libc);
}

// The libraries scripts/install-deps.sh --tests installs. Missing ones skip here (these are
// unit tests); the integration tests fail instead.
const std::string kLibDir = "/usr/lib/x86_64-linux-gnu/";
const std::string kLibc = kLibDir + "libc.so.6";

LoadOrder order_of(std::vector<std::string> libraries) {
  LoadOrder order;
  order.modules.push_back({file_in_root(0, "/bin/true"), true});
  for (const auto& library : libraries) order.modules.push_back({file_in_root(0, library), false});
  return order;
}

const AllocatorModule* module_at(const ProcessAllocators& allocators, const std::string& path) {
  for (const auto& module : allocators.modules) {
    if (module.path == path) return &module;
  }
  return nullptr;
}

std::set<std::string> names_of(const AllocatorModule* module) {
  std::set<std::string> names;
  if (module) {
    for (const auto& function : module->functions) names.insert(function.name);
  }
  return names;
}

#define REQUIRE_LIBRARY(path)                                                          \
  do {                                                                                 \
    if (access((path).c_str(), R_OK) != 0) {                                           \
      GTEST_SKIP() << (path) << " is not installed (scripts/install-deps.sh --tests)"; \
    }                                                                                  \
  } while (0)

TEST(AllocatorBinding, JemallocBeforeLibcTakesTheMallocFamilyAndLibcKeepsTheRest) {
  std::string jemalloc = kLibDir + "libjemalloc.so.2";
  REQUIRE_LIBRARY(jemalloc);
  ProcessAllocators allocators = resolve_allocators(1, order_of({jemalloc, kLibc}), false, {});
  ASSERT_NE(allocators.primary(), nullptr);
  EXPECT_EQ(allocators.primary()->name, "jemalloc");
  EXPECT_EQ(allocators.primary()->path, jemalloc);
  auto je = names_of(module_at(allocators, jemalloc));
  for (const char* name : {"malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc",
                           "mallocx", "rallocx", "dallocx", "sdallocx"}) {
    EXPECT_TRUE(je.count(name)) << name;
  }
  // libc's malloc and free are shadowed: never probed. Its reallocarray and pvalloc, which
  // jemalloc lacks, are where calls bind.
  auto libc = names_of(module_at(allocators, kLibc));
  EXPECT_FALSE(libc.count("malloc"));
  EXPECT_FALSE(libc.count("free"));
  EXPECT_TRUE(libc.count("reallocarray"));
  EXPECT_TRUE(libc.count("pvalloc"));
  for (const auto& function : module_at(allocators, jemalloc)->functions) {
    if (function.name == "mallocx") {
      EXPECT_EQ(kind_name(function.kind), "mallocx");
    }
  }
}

TEST(AllocatorBinding, LibcFirstKeepsMallocAndJemallocKeepsOnlyItsOwnApi) {
  std::string jemalloc = kLibDir + "libjemalloc.so.2";
  REQUIRE_LIBRARY(jemalloc);
  // A library that needs jemalloc, loaded after libc (breadth first): both are live.
  ProcessAllocators allocators = resolve_allocators(1, order_of({kLibc, jemalloc}), false, {});
  EXPECT_EQ(allocators.primary()->name, "glibc");
  auto je = names_of(module_at(allocators, jemalloc));
  EXPECT_EQ(je, (std::set<std::string>{"mallocx", "rallocx", "dallocx", "sdallocx"}));
}

TEST(AllocatorBinding, TcmallocAliasesAreProbedOnceUnderTheStandardName) {
  for (const std::string library : {"libtcmalloc.so.4", "libtcmalloc_minimal.so.4"}) {
    std::string path = real(kLibDir + library);
    REQUIRE_LIBRARY(path);
    ProcessAllocators allocators = resolve_allocators(1, order_of({path, kLibc}), true, {});
    const AllocatorModule* module = module_at(allocators, path);
    ASSERT_NE(module, nullptr);
    EXPECT_EQ(module->name, "tcmalloc");
    auto names = names_of(module);
    EXPECT_TRUE(names.count("malloc"));
    EXPECT_TRUE(names.count("free"));
    EXPECT_FALSE(names.count("tc_malloc")) << "tc_malloc is malloc: one probe";
    EXPECT_FALSE(names.count("_ZdlPv")) << "delete is free in tcmalloc: one probe";
    std::set<uint64_t> offsets;
    for (const auto& function : module->functions) {
      EXPECT_TRUE(offsets.insert(function.entry_offset).second) << function.name;
      EXPECT_NE(function.role, ProbeRole::kDelete) << function.name;
    }
    EXPECT_FALSE(module->note.empty());
    // glibc keeps only what tcmalloc lacks: reallocarray (which calls realloc: tcmalloc's).
    EXPECT_EQ(names_of(module_at(allocators, kLibc)), std::set<std::string>{"reallocarray"});
  }
}

TEST(AllocatorBinding, MimallocOverridesAndItsOwnApiIsProbedWhereNotAnAlias) {
  std::string mimalloc = real(kLibDir + "libmimalloc.so.2");
  REQUIRE_LIBRARY(mimalloc);
  ProcessAllocators allocators = resolve_allocators(1, order_of({mimalloc, kLibc}), false, {});
  EXPECT_EQ(allocators.primary()->name, "mimalloc");
  auto names = names_of(module_at(allocators, mimalloc));
  EXPECT_TRUE(names.count("malloc"));
  EXPECT_FALSE(names.count("mi_malloc"));  // the same function as malloc
  EXPECT_TRUE(names.count("mi_zalloc"));
  EXPECT_TRUE(names.count("mi_heap_malloc"));
  EXPECT_EQ(module_at(allocators, kLibc), nullptr) << "mimalloc defines every libc name";
}

TEST(AllocatorBinding, ASecondAllocatorLaterInLoadOrderKeepsOnlyItsOwnNames) {
  std::string tcmalloc = real(kLibDir + "libtcmalloc_minimal.so.4");
  std::string jemalloc = kLibDir + "libjemalloc.so.2";
  REQUIRE_LIBRARY(tcmalloc);
  REQUIRE_LIBRARY(jemalloc);
  ProcessAllocators allocators =
      resolve_allocators(1, order_of({jemalloc, tcmalloc, kLibc}), false, {});
  EXPECT_EQ(allocators.primary()->name, "jemalloc");
  // tcmalloc's tc_* names still bind to it (nobody else has them): it is partly traced.
  auto tc = names_of(module_at(allocators, tcmalloc));
  EXPECT_TRUE(tc.count("tc_malloc"));
  EXPECT_FALSE(tc.count("malloc"));
}

TEST(AllocatorBinding, CustomFunctionsAreProbedInTheirRoleUnderTheirOwnName) {
  std::vector<CustomAllocator> custom{
      {kLibc, file_in_root(0, kLibc), {{"__libc_malloc", "malloc"}, {"__libc_free", "free"}}}};
  ProcessAllocators allocators = resolve_allocators(1, order_of({kLibc}), false, custom);
  ASSERT_EQ(allocators.modules.size(), 1u);  // same file: added to its module
  EXPECT_EQ(allocators.primary()->name, "glibc");
  // __libc_malloc is malloc's alias in glibc: already probed, not twice.
  auto names = names_of(&allocators.modules[0]);
  EXPECT_FALSE(names.count("__libc_malloc"));
}

TEST(AllocatorBinding, CustomErrorsNameTheFileAndTheSymbol) {
  std::vector<CustomAllocator> missing_symbol{
      {kLibc, file_in_root(0, kLibc), {{"no_such_alloc", "malloc"}}}};
  try {
    resolve_allocators(1, order_of({kLibc}), false, missing_symbol);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("defines no function no_such_alloc"),
              std::string::npos)
        << error.what();
  }
  std::vector<CustomAllocator> missing_file{
      {"/nonexistent.so", file_in_root(0, "/nonexistent.so"), {}}};
  EXPECT_THROW(resolve_allocators(1, order_of({kLibc}), false, missing_file), Error);
}

TEST(AllocatorClassification, NamesTheAllocatorFromItsSymbols) {
  EXPECT_EQ(classify_allocator(file_in_root(0, kLibc), false, false), "glibc");
  EXPECT_EQ(classify_allocator(file_in_root(0, "/lib64/ld-linux-x86-64.so.2"), false, false), "");
  std::string jemalloc = kLibDir + "libjemalloc.so.2";
  if (access(jemalloc.c_str(), R_OK) == 0) {
    EXPECT_EQ(classify_allocator(file_in_root(0, jemalloc), false, false), "jemalloc");
  }
}

// --- ElfFile: what the unwind-table builder and the symbolizer read through it ---------------

std::string build_id_by_readelf(const std::string& path) {
  std::string command = "readelf -n '" + path + "' 2>/dev/null";
  std::string build_id;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof(line), pipe)) {
      std::string text = line;
      size_t label = text.find("Build ID: ");
      if (label == std::string::npos) continue;
      build_id = text.substr(label + 10);
      while (!build_id.empty() && std::isspace(static_cast<unsigned char>(build_id.back())))
        build_id.pop_back();
    }
    pclose(pipe);
  }
  return build_id;
}

TEST(ElfFile, ReadsTheHeaderSegmentsSectionsAndBuildIdOfThisTest) {
  std::string self = real("/proc/self/exe");
  ElfFile elf = ElfFile::open(self);
  EXPECT_TRUE(elf.is_x86_64());
  EXPECT_EQ(elf.header().e_ident[EI_CLASS], ELFCLASS64);
  EXPECT_NE(elf.elf(), nullptr);
  bool executable = false;
  for (const LoadSegment& segment : elf.load_segments()) {
    EXPECT_GE(segment.memory_size, segment.file_size);
    executable = executable || segment.executable;
  }
  EXPECT_TRUE(executable) << "no executable PT_LOAD in " << self;

  auto text = elf.find_section(".text");
  ASSERT_TRUE(text);
  EXPECT_EQ(text->header.sh_type, static_cast<uint32_t>(SHT_PROGBITS));
  Elf_Data* data = elf.section_data(*text);
  ASSERT_NE(data, nullptr);
  EXPECT_EQ(data->d_size, text->header.sh_size);
  // The section's first bytes are the code read_code finds at its address.
  std::vector<uint8_t> code = elf.read_code(text->header.sh_addr, 16);
  ASSERT_EQ(code.size(), 16u);
  EXPECT_EQ(std::memcmp(code.data(), data->d_buf, code.size()), 0);
  EXPECT_FALSE(elf.find_section(".no_such_section"));

  std::string expected = build_id_by_readelf(self);
  ASSERT_FALSE(expected.empty()) << "readelf shows no build id for " << self;
  EXPECT_EQ(elf.build_id(), expected);
}

TEST(ElfFile, OwnsTheDescriptorItIsOpenedFrom) {
  std::string self = real("/proc/self/exe");
  UniqueFd fd(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  int raw = fd.get();
  {
    ElfFile elf = ElfFile::open(std::move(fd), self);
    EXPECT_EQ(elf.fd(), raw);
    EXPECT_EQ(elf.path(), self);
    EXPECT_TRUE(elf.find_function("main"));
  }
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1) << "the descriptor outlived its ElfFile";

  // Also when the file is refused: the message names it and says why.
  UniqueFd text(::open("/etc/hostname", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(text);
  raw = text.get();
  try {
    ElfFile::open(std::move(text), "/etc/hostname");
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/etc/hostname is not an ELF file"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1) << "a refused file's descriptor was left open";
}

}  // namespace
}  // namespace memtrail::inspect

namespace memtrail::inspect {
namespace {

// The message ElfFile::open throws for the first `size` bytes of /bin/true ("" if none).
std::string error_opening_truncated_true(size_t size) {
  std::FILE* source = std::fopen("/bin/true", "rb");
  if (!source) return "no /bin/true";
  std::vector<char> bytes(size);
  size_t got = std::fread(bytes.data(), 1, size, source);
  std::fclose(source);
  char path[] = "/tmp/memtrail-truncated-elf-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  ssize_t written = ::write(fd, bytes.data(), got);
  ::close(fd);
  std::string message;
  if (written != static_cast<ssize_t>(got)) return "write failed";
  try {
    ElfFile::open(path);
  } catch (const Error& error) {
    message = error.what();
  }
  ::unlink(path);
  return message + "|" + path;
}

TEST(ElfFile, ATruncatedFileSaysSoInsteadOfHavingNoSymbols) {
  // Cut inside the program headers and after them: libelf read what was there, and the
  // allocator then "defines no function malloc".
  for (size_t size : {size_t{100}, size_t{3000}}) {
    std::string result = error_opening_truncated_true(size);
    std::string path = result.substr(result.find('|') + 1);
    EXPECT_EQ(result.substr(0, result.find('|')),
              path + " is truncated or damaged: its ELF header points past its end (" +
                  std::to_string(size) + " bytes)");
  }
}

}  // namespace
}  // namespace memtrail::inspect
