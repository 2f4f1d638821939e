#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install BCC's memleak (Debian bpfcc-tools), the baseline memtrail's overhead is measured
# against (bench/run.sh). BCC compiles its BPF program at start-up and needs kernel headers;
# where none match the running kernel, Debian's closest 6.1 headers are installed and linked
# under /lib/modules/$(uname -r)/. Then checks that memleak-bpfcc really compiles and attaches
# here. Idempotent. Usage: scripts/bench-setup-bcc.sh [--no-verify]
set -euo pipefail

say() { echo "bench-setup-bcc: $*"; }
die() { echo "bench-setup-bcc: error: $*" >&2; exit 1; }

verify=1
case "${1:-}" in
  --no-verify) verify=0 ;;
  "") ;;
  *) die "usage: $0 [--no-verify]" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root"
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_update() {
  if ((!updated)); then
    apt-get update -qq || die "apt-get update failed"
    updated=1
  fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need=()
for package in bpfcc-tools python3-bpfcc; do
  installed "$package" || need+=("$package")
done

# Debian splits a kernel's headers in two: linux-headers-X-amd64 (generated files, include/
# generated and config, Module.symvers) and linux-headers-X-common (the sources' headers,
# include/linux/kconfig.h and the rest); the first depends on the second. BCC reads the first
# through /lib/modules/R/build and the second through /lib/modules/R/source: without source/ it
# fails with "'./include/linux/kconfig.h' file not found".
modules_dir="/lib/modules/$(uname -r)"
kconfig_found() {
  [[ -e "$modules_dir/build/include/linux/kconfig.h" || -e "$modules_dir/source/include/linux/kconfig.h" ]] &&
    [[ -e "$modules_dir/build/include/generated" || -e "$modules_dir/build/include/config" ]]
}
headers=""
if ! kconfig_found; then
  apt_update
  # The newest 6.1 headers Debian has (bookworm's kernel series): the closest to this kernel.
  headers=$(apt-cache search --names-only '^linux-headers-6\.1\.[0-9]+-[0-9]+-amd64$' |
            awk '{print $1}' | sort -V | tail -n 1)
  [[ -n "$headers" ]] || die "no linux-headers-6.1.*-amd64 package in the Debian archive (apt-cache search)"
  installed "$headers" || need+=("$headers")
fi
if ((${#need[@]})); then
  apt_update
  say "installing ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    die "apt-get install ${need[*]} failed"
fi
if [[ -n "$headers" ]]; then
  arch_dir="/usr/src/$headers"
  common_dir="/usr/src/${headers%-amd64}-common"
  [[ -d "$arch_dir" && -d "$common_dir" ]] || die "$arch_dir or $common_dir missing after install"
  mkdir -p "$modules_dir"
  for link in build source; do
    # Never replace a real directory (a kernel's own headers); only our symlinks.
    if [[ -e "$modules_dir/$link" && ! -L "$modules_dir/$link" ]]; then
      die "$modules_dir/$link exists and is not a symlink; not touching it"
    fi
  done
  ln -sfn "$arch_dir" "$modules_dir/build"
  ln -sfn "$common_dir" "$modules_dir/source"
  say "no kernel headers matched $(uname -r): using Debian's $headers, linked"
  say "  $modules_dir/build  -> $arch_dir"
  say "  $modules_dir/source -> $common_dir"
  kconfig_found || die "headers linked but include/linux/kconfig.h still not found"
else
  say "kernel headers for $(uname -r): $(readlink -f "$modules_dir/build")"
fi
[[ -x /usr/sbin/memleak-bpfcc ]] || die "/usr/sbin/memleak-bpfcc missing after installing bpfcc-tools"

if ((verify)); then
  # memleak compiles, prints "Attaching to pid", attaches, and after its 1 s interval prints a
  # report; with a count of 1 it then exits 0. Target: a process that allocates in a loop.
  say "checking that memleak-bpfcc compiles and attaches here (a few seconds)"
  log=$(mktemp /tmp/bench-setup-bcc.XXXXXX)
  /usr/bin/python3 -c 'import time
while True:
    b = [bytearray(100) for _ in range(1000)]
    time.sleep(0.01)' &
  target=$!
  trap 'kill "$target" 2>/dev/null || true; rm -f "$log"' EXIT
  status=0
  timeout -s INT -k 10 120 /usr/bin/python3 -u /usr/sbin/memleak-bpfcc -p "$target" 1 1 >"$log" 2>&1 ||
    status=$?
  if ((status != 0)) || ! grep -q "Attaching to pid" "$log" ||
     ! grep -q "stacks with outstanding allocations" "$log"; then
    sed 's/^/  | /' "$log" | head -n 40 >&2
    # BCC falls back to tracefs (not mounted here) when perf_event_open fails, so its message
    # hides the cause. The usual one: another tool (memtrail, bpftrace) holds a uprobe on the
    # same libc function with a different ref_ctr_offset, and the kernel refuses the second.
    if dmesg 2>/dev/null | tail -n 5 | grep -q "ref_ctr_offset mismatch"; then
      echo "bench-setup-bcc: dmesg shows \"ref_ctr_offset mismatch\": another tracer holds probes on" \
           "libc's allocator (running: $(pgrep -d, -x 'memtrail|bpftrace' || echo none)); retry once it stops" >&2
    fi
    die "memleak-bpfcc did not attach (exit status $status); output above"
  fi
  say "memleak-bpfcc attached to pid $target and reported"
fi
say "memleak-bpfcc is ready"
