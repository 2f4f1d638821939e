// SPDX-License-Identifier: Apache-2.0
// The one reader of ELF files (libelf): header checks, segments, sections, symbols, build-id.
#pragma once

#include <gelf.h>
#include <libelf.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/unique_fd.h"
#include "inspect/return_sites.h"

namespace memtrail::inspect {

struct FunctionSymbol {
  std::string name;
  uint64_t address = 0;  // ELF virtual address
  uint64_t size = 0;
  // In .dynsym with global or weak binding and a default version: what the dynamic linker can
  // bind other modules' references to. A static executable binds everything internally, .symtab
  // included.
  bool exported = false;
};

// A PT_LOAD segment: how file offsets (what /proc/PID/maps shows) map to ELF virtual addresses.
struct LoadSegment {
  uint64_t vaddr = 0;
  uint64_t file_offset = 0;
  uint64_t file_size = 0;
  uint64_t memory_size = 0;  // p_memsz: file_size and the zero-filled rest (.bss)
  bool executable = false;   // PF_X
};

// The virtual address of the byte stored at `file_offset` (a mapping's offset gives its load
// bias), or nullopt when no segment of `segments` holds it.
std::optional<uint64_t> address_at_file_offset(std::span<const LoadSegment> segments,
                                               uint64_t file_offset);

// A section as its header describes it.
struct ElfSection {
  Elf_Scn* handle = nullptr;  // for libelf calls; valid as long as the ElfFile it came from
  GElf_Shdr header{};
};

// Ends a libelf descriptor: the one owner of an Elf* in memtrail (libdwfl ends its own).
struct ElfDeleter {
  void operator()(Elf* elf) const { elf_end(elf); }
};

// One ELF file, open for as long as this object lives: the checks every reader needs on open
// (readable, ELF, a header), its segments at once, and on request its symbols, sections and
// build-id. Readers that need more than this (the unwind-table builder, the symbolizer) get
// the libelf descriptor from elf(). Not thread-safe: the symbol index is built at the first
// lookup, also through a const object.
class ElfFile {
 public:
  // Opens `path` in memtrail's own root: a regular file only, never blocking (open_file).
  // Throws memtrail::Error naming the file when it cannot be opened, is not an ELF file or has
  // no readable ELF header. A traced process's files are opened with open_file() first.
  static ElfFile open(const std::string& path);
  // The same for `fd`, already open on the file that `path` names (for messages), e.g. a
  // traced process's file (open_file); the ElfFile owns it from now on, also when this throws.
  static ElfFile open(UniqueFd fd, const std::string& path);
  // The same file, opened once for every caller while it is unchanged (same device, inode,
  // size and modification time): host-wide, every new process maps the same libc, and
  // indexing its symbols again for each would cost more than everything else memtrail does.
  // `fd` is closed when the file is known already.
  static std::shared_ptr<const ElfFile> open_shared(UniqueFd fd, const std::string& path);

  // The libelf descriptor, for libelf and libdw calls. It lives as long as this ElfFile: never
  // end it.
  Elf* elf() const { return elf_.get(); }
  // The open file, e.g. to hand a duplicate to a library that takes ownership of one.
  int fd() const { return fd_.get(); }
  // The ELF header: class and data encoding in e_ident, e_type, e_machine.
  const GElf_Ehdr& header() const { return header_; }
  // ELFCLASS64 code for x86-64, the only machine whose frames and code memtrail reads.
  bool is_x86_64() const;

  // Every PT_LOAD, in program-header order.
  const std::vector<LoadSegment>& load_segments() const { return segments_; }

  // The first section named `name` (".eh_frame"), or nullopt when there is none or the
  // section headers cannot be read.
  std::optional<ElfSection> find_section(std::string_view name) const;
  // The contents of `section`, inflated first when compressed (SHF_COMPRESSED: a separate
  // debug-info file, `objcopy --compress-debug-sections`). nullptr when libelf cannot read or
  // inflate them; d_buf is null for a section that occupies no file space (SHT_NOBITS).
  Elf_Data* section_data(const ElfSection& section) const;

  // The GNU build-id (NT_GNU_BUILD_ID, in .note.gnu.build-id of every Debian binary) in hex,
  // found the way libdwfl finds it: in the note sections, or in the PT_NOTE segments of a file
  // without sections. Empty when the file has none.
  std::string build_id() const;

  // A function defined in this file under `name`, from .symtab or .dynsym. Where several
  // versions exist (name@VER), the default version is the one the dynamic linker binds to.
  std::optional<FunctionSymbol> find_function(std::string_view name) const;

  // A variable exported in .dynsym (STT_OBJECT) under `name`, e.g. CPython's _PyRuntime.
  std::optional<FunctionSymbol> find_object(std::string_view name) const;

  // The virtual address of the byte stored at `file_offset` (a mapping's offset gives its load
  // bias), or nullopt when no loadable segment holds it.
  std::optional<uint64_t> address_at_file_offset(uint64_t file_offset) const {
    return inspect::address_at_file_offset(segments_, file_offset);
  }

  // The file offset at which the byte at virtual address `address` is stored (what a uprobe
  // is attached at), or nullopt when no loadable segment holds it.
  std::optional<uint64_t> file_offset_of(uint64_t address) const;

  // Up to `length` bytes of code starting at virtual address `address`.
  std::vector<uint8_t> read_code(uint64_t address, size_t length) const;

  // The function a PLT stub at `address` jumps to (`jmp *GOT(%rip)`, after an optional
  // endbr64 and bnd prefix), by the relocation of its GOT slot: the symbol of a JUMP_SLOT or
  // GLOB_DAT, or for an IRELATIVE (glibc's own calls to memset) the IFUNC symbol whose
  // resolver the addend is. Empty when `address` holds no such stub.
  std::string plt_target(uint64_t address) const;

  // The GOT slots the dynamic linker fills with the address of the symbol `name`
  // (R_X86_64_GLOB_DAT): where code built with -fPIC reads a variable's address from.
  std::vector<uint64_t> got_slots_of(std::string_view name) const;

  const std::string& path() const { return path_; }

  // Where allocator.cpp placed a probe in this file, by (function address, role), remembered:
  // the placement disassembles the function, and a shared file serves many processes.
  mutable std::map<std::pair<uint64_t, int>, std::pair<uint64_t, std::string>> placements;
  // The return sites found in this file, by function address (allocator.cpp).
  mutable std::map<uint64_t, ReturnSiteAnalysis> return_sites;
  // The program interpreter (PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2); empty for a static
  // executable or a shared library.
  const std::string& interpreter() const { return interpreter_; }
  // The entry point (e_entry): the virtual address of the program's first instruction, _start.
  uint64_t entry() const { return header_.e_entry; }

 private:
  struct Symbols {
    std::unordered_map<std::string, FunctionSymbol> functions;
    std::unordered_map<std::string, FunctionSymbol> objects;  // exported variables
  };
  ElfFile() = default;
  // The symbol index, built at the first call: the unwind-table builder and the symbolizer
  // never look a name up, and a large .symtab costs more to index than their own reading.
  const Symbols& symbols() const;

  std::string path_;
  std::string interpreter_;
  // Kept open for read_code and elf(); the file may be large, so it is mapped, never slurped.
  // Declared before elf_: members are destroyed in reverse, so the Elf ends before its file
  // is closed.
  UniqueFd fd_;
  std::unique_ptr<Elf, ElfDeleter> elf_;
  GElf_Ehdr header_{};
  std::vector<LoadSegment> segments_;
  mutable std::optional<Symbols> symbols_;
};

}  // namespace memtrail::inspect
