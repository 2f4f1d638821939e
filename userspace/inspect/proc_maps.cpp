// SPDX-License-Identifier: Apache-2.0
// Parse /proc/PID/maps.
#include "inspect/proc_maps.h"

#include <sys/sysmacros.h>

#include <charconv>
#include <fstream>
#include <sstream>

namespace memtrail::inspect {
namespace {

bool parse_hex(std::string_view text, uint64_t& value) {
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  return error == std::errc() && end == text.data() + text.size();
}

bool parse_dec(std::string_view text, uint64_t& value) {
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  return error == std::errc() && end == text.data() + text.size();
}

// Splits off the next space-separated field; the rest keeps leading spaces trimmed.
std::string_view next_field(std::string_view& rest) {
  size_t begin = rest.find_first_not_of(' ');
  if (begin == std::string_view::npos) {
    rest = {};
    return {};
  }
  rest.remove_prefix(begin);
  size_t end = rest.find(' ');
  std::string_view field = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  return field;
}

std::optional<Mapping> parse_line(std::string_view line) {
  // 7f1c2a000000-7f1c2a022000 r--p 00000000 08:01 1234    /usr/lib/x86_64-linux-gnu/libc.so.6
  Mapping mapping;
  std::string_view rest = line;
  std::string_view range = next_field(rest);
  std::string_view perms = next_field(rest);
  std::string_view offset = next_field(rest);
  std::string_view device = next_field(rest);
  std::string_view inode = next_field(rest);
  size_t dash = range.find('-');
  size_t colon = device.find(':');
  uint64_t major = 0, minor = 0;
  if (dash == std::string_view::npos || perms.size() < 4 || colon == std::string_view::npos ||
      !parse_hex(range.substr(0, dash), mapping.start) ||
      !parse_hex(range.substr(dash + 1), mapping.end) || !parse_hex(offset, mapping.file_offset) ||
      !parse_hex(device.substr(0, colon), major) || !parse_hex(device.substr(colon + 1), minor) ||
      major > UINT32_MAX || minor > UINT32_MAX || !parse_dec(inode, mapping.inode)) {
    return std::nullopt;
  }
  mapping.device = makedev(static_cast<unsigned>(major), static_cast<unsigned>(minor));
  mapping.readable = perms[0] == 'r';
  mapping.executable = perms[2] == 'x';
  size_t path_begin = rest.find_first_not_of(' ');
  if (path_begin != std::string_view::npos) mapping.path = std::string(rest.substr(path_begin));
  static constexpr std::string_view kDeleted = " (deleted)";
  if (mapping.inode != 0 && mapping.path.size() > kDeleted.size() &&
      mapping.path.compare(mapping.path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
    mapping.path.resize(mapping.path.size() - kDeleted.size());
    mapping.deleted = true;
  }
  return mapping;
}

}  // namespace

bool Mapping::is_file() const { return inode != 0 && !path.empty() && path.front() == '/'; }

std::vector<Mapping> parse_proc_maps(std::string_view text) {
  std::vector<Mapping> mappings;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    if (auto mapping = parse_line(line)) mappings.push_back(std::move(*mapping));
  }
  return mappings;
}

std::optional<std::vector<Mapping>> read_proc_maps(uint32_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/maps");
  if (!file) return std::nullopt;
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return std::nullopt;
  return parse_proc_maps(text.str());
}

}  // namespace memtrail::inspect
