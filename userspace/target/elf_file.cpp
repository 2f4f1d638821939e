// SPDX-License-Identifier: Apache-2.0
// Read function symbols and segment layout of an ELF file with libelf.
#include "target/elf_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"

namespace memtrail::target {
namespace {

struct ElfCloser {
  void operator()(Elf* elf) const { elf_end(elf); }
};

// Version index 0 and 1 are local/global; bit 15 marks a hidden (non-default) version.
constexpr uint16_t kVersionHidden = 0x8000;

}  // namespace

ElfFile::ElfFile(ElfFile&& other) noexcept
    : path_(std::move(other.path_)),
      interpreter_(std::move(other.interpreter_)),
      fd_(std::exchange(other.fd_, -1)),
      segments_(std::move(other.segments_)),
      functions_(std::move(other.functions_)),
      objects_(std::move(other.objects_)) {}

ElfFile& ElfFile::operator=(ElfFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    interpreter_ = std::move(other.interpreter_);
    fd_ = std::exchange(other.fd_, -1);
    segments_ = std::move(other.segments_);
    functions_ = std::move(other.functions_);
    objects_ = std::move(other.objects_);
  }
  return *this;
}

ElfFile::~ElfFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::shared_ptr<const ElfFile> ElfFile::open_shared(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return std::make_shared<const ElfFile>(open(path));
  std::string key = std::to_string(info.st_dev) + ":" + std::to_string(info.st_ino) + ":" +
                    std::to_string(info.st_size) + ":" + std::to_string(info.st_mtim.tv_sec) +
                    "." + std::to_string(info.st_mtim.tv_nsec);
  // Each entry holds a descriptor: a bounded number of files, forgotten all at once when full.
  static std::unordered_map<std::string, std::shared_ptr<const ElfFile>> opened;
  auto it = opened.find(key);
  if (it != opened.end()) return it->second;
  auto file = std::make_shared<const ElfFile>(open(path));
  if (opened.size() >= 128) opened.clear();
  opened.emplace(std::move(key), file);
  return file;
}

ElfFile ElfFile::open(const std::string& path) {
  ElfFile file;
  file.path_ = path;
  file.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd_ < 0) {
    int error_number = errno;
    throw Error(errno_message("open " + path, error_number), hint_for_errno(error_number));
  }

  elf_version(EV_CURRENT);
  std::unique_ptr<Elf, ElfCloser> elf(elf_begin(file.fd_, ELF_C_READ_MMAP, nullptr));
  GElf_Ehdr header;
  if (!elf || elf_kind(elf.get()) != ELF_K_ELF || !gelf_getehdr(elf.get(), &header)) {
    throw Error(path + " is not an ELF file: " + elf_errmsg(-1));
  }

  size_t header_count = 0;
  elf_getphdrnum(elf.get(), &header_count);
  for (size_t i = 0; i < header_count; ++i) {
    GElf_Phdr program_header;
    if (!gelf_getphdr(elf.get(), static_cast<int>(i), &program_header)) continue;
    if (program_header.p_type == PT_LOAD) {
      file.segments_.push_back(
          {program_header.p_vaddr, program_header.p_offset, program_header.p_filesz});
    } else if (program_header.p_type == PT_INTERP && program_header.p_filesz > 1 &&
               program_header.p_filesz < 4096) {
      std::string interpreter(program_header.p_filesz, '\0');
      if (::pread(file.fd_, interpreter.data(), interpreter.size(),
                  static_cast<off_t>(program_header.p_offset)) ==
          static_cast<ssize_t>(interpreter.size())) {
        file.interpreter_ = interpreter.c_str();  // up to its terminating NUL
      }
    }
  }

  // .symtab (when not stripped) has local and static functions too; .dynsym is what the
  // dynamic linker binds. Both are read; the first definition of a name wins unless a later
  // one is the default version of a versioned symbol.
  Elf_Scn* section = nullptr;
  while ((section = elf_nextscn(elf.get(), section)) != nullptr) {
    GElf_Shdr section_header;
    if (!gelf_getshdr(section, &section_header) ||
        (section_header.sh_type != SHT_SYMTAB && section_header.sh_type != SHT_DYNSYM)) {
      continue;
    }
    Elf_Data* data = elf_getdata(section, nullptr);
    if (!data || section_header.sh_entsize == 0) continue;
    Elf_Data* versions = nullptr;
    if (section_header.sh_type == SHT_DYNSYM) {
      Elf_Scn* other = nullptr;
      while ((other = elf_nextscn(elf.get(), other)) != nullptr) {
        GElf_Shdr other_header;
        if (gelf_getshdr(other, &other_header) && other_header.sh_type == SHT_GNU_versym) {
          versions = elf_getdata(other, nullptr);
        }
      }
    }
    size_t count = section_header.sh_size / section_header.sh_entsize;
    for (size_t i = 0; i < count; ++i) {
      GElf_Sym symbol;
      if (!gelf_getsym(data, static_cast<int>(i), &symbol)) continue;
      int type = GELF_ST_TYPE(symbol.st_info);
      if ((type != STT_FUNC && type != STT_GNU_IFUNC && type != STT_OBJECT) ||
          symbol.st_shndx == SHN_UNDEF || symbol.st_value == 0) {
        continue;
      }
      const char* name = elf_strptr(elf.get(), section_header.sh_link, symbol.st_name);
      if (!name || !*name) continue;
      if (type == STT_OBJECT) {  // variables: exported ones only (e.g. CPython's _PyRuntime)
        if (section_header.sh_type == SHT_DYNSYM) {
          file.objects_.try_emplace(name, FunctionSymbol{name, symbol.st_value, symbol.st_size, true});
        }
        continue;
      }
      bool hidden_version = false;
      if (versions) {
        GElf_Versym version;
        if (gelf_getversym(versions, static_cast<int>(i), &version)) {
          hidden_version = (version & kVersionHidden) != 0;
        }
      }
      int binding = GELF_ST_BIND(symbol.st_info);
      // A hidden (compat-only) version, like glibc's cfree@GLIBC_2.2.5, binds no new link.
      bool exported = section_header.sh_type == SHT_DYNSYM && !hidden_version &&
                      (binding == STB_GLOBAL || binding == STB_WEAK) &&
                      GELF_ST_VISIBILITY(symbol.st_other) != STV_HIDDEN &&
                      GELF_ST_VISIBILITY(symbol.st_other) != STV_INTERNAL;
      auto [it, inserted] = file.functions_.try_emplace(
          name, FunctionSymbol{name, symbol.st_value, symbol.st_size, exported});
      if (!inserted && !hidden_version && section_header.sh_type == SHT_DYNSYM) {
        it->second = FunctionSymbol{name, symbol.st_value, symbol.st_size, exported};
      }
    }
  }
  return file;
}

std::optional<FunctionSymbol> ElfFile::find_function(std::string_view name) const {
  auto it = functions_.find(std::string(name));
  if (it == functions_.end()) return std::nullopt;
  return it->second;
}

std::optional<FunctionSymbol> ElfFile::find_object(std::string_view name) const {
  auto it = objects_.find(std::string(name));
  if (it == objects_.end()) return std::nullopt;
  return it->second;
}

std::optional<uint64_t> ElfFile::address_at_file_offset(uint64_t file_offset) const {
  for (const Segment& segment : segments_) {
    if (file_offset >= segment.file_offset && file_offset < segment.file_offset + segment.file_size) {
      return segment.vaddr + (file_offset - segment.file_offset);
    }
  }
  return std::nullopt;
}

std::optional<uint64_t> ElfFile::file_offset_of(uint64_t address) const {
  for (const Segment& segment : segments_) {
    if (address >= segment.vaddr && address < segment.vaddr + segment.file_size) {
      return address - segment.vaddr + segment.file_offset;
    }
  }
  return std::nullopt;
}

std::vector<uint8_t> ElfFile::read_code(uint64_t address, size_t length) const {
  auto offset = file_offset_of(address);
  if (!offset) return {};
  std::vector<uint8_t> code(length);
  ssize_t got = ::pread(fd_, code.data(), length, static_cast<off_t>(*offset));
  code.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return code;
}

}  // namespace memtrail::target
