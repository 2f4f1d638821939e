#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What following mapped memory costs: memtrail-bench-mmap (mmap+munmap pairs and getppid calls)
# untraced; traced by memtrail --mmap (its mmaps recorded); beside a process memtrail --mmap
# traces (the syscall tracepoints fire for it, and return after one lookup); and beside one
# memtrail traces without --mmap (the default). Rounds interleaved; prints each run. Root; run
# nothing else meanwhile.
#   bench/mmap_cost.sh [--build DIR] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/rounds.sh
loop=$build/bench/memtrail-bench-mmap
[[ -x $loop ]] || { echo "mmap_cost: build first (scripts/build.sh)" >&2; exit 1; }

# run MODE: untraced | traced (memtrail --mmap -p the loop) | neighbour (memtrail --mmap -p a
# sleeper) | default (memtrail -p a sleeper)
run() {
  local memtrail_options=--mmap
  [[ $1 == default ]] && memtrail_options=
  rm -f "$work/out" "$work/err"  # the lines waited for must come from this run
  mkfifo "$work/gate"
  "$loop" < "$work/gate" > "$work/out" &
  local loop_pid=$! tracer=""
  exec 3> "$work/gate"
  local traced=$loop_pid
  if [[ $1 == neighbour || $1 == default ]]; then sleep 600 & traced=$!; fi
  if [[ $1 != untraced ]]; then
    "$memtrail" leaks -p "$traced" $memtrail_options -q --json "$work/r.json" > /dev/null 2> "$work/err" &
    tracer=$!
    until grep -q "tracing pid" "$work/err" 2>/dev/null; do sleep 0.05; done
  fi
  echo go >&3
  wait "$loop_pid"
  exec 3>&-
  if [[ -n $tracer ]]; then kill -INT "$tracer"; wait "$tracer" || true; fi
  [[ $1 == neighbour || $1 == default ]] && kill "$traced" 2>/dev/null
  rm -f "$work/gate"
  printf '%-10s %s\n' "$1" "$(grep mmap_munmap_ns "$work/out")"
}

for ((round = 1; round <= rounds; round++)); do
  for mode in untraced traced neighbour default; do run $mode; done
done
