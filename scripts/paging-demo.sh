#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The "Diagnosing thrashing" walkthrough of the README: builds memtrail, makes a memory cgroup
# with a 256 MiB limit and a temporary swap file, starts a growing process (the culprit), an
# idle one and a file reader (the victims) in it, and runs `memtrail paging` while the cgroup
# thrashes. Everything it made is removed on exit, also on Ctrl-C.
#   scripts/paging-demo.sh [--no-build] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
if [[ ${1:-} == --no-build ]]; then
  build=0
  shift
fi
seconds=${1:-16}
if [[ $(id -u) -ne 0 ]]; then
  echo "paging-demo: needs root (BPF, cgroups, swapon); run: sudo $0" >&2
  exit 1
fi
if ((build)); then
  scripts/install-deps.sh
  scripts/build.sh
fi
thrash=build/tests/targets/thrash
name="memtrail-demo-$$"
swap="/var/tmp/$name.swap"
data="/var/tmp/$name.data"
pids=()
dirs=()

cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for dir in "${dirs[@]}"; do rmdir "$dir" 2>/dev/null || true; done
  swapoff "$swap" 2>/dev/null || true
  rm -f "$swap" "$data"
}
trap cleanup EXIT

# The memory controller: cgroup v1 (hybrid hosts like Debian 12 VMs) or v2. On hybrid hosts the
# same name is made in the unified hierarchy too, which keeps PSI per cgroup.
if [[ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
  dirs=("/sys/fs/cgroup/memory/$name")
  [[ -d /sys/fs/cgroup/unified ]] && dirs+=("/sys/fs/cgroup/unified/$name")
  limit_file=memory.limit_in_bytes
else
  grep -qw memory /sys/fs/cgroup/cgroup.subtree_control ||
    echo +memory >/sys/fs/cgroup/cgroup.subtree_control
  dirs=("/sys/fs/cgroup/$name")
  limit_file=memory.max
fi
for dir in "${dirs[@]}"; do mkdir "$dir"; done
echo $((256 << 20)) >"${dirs[0]}/$limit_file"

fallocate -l 1536M "$swap"
chmod 600 "$swap"
mkswap -q "$swap"
swapon "$swap"
# A data file whose pages are not in the page cache: the reader must fault them in, charged to
# the cgroup (pages cached by this script would stay charged to the script's own cgroup).
dd if=/dev/urandom of="$data" bs=1M count=96 conv=fsync status=none
dd if="$data" iflag=nocache count=0 status=none

start_in_cgroup() {
  # The child joins the cgroup before exec, so that every page it touches is charged there.
  local procs=()
  for dir in "${dirs[@]}"; do procs+=("$dir/cgroup.procs"); done
  sh -c 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f"; done; while [ "$1" != -- ]; do shift; done; shift; exec "$@"' \
    sh "${procs[@]}" -- "$@" >/dev/null &
  pids+=($!)
}

echo "paging-demo: memory cgroup /$name (limit 256 MiB) with a 1.5 GiB swap file:"
start_in_cgroup "$thrash" idle 128 100
echo "  pid ${pids[-1]}: thrash idle  - touches its 128 MiB every 100 ms"
start_in_cgroup "$thrash" file "$data" 100
echo "  pid ${pids[-1]}: thrash file  - reads a 96 MiB file every 100 ms"
sleep 1
start_in_cgroup "$thrash" grow 64 1024
echo "  pid ${pids[-1]}: thrash grow  - grows by 64 MiB/s up to 1 GiB"
echo "paging-demo: memtrail paging --interval 2 --duration $seconds --json build/demo-paging.json"
./build/memtrail paging --interval 2 --duration "$seconds" --json build/demo-paging.json
echo "paging-demo: the JSON report is in build/demo-paging.json"
