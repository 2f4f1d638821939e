// SPDX-License-Identifier: Apache-2.0
// Memory cgroup discovery and per-cgroup counters from cgroupfs, v1 and v2.
#include "sampler/cgroups.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include "common/error.h"
#include "common/unique_fd.h"
#include "sampler/pressure.h"
#include "sampler/proc_text.h"

namespace memtrail::sampler {
namespace {

// v1 prints "no limit" as PAGE_COUNTER_MAX pages in bytes: LONG_MAX rounded down to the page
// size (9223372036854771712 with 4 KiB pages, ...710272 with 64 KiB). No machine has 4 EiB,
// so anything from 2^62 up means unlimited whatever the page size.
constexpr uint64_t kV1Unlimited = uint64_t{1} << 62;

// Mount points in mountinfo escape space, tab, newline and backslash as \ooo.
std::string unescape_mount_path(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size()) {
      std::string_view digits = text.substr(i + 1, 3);
      if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '7'; })) {
        out.push_back(
            static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 + (digits[2] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

bool has_token(std::string_view list, std::string_view token, char separator) {
  while (!list.empty()) {
    size_t end = list.find(separator);
    if (list.substr(0, end) == token) return true;
    if (end == std::string_view::npos) break;
    list.remove_prefix(end + 1);
  }
  return false;
}

struct MountLine {
  std::string_view root;  // the mounted sub-tree of the filesystem ("/" when all of it)
  std::string_view mount_point;
  std::string_view fs_type;
  std::string_view options;  // superblock options: the v1 controller list is here
};

// mountinfo: "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
// /proc/mounts: "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0"
std::optional<MountLine> parse_mount_line(std::string_view line) {
  MountLine mount;
  size_t separator = line.find(" - ");
  std::string_view rest = line;
  if (separator != std::string_view::npos) {
    next_word(rest);  // mount id
    next_word(rest);  // parent id
    next_word(rest);  // major:minor
    mount.root = next_word(rest);
    mount.mount_point = next_word(rest);
    rest = line.substr(separator + 3);
    mount.fs_type = next_word(rest);
    next_word(rest);  // source
    mount.options = next_word(rest);
  } else {
    next_word(rest);  // source
    mount.root = "/";
    mount.mount_point = next_word(rest);
    mount.fs_type = next_word(rest);
    mount.options = next_word(rest);
  }
  if (mount.mount_point.empty() || mount.fs_type.empty()) return std::nullopt;
  return mount;
}

std::string join_path(const std::string& root, std::string_view relative) {
  if (relative.empty() || relative == "/") return root;
  return root + std::string(relative);
}

// "/a//b/" -> "/a/b"; nothing for "..".
std::optional<std::string> normalize_relative(std::string_view path) {
  std::string out;
  while (!path.empty()) {
    size_t begin = path.find_first_not_of('/');
    if (begin == std::string_view::npos) break;
    path.remove_prefix(begin);
    size_t end = path.find('/');
    std::string_view part = path.substr(0, end);
    path = end == std::string_view::npos ? std::string_view{} : path.substr(end);
    if (part == ".") continue;
    if (part == "..") return std::nullopt;
    out += '/';
    out += part;
  }
  if (out.empty()) out = "/";
  return out;
}

// `path` minus the mount point `root` when `path` is `root` or below it, component-wise.
std::optional<std::string_view> strip_root(std::string_view path, std::string_view root) {
  while (root.size() > 1 && root.back() == '/') root.remove_suffix(1);
  if (root.empty() || path.substr(0, root.size()) != root) return std::nullopt;
  std::string_view rest = path.substr(root.size());
  if (!rest.empty() && rest.front() != '/' && root != "/") return std::nullopt;
  return rest;
}

bool is_memory_cgroup(int dir_fd, int version, bool is_root) {
  if (version == 2 && is_root) return true;
  const char* probe = version == 1 ? "memory.usage_in_bytes" : "memory.current";
  return ::faccessat(dir_fd, probe, F_OK, 0) == 0;
}

void walk_cgroups(int dir_fd, const std::string& relative, int version,
                  std::vector<std::string>& out) {
  UniqueFd list_fd(::dup(dir_fd));
  if (!list_fd) return;
  DIR* dir = ::fdopendir(list_fd.get());
  if (dir == nullptr) return;
  list_fd.release();  // the DIR stream owns it now: closedir() closes it
  std::vector<std::string> children;
  while (dirent* entry = ::readdir(dir)) {
    std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (entry->d_type == DT_DIR) {
      children.emplace_back(name);
    } else if (entry->d_type == DT_UNKNOWN) {
      struct stat info {};
      if (::fstatat(dir_fd, entry->d_name, &info, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISDIR(info.st_mode)) {
        children.emplace_back(name);
      }
    }
  }
  ::closedir(dir);
  std::sort(children.begin(), children.end());
  for (const std::string& name : children) {
    UniqueFd child_fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!child_fd) continue;  // removed since readdir: nothing to report
    if (is_memory_cgroup(child_fd.get(), version, false)) {
      std::string child = relative == "/" ? "/" + name : relative + "/" + name;
      out.push_back(child);
      walk_cgroups(child_fd.get(), child, version, out);
    }
  }
}

// A file of a cgroup that has just been removed reads as ENOENT or ENODEV.
bool is_gone_error(int error) { return error == ENOENT || error == ENODEV; }

// The v2 root has no memory.current; its memory.stat has what memory.current would count.
uint64_t estimate_root_usage(std::string_view memory_stat) {
  auto value = [&](std::string_view key) { return find_keyed_value(memory_stat, key); };
  uint64_t usage =
      value("anon").value_or(0) + value("file").value_or(0) + value("sock").value_or(0);
  if (auto kernel = value("kernel")) {
    usage += *kernel;  // 5.18+: all kernel memory in one line
  } else {
    usage += value("kernel_stack").value_or(0) + value("pagetables").value_or(0) +
             value("percpu").value_or(0) + value("slab").value_or(0);
  }
  return usage;
}

struct StatField {
  std::string_view key;
  uint64_t model::CgroupSample::*field;
};

constexpr StatField kCommonStatFields[] = {
    {"pgfault", &model::CgroupSample::pgfault},
    {"pgmajfault", &model::CgroupSample::pgmajfault},
    {"workingset_refault_anon", &model::CgroupSample::workingset_refault_anon},
    {"workingset_refault_file", &model::CgroupSample::workingset_refault_file},
    {"workingset_restore_anon", &model::CgroupSample::workingset_restore_anon},
    {"workingset_restore_file", &model::CgroupSample::workingset_restore_file},
    // Before 5.9 only file pages had workingset detection, under these names.
    {"workingset_refault", &model::CgroupSample::workingset_refault_file},
    {"workingset_restore", &model::CgroupSample::workingset_restore_file},
};

struct OptionalStatField {
  std::string_view key;
  std::optional<uint64_t> model::CgroupSample::*field;
};

constexpr OptionalStatField kV2OptionalStatFields[] = {
    {"pswpin", &model::CgroupSample::pswpin},
    {"pswpout", &model::CgroupSample::pswpout},
    {"zswpin", &model::CgroupSample::zswpin},
    {"pgscan", &model::CgroupSample::pgscan},
};

}  // namespace

CgroupLayout parse_cgroup_layout(std::string_view mountinfo) {
  CgroupLayout layout;
  bool v1_root = false, v2_root = false;  // found a mount of the whole hierarchy
  std::string v1_memory;
  while (!mountinfo.empty()) {
    std::optional<MountLine> mount = parse_mount_line(next_line(mountinfo));
    if (!mount) continue;
    bool whole = mount->root == "/";
    if (mount->fs_type == "cgroup" && has_token(mount->options, "memory", ',')) {
      if (v1_memory.empty() || (whole && !v1_root)) {
        v1_memory = unescape_mount_path(mount->mount_point);
        v1_root = whole;
      }
    } else if (mount->fs_type == "cgroup2") {
      if (layout.unified_root.empty() || (whole && !v2_root)) {
        layout.unified_root = unescape_mount_path(mount->mount_point);
        v2_root = whole;
      }
    }
  }
  if (!v1_memory.empty()) {
    layout.version = 1;
    layout.memory_root = v1_memory;
  } else if (!layout.unified_root.empty()) {
    layout.version = 2;
    layout.memory_root = layout.unified_root;
  }
  return layout;
}

CgroupLayout detect_cgroup_layout() {
  std::string text;
  int error = read_text_file("/proc/self/mountinfo", text);
  if (error != 0) error = read_text_file("/proc/mounts", text);
  if (error != 0) {
    throw Error(errno_message("read /proc/self/mountinfo", error),
                "memtrail paging needs procfs mounted on /proc");
  }
  CgroupLayout layout = parse_cgroup_layout(text);
  if (layout.version == 2) {
    // A cgroup2 mount alone does not mean the memory controller is on it (this machine's
    // unified tree has none: memory is bound to v1, or disabled with cgroup_disable=memory).
    std::string controllers;
    read_text_file((layout.unified_root + "/cgroup.controllers").c_str(), controllers);
    if (!has_token(trim(controllers), "memory", ' ')) layout.version = 0;
  }
  if (layout.version == 0) {
    throw Error(
        "no memory cgroup hierarchy is mounted (no cgroup v1 \"memory\" mount, and no "
        "\"memory\" in the cgroup2 root's cgroup.controllers)",
        "mount cgroupfs (mount -t cgroup2 none /sys/fs/cgroup), and check that the "
        "kernel was not booted with cgroup_disable=memory");
  }
  return layout;
}

std::vector<std::string> list_memory_cgroups(const CgroupLayout& layout) {
  std::vector<std::string> out;
  UniqueFd root_fd(::open(layout.memory_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd) return out;
  out.push_back("/");
  walk_cgroups(root_fd.get(), "/", layout.version, out);
  return out;
}

void parse_memory_stat(std::string_view text, int version, model::CgroupSample& sample) {
  // v1 prints the cgroup's own counters first and the hierarchical total_* ones after them;
  // the totals win, in whichever order they come.
  bool from_total[std::size(kCommonStatFields)] = {};
  bool swap_from_total = false;
  while (!text.empty()) {
    std::string_view line = next_line(text);
    std::string_view key = next_word(line);
    uint64_t value = 0;
    if (!parse_u64(trim(line), value)) continue;
    bool total = false;
    if (version == 1 && key.substr(0, 6) == "total_") {
      key.remove_prefix(6);
      total = true;
    }
    for (size_t i = 0; i < std::size(kCommonStatFields); ++i) {
      if (key == kCommonStatFields[i].key && (total || !from_total[i])) {
        sample.*kCommonStatFields[i].field = value;
        from_total[i] = total;
      }
    }
    if (version == 1) {
      // Present only with swap accounting (memsw); bytes.
      if (key == "swap" && (total || !swap_from_total)) {
        sample.swap_bytes = value;
        swap_from_total = total;
      }
    } else {
      for (const OptionalStatField& field : kV2OptionalStatFields) {
        if (key == field.key) sample.*field.field = value;
      }
    }
  }
}

std::optional<model::CgroupSample> read_cgroup_sample(const CgroupLayout& layout,
                                                      const std::string& relative_path) {
  std::optional<std::string> relative = normalize_relative(relative_path);
  if (!relative) return std::nullopt;
  const bool is_root = *relative == "/";
  const std::string dir = join_path(layout.memory_root, *relative);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return std::nullopt;
  struct stat info {};
  if (::fstat(dir_fd.get(), &info) != 0) return std::nullopt;

  model::CgroupSample sample;
  sample.path = *relative;
  sample.id = info.st_ino;
  sample.version = layout.version;
  bool vanished = false;  // a file of a cgroup removed under us reads as ENOENT/ENODEV
  std::string text;
  auto read = [&](const char* name) {
    // cgroupfs files show one record each (kernfs emulates single_open()).
    int error = read_text_file_at(dir_fd.get(), name, text, ReadUntil::kShortRead);
    if (error != 0 && is_gone_error(error) && !is_root) {
      // Tell "this kernel has no such file" from "the cgroup is gone": the directory
      // disappears (or is replaced) only in the second case.
      struct stat now {};
      if (::stat(dir.c_str(), &now) != 0 || now.st_ino != info.st_ino) vanished = true;
    }
    return error == 0;
  };
  auto read_u64 = [&](const char* name) -> std::optional<uint64_t> {
    uint64_t value = 0;
    if (read(name) && parse_u64(trim(text), value)) return value;
    return std::nullopt;
  };

  bool have_stat = read("memory.stat");
  if (have_stat) parse_memory_stat(text, layout.version, sample);
  if (layout.version == 1) {
    if (auto limit = read_u64("memory.limit_in_bytes"); limit && *limit < kV1Unlimited) {
      sample.limit_bytes = *limit;
    }
    sample.usage_bytes = read_u64("memory.usage_in_bytes").value_or(0);
    sample.failcnt = read_u64("memory.failcnt");
    // "oom_kill" appeared in 4.13; older kernels only have oom_kill_disable and under_oom.
    if (read("memory.oom_control")) {
      sample.oom_kill = find_keyed_value(text, "oom_kill").value_or(0);
    }
    if (!layout.unified_root.empty()) {
      sample.psi = read_pressure(join_path(layout.unified_root, *relative) + "/memory.pressure");
    }
  } else {
    std::string stat_text = have_stat ? text : std::string();
    if (read("memory.max")) {
      uint64_t limit = 0;
      if (parse_u64(trim(text), limit)) sample.limit_bytes = limit;  // "max": unlimited
    }
    if (auto current = read_u64("memory.current")) {
      sample.usage_bytes = *current;
    } else if (is_root) {
      sample.usage_bytes = estimate_root_usage(stat_text);
    }
    sample.swap_bytes = read_u64("memory.swap.current").value_or(0);
    if (read("memory.events")) {
      sample.oom_kill = find_keyed_value(text, "oom_kill").value_or(0);
      sample.failcnt = find_keyed_value(text, "max");
    }
    sample.psi = read_pressure(dir + "/memory.pressure");
  }
  // Without memory.stat this is not (or no longer) a memory cgroup; the root always is.
  if (vanished || (!have_stat && !is_root)) return std::nullopt;
  return sample;
}

std::optional<std::string> resolve_cgroup_argument(const CgroupLayout& layout,
                                                   const std::string& user_path) {
  std::string_view path = user_path;
  std::optional<std::string_view> relative;
  if (!path.empty() && path.front() == '/') {
    relative = strip_root(path, layout.memory_root);
    if (!relative && !layout.unified_root.empty()) relative = strip_root(path, layout.unified_root);
  }
  std::optional<std::string> normalized = normalize_relative(relative ? *relative : path);
  if (!normalized) return std::nullopt;
  if (*normalized == "/") return normalized;
  UniqueFd dir_fd(::open(join_path(layout.memory_root, *normalized).c_str(),
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return std::nullopt;
  if (!is_memory_cgroup(dir_fd.get(), layout.version, false)) return std::nullopt;
  return normalized;
}

std::string memory_cgroup_of(std::string_view proc_pid_cgroup_text, const CgroupLayout& layout) {
  // "hierarchy-id:controller-list:path"; the path may itself contain ':'.
  while (!proc_pid_cgroup_text.empty()) {
    std::string_view line = next_line(proc_pid_cgroup_text);
    size_t first = line.find(':');
    if (first == std::string_view::npos) continue;
    size_t second = line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    std::string_view hierarchy = line.substr(0, first);
    std::string_view controllers = line.substr(first + 1, second - first - 1);
    std::string_view path = line.substr(second + 1);
    if (layout.version == 1 ? has_token(controllers, "memory", ',')
                            : (hierarchy == "0" && controllers.empty())) {
      return std::string(path);
    }
  }
  return {};
}

}  // namespace memtrail::sampler
