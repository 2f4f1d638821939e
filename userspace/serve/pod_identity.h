// SPDX-License-Identifier: Apache-2.0
// Kubernetes pod and container identity from a process's cgroup path.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace memtrail::serve {

// What a cgroup path says about the Kubernetes pod a process runs in.
struct PodIdentity {
  std::string pod_uid;       // "7f6c8f1e-2a7b-4c1d-9e3f-0123456789ab" (dashes, as the API has it)
  std::string container_id;  // hex, without runtime prefix; empty for the pod's own cgroup
  std::string qos;           // "guaranteed", "burstable" or "besteffort"
};

// Parses the kubelet's cgroup layouts, found anywhere in the path (a node may nest them):
//   cgroupfs driver  /kubepods/burstable/pod<uid>/<id>          (guaranteed: /kubepods/pod<uid>)
//   systemd driver   /kubepods.slice/kubepods-burstable.slice/
//                      kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
// with containerd (cri-containerd-), CRI-O (crio-) and Docker (docker-) container prefixes.
// Nothing when no component under a kubepods one names a pod. Only what the path holds is
// trusted: a uid must be 32 hex digits in the 8-4-4-4-12 form, an id 12 to 64 hex digits
// (so crio's conmon scope, "crio-conmon-<id>.scope", gives no container id).
std::optional<PodIdentity> parse_pod_identity(std::string_view cgroup_path);

}  // namespace memtrail::serve
