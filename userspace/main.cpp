// SPDX-License-Identifier: Apache-2.0
// memtrail's entry point: parse the command line, run it, turn failures into one stderr line.
#include <malloc.h>
#include <signal.h>

#include <exception>
#include <iostream>
#include <variant>

#include "app/leaks_command.h"
#include "app/offline_commands.h"
#include "app/paging_command.h"
#include "cli/options.h"
#include "common/error.h"

int main(int argc, char** argv) {
  // A closed stdout (memtrail ... | head) must not kill memtrail before it detaches and writes
  // its JSON file.
  signal(SIGPIPE, SIG_IGN);
  // Each report builds large transient buffers (per-site sums, symbolized stacks, rendered
  // output) that are freed once it is written. glibc would raise its mmap threshold after the
  // first such free and keep later buffers in the heap between reports; a fixed one returns it.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  auto command = memtrail::cli::parse_command_line(argc, argv);
  if (auto* request = std::get_if<memtrail::cli::ExitRequest>(&command)) {
    (request->code == memtrail::kExitOk ? std::cout : std::cerr) << request->message;
    return request->code;
  }
  try {
    if (auto* report = std::get_if<memtrail::cli::ReportOptions>(&command)) {
      return memtrail::app::run_report(*report);
    }
    if (auto* paging = std::get_if<memtrail::cli::PagingOptions>(&command)) {
      return memtrail::app::run_paging(*paging);
    }
    if (auto* diff = std::get_if<memtrail::cli::DiffOptions>(&command)) {
      return memtrail::app::run_diff(*diff);
    }
    return memtrail::app::run_leaks(std::get<memtrail::cli::LeaksOptions>(command));
  } catch (const memtrail::Error& error) {
    std::cerr << "memtrail: error: " << error.what() << "\n";
    if (!error.hint().empty()) std::cerr << "memtrail: hint: " << error.hint() << "\n";
  } catch (const std::exception& error) {
    std::cerr << "memtrail: error: " << error.what() << "\n";
  }
  return memtrail::kExitFailure;
}
