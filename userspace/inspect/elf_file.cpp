// SPDX-License-Identifier: Apache-2.0
// The one reader of ELF files: opening and checking, segments, sections, symbols, build-id.
#include "inspect/elf_file.h"

#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "inspect/process_file.h"

namespace memtrail::inspect {
namespace {

// libelf's reason for its last failure; it has none for some (it says "no error" then).
std::string libelf_reason() {
  int error = elf_errno();
  return error != 0 ? elf_errmsg(error) : "unreadable ELF data";
}

// Version index 0 and 1 are local/global; bit 15 marks a hidden (non-default) version.
constexpr uint16_t kVersionHidden = 0x8000;

// The build-id note among the notes of `data`, in hex; empty when there is none.
std::string build_id_in_notes(Elf_Data* data) {
  if (!data || !data->d_buf) return "";
  GElf_Nhdr note;
  size_t offset = 0, name_offset = 0, desc_offset = 0;
  while ((offset = gelf_getnote(data, offset, &note, &name_offset, &desc_offset)) > 0) {
    if (note.n_type != NT_GNU_BUILD_ID || note.n_namesz != 4 ||
        std::memcmp(static_cast<const char*>(data->d_buf) + name_offset, "GNU", 4) != 0)
      continue;
    static const char digits[] = "0123456789abcdef";
    std::string hex;
    const auto* bytes = static_cast<const unsigned char*>(data->d_buf) + desc_offset;
    for (size_t i = 0; i < note.n_descsz; ++i) {
      hex += digits[bytes[i] >> 4];
      hex += digits[bytes[i] & 15];
    }
    return hex;
  }
  return "";
}

}  // namespace

std::optional<uint64_t> address_at_file_offset(std::span<const LoadSegment> segments,
                                               uint64_t file_offset) {
  for (const LoadSegment& segment : segments) {
    if (file_offset >= segment.file_offset &&
        file_offset < segment.file_offset + segment.file_size) {
      return segment.vaddr + (file_offset - segment.file_offset);
    }
  }
  return std::nullopt;
}

std::shared_ptr<const ElfFile> ElfFile::open_shared(UniqueFd fd, const std::string& path) {
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) {
    return std::make_shared<const ElfFile>(open(std::move(fd), path));
  }
  std::string key = std::to_string(info.st_dev) + ":" + std::to_string(info.st_ino) + ":" +
                    std::to_string(info.st_size) + ":" + std::to_string(info.st_mtim.tv_sec) + "." +
                    std::to_string(info.st_mtim.tv_nsec);
  // Each entry holds a descriptor: a bounded number of files, forgotten all at once when full.
  static std::unordered_map<std::string, std::shared_ptr<const ElfFile>> opened;
  auto it = opened.find(key);
  if (it != opened.end()) return it->second;
  auto file = std::make_shared<const ElfFile>(open(std::move(fd), path));
  if (opened.size() >= 128) opened.clear();
  opened.emplace(std::move(key), file);
  return file;
}

ElfFile ElfFile::open(const std::string& path) {
  return open(open_file(file_in_root(0, path)).fd, path);
}

ElfFile ElfFile::open(UniqueFd fd, const std::string& path) {
  ElfFile file;
  file.path_ = path;
  file.fd_ = std::move(fd);

  elf_version(EV_CURRENT);
  file.elf_.reset(elf_begin(file.fd_.get(), ELF_C_READ_MMAP, nullptr));
  Elf* elf = file.elf_.get();
  if (!elf) throw Error(path + " is not an ELF file: " + libelf_reason());
  // libelf opens any file; only its kind tells an ELF file from text or an ar archive.
  if (elf_kind(elf) != ELF_K_ELF) {
    throw Error(path + " is not an ELF file" +
                (elf_kind(elf) == ELF_K_AR ? " (an ar archive)" : " (no ELF magic number)"));
  }
  if (!gelf_getehdr(elf, &file.header_)) {
    throw Error(path + " has no readable ELF header: " + libelf_reason());
  }
  // A file cut short (an interrupted copy or download): libelf reads what is there and finds
  // no symbols, which would read as "defines no function malloc".
  struct stat info {};
  if (::fstat(file.fd_.get(), &info) == 0 && S_ISREG(info.st_mode)) {
    uint64_t size = static_cast<uint64_t>(info.st_size);
    auto past_end = [size](uint64_t offset, uint64_t count, uint64_t entry_size) {
      return count != 0 && (offset > size || count * entry_size > size - offset);
    };
    const GElf_Ehdr& header = file.header_;
    if (past_end(header.e_phoff, header.e_phnum, header.e_phentsize) ||
        past_end(header.e_shoff, header.e_shnum, header.e_shentsize)) {
      throw Error(path + " is truncated or damaged: its ELF header points past its end (" +
                  std::to_string(size) + " bytes)");
    }
  }

  size_t header_count = 0;
  elf_getphdrnum(elf, &header_count);
  for (size_t i = 0; i < header_count; ++i) {
    GElf_Phdr program_header;
    if (!gelf_getphdr(elf, static_cast<int>(i), &program_header)) continue;
    if (program_header.p_type == PT_LOAD) {
      file.segments_.push_back({program_header.p_vaddr, program_header.p_offset,
                                program_header.p_filesz, program_header.p_memsz,
                                (program_header.p_flags & PF_X) != 0});
    } else if (program_header.p_type == PT_INTERP && program_header.p_filesz > 1 &&
               program_header.p_filesz < 4096) {
      std::string interpreter(program_header.p_filesz, '\0');
      if (::pread(file.fd_.get(), interpreter.data(), interpreter.size(),
                  static_cast<off_t>(program_header.p_offset)) ==
          static_cast<ssize_t>(interpreter.size())) {
        file.interpreter_ = interpreter.c_str();  // up to its terminating NUL
      }
    }
  }
  return file;
}

bool ElfFile::is_x86_64() const {
  return header_.e_ident[EI_CLASS] == ELFCLASS64 && header_.e_machine == EM_X86_64;
}

std::optional<ElfSection> ElfFile::find_section(std::string_view name) const {
  size_t names = 0;
  if (elf_getshdrstrndx(elf(), &names) != 0) return std::nullopt;
  for (Elf_Scn* scn = elf_nextscn(elf(), nullptr); scn; scn = elf_nextscn(elf(), scn)) {
    ElfSection section{scn, {}};
    if (!gelf_getshdr(scn, &section.header)) continue;
    const char* section_name = elf_strptr(elf(), names, section.header.sh_name);
    if (section_name && section_name == name) return section;
  }
  return std::nullopt;
}

Elf_Data* ElfFile::section_data(const ElfSection& section) const {
  // The header as it is now: an earlier call may have inflated the section already.
  GElf_Shdr header;
  if (!gelf_getshdr(section.handle, &header)) return nullptr;
  // gABI section 4.1.4; libelf inflates the section in memory, in place.
  if ((header.sh_flags & SHF_COMPRESSED) && elf_compress(section.handle, 0, 0) < 0) return nullptr;
  return elf_getdata(section.handle, nullptr);
}

std::string ElfFile::build_id() const {
  if (elf_nextscn(elf(), nullptr) != nullptr) {
    for (Elf_Scn* scn = elf_nextscn(elf(), nullptr); scn; scn = elf_nextscn(elf(), scn)) {
      GElf_Shdr header;
      if (!gelf_getshdr(scn, &header) || header.sh_type != SHT_NOTE) continue;
      std::string hex = build_id_in_notes(elf_getdata(scn, nullptr));
      if (!hex.empty()) return hex;
    }
    return "";
  }
  size_t count = 0;
  if (elf_getphdrnum(elf(), &count) != 0) return "";
  for (size_t i = 0; i < count; ++i) {
    GElf_Phdr header;
    if (!gelf_getphdr(elf(), static_cast<int>(i), &header) || header.p_type != PT_NOTE) continue;
    std::string hex = build_id_in_notes(
        elf_getdata_rawchunk(elf(), static_cast<int64_t>(header.p_offset), header.p_filesz,
                             header.p_align == 8 ? ELF_T_NHDR8 : ELF_T_NHDR));
    if (!hex.empty()) return hex;
  }
  return "";
}

const ElfFile::Symbols& ElfFile::symbols() const {
  if (symbols_) return *symbols_;
  Symbols& index = symbols_.emplace();
  Elf* elf = elf_.get();
  // .symtab (when not stripped) has local and static functions too; .dynsym is what the
  // dynamic linker binds. Both are read; the first definition of a name wins unless a later
  // one is the default version of a versioned symbol.
  // The versions of .dynsym's symbols (the last SHT_GNU_versym, as before), found in one pass
  // first: a file may claim any number of sections (extended numbering), and a search per
  // symbol table would cost their square.
  Elf_Data* versions = nullptr;
  Elf_Scn* section = nullptr;
  while ((section = elf_nextscn(elf, section)) != nullptr) {
    GElf_Shdr section_header;
    if (gelf_getshdr(section, &section_header) && section_header.sh_type == SHT_GNU_versym) {
      versions = elf_getdata(section, nullptr);
    }
  }
  section = nullptr;
  while ((section = elf_nextscn(elf, section)) != nullptr) {
    GElf_Shdr section_header;
    if (!gelf_getshdr(section, &section_header) ||
        (section_header.sh_type != SHT_SYMTAB && section_header.sh_type != SHT_DYNSYM)) {
      continue;
    }
    Elf_Data* data = elf_getdata(section, nullptr);
    if (!data || section_header.sh_entsize == 0) continue;
    // The symbols libelf could read, whatever sh_size claims.
    size_t count =
        std::min<uint64_t>(section_header.sh_size, data->d_size) / section_header.sh_entsize;
    for (size_t i = 0; i < count; ++i) {
      GElf_Sym symbol;
      if (!gelf_getsym(data, static_cast<int>(i), &symbol)) continue;
      int type = GELF_ST_TYPE(symbol.st_info);
      if ((type != STT_FUNC && type != STT_GNU_IFUNC && type != STT_OBJECT) ||
          symbol.st_shndx == SHN_UNDEF || symbol.st_value == 0) {
        continue;
      }
      const char* name = elf_strptr(elf, section_header.sh_link, symbol.st_name);
      if (!name || !*name) continue;
      if (type == STT_OBJECT) {  // variables: exported ones only (e.g. CPython's _PyRuntime)
        if (section_header.sh_type == SHT_DYNSYM) {
          index.objects.try_emplace(name,
                                    FunctionSymbol{name, symbol.st_value, symbol.st_size, true});
        }
        continue;
      }
      bool hidden_version = false;
      if (versions && section_header.sh_type == SHT_DYNSYM) {
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
      auto [it, inserted] = index.functions.try_emplace(
          name, FunctionSymbol{name, symbol.st_value, symbol.st_size, exported});
      if (!inserted && !hidden_version && section_header.sh_type == SHT_DYNSYM) {
        it->second = FunctionSymbol{name, symbol.st_value, symbol.st_size, exported};
      }
    }
  }
  return index;
}

std::optional<FunctionSymbol> ElfFile::find_function(std::string_view name) const {
  const auto& functions = symbols().functions;
  auto it = functions.find(std::string(name));
  if (it == functions.end()) return std::nullopt;
  return it->second;
}

std::optional<FunctionSymbol> ElfFile::find_object(std::string_view name) const {
  const auto& objects = symbols().objects;
  auto it = objects.find(std::string(name));
  if (it == objects.end()) return std::nullopt;
  return it->second;
}

std::optional<uint64_t> ElfFile::file_offset_of(uint64_t address) const {
  for (const LoadSegment& segment : segments_) {
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
  ssize_t got = ::pread(fd_.get(), code.data(), length, static_cast<off_t>(*offset));
  code.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return code;
}

namespace {

// One entry of a RELA section, with what names its symbol.
struct Relocation {
  GElf_Rela rela{};
  Elf* elf = nullptr;
  Elf_Data* symbols = nullptr;  // the section's symbol table
  size_t strings = 0;           // that table's string section
  unsigned type() const { return static_cast<unsigned>(GELF_R_TYPE(rela.r_info)); }
  // Its symbol's name; empty when unreadable.
  std::string symbol_name() const {
    GElf_Sym symbol;
    if (!symbols || !gelf_getsym(symbols, static_cast<int>(GELF_R_SYM(rela.r_info)), &symbol)) {
      return "";
    }
    const char* name = elf_strptr(elf, strings, symbol.st_name);
    return name ? name : "";
  }
};

// Calls `visit` on every relocation of the file's RELA sections, until it returns true.
template <typename Visit>
void for_each_relocation(Elf* elf, Visit&& visit) {
  Elf_Scn* section = nullptr;
  while ((section = elf_nextscn(elf, section)) != nullptr) {
    GElf_Shdr header;
    if (!gelf_getshdr(section, &header) || header.sh_type != SHT_RELA || header.sh_entsize == 0) {
      continue;
    }
    Elf_Data* data = elf_getdata(section, nullptr);
    if (!data) continue;
    Relocation relocation;
    relocation.elf = elf;
    Elf_Scn* symbols_section = elf_getscn(elf, header.sh_link);
    GElf_Shdr symbols_header;
    if (symbols_section && gelf_getshdr(symbols_section, &symbols_header)) {
      relocation.symbols = elf_getdata(symbols_section, nullptr);
      relocation.strings = symbols_header.sh_link;
    }
    size_t count = std::min<uint64_t>(header.sh_size, data->d_size) / header.sh_entsize;
    for (size_t i = 0; i < count; ++i) {
      if (gelf_getrela(data, static_cast<int>(i), &relocation.rela) && visit(relocation)) return;
    }
  }
}

}  // namespace

std::string ElfFile::plt_target(uint64_t address) const {
  std::vector<uint8_t> stub = read_code(address, 16);
  size_t at = 0;
  const uint8_t endbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};
  if (stub.size() >= 4 && std::equal(endbr64, endbr64 + 4, stub.begin())) at = 4;
  if (at < stub.size() && stub[at] == 0xf2) ++at;  // bnd
  if (at + 6 > stub.size() || stub[at] != 0xff || stub[at + 1] != 0x25) return "";
  int32_t displacement = 0;
  std::memcpy(&displacement, &stub[at + 2], sizeof(displacement));
  uint64_t slot = address + at + 6 + static_cast<uint64_t>(static_cast<int64_t>(displacement));
  std::string target;
  for_each_relocation(elf_.get(), [&](const Relocation& relocation) {
    if (relocation.rela.r_offset != slot) return false;
    if (relocation.type() == R_X86_64_IRELATIVE) {
      for (const auto& [name, symbol] : symbols().functions) {
        if (symbol.address == static_cast<uint64_t>(relocation.rela.r_addend)) {
          target = name;
          break;
        }
      }
    } else if (relocation.type() == R_X86_64_JUMP_SLOT || relocation.type() == R_X86_64_GLOB_DAT) {
      target = relocation.symbol_name();
    }
    return true;  // the slot's relocation: its target, or none
  });
  return target;
}

std::vector<uint64_t> ElfFile::got_slots_of(std::string_view name) const {
  std::vector<uint64_t> slots;
  for_each_relocation(elf_.get(), [&](const Relocation& relocation) {
    if (relocation.type() == R_X86_64_GLOB_DAT && relocation.symbol_name() == name) {
      slots.push_back(relocation.rela.r_offset);
    }
    return false;
  });
  return slots;
}

}  // namespace memtrail::inspect
