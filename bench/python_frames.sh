#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What walking Python frames costs (--python-frames): Debian's /usr/bin/python3 makes and drops
# bytes(1000) objects 12 Python frames deep (bench/python_workload.py: one calloc and one free
# each), untraced, traced with --python-frames native (the interpreter's C frames only), and
# traced with the default, mixed (the Python frame chain read at every allocation). Then the
# cost of --python-types: instances of a small class made and dropped (pymalloc's: no malloc
# probe fires), untraced, traced by default, and traced with --python-types (a probe on each
# object made and freed). Prints the time per object of each run; rounds interleaved. Root;
# run nothing else meanwhile.
#   bench/python_frames.sh [--build DIR] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/rounds.sh
python=/usr/bin/python3
[[ -x $python ]] || { echo "python_frames: needs Debian's python3" >&2; exit 1; }

# run MODE WORKLOAD: MODE untraced | native | mixed | types
run() {
  # Object tracking off: this measures the frame walk and the type counts (the cost of
  # --python-objects is bench/python_objects.py's).
  local options=(--python-frames "$1" --python-objects off)
  [[ $1 == types ]] && options=(--python-types --python-objects off)
  rm -f "$work/out" "$work/err"  # "ready" must come from this run's process
  mkfifo "$work/gate"
  WORKLOAD=$2 "$python" bench/python_workload.py < "$work/gate" > "$work/out" &
  local pid=$! tracer=""
  exec 3> "$work/gate"
  until grep -q ready "$work/out" 2>/dev/null; do sleep 0.05; done
  if [[ $1 != untraced ]]; then
    "$memtrail" leaks -p "$pid" "${options[@]}" -q --json "$work/r.json" > /dev/null \
      2> "$work/err" &
    tracer=$!
    until grep -q "tracing pid" "$work/err" 2>/dev/null; do sleep 0.05; done
  fi
  local entries=""
  [[ -n $tracer ]] && bench/program_runs.py "$tracer" > "$work/runs"
  echo go >&3
  # The kernel entries of the warm-up and the loop (1.1 x COUNT objects), read before the
  # interpreter's exit frees everything.
  until grep -q alloc_free_ns "$work/out" 2>/dev/null; do sleep 0.05; done
  if [[ -n $tracer ]]; then
    entries=" $(bench/program_runs.py "$tracer" --since "$work/runs" --per $((count * 11 / 10)))"
  fi
  wait "$pid"
  exec 3>&-
  if [[ -n $tracer ]]; then kill -INT "$tracer"; wait "$tracer" || true; fi
  rm -f "$work/gate"
  printf '%-8s %-9s %s%s\n' "$2" "$1" "$(grep alloc_free_ns "$work/out")" "$entries"
}

count=${COUNT:-200000}  # python_workload.py's
# Kernel entries per object: the runs of memtrail's BPF programs (the statistics on meanwhile).
stats_before=$(cat /proc/sys/kernel/bpf_stats_enabled)
trap 'echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
echo 1 > /proc/sys/kernel/bpf_stats_enabled
for ((round = 1; round <= rounds; round++)); do
  for mode in untraced native mixed; do run $mode bytes; done
done
for ((round = 1; round <= rounds; round++)); do
  for mode in untraced mixed types; do run $mode objects; done
done
