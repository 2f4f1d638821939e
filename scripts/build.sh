#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Configure and build memtrail into ./build: every target (the tool, its tests, the benchmarks),
# or only the targets named, e.g. `scripts/build.sh memtrail memtrail-demo` (what the demo needs).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
cmake -S . -B build -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
targets=()
for target in "$@"; do targets+=(--target "$target"); done
echo "build: building ${*:-everything} (a first build takes a few minutes on 2 cores)..."
cmake --build build -j"$(nproc)" "${targets[@]}"
echo "build: done in $((SECONDS - started)) s"
