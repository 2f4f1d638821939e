// SPDX-License-Identifier: Apache-2.0
// Memory cgroups, v1 and v2: where they are mounted, which exist, and what each one holds.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/paging.h"

namespace memtrail::sampler {

// Where the memory controller lives.
//   v1 (hybrid, as on this machine): memory_root = /sys/fs/cgroup/memory, unified_root =
//     /sys/fs/cgroup/unified (the v2 tree has no controllers but keeps memory.pressure per
//     cgroup), or "" when no cgroup2 is mounted.
//   v2: memory_root = unified_root = the cgroup2 mount point (usually /sys/fs/cgroup).
struct CgroupLayout {
  int version = 0;  // 1 or 2; 0: no memory cgroup hierarchy found
  std::string memory_root;
  std::string unified_root;
};

// Finds the hierarchies in /proc/self/mountinfo text (lines of /proc/mounts are accepted too).
// A v1 hierarchy with the memory controller wins; otherwise a cgroup2 mount is taken as the
// memory hierarchy (detect_cgroup_layout() checks that it really has the memory controller).
// Mounts of the hierarchy's root ("/") are preferred over bind mounts of a sub-tree.
CgroupLayout parse_cgroup_layout(std::string_view mountinfo);

// parse_cgroup_layout() on this process's mount table. Throws memtrail::Error when no
// hierarchy has the memory controller (cgroup_disable=memory, or cgroupfs not mounted).
CgroupLayout detect_cgroup_layout();

// Every memory cgroup, as paths relative to the hierarchy's root: "/" first, then a pre-order
// walk with siblings sorted by name ("/a", "/a/b", "/c"). On v2 only cgroups where the memory
// controller is enabled (memory.current exists) are listed; their sub-trees cannot have it
// either, so they are not walked. Cgroups removed during the walk are skipped.
std::vector<std::string> list_memory_cgroups(const CgroupLayout& layout);

// Fills the memory.stat counters of `sample`. Version 1 prefers the hierarchical total_<key>
// over <key> (the cgroup alone) and takes swap from (total_)swap; version 2 is hierarchical
// already and has pswpin/pswpout/zswpin/pgscan. Pre-5.9 single "workingset_refault" and
// "workingset_restore" keys counted file pages only and land in the *_file fields.
void parse_memory_stat(std::string_view text, int version, model::CgroupSample& sample);

// Reads one cgroup (`relative_path` as listed above, or as in /proc/PID/cgroup):
//   id         inode of the cgroup directory (= kernfs id, = the memcg id BPF sees)
//   limit      v1 memory.limit_in_bytes (>= 2^62: unlimited), v2 memory.max ("max": none)
//   usage      v1 memory.usage_in_bytes, v2 memory.current; the v2 root has no memory.current,
//              so there it is estimated from memory.stat (anon + file + kernel + sock)
//   swap       v1 memory.stat (total_)swap (needs swap accounting), v2 memory.swap.current
//              (0 at the v2 root, which has none: use HostSample)
//   psi        v2 memory.pressure; v1 the same path under unified_root, when it exists there
//   oom_kill   v1 memory.oom_control "oom_kill", v2 memory.events "oom_kill"
//   failcnt    v1 memory.failcnt; v2 memory.events "max" (times usage hit memory.max)
// Returns nothing when the cgroup does not exist or was removed while it was being read, or
// (v2) when it has no memory controller.
std::optional<model::CgroupSample> read_cgroup_sample(const CgroupLayout& layout,
                                                      const std::string& relative_path);

// Turns what a user typed into a relative memory cgroup path, if that memory cgroup exists:
// "/sys/fs/cgroup/memory/db", "/sys/fs/cgroup/unified/db", "/db", "db" and "db/" all give
// "/db". Paths with ".." components are refused.
std::optional<std::string> resolve_cgroup_argument(const CgroupLayout& layout,
                                                   const std::string& user_path);

// The memory cgroup of a process from its /proc/PID/cgroup text: on v1 the line whose
// controller list holds "memory" ("4:memory:/db"), on v2 the "0::" line. "" when none.
std::string memory_cgroup_of(std::string_view proc_pid_cgroup_text, const CgroupLayout& layout);

}  // namespace memtrail::sampler
