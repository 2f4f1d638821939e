#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install the Debian packages memtrail needs to build, run and test. Idempotent and quick when
# everything is already there. --tests adds what only the test suite needs (headless Chromium,
# which checks that the SVG flame graph renders and its script runs; the allocator libraries the
# allocator tests link their leaking programs against: jemalloc, tcmalloc, mimalloc; Go).
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang llvm clang-format
  libbpf-dev bpftool libelf-dev libdw-dev zlib1g-dev libcapstone-dev
  libcli11-dev nlohmann-json3-dev libgtest-dev libprotobuf-dev protobuf-compiler
  binutils util-linux python3 python3-jsonschema
  libpython3.11-dev  # CPython 3.11 headers: the frame layout --python-frames reads
  libjemalloc-dev    # memtrail's own allocator, linked in (see userspace/CMakeLists.txt)
  libcpp-httplib-dev # memtrail serve's HTTP server and its Pyroscope client
)
if [[ ${1:-} == --tests ]]; then
  packages+=(chromium libjemalloc2 libgoogle-perftools4 libtcmalloc-minimal4 libmimalloc2.0
             golang-go  # a Go program: traced by its mappings alone (--mmap); go tool pprof
             prometheus)  # memtrail serve scraped by a real Prometheus; promtool checks /metrics
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo $0)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
