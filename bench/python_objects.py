#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What --python-objects costs a Python program, per object created: Debian's /usr/bin/python3
runs bench/python_objects_workload.py (WORKLOAD=objects: instances of a small class made and
dropped, one object each; WORKLOAD=web: JSON requests handled in process), untraced and under
memtrail in several modes, rounds interleaved, each run a fresh process. Medians, slowdowns, ns
per object, and the kernel's BPF statistics (program runs per object, ns per run of
python_object_created). Root; run nothing else meanwhile. Appends to bench/RESULTS.md unless
--no-record.

  bench/python_objects.py [--build DIR] [--rounds N] [--seconds S] [--modes a,b]
                          [--workloads objects,web] [--no-record]"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import (BenchError, LineReader, attach_memtrail, finish_memtrail,  # noqa: E402
                      kill_if_running, owned_programs)

PYTHON = "/usr/bin/python3"
WORKLOAD = os.path.join(benchlib.ROOT, "bench", "python_objects_workload.py")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
PROGRAM = "python_object_created"

# Each mode's memtrail options (None: untraced). Objects are a memtrail option whatever the
# default is, so that each row says what it measures.
MODES = {
    "untraced": None,
    "memtrail": ["--python-objects", "off"],
    "objects": ["--python-objects", "on"],  # --duty adds --python-objects-duty
    "objects-exact": ["--python-objects", "exact"],
    "objects-floor": ["--python-objects", "exact", "--probe-floor"],
    # Where python_object_created's time goes (not in the default --modes): without the
    # native walk past the creating function (python3.11 keeps no frame pointers), and
    # without the Python frame walk.
    "objects-exact-fp": ["--python-objects", "exact", "--unwind", "fp"],
    "objects-exact-native": ["--python-objects", "exact", "--python-frames", "native"],
}
DESCRIPTIONS = {
    "untraced": "the workload alone",
    "memtrail": "memtrail leaks -p PID --python-objects off (allocator probes only)",
    "objects": "--python-objects on (the default object tracking: duty-cycled)",
    "objects-exact": "--python-objects exact (every creation site probed all the time)",
    "objects-floor": "--python-objects exact --probe-floor: the same probes with programs that "
                     "return at once (what the traps alone cost; also what keeping the probes "
                     "attached and disabled by a flag would cost)",
    "objects-exact-fp": "--python-objects exact --unwind fp: no CFI walk of the native frames",
    "objects-exact-native": "--python-objects exact --python-frames native: no Python frames",
}
UNITS = {"objects": "object", "web": "request"}


def run_once(mode, workload, args, work_dir):
    """One fresh workload process under `mode`: a dict of its figures."""
    env = dict(os.environ, WORKLOAD=workload, SECONDS=str(args.seconds))
    python = subprocess.Popen([PYTHON, WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env)
    tracer = None
    try:
        output = LineReader(python.stdout)
        ready = output.wait_for("ready ", 30)
        if ready is None:
            raise BenchError(f"{workload}: the workload did not start: {output.text()!r}")
        json_path = os.path.join(work_dir, "report.json")
        if MODES[mode] is not None:
            tracer, errors = attach_memtrail(args.memtrail, python.pid, json_path, MODES[mode],
                                             mode)
        python.stdin.write(b"go\n")
        python.stdin.flush()
        result = output.wait_for("ns_per_unit=", args.seconds * 20 + 60)
        if result is None:
            raise BenchError(f"{mode} {workload}: no result: {output.text()!r}")
        figures = {key: float(value) for key, value in re.findall(r"(\w+)=([0-9.]+)", result)}
        python.wait(timeout=30)
        if tracer is not None:
            programs = owned_programs(tracer.pid) or []
            figures["runs"] = sum(p.get("run_cnt", 0) for p in programs)
            created = [p for p in programs if p.get("name") == PROGRAM]
            figures["object_runs"] = sum(p.get("run_cnt", 0) for p in created)
            figures["object_run_ns"] = sum(p.get("run_time_ns", 0) for p in created)
            report = finish_memtrail(tracer, errors, mode, json_path)
            if "--probe-floor" not in MODES[mode]:
                if report is None:
                    raise BenchError(f"{mode}: memtrail wrote no report")
                figures["report"] = report
        return figures
    finally:
        kill_if_running(python)
        kill_if_running(tracer)


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def table_for(workload, modes, results):
    """The Markdown table of one workload, and notes."""
    unit = UNITS[workload]
    cpu_base = statistics.median(r["cpu_ns_per_unit"] for r in results["untraced"])
    wall_base = statistics.median(r["ns_per_unit"] for r in results["untraced"])
    # Objects per unit: by construction for `objects` (checked: the exact mode's runs per
    # object); for `web`, counted by the probes of the exact mode, which see every creation
    # (each passes exactly one creation site).
    per_unit = 1.0 if workload == "objects" else None
    for mode in ("objects-exact", "objects-floor"):
        if per_unit is None and mode in results:
            per_unit = statistics.median(r["object_runs"] / r["units_total"]
                                         for r in results[mode])
    rows = [f"| mode | CPU ns/{unit} (median) | runs | CPU slowdown | wall ns/{unit} | "
            f"wall slowdown | added CPU ns/object | BPF runs/{unit} | objects seen (runs of "
            f"{PROGRAM} / objects) | share the report states (measured by) | BPF ns/run of "
            f"{PROGRAM} |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in modes:
        cpu = statistics.median(r["cpu_ns_per_unit"] for r in results[mode])
        wall = statistics.median(r["ns_per_unit"] for r in results[mode])
        added = (cpu - cpu_base) / per_unit if per_unit and mode != "untraced" else None
        runs = seen = run_ns = stated = None
        bases = []
        if mode != "untraced":
            runs = statistics.median(r["runs"] / r["units_total"] for r in results[mode])
            if per_unit:
                seen = statistics.median(r["object_runs"] / r["units_total"] / per_unit
                                         for r in results[mode])
            timed = [r["object_run_ns"] / r["object_runs"] for r in results[mode]
                     if r["object_runs"]]
            run_ns = statistics.median(timed) if timed else None
            reports = [r["report"]["python_objects"] for r in results[mode]
                       if "python_objects" in r.get("report", {})]
            stated = statistics.median(o["observed_fraction"] for o in reports) if reports else None
            # What the share was measured by (absent before memtrail said it: time).
            bases = sorted({o.get("share_basis", "time") for o in reports if o["mode"] != "exact"})
        basis = f" ({', '.join(bases)})" if mode != "untraced" and bases else ""
        values = ", ".join(f"{r['cpu_ns_per_unit']:.0f}" for r in results[mode])
        rows.append(f"| {mode} | {fmt(cpu, 1)} | {values} | {cpu / cpu_base:.2f}x | "
                    f"{fmt(wall, 1)} | {wall / wall_base:.2f}x | {fmt(added)} | {fmt(runs, 2)} | "
                    f"{fmt(seen, 4)} | {fmt(stated, 4)}{basis} | {fmt(run_ns)} |")
    notes = []
    if per_unit:
        notes.append(f"{workload}: {per_unit:.2f} objects created per {unit} (the exact mode's "
                     f"{PROGRAM} runs per {unit})")
    return "\n".join(rows), notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(benchlib.ROOT, "build"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="each run's measured time")
    parser.add_argument("--modes", default="untraced,memtrail,objects,objects-exact,objects-floor")
    parser.add_argument("--workloads", default="objects,web")
    parser.add_argument("--duty", type=float, help="the objects mode's --python-objects-duty "
                        "(percent; default: memtrail's)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--allow-concurrent", action="store_true")
    args = parser.parse_args()
    args.memtrail = os.path.join(args.build, "memtrail")
    if os.geteuid() != 0:
        raise BenchError("needs root (BPF)")
    if not os.access(PYTHON, os.X_OK):
        raise BenchError(f"needs Debian's {PYTHON}")
    if not os.access(args.memtrail, os.X_OK):
        raise BenchError(f"no {args.memtrail}: build first (scripts/build.sh)")
    modes = args.modes.split(",")
    workloads = args.workloads.split(",")
    for mode in modes:
        if mode not in MODES:
            raise BenchError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if modes[0] != "untraced":
        raise BenchError("--modes must start with untraced (the baseline)")
    for workload in workloads:
        if workload not in UNITS:
            raise BenchError(f"unknown workload {workload!r} (known: {', '.join(UNITS)})")
    if args.duty is not None:
        MODES["objects"] = MODES["objects"] + ["--python-objects-duty", f"{args.duty:g}"]
        DESCRIPTIONS["objects"] += f" with --python-objects-duty {args.duty:g}"
    help_text = subprocess.run([args.memtrail, "leaks", "--help"], capture_output=True,
                               text=True).stdout
    notes = []
    if "exact" not in help_text:  # before duty cycles existed, `on` was exact
        modes = [m for m in modes if m != "objects"]
        for mode in ("objects-exact", "objects-floor"):
            MODES[mode] = [word.replace("exact", "on") for word in MODES[mode]]
        notes.append("this memtrail has no --python-objects exact: `on` tracks every object")
    others = benchlib.other_tracers()
    if others and not args.allow_concurrent:
        raise BenchError("other tracers or benchmarks run: " + "; ".join(others))
    if benchlib.stale_memtrail(args.memtrail):
        notes.append("the memtrail binary is older than bpf/ or userspace/")
    for signum in (signal.SIGTERM, signal.SIGHUP):  # unwind: the finally blocks stop the runs
        signal.signal(signum, benchlib.terminate)
    with open(BPF_STATS) as stats:
        stats_before = stats.read().strip()
    results = {w: {m: [] for m in modes} for w in workloads}
    try:
        with open(BPF_STATS, "w") as stats:
            stats.write("1")
        with tempfile.TemporaryDirectory() as work_dir:
            for round_number in range(1, args.rounds + 1):
                for workload in workloads:
                    for mode in modes:
                        figures = run_once(mode, workload, args, work_dir)
                        results[workload][mode].append(figures)
                        print(f"round {round_number} {workload:8} {mode:14} "
                              f"ns_per_unit={figures['ns_per_unit']:.1f} "
                              f"cpu_ns_per_unit={figures['cpu_ns_per_unit']:.1f} "
                              f"object_runs={figures.get('object_runs', 0):.0f} "
                              f"units_total={figures['units_total']:.0f}", flush=True)
    finally:
        with open(BPF_STATS, "w") as stats:
            stats.write(stats_before)
    tables = []
    for workload in workloads:
        table, workload_notes = table_for(workload, modes, results[workload])
        tables.append(f"{workload} ({UNITS[workload]}s):\n\n{table}")
        notes += workload_notes
    rows = "; ".join(f"{mode}: {DESCRIPTIONS[mode]}" for mode in modes)
    benchlib.report_results(
        "\n\n".join(tables), notes, not args.no_record, title=" — Python objects",
        description=f"`bench/python_objects.py --rounds {args.rounds} --seconds {args.seconds:g}`"
        f" ({PYTHON}, bench/python_objects_workload.py; each run a fresh process traced by PID, "
        f"{args.seconds:g} s measured after 0.3 s of warm-up; rounds interleaved). {rows}.")


if __name__ == "__main__":
    benchlib.run_main(main)
