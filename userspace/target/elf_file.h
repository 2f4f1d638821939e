// SPDX-License-Identifier: Apache-2.0
// Read what memtrail needs from an ELF file with libelf: function symbols and file offsets.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace memtrail::target {

struct FunctionSymbol {
  std::string name;
  uint64_t address = 0;  // ELF virtual address
  uint64_t size = 0;
  // In .dynsym with global or weak binding and a default version: what the dynamic linker can
  // bind other modules' references to. A static executable binds everything internally, .symtab included.
  bool exported = false;
};

class ElfFile {
 public:
  // Opens and indexes `path`. Throws memtrail::Error naming the file when it cannot be read or
  // is not an ELF file.
  static ElfFile open(const std::string& path);
  // The same file, opened once for every caller while it is unchanged (same device, inode,
  // size and modification time): host-wide, every new process maps the same libc, and
  // indexing its symbols again for each would cost more than everything else memtrail does.
  static std::shared_ptr<const ElfFile> open_shared(const std::string& path);

  ElfFile(ElfFile&&) noexcept;
  ElfFile& operator=(ElfFile&&) noexcept;
  ~ElfFile();

  // A function defined in this file under `name`, from .symtab or .dynsym. Where several
  // versions exist (name@VER), the default version is the one the dynamic linker binds to.
  std::optional<FunctionSymbol> find_function(std::string_view name) const;

  // A variable exported in .dynsym (STT_OBJECT) under `name`, e.g. CPython's _PyRuntime.
  std::optional<FunctionSymbol> find_object(std::string_view name) const;

  // The virtual address of the byte stored at `file_offset` (a mapping's offset gives its load
  // bias), or nullopt when no loadable segment holds it.
  std::optional<uint64_t> address_at_file_offset(uint64_t file_offset) const;

  // The file offset at which the byte at virtual address `address` is stored (what a uprobe
  // is attached at), or nullopt when no loadable segment holds it.
  std::optional<uint64_t> file_offset_of(uint64_t address) const;

  // Up to `length` bytes of code starting at virtual address `address`.
  std::vector<uint8_t> read_code(uint64_t address, size_t length) const;

  const std::string& path() const { return path_; }

  // Where allocator.cpp placed a probe in this file, by (function address, role), remembered:
  // the placement disassembles the function, and a shared file serves many processes.
  mutable std::map<std::pair<uint64_t, int>, std::pair<uint64_t, std::string>> placements;
  // The program interpreter (PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2); empty for a static
  // executable or a shared library.
  const std::string& interpreter() const { return interpreter_; }

 private:
  struct Segment {
    uint64_t vaddr, file_offset, file_size;
  };
  ElfFile() = default;

  std::string path_;
  std::string interpreter_;
  int fd_ = -1;  // kept open for read_code; the file may be large, so it is never slurped
  std::vector<Segment> segments_;
  std::unordered_map<std::string, FunctionSymbol> functions_;
  std::unordered_map<std::string, FunctionSymbol> objects_;  // exported variables
};

}  // namespace memtrail::target
