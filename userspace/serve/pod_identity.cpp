// SPDX-License-Identifier: Apache-2.0
// Kubernetes pod and container identity from a process's cgroup path.
#include "serve/pod_identity.h"

#include <algorithm>
#include <vector>

namespace memtrail::serve {
namespace {

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// A pod uid as the cgroup path spells it ('-' or, with systemd, '_' between the groups),
// returned with dashes; nothing when it is not 8-4-4-4-12 hex digits.
std::optional<std::string> pod_uid_in(std::string_view text) {
  if (text.size() != 36) return std::nullopt;
  std::string uid(text);
  for (size_t i = 0; i < uid.size(); ++i) {
    bool separator = i == 8 || i == 13 || i == 18 || i == 23;
    if (separator) {
      if (uid[i] != '-' && uid[i] != '_') return std::nullopt;
      uid[i] = '-';
    } else if (!is_hex(uid[i])) {
      return std::nullopt;
    }
  }
  return uid;
}

// The pod uid of one path component: "pod<uid>" (cgroupfs) or "kubepods[-<qos>]-pod<uid>.slice"
// (systemd).
std::optional<std::string> pod_component(std::string_view component) {
  if (starts_with(component, "pod")) return pod_uid_in(component.substr(3));
  if (component.find("kubepods") != std::string_view::npos && ends_with(component, ".slice")) {
    auto at = component.rfind("-pod");
    if (at == std::string_view::npos) return std::nullopt;
    auto uid = component.substr(at + 4, component.size() - at - 4 - 6);
    return pod_uid_in(uid);
  }
  return std::nullopt;
}

// The container id of the component under the pod's: "<id>", "<prefix>-<id>" or
// "<prefix>-<id>.scope".
std::string container_component(std::string_view component) {
  if (ends_with(component, ".scope")) component.remove_suffix(6);
  for (std::string_view prefix : {"cri-containerd-", "crio-", "docker-", "containerd-"}) {
    if (starts_with(component, prefix)) {
      component.remove_prefix(prefix.size());
      break;
    }
  }
  if (component.size() < 12 || component.size() > 64 ||
      !std::all_of(component.begin(), component.end(), is_hex)) {
    return "";
  }
  return std::string(component);
}

std::string qos_of(std::string_view component) {
  for (std::string_view qos : {"burstable", "besteffort"}) {
    if (component == qos || ends_with(component, "kubepods-" + std::string(qos) + ".slice")) {
      return std::string(qos);
    }
  }
  return "";
}

}  // namespace

std::optional<PodIdentity> parse_pod_identity(std::string_view cgroup_path) {
  std::vector<std::string_view> components;
  for (size_t start = 0; start <= cgroup_path.size();) {
    size_t end = cgroup_path.find('/', start);
    if (end == std::string_view::npos) end = cgroup_path.size();
    if (end > start) components.push_back(cgroup_path.substr(start, end - start));
    start = end + 1;
  }
  bool under_kubepods = false;
  std::string qos;
  for (size_t i = 0; i < components.size(); ++i) {
    std::string_view component = components[i];
    if (!under_kubepods) {
      under_kubepods =
          component == "kubepods" || component == "kubepods.slice" ||
          (starts_with(component, "kubelet-kubepods") && ends_with(component, ".slice"));
      continue;
    }
    if (auto named = qos_of(component); !named.empty()) {
      qos = named;
      continue;
    }
    auto uid = pod_component(component);
    if (!uid) continue;
    PodIdentity identity;
    identity.pod_uid = *uid;
    identity.qos = qos.empty() ? "guaranteed" : qos;
    if (i + 1 < components.size()) identity.container_id = container_component(components[i + 1]);
    return identity;
  }
  return std::nullopt;
}

}  // namespace memtrail::serve
