#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What `memtrail leaks --all` costs on a host that starts many short-lived processes: a
# spawner runs RATE programs a second (each a short `sh -c`, which allocates through glibc)
# for SECONDS, first untraced, then beside `memtrail leaks --all`. Prints the spawner's
# wall time for both, memtrail's CPU time (user + system) as a share of one CPU, and how many
# processes its report holds (each one traced from its exec and summarized at its exit).
# Root; run nothing else meanwhile.
#   bench/host_wide.sh [--build DIR] [--rate N] [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build rate=50 seconds=20
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rate N] [--seconds N]" >&2; exit 2 ;;
  esac
done
memtrail=$build/memtrail
[[ -x $memtrail ]] || { echo "host_wide: build first (scripts/build.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

calc() { awk "BEGIN { printf \"%.6f\", $* }"; }

# Starts RATE * SECONDS programs, paced to RATE a second; prints the seconds it took.
spawn() {
  local total=$((rate * seconds)) started
  started=$(date +%s.%N)
  for ((i = 0; i < total; i++)); do
    sh -c 'x=$(printf "%s" "run $0"); : "$x"' "$i"
    # Pace: where the schedule says this program should have started.
    local due ahead
    due=$(calc "$started + ($i + 1) / $rate")
    ahead=$(calc "$due - $(date +%s.%N)")
    if [[ $ahead != -* ]]; then sleep "$ahead"; fi
  done
  calc "$(date +%s.%N) - $started"
}

# CPU seconds (user + system) process PID has used.
cpu_seconds() {
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
  calc "$ticks / $(getconf CLK_TCK)"
}

printf 'untraced:       %.1f s for %d programs\n' "$(spawn)" $((rate * seconds))

"$memtrail" leaks --all -q --json "$work/r.json" > /dev/null 2> "$work/err" &
tracer=$!
until grep -q "tracing" "$work/err" 2>/dev/null || ! kill -0 "$tracer" 2>/dev/null; do sleep 0.1; done
sleep 1
before=$(cpu_seconds "$tracer")
wall=$(spawn)
used=$(calc "$(cpu_seconds "$tracer") - $before")
kill -INT "$tracer"
wait "$tracer" || true
printf 'memtrail --all: %.1f s for %d programs; memtrail used %.2f CPU s (%.1f%% of a CPU)\n' \
  "$wall" $((rate * seconds)) "$used" "$(calc "100 * $used / $wall")"
python3 - "$work/r.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
targets = report["targets"]
exited = sum(1 for t in targets if t.get("exit"))
print(f"report: {len(targets)} processes ({exited} with an exit summary), "
      f"{len(report['leaks'])} sites")
PY
