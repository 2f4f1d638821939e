// SPDX-License-Identifier: Apache-2.0
// memtrail's entry point: parse the command line, run it, turn failures into one stderr line.
#include <signal.h>

#include <exception>
#include <iostream>
#include <variant>

#include "app/leaks_command.h"
#include "app/offline_commands.h"
#include "app/paging_command.h"
#include "app/serve_command.h"
#include "cli/options.h"
#include "common/error.h"

// memtrail allocates with its own jemalloc, linked in (userspace/CMakeLists.txt says why): one
// arena, as memtrail does its work on one thread, and freed pages returned within a second, so
// that the buffers of a report are not kept between reports.
extern "C" const char* malloc_conf;
const char* malloc_conf = "narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0";

int main(int argc, char** argv) {
  // A closed stdout (memtrail ... | head) must not kill memtrail before it detaches and writes
  // its JSON file.
  signal(SIGPIPE, SIG_IGN);
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
    if (auto* serve = std::get_if<memtrail::cli::ServeOptions>(&command)) {
      return memtrail::app::run_serve(*serve);
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
