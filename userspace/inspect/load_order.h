// SPDX-License-Identifier: Apache-2.0
// The order in which the dynamic linker searches a process's modules for a symbol.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "inspect/proc_maps.h"
#include "inspect/process_file.h"

namespace memtrail::inspect {

struct ModuleFile {
  ProcessFile file;  // file.path: as the process sees it (as in /proc/PID/maps)
  bool main_program = false;
};

// A process's modules in symbol lookup order: the executable, then LD_PRELOAD libraries, then
// DT_NEEDED libraries breadth first, then what dlopen added, which is exactly the order of the
// dynamic linker's link map (glibc's _dl_map_object_deps builds it breadth first and lookups
// walk the global scope in that order). Mapping addresses say nothing about it: the kernel
// places each mmap below the previous one, and ASLR shuffles the rest.
struct LoadOrder {
  std::vector<ModuleFile> modules;
  bool static_executable = false;    // no dynamic linker: the executable binds everything itself
  std::vector<ModuleFile> unlinked;  // mapped ELF-looking files outside the link map
  std::string source;                // how the order was found, for -v and the report
};

// Reads the link map of a running process: the executable's DT_DEBUG entry points at the
// loader's r_debug, whose r_map list is walked in the target's memory (/proc/PID/mem, which
// needs the same ptrace access as reading its maps). Each entry is matched to its file by the
// address of its dynamic section (l_ld), so paths come out as the process maps them. A static
// executable has no link map: it is the only module. Throws memtrail::Error when the memory
// cannot be read.
LoadOrder process_load_order(uint32_t pid, const std::vector<Mapping>& mappings);

// The load order a command will have once executed, before it runs: its program interpreter
// lists it (`ld.so --list EXE`, what ldd does: the loader maps and orders the libraries in this
// process's environment, LD_PRELOAD and LD_LIBRARY_PATH included, and runs none of their code).
// `environment`: the one the command runs with (a program a traced process executes), else
// memtrail's. Throws memtrail::Error when the loader cannot load the command.
LoadOrder command_load_order(const std::string& executable,
                             const std::vector<std::string>* environment = nullptr);

// The library paths in `ld.so --list` output, in its order (the link map's).
std::vector<std::string> parse_loader_list(std::string_view text);

}  // namespace memtrail::inspect
