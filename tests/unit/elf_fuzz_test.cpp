// SPDX-License-Identifier: Apache-2.0
// Malformed ELF files against every reader of them (ElfFile, the unwind-table builder, the
// allocator lookup, CPython detection, the symbolizer): each mutation runs in a forked child
// with a time and memory budget, so a crash or a hang fails the test naming the case.
//
// memtrail runs as root and reads files that traced processes name: whatever a file holds, one
// file may cost a reader a bounded time and memory, and it ends in a clear error (naming the
// file) or a partial result.
#include <dwarf.h>
#include <elf.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "inspect/allocator.h"
#include "inspect/elf_file.h"
#include "inspect/proc_maps.h"
#include "inspect/process_file.h"
#include "python/cpython.h"
#include "symbolizer/symbolizer.h"
#include "unwind/table_builder.h"

namespace memtrail {
namespace {

namespace fs = std::filesystem;

using Bytes = std::vector<uint8_t>;

// What one file may cost all readers together: a hang or a runaway loop ends the child.
constexpr unsigned kCaseSeconds = 20;
// Address space of the child: the file is mapped, libdw's and the builder's structures are a
// small multiple of it; a reader that trusts a 4 GiB size claim runs out of this.
constexpr rlim_t kCaseAddressSpace = rlim_t{1} << 31;

template <typename T>
T get(const Bytes& bytes, uint64_t offset) {
  T value{};
  if (offset + sizeof(T) <= bytes.size()) std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

template <typename T>
void put(Bytes& bytes, uint64_t offset, T value) {
  if (offset + sizeof(T) <= bytes.size()) std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

struct Section {
  std::string name;
  uint64_t header_offset = 0;  // where its Elf64_Shdr is in the file
  Elf64_Shdr header{};
};

// One CIE or FDE of a CFI section, as framed by its length (offsets in the section).
struct CfiEntry {
  uint64_t offset = 0;
  uint32_t length = 0;
  bool cie = false;
};

// A real binary, read once, with what the mutations aim at.
struct Seed {
  std::string name;
  Bytes bytes;
  Elf64_Ehdr header{};
  std::vector<Section> sections;
  std::vector<std::pair<uint64_t, Elf64_Phdr>> program_headers;  // (header offset, header)

  explicit Seed(std::string seed_name, const std::string& path) : name(std::move(seed_name)) {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
    header = get<Elf64_Ehdr>(bytes, 0);
    for (unsigned i = 0; i < header.e_phnum; ++i) {
      uint64_t at = header.e_phoff + uint64_t{i} * sizeof(Elf64_Phdr);
      program_headers.emplace_back(at, get<Elf64_Phdr>(bytes, at));
    }
    Elf64_Shdr names =
        get<Elf64_Shdr>(bytes, header.e_shoff + header.e_shstrndx * sizeof(Elf64_Shdr));
    for (unsigned i = 0; i < header.e_shnum; ++i) {
      Section section;
      section.header_offset = header.e_shoff + uint64_t{i} * sizeof(Elf64_Shdr);
      section.header = get<Elf64_Shdr>(bytes, section.header_offset);
      uint64_t name_at = names.sh_offset + section.header.sh_name;
      if (name_at < bytes.size()) section.name = reinterpret_cast<const char*>(&bytes[name_at]);
      sections.push_back(section);
    }
  }

  const Section* section(const std::string& section_name) const {
    for (const Section& s : sections) {
      if (s.name == section_name) return &s;
    }
    return nullptr;
  }

  std::vector<CfiEntry> cfi_entries(const Section& section) const {
    std::vector<CfiEntry> entries;
    bool eh = section.name == ".eh_frame";
    uint64_t offset = 0;
    while (offset + 8 <= section.header.sh_size) {
      uint32_t length = get<uint32_t>(bytes, section.header.sh_offset + offset);
      if (length == 0 || length == 0xffffffff) break;
      uint32_t id = get<uint32_t>(bytes, section.header.sh_offset + offset + 4);
      entries.push_back({offset, length, eh ? id == 0 : id == 0xffffffff});
      offset += 4 + uint64_t{length};
    }
    return entries;
  }

  // Mappings that place the file as the loader would, at 0x400000 + vaddr.
  std::vector<inspect::Mapping> mappings(const std::string& path) const {
    std::vector<inspect::Mapping> result;
    for (const auto& [at, phdr] : program_headers) {
      if (phdr.p_type != PT_LOAD) continue;
      inspect::Mapping mapping;
      mapping.start = 0x400000 + (phdr.p_vaddr & ~uint64_t{0xfff});
      mapping.end = 0x400000 + ((phdr.p_vaddr + phdr.p_memsz + 0xfff) & ~uint64_t{0xfff});
      mapping.file_offset = phdr.p_offset & ~uint64_t{0xfff};
      mapping.readable = true;
      mapping.executable = (phdr.p_flags & PF_X) != 0;
      // The file as stat() sees it: memtrail checks what it opens against the mapping's
      // device and inode (pid 0: a file of memtrail's own, opened by its path).
      struct stat status {};
      if (::stat(path.c_str(), &status) == 0) {
        mapping.device = status.st_dev;
        mapping.inode = status.st_ino;
      }
      mapping.path = path;
      result.push_back(mapping);
    }
    return result;
  }
};

struct Case {
  std::string name;
  std::function<void(Bytes&)> mutate;
};

// Runs every reader on the file at `path` (a mutation of `seed`). Errors are expected; anything
// else thrown, or an error that does not name the file, is a failure (exit code and stderr).
int run_readers(const Seed& seed, const std::string& dir, const std::string& path) {
  auto error_names_file = [&](const Error& error) {
    std::string message = error.what();
    // libelf's elf_errmsg(-1) says "no error" when the failure was not libelf's own.
    if (message.find(path) != std::string::npos && message.find("no error") == std::string::npos)
      return true;
    std::fprintf(stderr, "error without the file's name or cause: %s\n", message.c_str());
    return false;
  };
  bool ok = true;
  try {
    inspect::ElfFile elf = inspect::ElfFile::open(path);
    (void)elf.interpreter();
    (void)elf.build_id();
    (void)elf.is_x86_64();
    for (const char* name : {"malloc", "free", "main", "realloc"}) {
      if (auto symbol = elf.find_function(name)) (void)elf.read_code(symbol->address, 64);
    }
    (void)elf.find_object("_PyRuntime");
    for (const char* name : {".eh_frame", ".debug_frame", ".text", ".debug_info"}) {
      if (auto section = elf.find_section(name)) (void)elf.section_data(*section);
    }
    (void)elf.address_at_file_offset(0);
  } catch (const Error& error) {
    ok = error_names_file(error) && ok;
  }
  try {
    unwind::UnwindTable table = unwind::build_unwind_table(path);
    (void)unwind::build_page_index(table.rows);
  } catch (const Error& error) {
    ok = error_names_file(error) && ok;
  }
  try {
    (void)inspect::allocator_in_file(inspect::file_in_root(0, path));
    (void)inspect::classify_allocator(inspect::file_in_root(0, path), false, false);
  } catch (const Error& error) {
    ok = error_names_file(error) && ok;
  }
  // CPython detection reads any module named like an interpreter.
  fs::copy_file(path, dir + "/libpython3.11.so.1.0", fs::copy_options::overwrite_existing);
  auto python_mappings = seed.mappings(dir + "/libpython3.11.so.1.0");
  (void)python::find_interpreter(0, python_mappings);

  symbolizer::Symbolizer symbolizer;
  auto mappings = seed.mappings(path);
  symbolizer.set_process_mappings(0, mappings);
  for (const auto& mapping : mappings) {
    if (!mapping.executable) continue;
    for (uint64_t step = 0; step < 16; ++step) {
      uint64_t address = mapping.start + (mapping.end - mapping.start) / 16 * step + 5;
      (void)symbolizer.symbolize(0, address);
    }
  }
  return ok ? 0 : 4;
}

struct Outcome {
  bool passed = false;
  std::string what;
  double cpu_seconds = 0;  // the child's, user and system: what the file cost its readers
};

Outcome run_case(const Seed& seed, const Case& test_case, const std::string& dir) {
  std::string path = dir + "/" + seed.name + ".elf";
  std::string log = dir + "/stderr";
  pid_t child = fork();
  if (child == 0) {
    // The child: its own copy of the seed, mutated, written, read; alarm() and the address
    // space limit turn a hang or a runaway allocation into a signal or a bad_alloc.
    alarm(kCaseSeconds);
    rlimit limit{kCaseAddressSpace, kCaseAddressSpace};
    setrlimit(RLIMIT_AS, &limit);
    FILE* err = std::freopen(log.c_str(), "w", stderr);
    (void)err;
    int code = 0;
    try {
      Bytes bytes = seed.bytes;
      test_case.mutate(bytes);
      {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(bytes.data()),
                  static_cast<std::streamsize>(bytes.size()));
      }
      code = run_readers(seed, dir, path);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "uncaught %s\n", error.what());
      code = 3;
    } catch (...) {
      std::fprintf(stderr, "uncaught non-standard exception\n");
      code = 3;
    }
    std::fflush(stderr);
    _exit(code);
  }
  int status = 0;
  rusage usage{};
  while (wait4(child, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  Outcome outcome;
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  outcome.cpu_seconds = seconds(usage.ru_utime) + seconds(usage.ru_stime);
  std::ifstream in(log);
  std::string output((std::istreambuf_iterator<char>(in)), {});
  if (output.size() > 600) output.resize(600);
  if (WIFSIGNALED(status)) {
    int signal_number = WTERMSIG(status);
    outcome.what = signal_number == SIGALRM
                       ? "hung: still running after " + std::to_string(kCaseSeconds) + " s"
                       : std::string("crashed: ") + strsignal(signal_number);
  } else if (WEXITSTATUS(status) != 0) {
    outcome.what = "exit " + std::to_string(WEXITSTATUS(status));
  } else {
    outcome.passed = true;
  }
  if (!outcome.passed) outcome.what += ": " + output;
  return outcome;
}

// --- The mutations -------------------------------------------------------------------------

void add(std::vector<Case>& cases, std::string name, std::function<void(Bytes&)> mutate) {
  cases.push_back({std::move(name), std::move(mutate)});
}

std::vector<Case> truncations(const Seed& seed) {
  std::vector<Case> cases;
  std::vector<uint64_t> offsets{0, 1, 4, 5, 16, 52, 63, 64, 65, 120};
  uint64_t size = seed.bytes.size();
  for (int i = 1; i < 40; ++i) offsets.push_back(size * i / 40);
  offsets.push_back(seed.header.e_phoff + 20);
  offsets.push_back(seed.header.e_shoff);
  offsets.push_back(seed.header.e_shoff + 100);
  offsets.push_back(size - 1);
  for (const char* name : {".eh_frame", ".debug_frame", ".dynsym", ".symtab", ".dynstr",
                           ".note.gnu.build-id", ".debug_info", ".debug_line", ".shstrtab"}) {
    if (const Section* section = seed.section(name)) {
      offsets.push_back(section->header.sh_offset + 3);
      offsets.push_back(section->header.sh_offset + section->header.sh_size / 2);
    }
  }
  for (uint64_t offset : offsets) {
    if (offset >= size) continue;
    add(cases, "truncated at " + std::to_string(offset) + " of " + std::to_string(size),
        [offset](Bytes& bytes) { bytes.resize(offset); });
  }
  return cases;
}

std::vector<Case> header_fields(const Seed& seed) {
  std::vector<Case> cases;
  uint64_t size = seed.bytes.size();
  const std::vector<std::pair<std::string, uint64_t>> offsets{{"0", 0},
                                                              {"file size", size},
                                                              {"file size - 1", size - 1},
                                                              {"4 GiB", 0xffffffffull},
                                                              {"2^62", 1ull << 62},
                                                              {"~0", ~0ull},
                                                              {"odd", 3}};
  for (const auto& [label, value] : offsets) {
    add(cases, "e_shoff = " + label,
        [v = value](Bytes& b) { put<uint64_t>(b, offsetof(Elf64_Ehdr, e_shoff), v); });
    add(cases, "e_phoff = " + label,
        [v = value](Bytes& b) { put<uint64_t>(b, offsetof(Elf64_Ehdr, e_phoff), v); });
  }
  for (uint16_t value : {0, 1, 0xff00, 0xffff}) {
    std::string v = std::to_string(value);
    add(cases, "e_shnum = " + v,
        [value](Bytes& b) { put(b, offsetof(Elf64_Ehdr, e_shnum), value); });
    add(cases, "e_phnum = " + v,
        [value](Bytes& b) { put(b, offsetof(Elf64_Ehdr, e_phnum), value); });
    add(cases, "e_shstrndx = " + v,
        [value](Bytes& b) { put(b, offsetof(Elf64_Ehdr, e_shstrndx), value); });
    add(cases, "e_shentsize = " + v,
        [value](Bytes& b) { put(b, offsetof(Elf64_Ehdr, e_shentsize), value); });
    add(cases, "e_phentsize = " + v,
        [value](Bytes& b) { put(b, offsetof(Elf64_Ehdr, e_phentsize), value); });
  }
  // Extended numbering: section 0 claims the count and the name table's index.
  add(cases, "extended e_shnum in section 0 = 2^32 - 1", [&seed](Bytes& b) {
    put<uint16_t>(b, offsetof(Elf64_Ehdr, e_shnum), 0);
    put<uint64_t>(b, seed.header.e_shoff + offsetof(Elf64_Shdr, sh_size), 0xffffffffull);
  });
  add(cases, "extended e_shstrndx in section 0 = 2^32 - 1", [&seed](Bytes& b) {
    put<uint16_t>(b, offsetof(Elf64_Ehdr, e_shstrndx), SHN_XINDEX);
    put<uint32_t>(b, seed.header.e_shoff + offsetof(Elf64_Shdr, sh_link), 0xffffffffu);
  });
  add(cases, "ELFCLASS32", [](Bytes& b) { b[EI_CLASS] = ELFCLASS32; });
  add(cases, "big-endian", [](Bytes& b) { b[EI_DATA] = ELFDATA2MSB; });
  add(cases, "e_machine aarch64",
      [](Bytes& b) { put<uint16_t>(b, offsetof(Elf64_Ehdr, e_machine), EM_AARCH64); });
  add(cases, "no magic", [](Bytes& b) { b[1] = 'X'; });
  add(cases, "empty file", [](Bytes& b) { b.clear(); });
  add(cases, "4 KiB of zeros appended", [](Bytes& b) { b.resize(b.size() + 4096, 0); });
  return cases;
}

std::vector<Case> section_fields(const Seed& seed, const std::vector<std::string>& names) {
  std::vector<Case> cases;
  uint64_t size = seed.bytes.size();
  for (const std::string& name : names) {
    const Section* section = seed.section(name);
    if (!section) continue;
    uint64_t at = section->header_offset;
    auto field = [&](const std::string& label, uint64_t offset, auto value) {
      add(cases, name + ": " + label,
          [at, offset, value](Bytes& b) { put(b, at + offset, value); });
    };
    for (uint64_t value :
         {uint64_t{0}, uint64_t{1}, uint64_t{0xffffffff}, uint64_t{1} << 62, size, ~uint64_t{0}}) {
      field("sh_size = " + std::to_string(value), offsetof(Elf64_Shdr, sh_size), value);
    }
    for (uint64_t value : {size, size - 1, uint64_t{0xffffffff}, ~uint64_t{0} - 16}) {
      field("sh_offset = " + std::to_string(value), offsetof(Elf64_Shdr, sh_offset), value);
    }
    field("sh_offset = sh_offset + 1", offsetof(Elf64_Shdr, sh_offset),
          uint64_t{section->header.sh_offset + 1});
    for (uint32_t value : {0u, 0xffffu, 0xffffffffu}) {
      field("sh_link = " + std::to_string(value), offsetof(Elf64_Shdr, sh_link), value);
    }
    for (uint64_t value : {uint64_t{0}, uint64_t{1}, uint64_t{7}, uint64_t{0xffffffff}}) {
      field("sh_entsize = " + std::to_string(value), offsetof(Elf64_Shdr, sh_entsize), value);
    }
    field("sh_name past the names", offsetof(Elf64_Shdr, sh_name), uint32_t{0xfffffff0});
    field("sh_type NOBITS", offsetof(Elf64_Shdr, sh_type), uint32_t{SHT_NOBITS});
    field("sh_type SYMTAB", offsetof(Elf64_Shdr, sh_type), uint32_t{SHT_SYMTAB});
    field("sh_type NOTE", offsetof(Elf64_Shdr, sh_type), uint32_t{SHT_NOTE});
    field("sh_flags COMPRESSED", offsetof(Elf64_Shdr, sh_flags),
          uint64_t{section->header.sh_flags | SHF_COMPRESSED});
    field("sh_addralign 2^63", offsetof(Elf64_Shdr, sh_addralign), uint64_t{1} << 63);
    // A compressed section whose header claims 4 GiB once inflated.
    add(cases, name + ": compressed, claims 4 GiB", [at, section](Bytes& b) {
      put<uint64_t>(b, at + offsetof(Elf64_Shdr, sh_flags),
                    section->header.sh_flags | SHF_COMPRESSED);
      uint64_t data = section->header.sh_offset;
      Elf64_Chdr chdr{ELFCOMPRESS_ZLIB, 0, 0xffffffffull, 1};
      put(b, data, chdr);
    });
  }
  return cases;
}

std::vector<Case> program_header_fields(const Seed& seed) {
  std::vector<Case> cases;
  int index = 0;
  for (const auto& [at, phdr] : seed.program_headers) {
    std::string name =
        "program header " + std::to_string(index++) + " (type " + std::to_string(phdr.p_type) + ")";
    auto field = [&](const std::string& label, uint64_t offset, uint64_t value) {
      add(cases, name + ": " + label,
          [a = at, offset, value](Bytes& b) { put(b, a + offset, value); });
    };
    if (phdr.p_type != PT_LOAD && phdr.p_type != PT_NOTE && phdr.p_type != PT_INTERP &&
        phdr.p_type != PT_DYNAMIC && phdr.p_type != PT_GNU_EH_FRAME)
      continue;
    field("p_offset = 4 GiB", offsetof(Elf64_Phdr, p_offset), 0xffffffff);
    field("p_offset = ~0", offsetof(Elf64_Phdr, p_offset), ~0ull);
    field("p_filesz = 4 GiB", offsetof(Elf64_Phdr, p_filesz), 0xffffffff);
    field("p_filesz = ~0", offsetof(Elf64_Phdr, p_filesz), ~0ull);
    field("p_memsz = ~0", offsetof(Elf64_Phdr, p_memsz), ~0ull);
    field("p_vaddr = ~0 - 8", offsetof(Elf64_Phdr, p_vaddr), ~0ull - 8);
    field("p_filesz = 0", offsetof(Elf64_Phdr, p_filesz), 0);
  }
  // Every segment a note that claims the whole address space.
  add(cases, "every program header PT_NOTE of 4 GiB", [&seed](Bytes& b) {
    for (const auto& [at, phdr] : seed.program_headers) {
      put<uint32_t>(b, at + offsetof(Elf64_Phdr, p_type), PT_NOTE);
      put<uint64_t>(b, at + offsetof(Elf64_Phdr, p_filesz), 0xffffffff);
    }
  });
  return cases;
}

std::vector<Case> string_and_note_offsets(const Seed& seed) {
  std::vector<Case> cases;
  for (const char* name : {".dynsym", ".symtab"}) {
    const Section* section = seed.section(name);
    if (!section) continue;
    uint64_t begin = section->header.sh_offset;
    uint64_t count = section->header.sh_size / sizeof(Elf64_Sym);
    add(cases, std::string(name) + ": every st_name past the strings", [begin, count](Bytes& b) {
      for (uint64_t i = 0; i < count; ++i)
        put<uint32_t>(b, begin + i * sizeof(Elf64_Sym) + offsetof(Elf64_Sym, st_name), 0xfffffff0);
    });
    add(cases, std::string(name) + ": every st_size 2^63, st_value ~0", [begin, count](Bytes& b) {
      for (uint64_t i = 0; i < count; ++i) {
        put<uint64_t>(b, begin + i * sizeof(Elf64_Sym) + offsetof(Elf64_Sym, st_size), 1ull << 63);
        put<uint64_t>(b, begin + i * sizeof(Elf64_Sym) + offsetof(Elf64_Sym, st_value), ~0ull);
      }
    });
    add(cases, std::string(name) + ": every st_shndx SHN_XINDEX", [begin, count](Bytes& b) {
      for (uint64_t i = 0; i < count; ++i)
        put<uint16_t>(b, begin + i * sizeof(Elf64_Sym) + offsetof(Elf64_Sym, st_shndx), SHN_XINDEX);
    });
  }
  add(cases, "every sh_name past the names", [&seed](Bytes& b) {
    for (const Section& s : seed.sections)
      put<uint32_t>(b, s.header_offset + offsetof(Elf64_Shdr, sh_name), 0xfffffff0);
  });
  add(cases, "every section .eh_frame", [&seed](Bytes& b) {
    const Section* eh = seed.section(".eh_frame");
    if (!eh) return;
    for (const Section& s : seed.sections)
      put<uint32_t>(b, s.header_offset + offsetof(Elf64_Shdr, sh_name), eh->header.sh_name);
  });
  // Extended numbering (e_shnum 0, the count in section 0): 200,000 empty symbol tables, a
  // 12.8 MB section header table. A reader that looks at every section for each one is stuck.
  add(cases, "200,000 sections, each an empty SHT_DYNSYM", [&seed](Bytes& b) {
    constexpr uint64_t kCount = 200000;
    uint64_t table = (b.size() + 7) / 8 * 8;
    b.resize(table + kCount * sizeof(Elf64_Shdr), 0);
    for (const Section& s : seed.sections)
      std::memcpy(b.data() + table + (s.header_offset - seed.header.e_shoff), &s.header,
                  sizeof(s.header));
    for (uint64_t i = seed.sections.size(); i < kCount; ++i) {
      Elf64_Shdr header{};
      header.sh_type = SHT_DYNSYM;
      header.sh_entsize = sizeof(Elf64_Sym);
      header.sh_offset = 64;
      std::memcpy(b.data() + table + i * sizeof(Elf64_Shdr), &header, sizeof(header));
    }
    put<uint64_t>(b, table + offsetof(Elf64_Shdr, sh_size), kCount);
    put<uint64_t>(b, offsetof(Elf64_Ehdr, e_shoff), table);
    put<uint16_t>(b, offsetof(Elf64_Ehdr, e_shnum), 0);
  });
  add(cases, "every section a SHT_DYNSYM", [&seed](Bytes& b) {
    for (const Section& s : seed.sections)
      put<uint32_t>(b, s.header_offset + offsetof(Elf64_Shdr, sh_type), SHT_DYNSYM);
  });
  if (const Section* note = seed.section(".note.gnu.build-id")) {
    uint64_t at = note->header.sh_offset;
    add(cases, "build-id note: n_descsz 4 GiB",
        [at](Bytes& b) { put<uint32_t>(b, at + 4, 0xffffffff); });
    add(cases, "build-id note: n_namesz 4 GiB",
        [at](Bytes& b) { put<uint32_t>(b, at, 0xfffffff0); });
    add(cases, "build-id note: n_descsz 0", [at](Bytes& b) { put<uint32_t>(b, at + 4, 0); });
  }
  return cases;
}

// Writes over [base, base + size) of `b` a CFI section (at virtual address `address`) whose
// first half is one CIE with a long program of DW_CFA_nop, followed by as many minimal FDEs
// as fit, each naming that CIE and 16 bytes of code from `text` on. A builder that runs the
// CIE's program once per FDE costs their product.
void write_long_cie(Bytes& b, uint64_t base, uint64_t size, uint64_t address, bool eh,
                    uint64_t text) {
  if (base + size > b.size()) return;
  uint8_t* s = b.data() + base;
  uint64_t cie_length = size / 2 / 4 * 4;
  std::memset(s, 0, size);
  put<uint32_t>(b, base, static_cast<uint32_t>(cie_length));
  put<uint32_t>(b, base + 4, eh ? 0u : 0xffffffffu);
  const uint8_t head_eh[] = {1, 'z', 'R', 0, 1, 0x78, 16, 1, 0x1b, DW_CFA_def_cfa, 7, 8};
  const uint8_t head_debug[] = {1, 0, 1, 0x78, 16, DW_CFA_def_cfa, 7, 8};
  if (eh)
    std::memcpy(s + 8, head_eh, sizeof(head_eh));
  else
    std::memcpy(s + 8, head_debug, sizeof(head_debug));
  // The rest of the CIE: DW_CFA_nop (0).
  uint64_t fde_size = eh ? 20 : 24;
  uint64_t index = 0;
  for (uint64_t at = 4 + cie_length; at + fde_size + 4 <= size; at += fde_size, ++index) {
    put<uint32_t>(b, base + at, static_cast<uint32_t>(fde_size - 4));
    uint64_t pc = text + 16 * index;
    if (eh) {
      put<uint32_t>(b, base + at + 4, static_cast<uint32_t>(at + 4));
      put<int32_t>(b, base + at + 8, static_cast<int32_t>(pc - (address + at + 8)));
      put<uint32_t>(b, base + at + 12, 16);
    } else {
      put<uint32_t>(b, base + at + 4, 0);
      put<uint64_t>(b, base + at + 8, pc);
      put<uint64_t>(b, base + at + 16, 16);
    }
  }
}

// .eh_frame and .debug_frame: CIE pointers to themselves and elsewhere, lengths and
// augmentation lengths past the end, enormous and overlapping ranges, programs that loop.
std::vector<Case> cfi_mutations(const Seed& seed, const std::string& section_name) {
  std::vector<Case> cases;
  const Section* section = seed.section(section_name);
  if (!section) return cases;
  bool eh = section_name == ".eh_frame";
  uint64_t base = section->header.sh_offset;
  uint64_t section_size = section->header.sh_size;
  std::vector<CfiEntry> entries = seed.cfi_entries(*section);
  std::vector<CfiEntry> fdes, cies;
  for (const CfiEntry& entry : entries) (entry.cie ? cies : fdes).push_back(entry);
  const std::string prefix = section_name + ": ";
  // The CIE pointer of an FDE that names `target` (a section offset).
  auto cie_pointer = [eh](const CfiEntry& fde, uint64_t target) -> uint32_t {
    return eh ? static_cast<uint32_t>(fde.offset + 4 - target) : static_cast<uint32_t>(target);
  };
  for (size_t i = 0; i < fdes.size() && i < 4; ++i) {
    const CfiEntry fde = fdes[i];
    std::string n = "FDE " + std::to_string(i) + " ";
    add(cases, prefix + n + "CIE pointer to itself",
        [=](Bytes& b) { put<uint32_t>(b, base + fde.offset + 4, cie_pointer(fde, fde.offset)); });
    add(cases, prefix + n + "CIE pointer into its own body", [=](Bytes& b) {
      put<uint32_t>(b, base + fde.offset + 4, cie_pointer(fde, fde.offset + 8));
    });
    add(cases, prefix + n + "CIE pointer past the section",
        [=](Bytes& b) { put<uint32_t>(b, base + fde.offset + 4, eh ? 0x80000000u : 0x7ffffff0u); });
    add(cases, prefix + n + "length 0xffffffff (64-bit, huge)", [=](Bytes& b) {
      put<uint32_t>(b, base + fde.offset, 0xffffffffu);
      put<uint64_t>(b, base + fde.offset + 4, ~0ull - 64);
    });
    add(cases, prefix + n + "length 2^31",
        [=](Bytes& b) { put<uint32_t>(b, base + fde.offset, 0x80000000u); });
    add(cases, prefix + n + "length 1", [=](Bytes& b) { put<uint32_t>(b, base + fde.offset, 1); });
    add(cases, prefix + n + "range 4 GiB", [=](Bytes& b) {
      put<uint32_t>(b, base + fde.offset + (eh ? 12 : 16), 0xffffffffu);
      if (!eh) put<uint64_t>(b, base + fde.offset + 16, 0xffffffffull);
    });
    add(cases, prefix + n + "instructions: remember_state to the end", [=](Bytes& b) {
      for (uint64_t at = (eh ? 17 : 24); at < 4 + fde.length; ++at)
        b[base + fde.offset + at] = DW_CFA_remember_state;
    });
    add(cases, prefix + n + "instructions: restore_state to the end", [=](Bytes& b) {
      for (uint64_t at = (eh ? 17 : 24); at < 4 + fde.length; ++at)
        b[base + fde.offset + at] = DW_CFA_restore_state;
    });
    add(cases, prefix + n + "instructions: advance_loc4 ~0", [=](Bytes& b) {
      uint64_t at = base + fde.offset + (eh ? 17 : 24);
      b[at] = DW_CFA_advance_loc4;
      put<uint32_t>(b, at + 1, 0xffffffffu);
    });
    add(cases, prefix + n + "augmentation length past the end",
        [=](Bytes& b) { b[base + fde.offset + 16] = 0x7f; });
  }
  for (size_t i = 0; i < cies.size() && i < 3; ++i) {
    const CfiEntry cie = cies[i];
    std::string n = "CIE " + std::to_string(i) + " ";
    // Layout: length, id, version, augmentation string, code and data alignment, return
    // address register, [augmentation length, data], initial instructions.
    uint64_t aug = base + cie.offset + 9;
    uint64_t aug_end = aug;
    while (aug_end < seed.bytes.size() && seed.bytes[aug_end]) ++aug_end;
    uint64_t after_aug = aug_end + 1;  // code alignment (uleb), data alignment (sleb), ra (u8)
    add(cases, prefix + n + "augmentation length past the end", [=](Bytes& b) {
      if (b[aug] == 'z') b[after_aug + 3] = 0x7f;
    });
    add(cases, prefix + n + "unterminated augmentation string", [=](Bytes& b) {
      for (uint64_t at = aug; at < base + cie.offset + 4 + cie.length; ++at) b[at] = 'z';
    });
    add(cases, prefix + n + "version 255", [=](Bytes& b) { b[base + cie.offset + 8] = 255; });
    add(cases, prefix + n + "code alignment 0x7f, data alignment -64", [=](Bytes& b) {
      b[after_aug] = 0x7f;
      b[after_aug + 1] = 0x40;
    });
    add(cases, prefix + n + "pointer encoding DW_EH_PE_indirect|aligned", [=](Bytes& b) {
      if (b[aug] == 'z' && b[aug + 1] == 'R') b[after_aug + 4] = 0xd0;
    });
    add(cases, prefix + n + "initial instructions: remember_state to the end", [=](Bytes& b) {
      uint64_t start = after_aug + 3 + (b[aug] == 'z' ? 1 + b[after_aug + 3] : 0);
      for (uint64_t at = start; at < base + cie.offset + 4 + cie.length; ++at)
        b[at] = DW_CFA_remember_state;
    });
    add(cases, prefix + n + "initial instructions: advance_loc", [=](Bytes& b) {
      uint64_t start = after_aug + 3 + (b[aug] == 'z' ? 1 + b[after_aug + 3] : 0);
      if (start < base + cie.offset + 4 + cie.length) b[start] = DW_CFA_advance_loc | 1;
    });
  }
  add(cases, prefix + "every FDE's range 2 GiB (all overlap)", [=](Bytes& b) {
    for (const CfiEntry& fde : fdes)
      put<uint32_t>(b, base + fde.offset + (eh ? 12 : 16), 0x7fffffffu);
  });
  add(cases, prefix + "every FDE on the first FDE's address", [=](Bytes& b) {
    if (fdes.empty()) return;
    if (!eh) {
      for (const CfiEntry& fde : fdes)
        put(b, base + fde.offset + 8, get<uint64_t>(b, base + fdes[0].offset + 8));
      return;
    }
    int32_t first = get<int32_t>(b, base + fdes[0].offset + 8);
    for (const CfiEntry& fde : fdes) {
      int64_t delta = static_cast<int64_t>(fdes[0].offset) - static_cast<int64_t>(fde.offset);
      put<int32_t>(b, base + fde.offset + 8, static_cast<int32_t>(first + delta));
    }
  });
  add(cases, prefix + "every FDE's CIE pointer to itself", [=](Bytes& b) {
    for (const CfiEntry& fde : fdes)
      put<uint32_t>(b, base + fde.offset + 4, cie_pointer(fde, fde.offset));
  });
  add(cases, prefix + "every FDE's CIE pointer to the first FDE", [=](Bytes& b) {
    if (fdes.empty()) return;
    for (const CfiEntry& fde : fdes)
      put<uint32_t>(b, base + fde.offset + 4, cie_pointer(fde, fdes[0].offset));
  });
  add(cases, prefix + "every entry's length 0xfffffff0", [=](Bytes& b) {
    for (const CfiEntry& entry : entries) put<uint32_t>(b, base + entry.offset, 0xfffffff0u);
  });
  add(cases, prefix + "every byte remember_state",
      [=](Bytes& b) { std::memset(b.data() + base, DW_CFA_remember_state, section_size); });
  add(cases, prefix + "every byte 0xff",
      [=](Bytes& b) { std::memset(b.data() + base, 0xff, section_size); });
  // One CIE with long initial instructions shared by every FDE after it: without care, a
  // builder runs the CIE's program once per FDE (cost: FDEs x CIE length).
  uint64_t text = 0;
  for (const auto& [at, phdr] : seed.program_headers) {
    if (phdr.p_type == PT_LOAD && (phdr.p_flags & PF_X)) text = phdr.p_vaddr;
  }
  uint64_t section_address = section->header.sh_addr;
  add(cases, prefix + "one long CIE, every FDE shares it",
      [=](Bytes& b) { write_long_cie(b, base, section_size, section_address, eh, text); });
  // The same over the space of .text, the largest section, which the CFI section's header
  // now claims: about 20,000 FDEs behind a CIE of 750 KB in libc.
  if (const Section* code = seed.section(".text")) {
    uint64_t at = section->header_offset;
    Elf64_Shdr code_header = code->header;
    add(cases, prefix + "one long CIE, every FDE shares it, in .text's place", [=](Bytes& b) {
      put<uint64_t>(b, at + offsetof(Elf64_Shdr, sh_offset), code_header.sh_offset);
      put<uint64_t>(b, at + offsetof(Elf64_Shdr, sh_size), code_header.sh_size);
      put<uint64_t>(b, at + offsetof(Elf64_Shdr, sh_addr), code_header.sh_addr);
      write_long_cie(b, code_header.sh_offset, code_header.sh_size, code_header.sh_addr, eh, text);
    });
  }
  return cases;
}

// Random bytes flipped in one part of the file: a fixed seed, so every run tries the same.
std::vector<Case> random_flips(const Seed& seed, int count) {
  std::vector<Case> cases;
  std::mt19937_64 random(0x5eed0000u + seed.bytes.size());
  std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> regions{
      {"ELF header", {0, sizeof(Elf64_Ehdr)}},
      {"program headers",
       {seed.header.e_phoff, uint64_t{seed.header.e_phnum} * sizeof(Elf64_Phdr)}},
      {"section headers",
       {seed.header.e_shoff, uint64_t{seed.header.e_shnum} * sizeof(Elf64_Shdr)}}};
  for (const char* name :
       {".eh_frame", ".debug_frame", ".dynsym", ".symtab", ".gnu.version", ".debug_info",
        ".debug_abbrev", ".debug_line", ".debug_str", ".note.gnu.build-id", ".text"}) {
    if (const Section* section = seed.section(name))
      regions.push_back({name, {section->header.sh_offset, section->header.sh_size}});
  }
  for (int i = 0; i < count; ++i) {
    const auto& [region, range] = regions[random() % regions.size()];
    if (range.second == 0) continue;
    int flips = 1 + static_cast<int>(random() % 16);
    std::vector<std::pair<uint64_t, uint8_t>> changes;
    for (int f = 0; f < flips; ++f)
      changes.push_back({range.first + random() % range.second, static_cast<uint8_t>(random())});
    add(cases,
        "random #" + std::to_string(i) + ": " + std::to_string(flips) + " bytes of " + region,
        [changes](Bytes& b) {
          for (const auto& [at, value] : changes) {
            if (at < b.size()) b[at] = value;
          }
        });
  }
  return cases;
}

// --- The tests -------------------------------------------------------------------------------

class ElfFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/memtrail-elf-fuzz-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs every case of `seed`. Besides crashes and hangs, a case fails when its file costs the
  // readers far more CPU than the unmutated file: what a mutation adds must stay linear.
  void run_all(const Seed& seed, const std::vector<Case>& cases) {
    ASSERT_FALSE(seed.bytes.empty()) << seed.name;
    Outcome pristine = run_case(seed, {"unmutated", [](Bytes&) {}}, dir_);
    ASSERT_TRUE(pristine.passed) << seed.name << ", unmutated: " << pristine.what;
    // Linear work on the largest mutations (200,000 section headers) takes 0.5-1.7 s of CPU on
    // this shared 2-CPU host, by its load; work quadratic in them would take minutes (and
    // alarm() ends a case at kCaseSeconds). So the budget's fixed part leaves the host's
    // noise room and still fails what is not linear.
    double budget = 4.0 + 4 * pristine.cpu_seconds;
    double slowest = 0;
    std::string slowest_name;
    for (const Case& test_case : cases) {
      Outcome outcome = run_case(seed, test_case, dir_);
      EXPECT_TRUE(outcome.passed) << seed.name << ", " << test_case.name << ": " << outcome.what;
      EXPECT_LE(outcome.cpu_seconds, budget)
          << seed.name << ", " << test_case.name << ": CPU time beyond the budget of one file ("
          << pristine.cpu_seconds << " s unmutated)";
      if (outcome.cpu_seconds > slowest) {
        slowest = outcome.cpu_seconds;
        slowest_name = test_case.name;
      }
    }
    std::printf("%s: %zu cases, unmutated %.2f s of CPU, slowest %.2f s (%s)\n", seed.name.c_str(),
                cases.size(), pristine.cpu_seconds, slowest, slowest_name.c_str());
  }

  std::string dir_;
};

const Seed& fixture_seed() {
  static const Seed seed("symbolize_fixture", MEMTRAIL_SYMBOLIZE_FIXTURE);
  return seed;
}
const Seed& debug_frame_seed() {
  static const Seed seed("debug_frame_lib", MEMTRAIL_DEBUG_FRAME_FIXTURE);
  return seed;
}
// A copy of the system's libc: large, stripped of debug info, with versioned symbols.
const Seed& libc_seed() {
  static const Seed seed("libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6");
  return seed;
}

const std::vector<std::string> kSections{".eh_frame",   ".eh_frame_hdr", ".debug_frame",
                                         ".dynsym",     ".symtab",       ".dynstr",
                                         ".strtab",     ".gnu.version",  ".note.gnu.build-id",
                                         ".debug_info", ".debug_line",   ".debug_abbrev",
                                         ".shstrtab",   ".interp"};

TEST_F(ElfFuzz, Truncated) {
  for (const Seed* seed : {&fixture_seed(), &debug_frame_seed(), &libc_seed()})
    run_all(*seed, truncations(*seed));
}

TEST_F(ElfFuzz, HeaderFields) {
  for (const Seed* seed : {&fixture_seed(), &libc_seed()}) run_all(*seed, header_fields(*seed));
}

TEST_F(ElfFuzz, SectionHeaders) {
  run_all(fixture_seed(), section_fields(fixture_seed(), kSections));
  run_all(debug_frame_seed(), section_fields(debug_frame_seed(), {".debug_frame"}));
  run_all(libc_seed(), section_fields(libc_seed(), {".eh_frame", ".dynsym", ".dynstr",
                                                    ".gnu.version", ".note.gnu.build-id"}));
}

TEST_F(ElfFuzz, ProgramHeaders) {
  for (const Seed* seed : {&fixture_seed(), &libc_seed()})
    run_all(*seed, program_header_fields(*seed));
}

TEST_F(ElfFuzz, StringAndNoteOffsets) {
  for (const Seed* seed : {&fixture_seed(), &libc_seed()})
    run_all(*seed, string_and_note_offsets(*seed));
}

TEST_F(ElfFuzz, CallFrameInformation) {
  run_all(fixture_seed(), cfi_mutations(fixture_seed(), ".eh_frame"));
  run_all(debug_frame_seed(), cfi_mutations(debug_frame_seed(), ".debug_frame"));
  run_all(libc_seed(), cfi_mutations(libc_seed(), ".eh_frame"));
}

TEST_F(ElfFuzz, RandomBytes) {
  run_all(fixture_seed(), random_flips(fixture_seed(), 150));
  run_all(debug_frame_seed(), random_flips(debug_frame_seed(), 50));
  run_all(libc_seed(), random_flips(libc_seed(), 60));
}

}  // namespace
}  // namespace memtrail
