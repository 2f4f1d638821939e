// SPDX-License-Identifier: Apache-2.0
// Where inside malloc or calloc a single emulated uprobe sees the pointer it returns.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace memtrail::inspect {

// What a jump out of the analysed function (a tail call) leads to.
enum class TailCall {
  kUnknown,               // unprovable: the analysis falls back
  kReturnsFirstArgument,  // memset, memcpy: the caller's result is the first argument (rdi)
  kRecordedElsewhere,     // an allocator function with its own probes (malloc from calloc)
  kNoReturn,              // __stack_chk_fail, abort: the process ends there
};

// tcmalloc's size classes (gperftools' SizeMap), as its nallocx reads them: a byte table giving
// the class index of a size (class_array_), and a table of int32 giving each class's size
// (class_to_size_). Virtual addresses in the module, found by find_size_class_tables.
struct SizeClassTables {
  uint64_t class_indexes = 0;
  uint64_t class_sizes = 0;
};

// The tables that `code` (a function at `address`, tcmalloc's nallocx) reads to return a size's
// usable size: straight-line code that loads a byte from the first table (lea of its address,
// rip-relative), then returns the int32 at the second table indexed by that byte (scale 4), with
// no jump landing between the two; nullopt when the code does not read so.
std::optional<SizeClassTables> find_size_class_tables(uint64_t address,
                                                      const std::vector<uint8_t>& code);

// How a site or a slow path's jump knows the size of the block where no register holds the size
// asked for, but a register holds its size class (tcmalloc: SizeClassTables).
enum class UsableSize : uint8_t {
  kNo,                    // the size asked for (or as taken, or the chunk header's)
  kClassSizeInRegister,   // size_register holds the class's size, loaded from class_sizes
  kClassIndexInRegister,  // size_register holds the class index: class_sizes[index] is read
};

// One function's code and how to read it.
struct ReturnSiteQuery {
  uint64_t address = 0;               // virtual address of code[0], the function's first byte
  std::vector<uint8_t> code;          // the whole function (its symbol's size)
  bool product_of_arguments = false;  // calloc: the size is rdi * rsi; else rdi
  // glibc's chunk header is readable at the pointer - 8: where no register holds the size,
  // the site may record the usable size from it.
  bool chunk_header_sizes = false;
  // tcmalloc: where no register holds the size asked for at a site or a slow path's jump, a
  // register holding the block's size class (its index, loaded from class_indexes, or its size,
  // loaded from class_sizes) gives its usable size, rather than a size capture on the fast path,
  // a second trap on every call.
  std::optional<SizeClassTables> size_classes;
  std::function<TailCall(uint64_t target)> classify_tail_call;
};

// An instruction where one uprobe, which the kernel emulates (a jump, a nop, a push of a
// register), sees the pointer the call will return, on every path that returns it.
struct ReturnSite {
  uint64_t offset = 0;           // from the function's first byte
  uint8_t pointer_register = 0;  // x86 register number: 0 rax, 1 rcx, 2 rdx, 3 rbx, ... 15 r15
  // The register holding the size asked for, on every path to the site; nullopt: none does,
  // then the size a SizeCapture took earlier in the same call (size_captured), else the usable
  // size read from the chunk header (only with chunk_header_sizes).
  std::optional<uint8_t> size_register;
  bool size_captured = false;
  // Else size_register holds the block's size class (query.size_classes): its usable size.
  UsableSize usable_size = UsableSize::kNo;
  // kClassIndexInRegister: class_sizes's address minus the site's, the same in every process.
  int64_t class_sizes_from_here = 0;
  uint32_t frame_bytes = 0;  // the return address is at site %rsp + frame_bytes
  // Where the caller's %rbp is at the site: in %rbp (nullopt), or saved at site %rsp + this.
  std::optional<uint32_t> saved_bp_offset;
  // A conditional jump may see the pointer on one edge only (the other leads to a slow path
  // recorded by its own probes): then the site records only when this condition holds (x86
  // condition code, as in jcc 0x70 + code: 4 e, 5 ne, ...), read from the flags at the jump.
  std::optional<uint8_t> condition;
  std::string instruction;  // e.g. "jne", for -v
};

// An emulated instruction that every path to a site without a size register passes, with the
// size asked for in a register: it keeps that size for the site, for the thread and this call
// (told apart from nested calls by where the return address is).
struct SizeCapture {
  uint64_t offset = 0;
  uint8_t size_register = 0;
  uint32_t frame_bytes = 0;  // the return address is at %rsp + frame_bytes here
};

// A jump out of the function to code the analysis does not follow (an allocator's slow path,
// e.g. jemalloc's malloc_default, tcmalloc's FetchFromCentralCache), with the stack as at the
// function's entry and no site passed: an entry probe there and a return probe at the same
// place (the kernel hijacks the return address at %rsp, the caller's) record what the call
// returns, as entry and return probes at the function's entry would, on that path only. The
// jump is emulated (a relative jmp): the fast paths pay one trap, the slow path two.
struct HandOff {
  uint64_t offset = 0;  // of the jmp, from the function's first byte
  // The register holding the size asked for on every path to the jump; nullopt: the size a
  // SizeCapture took earlier in the same call.
  std::optional<uint8_t> size_register;
  UsableSize usable_size = UsableSize::kNo;  // as in ReturnSite
  int64_t class_sizes_from_here = 0;         // as in ReturnSite, from the jump
  uint64_t target = 0;                       // virtual address jumped to, for -v
  // calloc's: no register holds count * size, but rdi and rsi still hold count and size (the
  // jump comes before the multiplication): handoff_enter multiplies them, as calloc's entry
  // probe does.
  bool size_is_arguments_product = false;
};

// Either sites covering every return (each successful call passes exactly one, and a failed
// call returning NULL passes none holding a pointer), or why that could not be proven.
struct ReturnSiteAnalysis {
  std::vector<ReturnSite> sites;  // empty: not proven, see reason
  std::vector<SizeCapture> captures;
  std::vector<HandOff> handoffs;  // slow paths left to entry and return probes
  // Instructions only paths returning NULL pass, each such path exactly one: a probe there
  // counts a failed call. Any instruction (they run on failures only, so a single-stepped
  // probe costs nothing that matters).
  std::vector<uint64_t> failure_offsets;
  std::string reason;  // one line for -v: what was proven, or what was not
};

// Decodes the function (capstone) and follows every path from its entry by abstract
// interpretation of the registers and stack slots: which hold the pointer a site saw, the size
// asked for, the caller's %rbp, and known zeros (xor, or `test r,r` before je/jne). Sites are
// chosen among emulated instructions, then the choice is verified over every path: each path
// that returns a non-NULL pointer (ret, or a tail call to memset that returns it) passes
// exactly one site, with that very pointer still in the register the function returns it in;
// NULL returns pass none with a non-NULL pointer; nothing returns through an indirect jump, an
// unknown tail call is a HandOff (a jmp with the entry's stack, passed after no site, where a
// register holds the size or a capture took it) or unprovable, and no path calls an allocator
// function memtrail probes (its block would be counted twice). A call to memset or memcpy returns
// its first argument. Calls are taken to return, except calls to a target that this function also
// calls right before padding or its end (glibc's malloc_printerr): those abort. A site with no
// register holding the size gets a size capture on every path to it, where one exists; every path
// returning NULL gets exactly one failure site, which no path returning a pointer passes, or
// nothing is proven (failed calls are counted, as by a return probe).
ReturnSiteAnalysis find_return_sites(const ReturnSiteQuery& query);

// The name of x86 register `number` (0..15), e.g. "rax".
const char* register_name(uint8_t number);

}  // namespace memtrail::inspect
