// SPDX-License-Identifier: Apache-2.0
// Turn addresses in traced processes into functions, source files and lines (elfutils libdwfl).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "inspect/proc_maps.h"
#include "model/report.h"

namespace memtrail::symbolizer {

// Symbolizes addresses of any number of processes. Module debug information is loaded once per
// file identity (GNU build-id, else path + inode) and shared between processes. Separate debug
// info is found by build-id under /usr/lib/debug/.build-id. Never contacts a debuginfod server:
// a tracer must not block on the network.
class Symbolizer {
 public:
  Symbolizer();
  ~Symbolizer();
  Symbolizer(const Symbolizer&) = delete;
  Symbolizer& operator=(const Symbolizer&) = delete;

  // Remembers how `pid` maps its files. Call it while the process is alive: its code files are
  // opened now, through its mappings (inspect/process_file.h), and the last mappings are kept
  // after it exits so that its report can still be symbolized.
  void set_process_mappings(uint32_t pid, std::vector<inspect::Mapping> mappings);
  // Forgets how `pid` mapped its files (it exited and its report was kept): a long run must not
  // keep every process it saw. The modules stay, shared with other processes.
  void forget_process(uint32_t pid) { processes_.erase(pid); }

  // Frames for one code address of `pid`: inlined frames first (inlined = true), then the
  // function that contains the address. Never throws: what is unknown stays nullopt, and an
  // address outside every known module yields one frame with module "[unknown]".
  // Return addresses (every frame of a captured stack) point after the call instruction, so
  // they are looked up at address - 1 to land on the call's own line.
  std::vector<model::Frame> symbolize(uint32_t pid, uint64_t address,
                                      bool is_return_address = true);

  // Whether the mappings of `pid` are known (set and not forgotten).
  bool knows(uint32_t pid) const { return processes_.count(pid) != 0; }
  // The mapping of `pid` that holds `address`, or nullptr.
  const inspect::Mapping* mapping_at(uint32_t pid, uint64_t address) const;
  // The executable code mapping of `exe` (the program's file, as /proc/PID/exe names it) in
  // `pid`, or nullptr.
  const inspect::Mapping* executable_mapping(uint32_t pid, const std::string& exe) const;

  struct Module;  // one ELF file with its debug info (defined in symbolizer.cpp)

 private:
  struct Process {
    std::vector<inspect::Mapping> mappings;
  };
  std::shared_ptr<Module> module_for(uint32_t pid, const inspect::Mapping& mapping);

  std::unordered_map<uint32_t, Process> processes_;
  std::unordered_map<std::string, std::shared_ptr<Module>> modules_;  // by build-id or path+inode
};

}  // namespace memtrail::symbolizer
