// SPDX-License-Identifier: Apache-2.0
// Turn addresses in traced processes into functions, source files and lines (elfutils libdwfl).
#include "symbolizer/symbolizer.h"

#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <gelf.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>

#include "common/error.h"
#include "common/unique_fd.h"
#include "inspect/elf_file.h"
#include "inspect/process_file.h"

namespace memtrail::symbolizer {
namespace {

struct DwflDeleter {
  void operator()(Dwfl* dwfl) const { dwfl_end(dwfl); }
};

// Separate debug info is looked up by build-id under /usr/lib/debug/.build-id: a directory of
// the host only root writes, and a name made of hex digits. Not by libdwfl's standard search:
// it also opens paths made of the file's own directory and its .gnu_debuglink name, which a
// traced process chooses ("../../../run/some-fifo" would leave memtrail blocked in open()).
// And never through the network (see Symbolizer()).
const Dwfl_Callbacks kCallbacks = {
    .find_elf = dwfl_build_id_find_elf,
    .find_debuginfo = dwfl_build_id_find_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = nullptr,
};

std::string demangle(const char* name) {
  if (!name) return {};
  if (name[0] == '_' && name[1] == 'Z') {
    int status = 0;
    char* demangled = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    if (status == 0 && demangled) {
      std::string result(demangled);
      std::free(demangled);
      return result;
    }
  }
  return name;
}

// The name of a subprogram or inlined subroutine: the linkage name demangled gives the
// qualified C++ name with its parameters; plain DW_AT_name otherwise (C). Follows
// DW_AT_abstract_origin and DW_AT_specification, where inlined functions keep their names.
std::optional<std::string> die_function_name(Dwarf_Die* die) {
  Dwarf_Attribute attribute;
  for (int name_attribute : {DW_AT_linkage_name, DW_AT_MIPS_linkage_name, DW_AT_name}) {
    if (dwarf_attr_integrate(die, name_attribute, &attribute)) {
      if (const char* name = dwarf_formstring(&attribute)) return demangle(name);
    }
  }
  return std::nullopt;
}

// Function, file and line of one frame, without the address fields that differ per process.
struct FrameInfo {
  std::optional<std::string> function;
  std::optional<std::string> file;
  std::optional<uint32_t> line;
  bool inlined = false;
};

}  // namespace

// One ELF file and its debug information, reported into its own Dwfl at base 0 so that lookups
// use the file's own virtual addresses, whatever address each process loaded it at.
struct Symbolizer::Module {
  std::unique_ptr<Dwfl, DwflDeleter> dwfl;
  Dwfl_Module* module = nullptr;
  std::string build_id;
  std::vector<inspect::LoadSegment> segments;
  std::unordered_map<uint64_t, std::vector<FrameInfo>> cache;  // by looked-up ELF address

  std::vector<FrameInfo> lookup(uint64_t vaddr);
};

std::vector<FrameInfo> Symbolizer::Module::lookup(uint64_t vaddr) {
  auto cached = cache.find(vaddr);
  if (cached != cache.end()) return cached->second;

  std::vector<FrameInfo> frames;
  // Innermost source location from the line table.
  std::optional<std::string> file;
  std::optional<uint32_t> line;
  if (Dwfl_Line* line_info = dwfl_module_getsrc(module, vaddr)) {
    int line_number = 0;
    if (const char* source =
            dwfl_lineinfo(line_info, nullptr, &line_number, nullptr, nullptr, nullptr)) {
      file = source;
      if (line_number > 0) line = static_cast<uint32_t>(line_number);
    }
  }

  // The innermost scope at the address, then its concrete parents in the DIE tree (what
  // `eu-addr2line -i` does; dwarf_getscopes alone would continue into the inlined function's
  // abstract definition, not into its caller). Each inlined subroutine is a frame located
  // where its caller called it (DW_AT_call_file/line); the enclosing subprogram ends the chain.
  Dwarf_Addr bias = 0;
  Dwarf_Die* cu = dwfl_module_addrdie(module, vaddr, &bias);
  Dwarf_Die* innermost_scopes = nullptr;
  Dwarf_Die innermost;
  if (cu && dwarf_getscopes(cu, vaddr - bias, &innermost_scopes) > 0 &&
      dwarf_offdie(dwfl_module_getdwarf(module, &bias), dwarf_dieoffset(&innermost_scopes[0]),
                   &innermost)) {
    Dwarf_Die* chain = nullptr;
    int count = dwarf_getscopes_die(&innermost, &chain);
    Dwarf_Files* files = nullptr;
    bool have_files = dwarf_getsrcfiles(cu, &files, nullptr) == 0;
    for (int i = 0; i < count; ++i) {
      int tag = dwarf_tag(&chain[i]);
      if (tag != DW_TAG_inlined_subroutine && tag != DW_TAG_subprogram) continue;
      frames.push_back(
          {die_function_name(&chain[i]), file, line, tag == DW_TAG_inlined_subroutine});
      if (tag == DW_TAG_subprogram) break;
      Dwarf_Attribute attribute;
      Dwarf_Word value = 0;
      file.reset();
      line.reset();
      if (have_files &&
          dwarf_formudata(dwarf_attr(&chain[i], DW_AT_call_file, &attribute), &value) == 0) {
        if (const char* name = dwarf_filesrc(files, value, nullptr, nullptr)) file = name;
      }
      if (dwarf_formudata(dwarf_attr(&chain[i], DW_AT_call_line, &attribute), &value) == 0 &&
          value > 0) {
        line = static_cast<uint32_t>(value);
      }
    }
    std::free(chain);
  }
  std::free(innermost_scopes);

  // Without DWARF for the address (stripped file, assembly), the symbol table names it.
  if (frames.empty() || !frames.back().function) {
    GElf_Off offset = 0;
    GElf_Sym symbol;
    const char* name =
        dwfl_module_addrinfo(module, vaddr, &offset, &symbol, nullptr, nullptr, nullptr);
    if (frames.empty()) frames.push_back({std::nullopt, file, line, false});
    if (name) frames.back().function = demangle(name);
  }
  cache.emplace(vaddr, frames);
  return frames;
}

Symbolizer::Symbolizer() {
  // Debian sets DEBUGINFOD_URLS in /etc/profile.d; libdwfl would then download debug info
  // while the tracer reports. A tracer must never block on the network.
  unsetenv("DEBUGINFOD_URLS");
  elf_version(EV_CURRENT);
}

Symbolizer::~Symbolizer() = default;

void Symbolizer::set_process_mappings(uint32_t pid, std::vector<inspect::Mapping> mappings) {
  Process& process = processes_[pid];
  process = Process{std::move(mappings)};
  // Open the code modules now, while the process maps them: a report is often symbolized
  // after the process has exited. libdwfl reads debug info only when first used.
  for (const auto& mapping : process.mappings) {
    if (mapping.executable && mapping.is_file()) module_for(pid, mapping);
  }
}

std::shared_ptr<Symbolizer::Module> Symbolizer::module_for(uint32_t pid,
                                                           const inspect::Mapping& mapping) {
  std::string file_key = mapping.path + "\n" + std::to_string(mapping.inode);
  auto known = modules_.find(file_key);
  if (known != modules_.end()) return known->second;

  std::shared_ptr<Module> module;
  // The process is gone (no mapping to open the file through): the same file (same device
  // and inode) may still be at its name, if the process shared memtrail's root.
  inspect::ProcessFile own = inspect::file_in_root(0, mapping.path);
  own.device = mapping.device;
  own.inode = mapping.inode;
  std::optional<inspect::OpenedFile> opened;
  for (const inspect::ProcessFile& where : {inspect::mapped_file(pid, mapping), own}) {
    try {
      opened = inspect::open_file(where);
      break;
    } catch (const Error&) {
    }
  }
  std::optional<inspect::ElfFile> elf;
  if (opened) {
    try {
      elf = inspect::ElfFile::open(std::move(opened->fd), mapping.path);
    } catch (const Error&) {
      // Not an ELF file: frames in it keep their file offset (symbolize() never throws).
    }
  }
  std::string build_id = elf ? elf->build_id() : "";
  // The same file seen through another path or process: share what was already loaded.
  if (!build_id.empty()) {
    auto same = modules_.find("build-id:" + build_id);
    if (same != modules_.end()) {
      modules_[file_key] = same->second;
      return same->second;
    }
  }
  // libdwfl reads the file through an Elf of its own: dwfl_report_elf takes a descriptor, not
  // an Elf*, and ends what it opened at dwfl_end. It also finds the separate debug file by
  // itself (kCallbacks). So it gets a duplicate of the ElfFile's descriptor: the same file,
  // whatever happens to its path in the meantime.
  std::unique_ptr<Dwfl, DwflDeleter> dwfl(elf ? dwfl_begin(&kCallbacks) : nullptr);
  UniqueFd dwfl_fd(dwfl ? ::dup(elf->fd()) : -1);
  // dwfl_report_elf takes ownership of the descriptor, also when it fails.
  Dwfl_Module* dwfl_module =
      // Base 0 with add_p_vaddr: addresses are the file's own virtual addresses (bias 0) for
      // shared objects, PIE and fixed-address executables alike.
      dwfl_fd ? dwfl_report_elf(dwfl.get(), mapping.path.c_str(), mapping.path.c_str(),
                                dwfl_fd.release(), 0, true)
              : nullptr;
  if (dwfl_module && dwfl_report_end(dwfl.get(), nullptr, nullptr) == 0) {
    module = std::make_shared<Module>();
    module->build_id = std::move(build_id);
    module->dwfl = std::move(dwfl);
    module->module = dwfl_module;
    module->segments = elf->load_segments();
    if (!module->build_id.empty()) modules_["build-id:" + module->build_id] = module;
  }
  modules_[file_key] = module;  // a file that cannot be read is not retried for every address
  return module;
}

const inspect::Mapping* Symbolizer::mapping_at(uint32_t pid, uint64_t address) const {
  auto process = processes_.find(pid);
  if (process == processes_.end()) return nullptr;
  for (const auto& candidate : process->second.mappings) {
    if (candidate.contains(address)) return &candidate;
  }
  return nullptr;
}

const inspect::Mapping* Symbolizer::executable_mapping(uint32_t pid, const std::string& exe) const {
  auto process = processes_.find(pid);
  if (process == processes_.end() || exe.empty()) return nullptr;
  // The link /proc/PID/exe says " (deleted)" as the maps do; the maps' names have it removed.
  std::string path = exe;
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.size() > kDeleted.size() && path.ends_with(kDeleted)) {
    path.resize(path.size() - kDeleted.size());
  }
  for (const auto& candidate : process->second.mappings) {
    if (candidate.executable && candidate.is_file() && candidate.path == path) return &candidate;
  }
  return nullptr;
}

std::vector<model::Frame> Symbolizer::symbolize(uint32_t pid, uint64_t address,
                                                bool is_return_address) {
  model::Frame unknown;
  unknown.address = address;
  unknown.module = "[unknown]";
  unknown.offset = address;

  auto process = processes_.find(pid);
  if (process == processes_.end()) return {unknown};
  const inspect::Mapping* mapping = nullptr;
  for (const auto& candidate : process->second.mappings) {
    if (candidate.contains(address)) {
      mapping = &candidate;
      break;
    }
  }
  if (!mapping || !mapping->is_file()) {
    if (mapping && !mapping->path.empty()) unknown.module = mapping->path;  // [vdso], deleted
    return {unknown};
  }
  unknown.module = mapping->path;
  unknown.offset = address - mapping->start + mapping->file_offset;  // best effort: file offset

  std::shared_ptr<Module> module = module_for(pid, *mapping);
  if (!module) return {unknown};
  auto vaddr = inspect::address_at_file_offset(module->segments,
                                               address - mapping->start + mapping->file_offset);
  if (!vaddr) return {unknown};

  // A return address points after the call; the call itself is one byte earlier.
  uint64_t lookup = is_return_address && *vaddr > 0 ? *vaddr - 1 : *vaddr;
  std::vector<model::Frame> frames;
  for (const FrameInfo& info : module->lookup(lookup)) {
    model::Frame frame = unknown;
    frame.offset = *vaddr;
    frame.function = info.function;
    frame.file = info.file;
    frame.line = info.line;
    frame.inlined = info.inlined;
    frames.push_back(std::move(frame));
  }
  if (frames.empty()) {
    unknown.offset = *vaddr;
    frames.push_back(unknown);
  }
  return frames;
}

}  // namespace memtrail::symbolizer
