// SPDX-License-Identifier: Apache-2.0
// Find the allocator a process really uses, and where to probe each of its functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "target/proc_maps.h"

namespace memtrail::target {

// What a probed function does with its arguments; selects the BPF programs to attach.
enum class ProbeRole {
  kSizeAlloc,      // malloc, valloc, pvalloc: (size) -> pointer
  kCalloc,         // (count, size) -> pointer
  kRealloc,        // (pointer, size) -> pointer
  kReallocArray,   // (pointer, count, size) -> pointer
  kAlignedAlloc,   // aligned_alloc, memalign: (alignment, size) -> pointer
  kPosixMemalign,  // (void **, alignment, size) -> int
  kFree,           // (pointer)
  kDelete,         // C++ operator delete/delete[] (pointer, ...): kind is the delete kind
};

struct FunctionProbe {
  std::string name;             // e.g. "malloc"; aliases at the same address are merged
  ProbeRole role = ProbeRole::kFree;
  uint32_t kind = 0;            // memtrail_alloc_kind recorded with each allocation
  uint64_t entry_offset = 0;    // file offset of the function's first instruction
  uint64_t probe_offset = 0;    // file offset of the entry probe (may skip a leading check)
  std::string placement;        // why probe_offset was chosen, for -v and the docs
};

struct AllocatorModule {
  std::string path;       // as the process sees it (for reports)
  std::string open_path;  // where memtrail opens it: through /proc/PID/root
  std::vector<FunctionProbe> functions;
};

// The glibc allocator functions memtrail traces, with their report names.
const std::vector<std::string>& traced_function_names();
// The report name of an allocation kind ("malloc", "calloc", ...).
std::string kind_name(uint32_t kind);

// Looks up the allocator functions in one ELF file. Functions sharing an address (glibc's
// aligned_alloc and memalign before 2.38) are probed once. nullopt when the file does not
// define both malloc and free.
std::optional<AllocatorModule> allocator_in_file(const std::string& path,
                                                 const std::string& open_path);

// The C++ runtime's operators new and delete (libstdc++, or libc++ where present): the first
// mapped file, in load order, that defines `operator new(size_t)`. nullopt when the process
// has none (a C program). Unreadable files are skipped.
std::optional<AllocatorModule> find_cxx_runtime(uint32_t pid,
                                                const std::vector<Mapping>& mappings);

// The module whose malloc the process binds to: the first mapped file, in load order, that
// defines malloc and free (the executable itself when statically linked or when it brings its
// own allocator, else the C library). Throws memtrail::Error when there is none.
AllocatorModule find_allocator(uint32_t pid, const std::vector<Mapping>& mappings);

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

}  // namespace memtrail::target
