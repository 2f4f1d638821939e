// SPDX-License-Identifier: Apache-2.0
// Host-wide paging counters from procfs and sysfs.
#include "sampler/host.h"

#include <cstdint>

#include "common/error.h"
#include "sampler/pressure.h"
#include "sampler/proc_text.h"

namespace memtrail::sampler {
namespace {

struct VmstatField {
  std::string_view key;
  uint64_t model::HostSample::*field;
};

constexpr VmstatField kVmstatFields[] = {
    {"pgfault", &model::HostSample::pgfault},
    {"pgmajfault", &model::HostSample::pgmajfault},
    {"pswpin", &model::HostSample::pswpin},
    {"pswpout", &model::HostSample::pswpout},
    {"zswpin", &model::HostSample::zswpin},
    {"zswpout", &model::HostSample::zswpout},
    {"workingset_refault_anon", &model::HostSample::workingset_refault_anon},
    {"workingset_refault_file", &model::HostSample::workingset_refault_file},
    {"workingset_activate_anon", &model::HostSample::workingset_activate_anon},
    {"workingset_activate_file", &model::HostSample::workingset_activate_file},
    {"workingset_restore_anon", &model::HostSample::workingset_restore_anon},
    {"workingset_restore_file", &model::HostSample::workingset_restore_file},
    {"pgscan_kswapd", &model::HostSample::pgscan_kswapd},
    {"pgscan_direct", &model::HostSample::pgscan_direct},
    {"pgsteal_kswapd", &model::HostSample::pgsteal_kswapd},
    {"pgsteal_direct", &model::HostSample::pgsteal_direct},
    {"oom_kill", &model::HostSample::oom_kill},
};

struct MeminfoField {
  std::string_view key;  // with the colon, so "Zswap:" does not match "Zswapped:"
  uint64_t model::HostSample::*field;
};

constexpr MeminfoField kMeminfoFields[] = {
    {"MemTotal:", &model::HostSample::mem_total_bytes},
    {"MemAvailable:", &model::HostSample::mem_available_bytes},
    {"SwapTotal:", &model::HostSample::swap_total_bytes},
    {"SwapFree:", &model::HostSample::swap_free_bytes},
    {"Zswap:", &model::HostSample::zswap_pool_bytes},
    {"Zswapped:", &model::HostSample::zswapped_bytes},
};

std::string read_required(const std::string& path) {
  std::string text;
  if (int error = read_text_file(path.c_str(), text); error != 0) {
    throw Error(errno_message("read " + path, error),
                "memtrail paging needs procfs mounted on /proc");
  }
  return text;
}

}  // namespace

void parse_vmstat(std::string_view text, model::HostSample& sample) {
  uint64_t allocstall = 0;
  bool have_allocstall = false;
  while (!text.empty()) {
    std::string_view line = next_line(text);
    std::string_view key = next_word(line);
    uint64_t value = 0;
    if (!parse_u64(trim(line), value)) continue;
    // Direct reclaim entries are counted per zone (allocstall_dma32, _normal, _movable...).
    if (key == "allocstall" || key.substr(0, 11) == "allocstall_") {
      allocstall += value;
      have_allocstall = true;
      continue;
    }
    for (const VmstatField& field : kVmstatFields) {
      if (key == field.key) {
        sample.*field.field = value;
        break;
      }
    }
  }
  if (have_allocstall) sample.allocstall = allocstall;
}

void parse_meminfo(std::string_view text, model::HostSample& sample) {
  while (!text.empty()) {
    std::string_view line = next_line(text);
    std::string_view key = next_word(line);
    std::string_view number = next_word(line);
    std::string_view unit = next_word(line);
    uint64_t value = 0;
    if (!parse_u64(number, value)) continue;
    // Every size line says "kB" (KiB); the HugePages_* counts have no unit and are not read.
    if (unit == "kB") value *= 1024;
    for (const MeminfoField& field : kMeminfoFields) {
      if (key == field.key) {
        sample.*field.field = value;
        break;
      }
    }
  }
}

model::HostSample read_host_sample(const std::string& proc_root, const std::string& sys_root) {
  model::HostSample sample;
  sample.psi = read_pressure(proc_root + "/pressure/memory");
  parse_vmstat(read_required(proc_root + "/vmstat"), sample);
  parse_meminfo(read_required(proc_root + "/meminfo"), sample);
  // "Y" or "N"; the file is absent when zswap is not built in (CONFIG_ZSWAP=n).
  std::string enabled;
  if (read_text_file((sys_root + "/module/zswap/parameters/enabled").c_str(), enabled) == 0) {
    std::string_view value = trim(enabled);
    sample.zswap_enabled = value == "Y" || value == "y" || value == "1";
  }
  return sample;
}

}  // namespace memtrail::sampler
