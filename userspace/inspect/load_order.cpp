// SPDX-License-Identifier: Apache-2.0
// A process's modules in the order the dynamic linker searches them for symbols.
#include "inspect/load_order.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/unique_fd.h"
#include "inspect/elf_file.h"

extern char** environ;

namespace memtrail::inspect {
namespace {

// Reads fixed-size values from another process's memory.
class ProcessMemory {
 public:
  explicit ProcessMemory(uint32_t pid) : pid_(pid) {
    fd_.reset(::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd_) {
      int error_number = errno;
      throw Error(errno_message("open /proc/" + std::to_string(pid) + "/mem", error_number),
                  hint_for_errno(error_number));
    }
  }
  template <typename T>
  std::optional<T> read(uint64_t address) const {
    T value;
    if (::pread(fd_.get(), &value, sizeof(value), static_cast<off_t>(address)) !=
        static_cast<ssize_t>(sizeof(value))) {
      return std::nullopt;
    }
    return value;
  }

 private:
  uint32_t pid_;
  UniqueFd fd_;
};

const Mapping* mapping_at(const std::vector<Mapping>& mappings, uint64_t address) {
  for (const Mapping& mapping : mappings) {
    if (mapping.contains(address)) return &mapping;
  }
  return nullptr;
}

ModuleFile module_of(uint32_t pid, const Mapping& mapping, bool main_program) {
  return ModuleFile{mapped_file(pid, mapping), main_program};
}

// Mapped regular files that are not in `order`: candidates for allocators the link map does
// not know (a dlmopen namespace, a library mapped by hand).
std::vector<ModuleFile> unlinked_files(uint32_t pid, const std::vector<Mapping>& mappings,
                                       const std::vector<ModuleFile>& order) {
  std::set<std::string> known;
  for (const auto& module : order) known.insert(module.file.path);
  std::vector<ModuleFile> unlinked;
  for (const Mapping& mapping : mappings) {
    // Code is mapped executable: data files (locale archives, caches) are not candidates.
    if (!mapping.is_file() || !mapping.executable || !known.insert(mapping.path).second) continue;
    unlinked.push_back(module_of(pid, mapping, false));
  }
  return unlinked;
}

}  // namespace

LoadOrder process_load_order(uint32_t pid, const std::vector<Mapping>& mappings) {
  // The executable's program headers, from the auxiliary vector the kernel gave it.
  std::ifstream auxv("/proc/" + std::to_string(pid) + "/auxv", std::ios::binary);
  uint64_t phdr = 0, phnum = 0, entry = 0;
  uint64_t pair[2];
  while (auxv.read(reinterpret_cast<char*>(pair), sizeof(pair)) && pair[0] != AT_NULL) {
    if (pair[0] == AT_PHDR) phdr = pair[1];
    if (pair[0] == AT_PHNUM) phnum = pair[1];
    if (pair[0] == AT_ENTRY) entry = pair[1];
  }
  const Mapping* executable = mapping_at(mappings, entry ? entry : phdr);
  if (!executable || !executable->is_file()) {
    throw Error("cannot find the executable of process " + std::to_string(pid) +
                    " in its mappings (/proc/" + std::to_string(pid) + "/auxv unreadable?)",
                "run memtrail as root, on a process that has finished starting");
  }
  LoadOrder order;
  order.modules.push_back(module_of(pid, *executable, true));

  ProcessMemory memory(pid);
  std::optional<uint64_t> bias;
  uint64_t dynamic_vaddr = 0;
  for (uint64_t i = 0; i < phnum && i < 256; ++i) {
    auto header = memory.read<Elf64_Phdr>(phdr + i * sizeof(Elf64_Phdr));
    if (!header) break;
    if (header->p_type == PT_PHDR) bias = phdr - header->p_vaddr;
    if (header->p_type == PT_DYNAMIC) dynamic_vaddr = header->p_vaddr;
  }
  if (dynamic_vaddr == 0) {
    order.static_executable = true;
    order.source = "static executable (no dynamic section): it binds its own symbols";
    order.unlinked = unlinked_files(pid, mappings, order.modules);
    return order;
  }
  // Every dynamically linked executable has PT_PHDR (ld emits it with PT_INTERP); a static PIE
  // may not, but it has no loader to fill DT_DEBUG either.
  std::optional<uint64_t> r_debug;
  if (bias) {
    for (uint64_t i = 0; i < 1024; ++i) {
      auto dyn = memory.read<Elf64_Dyn>(*bias + dynamic_vaddr + i * sizeof(Elf64_Dyn));
      if (!dyn || dyn->d_tag == DT_NULL) break;
      if (dyn->d_tag == DT_DEBUG) r_debug = dyn->d_un.d_ptr;
    }
  }
  std::optional<uint64_t> link;
  if (r_debug && *r_debug) link = memory.read<uint64_t>(*r_debug + offsetof(struct r_debug, r_map));
  if (!link || *link == 0) {
    order.static_executable = !bias;
    order.source = bias ? "executable only: its link map is not set up yet (DT_DEBUG is empty)"
                        : "static PIE: it binds its own symbols";
    order.unlinked = unlinked_files(pid, mappings, order.modules);
    return order;
  }
  std::set<std::string> seen{executable->path};
  std::set<uint64_t> visited;
  for (uint64_t entry_address = *link; entry_address && visited.size() < 4096;) {
    if (!visited.insert(entry_address).second) break;  // a corrupt (cyclic) list
    auto entry_map = memory.read<struct link_map>(entry_address);
    if (!entry_map) break;
    // l_ld is the module's dynamic section: inside its own mapping, whatever name the loader
    // used (l_name may be /lib/... where the maps say /usr/lib/...). The vdso maps no file.
    const Mapping* mapping = mapping_at(mappings, reinterpret_cast<uint64_t>(entry_map->l_ld));
    if (mapping && mapping->is_file() && seen.insert(mapping->path).second) {
      order.modules.push_back(module_of(pid, *mapping, false));
    }
    entry_address = reinterpret_cast<uint64_t>(entry_map->l_next);
  }
  order.source = "the dynamic linker's link map (r_debug)";
  order.unlinked = unlinked_files(pid, mappings, order.modules);
  return order;
}

std::vector<std::string> parse_loader_list(std::string_view text) {
  std::vector<std::string> paths;
  std::istringstream lines{std::string(text)};
  std::string line;
  while (std::getline(lines, line)) {
    // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "\t/lib64/ld-linux... (0x...)"
    // (the loader itself, or an LD_PRELOAD library), "\tlinux-vdso.so.1 (0x...)" (no file).
    std::string path;
    size_t arrow = line.find(" => ");
    if (arrow != std::string::npos) {
      path = line.substr(arrow + 4);
    } else {
      size_t start = line.find_first_not_of(" \t");
      if (start == std::string::npos) continue;
      path = line.substr(start);
    }
    size_t address = path.rfind(" (0x");
    if (address != std::string::npos) path.resize(address);
    if (path.empty() || path[0] != '/') continue;  // "not found", the vdso
    paths.push_back(path);
  }
  return paths;
}

LoadOrder command_load_order(const std::string& executable,
                             const std::vector<std::string>* environment) {
  ElfFile elf = ElfFile::open(executable);
  LoadOrder order;
  order.modules.push_back(ModuleFile{file_in_root(0, executable), true});
  if (elf.interpreter().empty()) {
    order.static_executable = true;
    order.source = "static executable (no program interpreter): it binds its own symbols";
    return order;
  }
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    int error_number = errno;
    throw Error(errno_message("pipe", error_number));
  }
  UniqueFd output_read(pipe_fds[0]), output_write(pipe_fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, output_write.get(), STDOUT_FILENO);
  std::string interpreter = elf.interpreter();
  std::vector<std::string> argv_storage{interpreter, "--list", executable};
  std::vector<char*> argv;
  for (auto& argument : argv_storage) argv.push_back(argument.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (environment) {
    for (const auto& variable : *environment) envp.push_back(const_cast<char*>(variable.c_str()));
    envp.push_back(nullptr);
  }
  pid_t child = -1;
  int spawn_error = posix_spawn(&child, interpreter.c_str(), &actions, nullptr, argv.data(),
                                environment ? envp.data() : environ);
  posix_spawn_file_actions_destroy(&actions);
  output_write.reset();  // the loader's is the only write end left: its exit ends the read
  std::string output;
  if (spawn_error == 0) {
    char buffer[4096];
    ssize_t got;
    while ((got = ::read(output_read.get(), buffer, sizeof(buffer))) > 0 ||
           (got < 0 && errno == EINTR)) {
      if (got > 0) output.append(buffer, static_cast<size_t>(got));
    }
  }
  output_read.reset();
  int status = 0;
  if (spawn_error == 0) {
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (spawn_error != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error((spawn_error ? errno_message("run " + interpreter, spawn_error)
                             : interpreter + " --list " + executable + " failed") +
                    ": cannot tell which libraries " + executable + " loads",
                "check that the command runs on its own (a missing library?)");
  }
  std::set<std::string> seen{executable};
  for (const std::string& listed : parse_loader_list(output)) {
    // The loader names files by its search path (/lib/...); the kernel's maps, and so the
    // rest of memtrail, by their real path.
    char resolved[PATH_MAX];
    std::string path = ::realpath(listed.c_str(), resolved) ? resolved : listed;
    if (seen.insert(path).second) order.modules.push_back(ModuleFile{file_in_root(0, path), false});
  }
  order.source = "the dynamic linker's own list (" + interpreter + " --list)";
  return order;
}

}  // namespace memtrail::inspect
