// SPDX-License-Identifier: Apache-2.0
// Cheap whole-file reads and line/field parsing for procfs and cgroupfs text.
#include "sampler/proc_text.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "common/unique_fd.h"

namespace memtrail::sampler {
namespace {

// Most files read here (/proc/PID/stat, status, cgroup, memory.stat) are well under 4 KiB.
constexpr size_t kInitialBuffer = 4096;

int read_fd(int fd, std::string& buffer, ReadUntil until) {
  if (buffer.capacity() < kInitialBuffer) buffer.reserve(kInitialBuffer);
  // Use the whole capacity: resize() within capacity does not allocate.
  buffer.resize(buffer.capacity());
  size_t used = 0;
  for (;;) {
    if (used == buffer.size()) buffer.resize(buffer.size() * 2);
    ssize_t got = ::read(fd, buffer.data() + used, buffer.size() - used);
    if (got < 0) {
      if (errno == EINTR) continue;
      int error = errno;
      buffer.clear();
      return error;
    }
    if (got == 0) break;
    used += static_cast<size_t>(got);
    if (until == ReadUntil::kShortRead && used < buffer.size()) break;
  }
  buffer.resize(used);
  return 0;
}

// `fd` is what open() returned: on -1, the open's errno.
int read_and_close(UniqueFd fd, std::string& buffer, ReadUntil until) {
  if (!fd) {
    int error = errno;
    buffer.clear();
    return error;
  }
  return read_fd(fd.get(), buffer, until);
}

}  // namespace

int read_text_file(const char* path, std::string& buffer, ReadUntil until) {
  return read_and_close(UniqueFd(::open(path, O_RDONLY | O_CLOEXEC)), buffer, until);
}

int read_text_file_at(int dir_fd, const char* name, std::string& buffer, ReadUntil until) {
  return read_and_close(UniqueFd(::openat(dir_fd, name, O_RDONLY | O_CLOEXEC)), buffer, until);
}

std::string_view next_line(std::string_view& rest) {
  size_t end = rest.find('\n');
  std::string_view line = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
  return line;
}

std::string_view next_word(std::string_view& rest) {
  size_t begin = rest.find_first_not_of(" \t");
  if (begin == std::string_view::npos) {
    rest = {};
    return {};
  }
  rest.remove_prefix(begin);
  size_t end = rest.find_first_of(" \t");
  std::string_view word = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  return word;
}

bool parse_u64(std::string_view text, uint64_t& value) {
  if (text.empty()) return false;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  return error == std::errc() && end == text.data() + text.size();
}

std::optional<uint64_t> find_keyed_value(std::string_view text, std::string_view key) {
  while (!text.empty()) {
    std::string_view line = next_line(text);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ') {
      uint64_t value = 0;
      if (parse_u64(trim(line.substr(key.size() + 1)), value)) return value;
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::string_view trim(std::string_view text) {
  size_t begin = text.find_first_not_of(" \t\n");
  if (begin == std::string_view::npos) return {};
  size_t end = text.find_last_not_of(" \t\n");
  return text.substr(begin, end - begin + 1);
}

}  // namespace memtrail::sampler
