#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install BCC's memleak (Debian bpfcc-tools), the baseline memtrail's overhead is measured
# against. BCC compiles its BPF program at start-up and needs kernel headers; where none match
# the running kernel, Debian's closest 6.1 headers are installed and linked under
# /lib/modules/$(uname -r)/build. Idempotent.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "bench-setup-bcc: run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
need=()
dpkg-query -W -f='${Status}' bpfcc-tools 2>/dev/null | grep -q "install ok installed" || need+=(bpfcc-tools python3-bpfcc)

# Debian splits headers into an arch package (build/: generated files) and a -common one
# (source/: include/linux/kconfig.h and the rest); BCC reads both.
modules_dir="/lib/modules/$(uname -r)"
build_dir="$modules_dir/build"
headers=""
if [[ ! -e "$build_dir/include/linux/kconfig.h" && ! -e "$modules_dir/source/include/linux/kconfig.h" ]]; then
  apt-get update -qq
  headers=$(apt-cache search --names-only '^linux-headers-6\.1\.[0-9.-]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
  if [[ -z "$headers" ]]; then
    echo "bench-setup-bcc: no linux-headers-6.1*-amd64 package found in the Debian archive" >&2
    exit 1
  fi
  need+=("$headers")
fi
if ((${#need[@]})); then
  echo "bench-setup-bcc: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ -n "$headers" ]]; then
  arch_dir="/usr/src/$headers"
  common_dir="/usr/src/${headers%-amd64}-common"
  mkdir -p "$modules_dir"
  ln -sfn "$arch_dir" "$build_dir"
  ln -sfn "$common_dir" "$modules_dir/source"
  echo "bench-setup-bcc: no headers match kernel $(uname -r); linked $arch_dir as $build_dir" \
       "and $common_dir as $modules_dir/source (BCC compiles memleak against them)"
fi
echo "bench-setup-bcc: memleak-bpfcc is ready"
