#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What `memtrail leaks --all` costs on a host that starts many short-lived processes: a
# spawner runs RATE programs a second (each a short `sh -c` running a command substitution:
# two processes, both allocating through glibc)
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

# Starts RATE * SECONDS programs, paced to RATE a second; prints the seconds it took. The
# pacing forks nothing of its own (bash's clock, and `read -t` on a pipe to wait), so the
# programs started are the ones counted.
spawn() {
  local total=$((rate * seconds)) started_us now_us due_us wait_us
  exec {pause}<> <(:)
  started_us=${EPOCHREALTIME/./}
  for ((i = 0; i < total; i++)); do
    sh -c 'x=$(printf "%s" "run $0"); : "$x"' "$i"
    due_us=$((started_us + (i + 1) * 1000000 / rate))
    now_us=${EPOCHREALTIME/./}
    wait_us=$((due_us - now_us))
    if ((wait_us > 0)); then
      read -r -t "$((wait_us / 1000000)).$(printf '%06d' $((wait_us % 1000000)))" -u "$pause" || true
    fi
  done
  exec {pause}>&-
  now_us=${EPOCHREALTIME/./}
  calc "($now_us - $started_us) / 1000000"
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
