#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Soak: `memtrail leaks --all` for MINUTES beside a host starting RATE short-lived commands a
# second (each a `sh -c` running a command substitution: two processes allocating through
# glibc) and one service leaking steadily (tests/targets/leaky grow: 20 blocks of 100 B every
# 100 ms). Every 10 s it samples memtrail's private memory (RssAnon, and Private_* of
# smaps_rollup), its CPU time, its BPF maps' kernel memory (memlock of its map descriptors),
# and what memtrail says it holds (-v: outstanding allocations read, targets kept, exits
# folded). Passes when, after the warm-up (5 minutes, or the first third of a shorter run),
# memtrail's private memory grew by at most 10 % to the end, its CPU stayed under
# --max-cpu % of one CPU, and the final report calls the service's leak a leak. Prints a
# summary and appends it to bench/RESULTS.md (not with --no-record). Root; run nothing else
# meanwhile. Unless --whole-host, memtrail traces the soak's processes only (--all --comm).
# Unattended:
#   nohup bench/soak.sh --minutes 30 > /tmp/soak.log 2>&1 &
#   bench/soak.sh [--build DIR] [--minutes N] [--rate N] [--max-cpu PERCENT] [--no-record]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build minutes=30 rate=20 max_cpu=25 record=1 sample_s=10 whole_host=0
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --max-cpu) max_cpu=$2; shift 2 ;;
    --no-record) record=0; shift ;;
    --whole-host) whole_host=1; shift ;;
    *) echo "usage: $0 [--build DIR] [--minutes N] [--rate N] [--max-cpu PERCENT] [--whole-host] [--no-record]" >&2
       exit 2 ;;
  esac
done
memtrail=$build/memtrail leaky=$build/tests/targets/leaky
[[ -x $memtrail && -x $leaky ]] || { echo "soak: build first (scripts/build.sh)" >&2; exit 1; }
seconds=$((minutes * 60))
work=$(mktemp -d)
# Unless --whole-host, memtrail traces only the soak's processes (--all --comm, which also
# takes in their children): the other processes of a shared machine (compilers, above all)
# would make memtrail's memory theirs to measure. The spawner and the service run as copies
# named for that.
spawner=$work/soakspawner service=$work/soakservice filter=()
cp /bin/bash "$spawner"
cp "$leaky" "$service"
((whole_host)) || filter=(--comm soakspawner --comm soakservice)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# Starts RATE commands a second until killed, paced as bench/host_wide.sh does (no forks of
# its own: bash's clock, and `read -t` on a pipe to wait). Run by the spawner (a bash).
spawn() {
  local started_us now_us due_us wait_us i=0
  exec {pause}<> <(:)
  started_us=${EPOCHREALTIME/./}
  while :; do
    sh -c 'x=$(printf "%s" "run $0"); : "$x"' "$i"
    i=$((i + 1))
    due_us=$((started_us + i * 1000000 / rate))
    now_us=${EPOCHREALTIME/./}
    wait_us=$((due_us - now_us))
    if ((wait_us > 0)); then
      read -r -t "$((wait_us / 1000000)).$(printf '%06d' $((wait_us % 1000000)))" -u "$pause" || true
    fi
  done
}

# One sample of memtrail (PID) at T seconds: a CSV line.
sample() {
  local pid=$1 t=$2 rss private ticks memlock outstanding state
  rss=$(awk '/^RssAnon:/ {print $2 * 1024}' "/proc/$pid/status")
  private=$(awk '/^Private_(Clean|Dirty):/ {sum += $2} END {print sum * 1024}' \
    "/proc/$pid/smaps_rollup")
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  # One stream (a descriptor closed meanwhile is skipped): each fdinfo starts with pos:.
  memlock=$(cat /proc/"$pid"/fdinfo/* 2>/dev/null |
    awk '/^pos:/ {map = 0} /^map_type:/ {map = 1} /^memlock:/ && map {sum += $2}
         END {print sum + 0}' || true)
  outstanding=$(grep -o 'report: [0-9]* outstanding' "$work/err" | tail -1 | grep -o '[0-9]*' || true)
  state=$(grep '^memtrail: state:' "$work/err" | tail -1 |
    sed -E 's/.*state: ([0-9]+) targets kept \(([0-9]+) exit summaries\), ([0-9]+) exits .* and ([0-9]+) older exit summaries folded; ([0-9]+) sites in the maps, of ([0-9]+) processes.*/\1,\2,\3,\4,\5,\6/' || true)
  echo "$t,$rss,$private,$ticks,$memlock,${outstanding:-0},${state:-0,0,0,0,0,0}"
}

"$memtrail" leaks --all "${filter[@]}" -q -v -i "$sample_s" --json "$work/r.json" > /dev/null 2> "$work/err" &
tracer=$!
until grep -q "^memtrail: tracing [0-9]* processes" "$work/err" 2>/dev/null || ! kill -0 "$tracer" 2>/dev/null; do
  sleep 0.1
done
kill -0 "$tracer" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
# The leaking service and the spawner, started after memtrail: traced from their exec.
mkfifo "$work/service_in"
"$service" grow $((seconds + 60)) 100 < "$work/service_in" > /dev/null &
leaky_pid=$!
exec {service_in}> "$work/service_in"
echo go >&"$service_in"
rate=$rate "$spawner" -c "$(declare -f spawn); spawn" &
spawner_pid=$!
echo "soak: $minutes min of memtrail leaks --all (pid $tracer) beside $rate commands a second" \
  "and a leaking service; a sample every $sample_s s"
echo "t_s,rss_anon,private,cpu_ticks,bpf_memlock,outstanding,targets,exit_summaries,folded_nothing,folded_over_cap,map_sites,untraced_processes" > "$work/samples.csv"
begin=$(date +%s)
for ((t = 0; t <= seconds; t += sample_s)); do
  sleep $((begin + t - $(date +%s) > 0 ? begin + t - $(date +%s) : 0))
  sample "$tracer" "$t" >> "$work/samples.csv"
  if ((t % 60 == 0)); then tail -1 "$work/samples.csv"; fi
done
kill "$spawner_pid" "$leaky_pid" 2>/dev/null || true
kill -INT "$tracer"
wait "$tracer" || true

python3 - "$work/samples.csv" "$work/r.json" "$minutes" "$rate" "$max_cpu" "$record" \
  "$leaky_pid" "$(getconf CLK_TCK)" <<'PY'
import csv, json, os, sys
sys.path.insert(0, "bench")
from benchlib import report_results

samples_path, report_path, minutes, rate, max_cpu, record, leaky_pid, hz = sys.argv[1:]
minutes, rate, max_cpu, hz = float(minutes), int(rate), float(max_cpu), float(hz)
rows = [{k: float(v or 0) for k, v in row.items()} for row in csv.DictReader(open(samples_path))]
end = rows[-1]["t_s"]
warm = min(300.0, end / 3)
warm_row = next(row for row in rows if row["t_s"] >= warm)
last = rows[-1]
after = [row for row in rows if row["t_s"] >= warm]
mib = lambda b: f"{b / 1048576:.1f} MiB"
growth = (last["private"] - warm_row["private"]) / warm_row["private"]
rss_growth = (last["rss_anon"] - warm_row["rss_anon"]) / warm_row["rss_anon"]
cpu = 100 * (last["cpu_ticks"] - warm_row["cpu_ticks"]) / hz / max(1.0, last["t_s"] - warm_row["t_s"])
peak_cpu = max(100 * (b["cpu_ticks"] - a["cpu_ticks"]) / hz / (b["t_s"] - a["t_s"])
               for a, b in zip(after, after[1:])) if len(after) > 1 else cpu
report = json.load(open(report_path))
verdict = "not found"
for site in report["leaks"]:
    if str(site["pid"]) == leaky_pid and any(f.get("function") == "grow_steadily"
                                             for f in site["stack"]):
        verdict = f"{site['verdict']} ({site['outstanding_bytes']:,} B outstanding, " \
                  f"{site.get('growth_bytes_per_s', 0):,.0f} B/s)"
        leak_ok = site["verdict"] == "leak"
        break
else:
    leak_ok = False
memory_ok, cpu_ok = growth <= 0.10 and rss_growth <= 0.10, cpu <= max_cpu
folded = report.get("folded_exits", {})
lines = [
    ("duration", f"{end / 60:.1f} min, warm-up {warm / 60:.1f} min, {rate} commands a second"),
    ("private memory (smaps_rollup)", f"{mib(warm_row['private'])} after warm-up -> "
     f"{mib(last['private'])} at the end ({100 * growth:+.1f} %; max {mib(max(r['private'] for r in after))})"),
    ("RssAnon", f"{mib(warm_row['rss_anon'])} -> {mib(last['rss_anon'])} ({100 * rss_growth:+.1f} %)"),
    ("CPU after warm-up", f"{cpu:.1f} % of a CPU on average, {peak_cpu:.1f} % at most over {int(after[1]['t_s'] - after[0]['t_s']) if len(after) > 1 else 0} s (bound {max_cpu:.0f} %)"),
    ("BPF maps (memlock)", f"{mib(warm_row['bpf_memlock'])} -> {mib(last['bpf_memlock'])}"
     f" (max {mib(max(r['bpf_memlock'] for r in rows))})"),
    ("sites in the BPF maps (of processes not live)",
     f"{int(warm_row['map_sites']):,} ({int(warm_row['untraced_processes'])}) -> "
     f"{int(last['map_sites']):,} ({int(last['untraced_processes'])}); max "
     f"{int(max(r['map_sites'] for r in after)):,}"),
    ("outstanding allocations read", f"{int(warm_row['outstanding']):,} -> {int(last['outstanding']):,}"),
    ("targets kept (exit summaries)", f"{int(warm_row['targets']):,} ({int(warm_row['exit_summaries'])}) -> "
     f"{int(last['targets']):,} ({int(last['exit_summaries'])})"),
    ("exits folded", f"{folded.get('nothing_outstanding', 0):,} with nothing outstanding, "
     f"{folded.get('over_cap', 0):,} older summaries"),
    ("the service's leak", verdict),
    ("result", "PASS" if memory_ok and cpu_ok and leak_ok else
     "FAIL (" + ", ".join(w for w, ok in (("memory grew", memory_ok), ("CPU over bound", cpu_ok),
                                          ("leak not reported as a leak", leak_ok)) if not ok) + ")"),
]
table = "| measure | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in lines)
report_results(table, [], record == "1", title=" — soak (bench/soak.sh)",
               description=f"`memtrail leaks --all` for {minutes:g} min beside {rate} short-lived "
               "commands a second and one service leaking 20 KB/s; memtrail sampled every 10 s.")
sys.exit(0 if memory_ok and cpu_ok and leak_ok else 1)
PY
