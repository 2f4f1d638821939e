// SPDX-License-Identifier: Apache-2.0
// Where a CPython interpreter creates its objects: the inlined and out-of-line _Py_NewReference,
// found by scanning its machine code (no debug info needed), for the object-creation probes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace memtrail::python {

// The general-purpose register that holds the new object at a creation site. The values are
// the BPF ABI's (enum memtrail_python_register, bpf/alloc_events.h).
enum class ObjectRegister : uint8_t {
  kRax,
  kRbx,
  kRcx,
  kRdx,
  kRsi,
  kRdi,
  kRbp,
  kR8,
  kR9,
  kR10,
  kR11,
  kR12,
  kR13,
  kR14,
  kR15,
};
const char* register_name(ObjectRegister reg);

// One creation site: _Py_NewReference(op), inlined or not, compiles to a check of
// _Py_tracemalloc_config.tracing, a conditional branch around a call that tells tracemalloc,
// and `movq $1, (op)` (ob_refcnt = 1). The probe goes on the branch: every object created there
// passes it exactly once, whether tracemalloc runs or not, and the kernel emulates a branch
// (about 4 times cheaper than the single-stepped store).
struct CreationSite {
  uint64_t branch = 0;  // address of the conditional branch after the flag check: the probe
  uint64_t store = 0;   // address of the store of 1 into ob_refcnt
  ObjectRegister object = ObjectRegister::kRax;  // holds the object at `branch`
};

struct CreationScan {
  std::vector<CreationSite> sites;  // by branch address; empty when refused
  uint64_t flag_reads = 0;          // instructions reading the flag (not all are creation sites)
  std::string refusal;              // why the interpreter's code is not what the scan expects
};

// Where the interpreter keeps _Py_tracemalloc_config.tracing, the flag every creation checks.
// An interpreter linked into its executable (Debian's) reads it rip-relative; a libpython
// built with -fPIC (pyenv's, asdf's: --enable-shared) first loads _Py_tracemalloc_config's
// address from its GOT slot (or, where the linker relaxed that load, with a lea), then reads
// the flag at its offset from that register.
struct TracingFlag {
  uint64_t address = 0;                // of the flag
  uint64_t config = 0;                 // of _Py_tracemalloc_config; 0: unknown
  std::vector<uint64_t> config_slots;  // GOT slots holding config's address (GLOB_DAT)
};

// Scans `code`, the bytes of the interpreter's executable code (.text) loaded at `code_address`
// (the file's link-time addresses), for creation sites. `new_reference` is the address of the
// out-of-line _Py_NewReference (0: unknown). Refuses (sites empty, refusal set) when no site is
// found, or none in _Py_NewReference itself (with the object in its first argument, rdi, or a
// register rdi was copied to): code built differently from what the scan understands must not
// be probed at all rather than half. Pure: no I/O.
CreationScan scan_creation_sites(std::span<const uint8_t> code, uint64_t code_address,
                                 const TracingFlag& flag, uint64_t new_reference,
                                 uint64_t new_reference_size);

}  // namespace memtrail::python
