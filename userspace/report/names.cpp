// SPDX-License-Identifier: Apache-2.0
// How renderers name things.
#include "report/names.h"

#include <sstream>

namespace memtrail::report {

std::string base_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string frame_name(const model::Frame& frame) {
  if (frame.function) return *frame.function;
  std::ostringstream name;
  name << base_name(frame.module) << "+0x" << std::hex << frame.offset;
  return name.str();
}

std::string comm_of(const model::Report& report, uint32_t pid) {
  for (const auto& target : report.targets) {
    if (target.pid == pid && !target.comm.empty()) return target.comm;
  }
  return "pid " + std::to_string(pid);
}

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace memtrail::report
