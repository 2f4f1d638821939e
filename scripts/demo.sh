#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's demo command: install dependencies, build, start the bundled leaking demo
# program, attach memtrail to it by PID for a few seconds and show the report.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/install-deps.sh
echo "demo: packages ready after $((SECONDS - started)) s"
# Only the tool and the demo program: the test suite is built by scripts/test.sh.
scripts/build.sh memtrail memtrail-demo

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: memtrail needs root (BPF); run: sudo $0" >&2
  exit 1
fi

./build/memtrail-demo &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true' EXIT
sleep 1  # let it start serving: memtrail attaches to a process that is already running

echo "demo: tracing the demo server (pid $demo_pid) for 8 seconds..."
# One sample a second gives each site enough history for a verdict; -q: the final report only.
./build/memtrail leaks -p "$demo_pid" --duration 8 --interval 1 --quiet --top 5 \
  --json build/demo-leaks.json --flamegraph build/demo-leaks.svg
echo "demo: the JSON report is in build/demo-leaks.json; open build/demo-leaks.svg in a browser"
