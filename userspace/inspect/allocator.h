// SPDX-License-Identifier: Apache-2.0
// Find the allocator a process really uses, and where to probe each of its functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "inspect/load_order.h"
#include "inspect/operator_new.h"
#include "inspect/proc_maps.h"
#include "inspect/process_file.h"
#include "inspect/return_sites.h"
#include "model/snapshot.h"

namespace memtrail::inspect {

// What a probed function does with its arguments; selects the BPF programs to attach.
enum class ProbeRole {
  kSizeAlloc,      // malloc, valloc, pvalloc: (size) -> pointer
  kCalloc,         // (count, size) -> pointer
  kRealloc,        // (pointer, size) -> pointer
  kReallocArray,   // (pointer, count, size) -> pointer
  kAlignedAlloc,   // aligned_alloc, memalign: (alignment, size) -> pointer
  kPosixMemalign,  // (void **, alignment, size) -> int
  kFree,           // (pointer)
  kDelete,         // C++ operator delete/delete[] (pointer, ...): kind is what it releases
  kHeapAlloc,      // (heap, size) -> pointer: mimalloc's mi_heap_malloc
};

struct FunctionProbe {
  std::string name;  // e.g. "malloc"; aliases at the same address are merged
  ProbeRole role = ProbeRole::kFree;
  // Recorded with each allocation; for kDelete, the kind of the blocks it releases (kNew for
  // operator delete, kNewArray for operator delete[]).
  model::AllocationKind kind = model::AllocationKind::kMalloc;
  uint64_t entry_offset = 0;  // file offset of the function's first instruction
  uint64_t probe_offset = 0;  // file offset of the entry probe (may skip a leading check)
  std::string placement;      // why probe_offset was chosen, for -v and the docs
  // malloc and calloc (and allocators' equivalents): where one emulated probe sees the
  // returned pointer on every path (find_return_sites), file offsets of the function's code
  // given by entry_offset + offset. Empty when not proven: entry and return probes then.
  std::vector<ReturnSite> return_sites;
  std::vector<SizeCapture> size_captures;  // for the sites that see no register with the size
  std::vector<HandOff> handoffs;           // jumps to slow paths: entry and return probes there
  std::vector<uint64_t> failure_offsets;   // from entry_offset: only calls returning NULL pass
  std::string return_sites_reason;         // what the analysis proved or could not, for -v
  // --cxx: C++ operators that need no probe of their own, or fewer (operator_new.h).
  // operator new calling malloc, where the malloc it binds to is probed at its return sites:
  // those tell its calls by their return address, and record the block as new's.
  std::optional<NewViaMalloc> new_via_malloc;
  // operator new[] jumping to such an operator new (that one's analysis): an entry probe alone
  // marks the call as new[].
  std::optional<NewViaMalloc> array_of;
  // operator delete (or delete[]) that only jumps to another of the same kind, probed: that
  // one's name; the jump's probe releases the block.
  std::string forwards_to;
  std::string cxx_reason;  // what was proven or not, for -v
};

struct AllocatorModule {
  std::string path;  // as the process sees it (for reports)
  ProcessFile file;  // where memtrail opens and probes it: its device and inode known
  // What it is: "glibc", "static glibc", "jemalloc", "tcmalloc", "mimalloc", "libstdc++",
  // "libc++", "custom" (--allocator), or "other" for an unknown module defining malloc.
  std::string name;
  std::vector<FunctionProbe> functions;
  std::string note;  // a caveat for the report, e.g. new/delete aliasing free in tcmalloc
};

// A mapped allocator none of whose functions memtrail probes, and why.
struct UntracedAllocator {
  std::string name;
  std::string path;
  std::string reason;
  bool expected = false;  // glibc's malloc shadowed by another allocator: the normal case
};

// A --allocator PATH:SYMBOLS entry: each symbol probed in the role of a standard function.
struct CustomAllocator {
  std::string path;  // as the process sees it
  // Where memtrail opens it while the process does not map it (file_in_root): a file it maps
  // under this path is the one probed.
  ProcessFile file;
  struct Function {
    std::string symbol;
    std::string role;  // "malloc", "calloc", "realloc", "reallocarray", "free", ...
  };
  std::vector<Function> functions;
};

// Everything memtrail probes in one process, module by module in load order.
struct ProcessAllocators {
  std::vector<AllocatorModule> modules;
  std::vector<UntracedAllocator> untraced;
  std::string order_source;  // how the load order was found
  // The module malloc binds to (its name and path head the report), or the first module.
  const AllocatorModule* primary() const;
};

// The glibc allocator functions memtrail traces, with their report names.
const std::vector<std::string>& traced_function_names();
// The report name of an allocation kind ("malloc", "calloc", "mallocx", ...).
std::string kind_name(model::AllocationKind kind);
// The standard functions whose role a custom function can take (--allocator).
const std::vector<std::string>& custom_role_names();

// Looks up glibc's allocator functions in one ELF file. Functions sharing an address (glibc's
// aligned_alloc and memalign before 2.38) are probed once. nullopt when the file does not
// define both malloc and free.
std::optional<AllocatorModule> allocator_in_file(const ProcessFile& file);

// What the allocator in one module is (see AllocatorModule::name), from the symbols it
// defines; empty when it defines none of the allocator functions memtrail knows.
std::string classify_allocator(const ProcessFile& file, bool main_program, bool static_executable);

// Binds every allocator function memtrail knows (glibc's malloc family; jemalloc's mallocx,
// rallocx, sdallocx, dallocx; tcmalloc's tc_*; mimalloc's mi_*; with `cxx`, operators new and
// delete) as the dynamic linker does: each name to the first module in `order` that exports
// it. A process linked with jemalloc thus has malloc and free probed in libjemalloc, not in
// libc (whose shadowed copies never run), and libc's reallocarray where jemalloc has none (it
// calls realloc through the PLT: jemalloc's). Names sharing an address in one module are probed
// once. `custom` functions are added in their own modules. Mapped allocators left without any
// probe are listed as untraced. Throws memtrail::Error when nothing binds malloc or free, or a
// custom file or symbol is missing.
// With `return_sites`, malloc and calloc's code is analysed for return sites (find_return_sites);
// without, it is not (the analysis costs tens of milliseconds per file).
ProcessAllocators resolve_allocators(uint32_t pid, const LoadOrder& order, bool cxx,
                                     const std::vector<CustomAllocator>& custom,
                                     bool return_sites = false);
// What resolve_allocators throws when nothing binds malloc or free ("no allocator found"):
// with --mmap the process is still traced, for its mappings alone.
class NoAllocatorFound : public Error {
 public:
  using Error::Error;
};

// Where to place the entry probe of a function, given all of its code. x86 uprobes emulate
// some instructions (push, nop, jumps) and single-step the others out of line, which costs
// about ten times more. glibc's free starts with `test %rdi,%rdi; je`: its probe goes on the
// instruction after the NULL check when that one is emulated, since free(NULL) does nothing
// to track. The function is disassembled (capstone) to verify the placement: the skipped
// instructions must be exactly that check, and no branch inside the function may land on the
// probed instruction (it would fire twice). Anything else falls back to the entry.
struct Placement {
  uint64_t offset = 0;  // from the function's start
  std::string reason;   // one line, shown with -v
};
Placement choose_probe_placement(ProbeRole role, const std::vector<uint8_t>& code);

class ElfFile;
// What a jump from an allocator function to `target` in the same file leads to: memset,
// memcpy or memmove (through the PLT: calloc's tail call) return their first argument; an
// allocator function memtrail probes records the call itself; anything else is unknown.
TailCall classify_tail_call(const ElfFile& elf, uint64_t target);

}  // namespace memtrail::inspect
