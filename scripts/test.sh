#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's test command: install dependencies, check the formatting, build, run every test
# (unit and, as root, integration tests with real BPF against real child processes).
# MEMTRAIL_REQUIRE_BPF=1 turns "BPF not permitted here" skips into failures (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
scripts/format.sh --check  # fails, naming the files, on code clang-format would change
scripts/build.sh
cd build
if (($#)); then
  exec ctest --output-on-failure --timeout 300 "$@"
fi
# Unit tests need no root and share nothing: both CPUs. Integration tests trace real processes
# and mostly wait for them: two at a time, each counting only the processes it started. Those
# that would see another test's processes run alone (RUN_SERIAL): the paging tests, which fill
# cgroups and swap, and the long --all runs that pick processes by name (host_wide_integration_test).
ctest --output-on-failure --timeout 300 -L unit -j"$(nproc)"
ctest --output-on-failure --timeout 300 -L integration -j2
