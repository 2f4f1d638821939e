// SPDX-License-Identifier: Apache-2.0
// Which machine a report comes from: its name and kernel, as reports record them.
#pragma once

#include <string>

namespace memtrail {

std::string host_name();       // gethostname(), or "" if it fails
std::string kernel_release();  // uname -r, or ""

}  // namespace memtrail
