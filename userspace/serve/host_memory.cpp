// SPDX-License-Identifier: Apache-2.0
// The always-on tier: every process's and memory cgroup's private memory over a sliding
// window, with memtrail's growth verdict, as Prometheus metrics with bounded cardinality.
#include "serve/host_memory.h"

#include <algorithm>

namespace memtrail::serve {
namespace {

bool under(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

// Which entries get series of their own: every growing one, then the largest up to `cap`.
template <typename Entry, typename Bytes>
std::vector<const Entry*> kept_entries(const std::vector<const Entry*>& all, size_t cap,
                                       Bytes bytes) {
  std::vector<const Entry*> kept, others;
  for (const Entry* entry : all) {
    (is_growing(entry->second.series.growth.verdict) ? kept : others).push_back(entry);
  }
  std::sort(others.begin(), others.end(),
            [&](const Entry* a, const Entry* b) { return bytes(*a) > bytes(*b); });
  for (const Entry* entry : others) {
    if (kept.size() >= cap) break;
    kept.push_back(entry);
  }
  return kept;
}

Labels pod_labels(Labels labels, const std::optional<PodIdentity>& pod) {
  if (pod) {
    labels.emplace_back("pod_uid", pod->pod_uid);
    labels.emplace_back("container_id", pod->container_id);
  }
  return labels;
}

void verdict_samples(MetricsText& out, const char* name, Labels labels,
                     aggregator::Verdict verdict) {
  labels.emplace_back("verdict", "");
  for (auto candidate : kMemoryVerdicts) {
    labels.back().second = aggregator::verdict_name(candidate);
    out.sample(name, labels, candidate == verdict ? 1 : 0);
  }
}

}  // namespace

bool is_growing(aggregator::Verdict verdict) {
  return verdict == aggregator::Verdict::kLeak || verdict == aggregator::Verdict::kSuspect;
}

void HostMemory::record(Series& series, double t_s, uint64_t bytes) const {
  auto& points = series.points;
  if (points.size() >= config_.window_points) points.erase(points.begin());
  points.push_back({t_s, static_cast<double>(bytes), 0});
  // No block ages or frees here: a process's private memory is one site that never frees as
  // far as the verdict can tell, so it is a leak when it grows steadily over the window.
  aggregator::SiteNow now;
  now.oldest_age_s = points.back().t_s - points.front().t_s;
  series.growth = aggregator::assess_growth(points, now, config_.interval_s);
}

void HostMemory::update(double t_s, const std::vector<model::ProcessSample>& processes,
                        const std::vector<model::CgroupSample>& cgroups) {
  std::unordered_map<uint32_t, Process> next;
  next.reserve(processes.size());
  std::map<std::string, Cgroup> next_cgroups;
  for (const auto& sample : processes) {
    Process process;
    auto old = processes_.find(sample.pid);
    if (old != processes_.end() && old->second.start_time_ticks == sample.start_time_ticks) {
      process = std::move(old->second);
    }
    process.start_time_ticks = sample.start_time_ticks;
    if (process.cgroup != sample.cgroup || process.series.points.empty()) {
      process.pod = parse_pod_identity(sample.cgroup);
    }
    process.comm = sample.comm;
    process.cgroup = sample.cgroup;
    process.anon_bytes = sample.rss_anon_bytes;
    process.swap_bytes = sample.swap_bytes;
    record(process.series, t_s, sample.rss_anon_bytes + sample.swap_bytes);
    auto& cgroup = next_cgroups[sample.cgroup];
    cgroup.anon_bytes += sample.rss_anon_bytes;
    cgroup.swap_bytes += sample.swap_bytes;
    ++cgroup.processes;
    next.emplace(sample.pid, std::move(process));
  }
  for (auto& [path, cgroup] : next_cgroups) {
    auto old = cgroups_.find(path);
    if (old != cgroups_.end()) {
      cgroup.series = std::move(old->second.series);
      cgroup.pod = std::move(old->second.pod);
    } else {
      cgroup.pod = parse_pod_identity(path);
    }
    record(cgroup.series, t_s, cgroup.anon_bytes + cgroup.swap_bytes);
  }
  for (const auto& sample : cgroups) {
    auto it = next_cgroups.find(sample.path);
    if (it != next_cgroups.end()) it->second.sample = sample;
  }
  processes_ = std::move(next);
  cgroups_ = std::move(next_cgroups);
}

// The growth slope and the verdict of a process's or a cgroup's private memory: the same two
// families for both (memtrail_KIND_private_growth_bytes_per_second, memtrail_KIND_memory_verdict).
template <typename Rows, typename LabelsOf>
void growth_families(MetricsText& out, const std::string& kind, std::string_view growth_help,
                     std::string_view verdict_help, const Rows& rows, LabelsOf labels_of) {
  out.family_of("memtrail_" + kind + "_private_growth_bytes_per_second", "gauge", growth_help, rows,
                labels_of, [](const auto* entry) -> std::optional<double> {
                  return entry->second.series.growth.growth_bytes_per_s;
                });
  std::string verdict = "memtrail_" + kind + "_memory_verdict";
  out.family(verdict, "gauge", verdict_help);
  for (const auto* entry : rows) {
    verdict_samples(out, verdict.c_str(), labels_of(entry), entry->second.series.growth.verdict);
  }
}

void HostMemory::render(MetricsText& out) const {
  using ProcessEntry = std::pair<const uint32_t, Process>;
  std::vector<const ProcessEntry*> all;
  all.reserve(processes_.size());
  for (const auto& entry : processes_) all.push_back(&entry);
  auto kept = kept_entries(all, config_.max_processes, [](const ProcessEntry& entry) {
    return entry.second.anon_bytes + entry.second.swap_bytes;
  });
  std::sort(kept.begin(), kept.end(),
            [](const ProcessEntry* a, const ProcessEntry* b) { return a->first < b->first; });
  uint64_t folded_bytes = 0;
  for (const auto& [pid, process] : processes_)
    folded_bytes += process.anon_bytes + process.swap_bytes;
  for (const auto* entry : kept) {
    folded_bytes -= entry->second.anon_bytes + entry->second.swap_bytes;
  }
  auto labels_of = [](const ProcessEntry* entry) {
    return pod_labels({{"pid", std::to_string(entry->first)},
                       {"comm", entry->second.comm},
                       {"cgroup", entry->second.cgroup}},
                      entry->second.pod);
  };

  out.family("memtrail_processes", "gauge",
             "Processes seen by the last scan (kernel threads and "
             "zombies aside).");
  out.sample("memtrail_processes", {}, static_cast<double>(processes_.size()));
  out.family("memtrail_processes_folded", "gauge",
             "Processes without series of their own (over --max-processes, none growing).");
  out.sample("memtrail_processes_folded", {}, static_cast<double>(processes_.size() - kept.size()));
  out.family("memtrail_folded_processes_private_bytes", "gauge",
             "Private memory (RssAnon + VmSwap) of the folded processes together.");
  out.sample("memtrail_folded_processes_private_bytes", {}, static_cast<double>(folded_bytes));

  out.family_of("memtrail_process_anon_bytes", "gauge",
                "Resident anonymous memory of a process (RssAnon: heap, anonymous mappings).", kept,
                labels_of, [](const auto* entry) -> std::optional<double> {
                  return static_cast<double>(entry->second.anon_bytes);
                });
  out.family_of("memtrail_process_swap_bytes", "gauge", "Swapped-out memory of a process (VmSwap).",
                kept, labels_of, [](const auto* entry) -> std::optional<double> {
                  return static_cast<double>(entry->second.swap_bytes);
                });
  growth_families(out, "process",
                  "Slope of a process's private memory (RssAnon + VmSwap) over the window; 0 "
                  "until it has a verdict.",
                  "1 for the growth verdict of a process's private memory over the window (leak: "
                  "steady growth, suspect: unsteady growth, steady, too_short), 0 for the others.",
                  kept, labels_of);

  using CgroupEntry = std::pair<const std::string, Cgroup>;
  std::vector<const CgroupEntry*> all_cgroups;
  for (const auto& entry : cgroups_) all_cgroups.push_back(&entry);
  auto kept_cgroups = kept_entries(all_cgroups, config_.max_cgroups, [](const CgroupEntry& entry) {
    return entry.second.anon_bytes + entry.second.swap_bytes;
  });
  std::sort(kept_cgroups.begin(), kept_cgroups.end(),
            [](const CgroupEntry* a, const CgroupEntry* b) { return a->first < b->first; });
  auto cgroup_labels = [](const CgroupEntry* entry) {
    return pod_labels({{"cgroup", entry->first}}, entry->second.pod);
  };
  out.family("memtrail_cgroups_folded", "gauge",
             "Memory cgroups without series of their own (over --max-cgroups, none growing).");
  out.sample("memtrail_cgroups_folded", {},
             static_cast<double>(cgroups_.size() - kept_cgroups.size()));
  out.family_of("memtrail_cgroup_processes", "gauge",
                "Processes in a memory cgroup (not below it).", kept_cgroups, cgroup_labels,
                [](const auto* entry) -> std::optional<double> {
                  return static_cast<double>(entry->second.processes);
                });
  out.family_of("memtrail_cgroup_anon_bytes", "gauge",
                "RssAnon of the processes in a memory cgroup (not below it), summed.", kept_cgroups,
                cgroup_labels, [](const auto* entry) -> std::optional<double> {
                  return static_cast<double>(entry->second.anon_bytes);
                });
  out.family_of("memtrail_cgroup_swap_bytes", "gauge",
                "VmSwap of the processes in a memory cgroup (not below it), summed.", kept_cgroups,
                cgroup_labels, [](const auto* entry) -> std::optional<double> {
                  return static_cast<double>(entry->second.swap_bytes);
                });
  out.family_of("memtrail_cgroup_usage_bytes", "gauge",
                "Memory charged to a memory cgroup and below (v1 memory.usage_in_bytes, v2 "
                "memory.current).",
                kept_cgroups, cgroup_labels, [](const auto* entry) -> std::optional<double> {
                  if (!entry->second.sample) return std::nullopt;
                  return static_cast<double>(entry->second.sample->usage_bytes);
                });
  out.family_of("memtrail_cgroup_limit_bytes", "gauge",
                "A memory cgroup's limit (v1 memory.limit_in_bytes, v2 memory.max); none when "
                "unlimited.",
                kept_cgroups, cgroup_labels, [](const auto* entry) -> std::optional<double> {
                  if (!entry->second.sample || !entry->second.sample->limit_bytes)
                    return std::nullopt;
                  return static_cast<double>(*entry->second.sample->limit_bytes);
                });
  growth_families(out, "cgroup",
                  "Slope of a memory cgroup's processes' private memory over the window.",
                  "1 for the growth verdict of a memory cgroup's processes' private memory over "
                  "the window, 0 for the others.",
                  kept_cgroups, cgroup_labels);
}

std::optional<ProcessView> HostMemory::process(uint32_t pid) const {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return std::nullopt;
  return ProcessView{pid, it->second.comm, it->second.cgroup, it->second.pod};
}

std::vector<uint32_t> HostMemory::pids_with_comm(const std::string& comm) const {
  std::vector<uint32_t> pids;
  for (const auto& [pid, process] : processes_) {
    if (process.comm == comm) pids.push_back(pid);
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

std::vector<uint32_t> HostMemory::pids_in_cgroup(const std::string& cgroup) const {
  std::vector<uint32_t> pids;
  for (const auto& [pid, process] : processes_) {
    if (under(process.cgroup, cgroup)) pids.push_back(pid);
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

}  // namespace memtrail::serve
