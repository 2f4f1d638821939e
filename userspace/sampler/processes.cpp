// SPDX-License-Identifier: Apache-2.0
// Per-process samples from /proc/PID/{stat,status,cgroup}, cheap enough for every interval.
#include "sampler/processes.h"

#include <dirent.h>

#include <cerrno>
#include <utility>

#include "sampler/proc_text.h"

namespace memtrail::sampler {
namespace {

struct StatusField {
  std::string_view key;
  uint64_t model::ProcessSample::*field;
};

constexpr StatusField kStatusFields[] = {
    {"RssAnon:", &model::ProcessSample::rss_anon_bytes},
    {"RssFile:", &model::ProcessSample::rss_file_bytes},
    {"RssShmem:", &model::ProcessSample::rss_shmem_bytes},
    {"VmSwap:", &model::ProcessSample::swap_bytes},
};

bool is_pid_name(const char* name) {
  if (*name == '\0') return false;
  for (const char* c = name; *c != '\0'; ++c) {
    if (*c < '0' || *c > '9') return false;
  }
  return true;
}

enum class ReadResult { kOk, kVanished, kFailed };

ReadResult read_proc_file(const char* path, std::string& buffer) {
  // stat, status and cgroup are single_open() files: a short read is the whole file.
  int error = read_text_file(path, buffer, ReadUntil::kShortRead);
  if (error == 0) return ReadResult::kOk;
  // ENOENT: /proc/PID is gone; ESRCH: the task died between open and read.
  return error == ENOENT || error == ESRCH ? ReadResult::kVanished : ReadResult::kFailed;
}

}  // namespace

std::optional<ProcStat> parse_proc_stat(std::string_view text) {
  // "1234 (my (weird) comm) S 1 1234 ..." : pid, then comm up to the last ')'.
  size_t open = text.find(" (");
  size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open + 2) {
    return std::nullopt;
  }
  ProcStat stat;
  uint64_t pid = 0;
  if (!parse_u64(text.substr(0, open), pid)) return std::nullopt;
  stat.pid = static_cast<uint32_t>(pid);
  stat.comm = std::string(text.substr(open + 2, close - open - 2));
  std::string_view rest = text.substr(close + 1);
  // Fields from 3 on, numbered as in proc(5).
  std::string_view state = next_word(rest);
  if (state.size() != 1) return std::nullopt;
  stat.state = state[0];
  uint64_t flags = 0;
  bool have_flags = false, have_minflt = false, have_majflt = false, have_start = false;
  bool have_rss = false;
  for (int field = 4; field <= 24; ++field) {
    std::string_view word = next_word(rest);
    if (word.empty()) return std::nullopt;
    switch (field) {
      case 9:
        have_flags = parse_u64(word, flags);
        break;
      case 10:
        have_minflt = parse_u64(word, stat.minflt);
        break;
      case 12:
        have_majflt = parse_u64(word, stat.majflt);
        break;
      case 22:
        have_start = parse_u64(word, stat.starttime);
        break;
      case 24:
        have_rss = parse_u64(word, stat.rss_pages);
        break;
      default:
        break;
    }
  }
  if (!have_flags || !have_minflt || !have_majflt || !have_start || !have_rss) return std::nullopt;
  stat.flags = static_cast<uint32_t>(flags);
  return stat;
}

bool parse_proc_status(std::string_view text, model::ProcessSample& sample) {
  bool have_rss_anon = false;
  while (!text.empty()) {
    std::string_view line = next_line(text);
    // Lines start with an upper-case key; only the four Rss/VmSwap ones matter.
    if (line.size() < 8 || (line[0] != 'R' && line[0] != 'V')) continue;
    std::string_view key = next_word(line);
    for (const StatusField& field : kStatusFields) {
      if (key != field.key) continue;
      uint64_t value = 0;
      std::string_view number = next_word(line);
      if (parse_u64(number, value)) {
        sample.*field.field = value * 1024;  // always "kB"
        if (field.field == &model::ProcessSample::rss_anon_bytes) have_rss_anon = true;
      }
      break;
    }
  }
  return have_rss_anon;
}

std::vector<model::ProcessSample> scan_processes(const CgroupLayout& layout,
                                                 const std::string& proc_root,
                                                 ProcessScanCounters* counters) {
  return ProcessScanner(layout, proc_root).scan(counters);
}

ProcessScanner::ProcessScanner(CgroupLayout layout, std::string proc_root, unsigned refresh_scans)
    : layout_(std::move(layout)),
      proc_root_(std::move(proc_root)),
      refresh_scans_(refresh_scans == 0 ? 1 : refresh_scans) {
  text_.reserve(8192);
}

std::vector<model::ProcessSample> ProcessScanner::scan(ProcessScanCounters* counters) {
  ProcessScanCounters local;
  ProcessScanCounters& count = counters != nullptr ? *counters : local;
  std::vector<model::ProcessSample> processes;
  std::unordered_map<uint32_t, Known> known;  // this scan's processes replace the last ones
  DIR* dir = ::opendir(proc_root_.c_str());
  if (dir == nullptr) return processes;
  processes.reserve(known_.size());
  known.reserve(known_.size());

  // One path buffer and one text buffer for the whole scan: no allocation per file.
  std::string path = proc_root_ + "/";
  const size_t prefix = path.size();
  while (dirent* entry = ::readdir(dir)) {
    if (!is_pid_name(entry->d_name)) continue;
    path.resize(prefix);
    path += entry->d_name;
    const size_t pid_end = path.size();
    auto read = [&](const char* leaf) {
      path.resize(pid_end);
      path += leaf;
      ReadResult result = read_proc_file(path.c_str(), text_);
      if (result == ReadResult::kVanished) ++count.vanished;
      if (result == ReadResult::kFailed) ++count.unreadable;
      return result == ReadResult::kOk;
    };

    if (!read("/stat")) continue;
    std::optional<ProcStat> stat = parse_proc_stat(text_);
    if (!stat) {
      ++count.unreadable;
      continue;
    }
    if (stat->flags & kPfKthread) {
      ++count.kernel_threads;
      continue;
    }
    model::ProcessSample sample;
    sample.pid = stat->pid;
    sample.start_time_ticks = stat->starttime;
    sample.comm = std::move(stat->comm);
    sample.minor_faults = stat->minflt;
    sample.major_faults = stat->majflt;

    auto previous = known_.find(sample.pid);
    bool same = previous != known_.end() &&
                previous->second.start_time_ticks == sample.start_time_ticks &&
                previous->second.comm == sample.comm;
    bool refresh = !same || previous->second.scans_left == 0;
    bool unchanged = same && previous->second.minor_faults == stat->minflt &&
                     previous->second.major_faults == stat->majflt &&
                     previous->second.rss_pages == stat->rss_pages;
    if (unchanged && !refresh) {
      const Known& last = previous->second;
      sample.rss_anon_bytes = last.rss_anon_bytes;
      sample.rss_file_bytes = last.rss_file_bytes;
      sample.rss_shmem_bytes = last.rss_shmem_bytes;
      sample.swap_bytes = last.swap_bytes;
    } else {
      if (!read("/status")) continue;
      if (!parse_proc_status(text_, sample)) {
        ++count.without_memory;
        continue;
      }
    }

    unsigned scans_left = 0;
    if (!refresh) {
      sample.cgroup = previous->second.cgroup;
      scans_left = previous->second.scans_left - 1;
    } else {
      if (!read("/cgroup")) continue;
      sample.cgroup = memory_cgroup_of(text_, layout_);
      // A new process's first period is staggered by pid, so that the periodic re-reads of
      // processes that appeared together (all of them, at the first scan) spread over scans.
      unsigned period = same ? refresh_scans_ : 1 + sample.pid % refresh_scans_;
      scans_left = period - 1;
    }
    known[sample.pid] = {sample.start_time_ticks,
                         sample.comm,
                         sample.cgroup,
                         scans_left,
                         stat->minflt,
                         stat->majflt,
                         stat->rss_pages,
                         sample.rss_anon_bytes,
                         sample.rss_file_bytes,
                         sample.rss_shmem_bytes,
                         sample.swap_bytes};
    processes.push_back(std::move(sample));
  }
  ::closedir(dir);
  known_ = std::move(known);
  return processes;
}

}  // namespace memtrail::sampler
