// SPDX-License-Identifier: Apache-2.0
// Return sites of malloc and calloc: glibc 2.36, mimalloc, tcmalloc and jemalloc as installed,
// and synthetic code, some of which must fall back to entry and return probes.
#include "inspect/return_sites.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iostream>

#include "inspect/allocator.h"
#include "inspect/elf_file.h"

namespace memtrail::inspect {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr const char* kLibc = "/lib/x86_64-linux-gnu/libc.so.6";

ReturnSiteQuery synthetic(Bytes code) {
  ReturnSiteQuery query;
  query.address = 0x1000;
  query.code = std::move(code);
  query.classify_tail_call = [](uint64_t) { return TailCall::kUnknown; };
  return query;
}

// push %rbx; mov %rdi,%rbx; call +0 (returns); test %rax,%rax; je null; pop %rbx; ret;
// null: xor %eax,%eax; pop %rbx; ret: the je sees the pointer, the size in %rbx.
const Bytes kSimple{0x53, 0x48, 0x89, 0xfb, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48,
                    0x85, 0xc0, 0x74, 0x02, 0x5b, 0xc3, 0x31, 0xc0, 0x5b, 0xc3};

TEST(ReturnSites, ASimpleFunctionHasOneSiteWithTheSizeInACalleeSavedRegister) {
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(kSimple));
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  const ReturnSite& site = analysis.sites[0];
  EXPECT_EQ(site.offset, 12u);          // the je
  EXPECT_EQ(site.pointer_register, 0);  // rax
  ASSERT_TRUE(site.size_register.has_value());
  EXPECT_EQ(*site.size_register, 3);  // rbx
  EXPECT_EQ(site.frame_bytes, 8u);    // one push
  EXPECT_FALSE(site.saved_bp_offset.has_value());
  EXPECT_TRUE(analysis.captures.empty());
  // The NULL path's own ret: only failing calls pass it.
  EXPECT_EQ(analysis.failure_offsets, std::vector<uint64_t>{19}) << analysis.reason;
}

TEST(ReturnSites, ANullReturnSharingEveryInstructionWithAPointerFallsBack) {
  // push %rbx; mov %rdi,%rbx; call +0; test %rax,%rax; je out; nop; out: pop %rbx; ret: a
  // failed call and a successful one leave by the same instructions.
  ReturnSiteAnalysis analysis =
      find_return_sites(synthetic({0x53, 0x48, 0x89, 0xfb, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85,
                                   0xc0, 0x74, 0x01, 0x90, 0x5b, 0xc3}));
  EXPECT_TRUE(analysis.sites.empty());
  EXPECT_NE(analysis.reason.find("a failing call (NULL) cannot be counted"), std::string::npos)
      << analysis.reason;
}

TEST(ReturnSites, AnIndirectJumpFallsBack) {
  // push %rbx; call +0; jmp *%rax
  ReturnSiteAnalysis analysis =
      find_return_sites(synthetic({0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xff, 0xe0}));
  EXPECT_TRUE(analysis.sites.empty());
  EXPECT_NE(analysis.reason.find("indirect jump"), std::string::npos) << analysis.reason;
}

TEST(ReturnSites, AnUnknownTailCallWithAFrameOnTheStackFallsBack) {
  // push %rbx; call +0; jmp 0x5000 (outside): its return address is not at %rsp.
  Bytes code{0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xe9, 0x00, 0x00, 0x00, 0x00};
  int32_t displacement = 0x5000 - (0x1000 + 11);
  std::memcpy(&code[7], &displacement, 4);
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(code));
  EXPECT_TRUE(analysis.sites.empty());
  EXPECT_NE(analysis.reason.find("unknown function, called with a frame on the stack"),
            std::string::npos)
      << analysis.reason;
}

// push %rbx; mov %rdi,%rbx; call +0; test %rax,%rax; je slow; pop %rbx; ret;
// slow: mov %rbx,%rdi; pop %rbx; jmp 0x5000: the je sees the pointer; the jump to the slow
// path, with the entry's stack and the size in rdi, gets entry and return probes.
Bytes with_slow_path(bool pop_before_jump) {
  Bytes code{0x53, 0x48, 0x89, 0xfb, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74,
             0x02, 0x5b, 0xc3, 0x48, 0x89, 0xdf, 0x5b, 0xe9, 0x00, 0x00, 0x00, 0x00};
  if (!pop_before_jump) code[19] = 0x90;  // nop
  int32_t displacement = 0x5000 - (0x1000 + 25);
  std::memcpy(&code[21], &displacement, 4);
  return code;
}

TEST(ReturnSites, AJumpToTheSlowPathWithTheEntrysStackIsHandedOver) {
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(with_slow_path(true)));
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.sites[0].offset, 12u);  // the je
  ASSERT_EQ(analysis.handoffs.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.handoffs[0].offset, 20u);                               // the jmp
  EXPECT_EQ(analysis.handoffs[0].size_register, std::optional<uint8_t>(7));  // rdi
  EXPECT_EQ(analysis.handoffs[0].target, 0x5000u);
  // The slow path's NULL is counted by its return probe: no failure site.
  EXPECT_TRUE(analysis.failure_offsets.empty()) << analysis.reason;
  ReturnSiteAnalysis framed = find_return_sites(synthetic(with_slow_path(false)));
  EXPECT_TRUE(framed.sites.empty());
  EXPECT_NE(framed.reason.find("called with a frame on the stack"), std::string::npos)
      << framed.reason;
}

TEST(ReturnSites, ASiteFollowedByAJumpToTheSlowPathFallsBack) {
  // call +0; test %rax,%rax; jne over; over: jmp 0x5000: the only instruction seeing the
  // pointer (the jne) is followed by the slow path, whose return probe would record it again.
  Bytes code{0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0,
             0x75, 0x00, 0xe9, 0x00, 0x00, 0x00, 0x00, 0xc3};
  int32_t displacement = 0x5000 - (0x1000 + 15);
  std::memcpy(&code[11], &displacement, 4);
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(code));
  EXPECT_TRUE(analysis.sites.empty()) << analysis.reason;
}

TEST(ReturnSites, APointerReturnedWithoutAnEmulatedInstructionAfterItFallsBack) {
  // call +0; ret: nothing the kernel emulates between the pointer and the return.
  ReturnSiteAnalysis analysis = find_return_sites(synthetic({0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3}));
  EXPECT_TRUE(analysis.sites.empty());
  EXPECT_NE(analysis.reason.find("no emulated instruction"), std::string::npos) << analysis.reason;
}

TEST(ReturnSites, ASizeLostAtTheSiteIsTakenByTheCallThatClobbersIt) {
  // push %rbx; call +0; test %rax,%rax; je null; pop %rbx; ret; null: xor; pop; ret: the size
  // (rdi) is clobbered by the call, which still sees it.
  Bytes code{0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0,
             0x74, 0x02, 0x5b, 0xc3, 0x31, 0xc0, 0x5b, 0xc3};
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(code));
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_FALSE(analysis.sites[0].size_register.has_value());
  EXPECT_TRUE(analysis.sites[0].size_captured);
  ASSERT_EQ(analysis.captures.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.captures[0].offset, 1u);        // the call
  EXPECT_EQ(analysis.captures[0].size_register, 7);  // rdi
  EXPECT_EQ(analysis.captures[0].frame_bytes, 8u);   // after the push
}

TEST(ReturnSites, ASizeLostOnEveryPathFallsBackWithoutChunkHeaders) {
  // xor %edi,%edi; push %rbx; call +0; test %rax,%rax; je null; pop %rbx; ret; null: xor; pop;
  // ret: no emulated instruction ever sees the size.
  Bytes code{0x31, 0xff, 0x53, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85,
             0xc0, 0x74, 0x02, 0x5b, 0xc3, 0x31, 0xc0, 0x5b, 0xc3};
  ReturnSiteAnalysis without = find_return_sites(synthetic(code));
  EXPECT_TRUE(without.sites.empty());
  EXPECT_NE(without.reason.find("size"), std::string::npos) << without.reason;
  ReturnSiteQuery query = synthetic(code);
  query.chunk_header_sizes = true;
  ReturnSiteAnalysis with = find_return_sites(query);
  ASSERT_EQ(with.sites.size(), 1u) << with.reason;
  EXPECT_FALSE(with.sites[0].size_register.has_value());
  EXPECT_FALSE(with.sites[0].size_captured);
}

TEST(ReturnSites, ALoopBackThroughTheSiteFallsBack) {
  // top: call +0; test %rax,%rax; jne top; ret: the site would see every pointer but the
  // last one is returned... and NULL is what returns: no pointer is ever returned here, but
  // the jne is passed again with a pointer in rax.
  Bytes code{0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x75, 0xf6, 0xc3};
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(code));
  EXPECT_TRUE(analysis.sites.empty()) << analysis.reason;
}

// The installed glibc's functions, classified as memtrail classifies them.
ReturnSiteQuery libc_query(const ElfFile& elf, const char* name, bool calloc) {
  auto symbol = elf.find_function(name);
  EXPECT_TRUE(symbol.has_value());
  ReturnSiteQuery query;
  query.address = symbol->address;
  query.code = elf.read_code(symbol->address, symbol->size);
  query.product_of_arguments = calloc;
  query.chunk_header_sizes = true;
  query.classify_tail_call = [&elf](uint64_t target) { return classify_tail_call(elf, target); };
  return query;
}

// glibc 2.36's malloc: the tcache path, the arena path of a multi-threaded process, and
// _int_malloc on the main arena of a single-threaded one, where the size is gone (rbx then
// holds &main_arena): three conditional jumps with the pointer in rax, under a 40-byte frame
// (three pushes and 16 bytes) with the caller's rbp saved 16 bytes below the return address.
// The call into _int_malloc there takes the size (rsi); the ret that only NULL reaches counts
// failed calls.
TEST(ReturnSitesGlibc, MallocIsCoveredOnTheTcacheArenaAndSingleThreadPaths) {
  ElfFile elf = ElfFile::open(kLibc);
  ReturnSiteAnalysis analysis = find_return_sites(libc_query(elf, "malloc", false));
  ASSERT_EQ(analysis.sites.size(), 3u) << analysis.reason;
  int taken = 0;
  for (const auto& site : analysis.sites) {
    EXPECT_EQ(site.pointer_register, 0) << analysis.reason;  // rax
    EXPECT_EQ(site.frame_bytes, 40u);
    EXPECT_EQ(site.saved_bp_offset, std::optional<uint32_t>(24));
    EXPECT_TRUE(site.instruction == "jne" || site.instruction == "je") << site.instruction;
    if (site.size_register) {
      EXPECT_EQ(*site.size_register, 3) << analysis.reason;  // rbx = the size asked for
    } else {
      EXPECT_TRUE(site.size_captured) << analysis.reason;
      ++taken;
    }
  }
  EXPECT_EQ(taken, 1) << analysis.reason;
  ASSERT_EQ(analysis.captures.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.captures[0].size_register, 6) << analysis.reason;  // rsi, _int_malloc's bytes
  EXPECT_EQ(analysis.captures[0].frame_bytes, 40u);
  EXPECT_EQ(analysis.failure_offsets.size(), 1u) << analysis.reason;
}

// calloc returns through memset (a tail call through the PLT, an IRELATIVE slot) or a ret
// after zeroing in place; a site right after each of its three calls to _int_malloc (whose
// NULL is tested right before) covers both, the size (count * size) in rbx.
TEST(ReturnSitesGlibc, CallocIsCoveredIncludingItsTailCallToMemset) {
  ElfFile elf = ElfFile::open(kLibc);
  ReturnSiteAnalysis analysis = find_return_sites(libc_query(elf, "calloc", true));
  ASSERT_EQ(analysis.sites.size(), 3u) << analysis.reason;
  for (const auto& site : analysis.sites) {
    EXPECT_EQ(site.pointer_register, 0);
    ASSERT_TRUE(site.size_register.has_value()) << analysis.reason;
    EXPECT_EQ(*site.size_register, 3);
    EXPECT_EQ(site.frame_bytes, 56u);
  }
  EXPECT_TRUE(analysis.captures.empty());
  EXPECT_EQ(analysis.failure_offsets.size(), 1u) << analysis.reason;
}

// Without memset known, calloc's tail call to it is a jump to an unknown function, and the
// sites before it see the pointer on its way: the jne that guards the in-place zeroing becomes a
// site on its other edge only, and the jump to memset is handed over to entry and return probes
// (what calloc returns is what memset returns), its size taken earlier.
TEST(ReturnSitesGlibc, WithoutMemsetKnownCallocHandsItsTailCallOver) {
  ElfFile elf = ElfFile::open(kLibc);
  ReturnSiteQuery query = libc_query(elf, "calloc", true);
  query.classify_tail_call = [](uint64_t) { return TailCall::kUnknown; };
  ReturnSiteAnalysis analysis = find_return_sites(query);
  ASSERT_FALSE(analysis.sites.empty()) << analysis.reason;
  ASSERT_EQ(analysis.handoffs.size(), 1u) << analysis.reason;
  EXPECT_EQ(elf.plt_target(analysis.handoffs[0].target), "memset") << analysis.reason;
  EXPECT_TRUE(std::any_of(analysis.sites.begin(), analysis.sites.end(), [](const ReturnSite& site) {
    return site.condition.has_value();
  })) << analysis.reason;
}

TEST(ReturnSitesGlibc, ThePltStubOfCallocsTailCallIsMemset) {
  ElfFile elf = ElfFile::open(kLibc);
  auto memset = elf.find_function("memset");
  ASSERT_TRUE(memset.has_value());
  // Every PLT stub of libc is an IRELATIVE slot; one of them resolves to memset's resolver.
  auto calloc = elf.find_function("calloc");
  Bytes code = elf.read_code(calloc->address, calloc->size);
  bool found = false;
  for (size_t i = 0; i + 5 <= code.size(); ++i) {
    if (code[i] != 0xe9) continue;  // jmp rel32
    int32_t displacement = 0;
    std::memcpy(&displacement, &code[i + 1], 4);
    uint64_t target = calloc->address + i + 5 + static_cast<uint64_t>(int64_t{displacement});
    if (elf.plt_target(target) == "memset") found = true;
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(classify_tail_call(elf, elf.find_function("malloc")->address),
            TailCall::kRecordedElsewhere);
}

// The allocators' own libraries, as installed (scripts/install-deps.sh --tests), analysed as
// memtrail analyses them: no chunk header to read a usable size from.
ReturnSiteAnalysis analyse(const char* path, const char* name) {
  ElfFile elf = ElfFile::open(path);
  ReturnSiteQuery query = libc_query(elf, name, std::string(name) == "calloc");
  query.chunk_header_sizes = false;
  return find_return_sites(query);
}

constexpr const char* kMimalloc = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";
constexpr const char* kTcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
constexpr const char* kJemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

// mimalloc 2.0.9's malloc: the je on the free list's head (tested for NULL right before) sees
// the block in rdx and the size in rsi (rdi holds the heap); both slow paths jump to
// _mi_malloc_generic(heap, size, ...) with the entry's stack: entry and return probes there.
TEST(ReturnSitesMimalloc, MallocHasOneSiteOnItsFreeListAndHandsItsSlowPathsOver) {
  ReturnSiteAnalysis analysis = analyse(kMimalloc, "malloc");
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.sites[0].instruction, "je");
  EXPECT_EQ(analysis.sites[0].pointer_register, 2) << analysis.reason;  // rdx
  EXPECT_EQ(analysis.sites[0].size_register, std::optional<uint8_t>(6)) << analysis.reason;
  EXPECT_EQ(analysis.sites[0].frame_bytes, 0u);
  EXPECT_TRUE(analysis.captures.empty()) << analysis.reason;
  ASSERT_EQ(analysis.handoffs.size(), 2u) << analysis.reason;
  for (const auto& handoff : analysis.handoffs) {
    EXPECT_EQ(handoff.size_register, std::optional<uint8_t>(6)) << analysis.reason;  // rsi
    EXPECT_EQ(handoff.target, analysis.handoffs[0].target);  // the same slow path
  }
  EXPECT_TRUE(analysis.failure_offsets.empty()) << analysis.reason;
}

// Its calloc: count * size in rsi (or the size alone when count is 1, which it tests), the
// block in rcx on the jne before memset; one slow path; the overflow returns NULL.
TEST(ReturnSitesMimalloc, CallocHasOneSiteWithTheProductInARegister) {
  ReturnSiteAnalysis analysis = analyse(kMimalloc, "calloc");
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.sites[0].pointer_register, 1) << analysis.reason;  // rcx
  EXPECT_EQ(analysis.sites[0].size_register, std::optional<uint8_t>(6)) << analysis.reason;
  EXPECT_TRUE(analysis.captures.empty()) << analysis.reason;
  ASSERT_EQ(analysis.handoffs.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.handoffs[0].size_register, std::optional<uint8_t>(6)) << analysis.reason;
  EXPECT_EQ(analysis.failure_offsets.size(), 1u) << analysis.reason;
}

// tcmalloc's size class tables, as its nallocx reads them (both builds of gperftools 2.10:
// class_array_ then class_to_size_, 0xa7c bytes further in its SizeMap).
std::optional<SizeClassTables> tcmalloc_size_classes(const ElfFile& elf) {
  auto nallocx = elf.find_function("tc_nallocx");
  EXPECT_TRUE(nallocx.has_value());
  if (!nallocx) return std::nullopt;
  return find_size_class_tables(nallocx->address, elf.read_code(nallocx->address, nallocx->size));
}

// As the tracer asks for tcmalloc's functions: with its size class tables.
ReturnSiteAnalysis analyse_tcmalloc(const char* path, const char* name) {
  ElfFile elf = ElfFile::open(path);
  ReturnSiteQuery query = libc_query(elf, name, std::string(name) == "calloc");
  query.chunk_header_sizes = false;
  query.size_classes = tcmalloc_size_classes(elf);
  EXPECT_TRUE(query.size_classes.has_value());
  return find_return_sites(query);
}

constexpr const char* kTcmallocFull = "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4";

TEST(ReturnSitesTcmalloc, NallocxReadsTheClassIndexThenTheClassSizeTable) {
  for (const char* path : {kTcmalloc, kTcmallocFull}) {
    ElfFile elf = ElfFile::open(path);
    auto tables = tcmalloc_size_classes(elf);
    ASSERT_TRUE(tables.has_value()) << path;
    EXPECT_EQ(tables->class_sizes - tables->class_indexes, 0xa7cu) << path;
  }
}

// lea 0x100(%rip),%rdx; movzbl (%rdx,%rax,1),%eax; movslq 0x10(%rdx,%rax,4),%rax; ret: the
// byte table at 0x107, the size table 0x10 further. Returning the load in rcx instead (rax is
// then the class index): not a size class's size.
TEST(ReturnSitesTcmalloc, SizeClassTablesAreTheOnesWhoseLoadIsReturned) {
  const Bytes returns_size{0x48, 0x8d, 0x15, 0x00, 0x01, 0x00, 0x00, 0x0f, 0xb6,
                           0x04, 0x02, 0x48, 0x63, 0x44, 0x82, 0x10, 0xc3};
  auto tables = find_size_class_tables(0x1000, returns_size);
  ASSERT_TRUE(tables.has_value());
  EXPECT_EQ(tables->class_indexes, 0x1107u);
  EXPECT_EQ(tables->class_sizes, 0x1117u);
  Bytes returns_index = returns_size;
  returns_index[14] = 0x4c;  // movslq 0x10(%rdx,%rax,4),%rcx
  EXPECT_FALSE(find_size_class_tables(0x1000, returns_index).has_value());
}

// tcmalloc 2.10's malloc (libtcmalloc_minimal), with its size class tables: one site on its
// thread cache's free list, where the size asked for is gone (rdi holds the class array's
// index) but rsi holds the block's size class, loaded from the class index table: the site reads
// the class's size (the usable size) from the class size table, with no size capture, so the
// fast path pays one trap. Four slow paths: the OOM handlers with the size in rdi, and
// FetchFromCentralCache with the class index in rsi.
TEST(ReturnSitesTcmalloc, MallocReadsTheBlocksClassSizeAtItsOneSite) {
  ElfFile elf = ElfFile::open(kTcmalloc);
  auto tables = tcmalloc_size_classes(elf);
  ASSERT_TRUE(tables.has_value());
  uint64_t malloc_address = elf.find_function("malloc")->address;
  ReturnSiteAnalysis analysis = analyse_tcmalloc(kTcmalloc, "malloc");
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  const ReturnSite& site = analysis.sites[0];
  EXPECT_EQ(site.pointer_register, 9) << analysis.reason;  // r9
  EXPECT_EQ(site.usable_size, UsableSize::kClassIndexInRegister) << analysis.reason;
  EXPECT_EQ(site.size_register, std::optional<uint8_t>(6)) << analysis.reason;  // rsi
  EXPECT_FALSE(site.size_captured);
  EXPECT_EQ(site.class_sizes_from_here,
            static_cast<int64_t>(tables->class_sizes - (malloc_address + site.offset)));
  EXPECT_TRUE(analysis.captures.empty()) << analysis.reason;
  ASSERT_EQ(analysis.handoffs.size(), 4u) << analysis.reason;
  int by_class = 0;
  for (const auto& handoff : analysis.handoffs) {
    if (handoff.usable_size == UsableSize::kNo) {
      EXPECT_EQ(handoff.size_register, std::optional<uint8_t>(7)) << analysis.reason;  // rdi
      continue;
    }
    ++by_class;
    EXPECT_EQ(handoff.usable_size, UsableSize::kClassIndexInRegister) << analysis.reason;
    EXPECT_EQ(handoff.size_register, std::optional<uint8_t>(6)) << analysis.reason;  // rsi
    EXPECT_EQ(handoff.class_sizes_from_here,
              static_cast<int64_t>(tables->class_sizes - (malloc_address + handoff.offset)));
  }
  EXPECT_EQ(by_class, 1) << analysis.reason;
  EXPECT_NE(analysis.reason.find("size usable: its class's, from the class size table at rsi"),
            std::string::npos)
      << analysis.reason;
}

// Full tcmalloc's malloc loads the class's size itself (to charge its thread cache before it
// pops the free list): the site finds it in a register, rcx (and r9), nothing to read.
TEST(ReturnSitesTcmalloc, FullMallocHasTheBlocksClassSizeInARegister) {
  ReturnSiteAnalysis analysis = analyse_tcmalloc(kTcmallocFull, "malloc");
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  const ReturnSite& site = analysis.sites[0];
  EXPECT_EQ(site.pointer_register, 8) << analysis.reason;  // r8
  EXPECT_EQ(site.usable_size, UsableSize::kClassSizeInRegister) << analysis.reason;
  EXPECT_EQ(site.size_register, std::optional<uint8_t>(1)) << analysis.reason;  // rcx
  EXPECT_TRUE(analysis.captures.empty()) << analysis.reason;
  int by_class = 0;
  for (const auto& handoff : analysis.handoffs) {
    if (handoff.usable_size == UsableSize::kNo) continue;
    ++by_class;
    // FetchFromCentralCache's third argument, edx: the class's size (r9d).
    EXPECT_EQ(handoff.usable_size, UsableSize::kClassSizeInRegister) << analysis.reason;
    EXPECT_EQ(handoff.size_register, std::optional<uint8_t>(2)) << analysis.reason;  // rdx
  }
  EXPECT_EQ(by_class, 1) << analysis.reason;
}

// Without its size class tables (a tcmalloc whose nallocx memtrail does not recognise), the
// same malloc keeps the size asked for at a second trap: one site on its thread cache's free
// list (the size is gone there: a conditional jump that sees it in rdi earlier takes it), four
// slow paths (the OOM handlers, with the size in rdi, and FetchFromCentralCache, with the size
// taken).
TEST(ReturnSitesTcmalloc, MallocHasOneSiteAndFourSlowPaths) {
  ReturnSiteAnalysis analysis = analyse(kTcmalloc, "malloc");
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_TRUE(analysis.sites[0].size_captured) << analysis.reason;
  ASSERT_EQ(analysis.captures.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.captures[0].size_register, 7) << analysis.reason;  // rdi
  EXPECT_EQ(analysis.captures[0].frame_bytes, 0u);
  ASSERT_EQ(analysis.handoffs.size(), 4u) << analysis.reason;
  int taken = 0;
  for (const auto& handoff : analysis.handoffs) {
    if (!handoff.size_register) {
      ++taken;
    } else {
      EXPECT_EQ(*handoff.size_register, 7) << analysis.reason;
    }
  }
  EXPECT_EQ(taken, 1) << analysis.reason;
}

// Full tcmalloc 2.10's calloc (libgoogle-perftools4) jumps to EmergencyCalloc before it
// multiplies count by size: that slow path's entry probe multiplies rdi by rsi, as calloc's own
// entry probe would.
TEST(ReturnSitesTcmalloc, FullCallocHandsItsEmergencyPathOverWithTheArgumentsProduct) {
  ReturnSiteAnalysis analysis = analyse("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "calloc");
  ASSERT_FALSE(analysis.sites.empty()) << analysis.reason;
  EXPECT_TRUE(std::any_of(analysis.handoffs.begin(), analysis.handoffs.end(),
                          [](const HandOff& handoff) {
                            return handoff.size_is_arguments_product && !handoff.size_register;
                          }))
      << analysis.reason;
  EXPECT_NE(analysis.reason.find("(size rdi * rsi, the arguments)"), std::string::npos)
      << analysis.reason;
}

// jemalloc 5.3's malloc pops its cache bin and returns by mov and ret: the only emulated
// instructions that see the block (r11) are the two je on the bin's low-water mark, whose taken
// edges can still end in the slow path (an empty bin), where entry and return probes record the
// call. So each is a site on the edge that falls through to the return only (condition ne, read
// from the flags), the size still in rdi; the jump to the slow path is handed over.
TEST(ReturnSitesJemalloc, MallocHasTwoSitesOnTheEdgesThatReturnTheBlock) {
  ReturnSiteAnalysis analysis = analyse(kJemalloc, "malloc");
  ASSERT_EQ(analysis.sites.size(), 2u) << analysis.reason;
  for (const auto& site : analysis.sites) {
    EXPECT_EQ(site.instruction, "je") << analysis.reason;
    EXPECT_EQ(site.condition, std::optional<uint8_t>(5)) << analysis.reason;  // ne: falls through
    EXPECT_EQ(site.pointer_register, 11) << analysis.reason;                  // r11
    EXPECT_EQ(site.size_register, std::optional<uint8_t>(7)) << analysis.reason;  // rdi
    EXPECT_EQ(site.frame_bytes, 0u);
  }
  EXPECT_TRUE(analysis.captures.empty()) << analysis.reason;
  ASSERT_EQ(analysis.handoffs.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.handoffs[0].size_register, std::optional<uint8_t>(7)) << analysis.reason;
  EXPECT_TRUE(analysis.failure_offsets.empty()) << analysis.reason;
  EXPECT_NE(analysis.reason.find("je when it falls through (r11, size rdi)"), std::string::npos)
      << analysis.reason;
}

// Without edge sites the same code falls back: a site on both edges of the low-water je would
// fire on the way to the slow path too. The synthetic shape: cmp; je slow; ... ret, where the
// block is in rcx on the edge that falls through, and slow is a tail call (an unknown function)
// with the entry's stack.
// mov (%rdi),%rcx; cmp $0,%rdx; je slow; mov %rcx,%rax; ret; slow: jmp <outside>
const Bytes kEdgeOnly{0x48, 0x8b, 0x0f, 0x48, 0x83, 0xfa, 0x00, 0x74, 0x04,
                      0x48, 0x89, 0xc8, 0xc3, 0xe9, 0x00, 0x10, 0x00, 0x00};

TEST(ReturnSites, AJumpThatAlsoLeadsToTheSlowPathIsASiteOnItsOtherEdgeOnly) {
  ReturnSiteAnalysis analysis = find_return_sites(synthetic(kEdgeOnly));
  ASSERT_EQ(analysis.sites.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.sites[0].offset, 7u);
  EXPECT_EQ(analysis.sites[0].pointer_register, 1);                       // rcx
  EXPECT_EQ(analysis.sites[0].condition, std::optional<uint8_t>(5));      // ne
  EXPECT_EQ(analysis.sites[0].size_register, std::optional<uint8_t>(7));  // rdi
  ASSERT_EQ(analysis.handoffs.size(), 1u) << analysis.reason;
  EXPECT_EQ(analysis.handoffs[0].offset, 13u);
}

// Its calloc zeroes the block (a call to memset) and returns it through its stack protector's
// jne, in r13; count * size (mul) is in r14 on the fast paths until the thread-event bookkeeping
// reuses r14. Sites on the fast paths read it there, the others take it earlier (emulated
// jumps that see it in r14); every path is proven. The cache bin's fast path is one trap: the
// site is the je on the bin's low-water mark, on the edge that falls through, not the call to
// memset after it, which a refilled bin also reaches with r14 reused (that path takes the size).
TEST(ReturnSitesJemalloc, CallocIsCoveredWithTheProductTakenWhereR14HoldsIt) {
  ReturnSiteAnalysis analysis = analyse(kJemalloc, "calloc");
  ASSERT_FALSE(analysis.sites.empty()) << analysis.reason;
  for (const auto& site : analysis.sites) {
    EXPECT_EQ(site.pointer_register, 13) << analysis.reason;  // r13
    EXPECT_TRUE(site.size_register == std::optional<uint8_t>(14) || site.size_captured)
        << analysis.reason;
    EXPECT_EQ(site.frame_bytes, 6 * 8 + 0x88u) << analysis.reason;  // six pushes, sub $0x88
  }
  ASSERT_FALSE(analysis.captures.empty()) << analysis.reason;
  for (const auto& capture : analysis.captures) {
    EXPECT_EQ(capture.size_register, 14) << analysis.reason;
  }
  EXPECT_TRUE(std::any_of(analysis.sites.begin(), analysis.sites.end(), [](const ReturnSite& site) {
    return site.instruction == "je" && site.condition == std::optional<uint8_t>(5) &&
           site.size_register == std::optional<uint8_t>(14);
  })) << analysis.reason;
  EXPECT_FALSE(analysis.failure_offsets.empty()) << analysis.reason;
}

}  // namespace
}  // namespace memtrail::inspect
