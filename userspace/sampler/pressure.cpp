// SPDX-License-Identifier: Apache-2.0
// PSI files: parsing, reading, and triggers.
#include "sampler/pressure.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "common/error.h"
#include "sampler/proc_text.h"

namespace memtrail::sampler {
namespace {

bool parse_double(std::string_view text, double& value) {
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size();
}

// "avg10=0.12 avg60=0.05 avg300=0.01 total=12345": avg10 and total.
bool parse_stall_line(std::string_view rest, double& avg10, uint64_t& total_us) {
  bool have_avg10 = false, have_total = false;
  for (std::string_view word = next_word(rest); !word.empty(); word = next_word(rest)) {
    size_t equals = word.find('=');
    if (equals == std::string_view::npos) continue;
    std::string_view key = word.substr(0, equals), value = word.substr(equals + 1);
    if (key == "avg10") have_avg10 = parse_double(value, avg10);
    if (key == "total") have_total = parse_u64(value, total_us);
  }
  return have_avg10 && have_total;
}

std::string trigger_hint(int error_number, uint64_t window_us) {
  switch (error_number) {
    case EINVAL:
      if (window_us % 2000000 != 0) {
        return "without CAP_SYS_RESOURCE the kernel accepts only PSI windows that are multiples "
               "of 2 s; use a 2 s window";
      }
      return "the window must be 500 ms to 10 s and the stall no longer than the window";
    case ENOENT:
      return "this kernel has no PSI file there (CONFIG_PSI, or booted with psi=0?)";
    case EOPNOTSUPP:
      return "PSI is disabled (psi=0 on the kernel command line, or cgroup.pressure is 0)";
    case EBUSY:
      return "a trigger is already armed on this file descriptor";
    default:
      return hint_for_errno(error_number);
  }
}

}  // namespace

model::PressureStall parse_pressure(std::string_view text) {
  model::PressureStall stall;
  while (!text.empty()) {
    std::string_view line = next_line(text);
    std::string_view kind = next_word(line);
    if (kind == "some") {
      stall.available = parse_stall_line(line, stall.some_avg10, stall.some_total_us);
    } else if (kind == "full") {
      if (!parse_stall_line(line, stall.full_avg10, stall.full_total_us)) {
        stall.full_avg10 = 0;
        stall.full_total_us = 0;
      }
    }
  }
  return stall;
}

model::PressureStall read_pressure(const std::string& path) {
  std::string text;
  // PSI files are single_open() seq_files: one short read is the whole file.
  if (read_text_file(path.c_str(), text, ReadUntil::kShortRead) != 0) return {};
  return parse_pressure(text);
}

PressureTrigger::PressureTrigger(const std::string& path, StallKind kind, uint64_t stall_us,
                                 uint64_t window_us)
    : path_(path) {
  std::string spec = std::string(kind == StallKind::kSome ? "some " : "full ") +
                     std::to_string(stall_us) + " " + std::to_string(window_us);
  std::string what = "arm PSI trigger \"" + spec + "\" on " + path;
  fd_.reset(::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd_) {
    int error = errno;
    throw Error(errno_message(what, error), trigger_hint(error, window_us));
  }
  // psi.rst writes the terminating NUL too; the kernel parses up to it.
  ssize_t written = ::write(fd_.get(), spec.c_str(), spec.size() + 1);
  if (written < 0) {
    int error = errno;
    fd_.reset();
    throw Error(errno_message(what, error), trigger_hint(error, window_us));
  }
}

}  // namespace memtrail::sampler
