// SPDX-License-Identifier: Apache-2.0
// Host-wide paging counters: /proc/vmstat, /proc/meminfo, /proc/pressure/memory and zswap.
#pragma once

#include <string>
#include <string_view>

#include "model/paging.h"

namespace memtrail::sampler {

// Fills the vmstat counters of `sample` from /proc/vmstat text. Keys missing on this kernel
// (zswpin without CONFIG_ZSWAP, workingset_*_anon before 5.9) leave their fields untouched.
// `allocstall` is the sum of every allocstall_<zone> line (one "allocstall" line before 4.8).
void parse_vmstat(std::string_view text, model::HostSample& sample);

// Fills MemTotal, MemAvailable, SwapTotal, SwapFree, Zswap and Zswapped, converted to bytes.
void parse_meminfo(std::string_view text, model::HostSample& sample);

// Reads the whole host sample. Throws memtrail::Error when /proc/vmstat or /proc/meminfo
// cannot be read (procfs not mounted); a missing PSI file or zswap module is not an error.
model::HostSample read_host_sample(const std::string& proc_root = "/proc",
                                   const std::string& sys_root = "/sys");

}  // namespace memtrail::sampler
