// SPDX-License-Identifier: Apache-2.0
// How renderers name things: files by their last component, frames by their function (else
// module+offset), sites' processes by their command; text escaped for the SVG renderers.
#pragma once

#include <cstdint>
#include <string>

#include "model/report.h"

namespace memtrail::report {

// "/usr/lib/x86_64-linux-gnu/libc.so.6" -> "libc.so.6"
std::string base_name(const std::string& path);
// The function, else "module+0xoffset".
std::string frame_name(const model::Frame& frame);
// The command of `pid` among the report's targets, else "pid N".
std::string comm_of(const model::Report& report, uint32_t pid);
// Text made safe inside SVG/XML elements and attribute values: & < > " escaped.
std::string xml_escape(const std::string& text);

}  // namespace memtrail::report
