#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What memtrail costs a Python web service: Debian's /usr/bin/python3 serves JSON requests with
http.server's ThreadingHTTPServer (HTTP/1.1 keep-alive, bench/python_web_server.py, the handler
of bench/python_web_app.py), and build/bench/memtrail-bench-http-load, an untraced C client,
keeps a fixed number of connections busy over loopback. Each run a fresh server, traced by PID
only (never the client) or untraced, rounds interleaved; medians of requests per second and of
the server's CPU per request (every thread's user and system time, from /proc/PID/stat at the
edges of the measured window), slowdowns against untraced in the same invocation, latency, the
client's own CPU, and the kernel's BPF statistics per request and per program. Root; run
nothing else meanwhile. Appends to bench/RESULTS.md unless --no-record.

  bench/python_web.py [--build DIR] [--rounds N] [--seconds S] [--connections C]
                      [--modes a,b] [--no-pin] [--no-record]"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import (BenchError, LineReader, attach_memtrail, finish_memtrail,  # noqa: E402
                      kill_if_running, owned_programs)
from python_web_app import BODIES  # noqa: E402

PYTHON = "/usr/bin/python3"
SERVER = os.path.join(benchlib.ROOT, "bench", "python_web_server.py")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
OBJECT_PROGRAM = "python_object_created"
WARMUP = 0.5  # seconds of load before the measured window (after memtrail attached)

# Each mode's memtrail options (None: untraced).
MODES = {
    "untraced": None,
    "default": [],
    "objects-off": ["--python-objects", "off"],
    "objects-exact": ["--python-objects", "exact"],
    # The traps alone, not in the default --modes: the default's probes with programs that
    # return at once.
    "default-floor": ["--probe-floor"],
    "objects-off-floor": ["--python-objects", "off", "--probe-floor"],
    # Where the allocator probes' BPF time goes (not in the default --modes): without the CFI
    # walk of native frames (python3.11 keeps no frame pointers: the walk stops after the
    # allocating function), and without the Python frame walk.
    "objects-off-fp": ["--python-objects", "off", "--unwind", "fp"],
    "default-fp": ["--unwind", "fp"],
    "objects-off-native": ["--python-objects", "off", "--python-frames", "native"],
}
DESCRIPTIONS = {
    "untraced": "the server alone",
    "default": "memtrail leaks -p PID, as shipped (Python objects on: duty-cycled object probes, "
               "and the allocator probes)",
    "objects-off": "--python-objects off (the allocator probes only)",
    "objects-exact": "--python-objects exact (every object creation probed all the time)",
    "default-floor": "--probe-floor: the default's probes with programs that return at once "
                     "(the traps alone)",
    "objects-off-floor": "--python-objects off --probe-floor: the allocator probes' traps alone",
    "objects-off-fp": "--python-objects off --unwind fp: no CFI walk of the native frames",
    "objects-off-native": "--python-objects off --python-frames native: no Python frame walk",
    "default-fp": "--unwind fp: the default without the CFI walk (Python frames kept)",
}


def refuse_foreign_uprobes(args):
    """Fails when another process holds uprobes (this run's tracers are all stopped here)."""
    foreign = benchlib.foreign_uprobes()
    if foreign is None:
        raise BenchError("bpftool cannot list the uprobes attached (bpftool -j perf)")
    if foreign and not args.allow_concurrent:
        raise BenchError("another process holds uprobes (its probes would trap in the server "
                         "too): " + "; ".join(foreign))


def pin_to(cpus):
    """A preexec_fn that keeps the child on `cpus` (None: anywhere)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_once(mode, args, work_dir, bodies_path):
    """One fresh server under `mode`, loaded by the client: a dict of its figures."""
    refuse_foreign_uprobes(args)
    server_cpus, client_cpus = args.cpus
    server = subprocess.Popen([PYTHON, SERVER], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=pin_to(server_cpus))
    tracer = None
    try:
        output = LineReader(server.stdout)
        server_errors = LineReader(server.stderr)
        ready = output.wait_for("ready ", 30)
        if ready is None:
            raise BenchError(f"the server did not start: {server_errors.text()!r}")
        port = int(ready.split()[2])
        json_path = os.path.join(work_dir, "report.json")
        if MODES[mode] is not None:
            tracer, errors = attach_memtrail(args.memtrail, server.pid, json_path, MODES[mode],
                                             mode)
        client = subprocess.run(
            [args.client, str(port), str(server.pid), bodies_path, str(args.connections),
             str(WARMUP), str(args.seconds)], capture_output=True, text=True,
            timeout=args.seconds * 10 + 60, preexec_fn=pin_to(client_cpus))
        if client.returncode != 0:
            raise BenchError(f"{mode}: the client failed: {client.stderr.strip()!r} (server: "
                             f"{server_errors.text()!r})")
        figures = {key: float(value)
                   for key, value in re.findall(r"(\w+)=([0-9.]+)", client.stdout)}
        if server.poll() is not None:
            raise BenchError(f"{mode}: the server exited {server.returncode}: "
                             f"{server_errors.text()!r}")
        if tracer is not None:
            programs = owned_programs(tracer.pid)
            if programs is None:
                raise BenchError(f"{mode}: cannot read memtrail's BPF programs (bpftool)")
            figures["programs"] = {}
            for program in programs:
                runs, ns = program.get("run_cnt", 0), program.get("run_time_ns", 0)
                name = program.get("name", "?")
                previous = figures["programs"].get(name, (0, 0))
                figures["programs"][name] = (previous[0] + runs, previous[1] + ns)
            report = finish_memtrail(tracer, errors, mode, json_path)
            if "--probe-floor" not in MODES[mode]:
                if report is None:
                    raise BenchError(f"{mode}: memtrail wrote no report")
                if report.get("totals", {}).get("allocations", 0) < figures["total_requests"]:
                    raise BenchError(f"{mode}: memtrail recorded fewer allocations than the "
                                     f"{figures['total_requests']:.0f} requests served: "
                                     f"{report.get('totals')!r}")
                figures["observed_fraction"] = report.get("python_objects", {}).get(
                    "observed_fraction")
        return figures
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        kill_if_running(tracer)


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def median_of(runs, figure):
    return statistics.median(figure(run) for run in runs)


def per_request(run, runs_or_ns):
    """A traced run's BPF program runs (0) or ns (1), all programs, per request served."""
    return sum(p[runs_or_ns] for p in run["programs"].values()) / run["total_requests"]


def tables(modes, results):
    """The Markdown tables (per mode; per program) and notes."""
    def rps(run):
        return run["requests"] / run["seconds"]

    def cpu_us(run):
        return run["server_cpu_ns"] / run["requests"] / 1000

    base_rps = median_of(results["untraced"], rps)
    base_cpu = median_of(results["untraced"], cpu_us)
    rows = ["| mode | requests/s (median) | runs | throughput slowdown | server CPU µs/request "
            "| runs | CPU slowdown | p50 / p99 latency ms | client CPU µs/request | BPF runs/"
            "request | BPF µs/request | objects seen / created | share the report states |",
            "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    created = None  # objects created per request: the exact mode's probe runs see every one
    if "objects-exact" in results:
        created = median_of(results["objects-exact"],
                            lambda r: r["programs"].get(OBJECT_PROGRAM, (0, 0))[0]
                            / r["total_requests"])
    for mode in modes:
        runs = results[mode]
        throughput, cpu = median_of(runs, rps), median_of(runs, cpu_us)
        latency = (f"{median_of(runs, lambda r: r['p50_us']) / 1000:.2f} / "
                   f"{median_of(runs, lambda r: r['p99_us']) / 1000:.2f}")
        client = median_of(runs, lambda r: r["client_cpu_ns"] / r["requests"] / 1000)
        bpf_runs = bpf_us = seen = stated = None
        if mode != "untraced":
            bpf_runs = median_of(runs, lambda r: per_request(r, 0))
            bpf_us = median_of(runs, lambda r: per_request(r, 1) / 1000)
            if created:
                seen = median_of(runs, lambda r: r["programs"].get(OBJECT_PROGRAM, (0, 0))[0]
                                 / r["total_requests"] / created)
            shares = [r["observed_fraction"] for r in runs
                      if r.get("observed_fraction") is not None]
            stated = statistics.median(shares) if shares else None
        rows.append(
            f"| {mode} | {throughput:,.0f} | {', '.join(f'{rps(r):.0f}' for r in runs)} | "
            f"{base_rps / throughput:.2f}x | {cpu:,.1f} | "
            f"{', '.join(f'{cpu_us(r):.0f}' for r in runs)} | {cpu / base_cpu:.2f}x | {latency} | "
            f"{client:.1f} | {fmt(bpf_runs, 1)} | {fmt(bpf_us, 1)} | {fmt(seen, 4)} | "
            f"{fmt(stated, 4)} |")
    program_rows = ["| mode | program | runs/request | ns/run | BPF µs/request |",
                    "|---|---|---:|---:|---:|"]
    for mode in modes[1:]:
        names = sorted({name for r in results[mode] for name in r["programs"]})
        for name in names:
            def figure(run, index):
                return run["programs"].get(name, (0, 0))[index]
            runs_per = median_of(results[mode], lambda r: figure(r, 0) / r["total_requests"])
            if runs_per < 0.005:
                continue
            timed = [figure(r, 1) / figure(r, 0) for r in results[mode] if figure(r, 0)]
            us_per = median_of(results[mode], lambda r: figure(r, 1) / r["total_requests"]) / 1000
            program_rows.append(f"| {mode} | {name} | {runs_per:.2f} | "
                                f"{fmt(statistics.median(timed))} | {us_per:.1f} |")
    client_share = median_of(results["untraced"], lambda r: r["client_cpu_ns"] / 1e9 / r["seconds"])
    server_share = median_of(results["untraced"], lambda r: r["server_cpu_ns"] / 1e9 / r["seconds"])
    notes = [f"untraced, the server used {server_share:.0%} of a CPU and the client "
             f"{client_share:.0%} (of the host's {os.cpu_count()})"]
    if created:
        notes.append(f"{created:.0f} Python objects created per request (runs of "
                     f"{OBJECT_PROGRAM} per request under --python-objects exact)")
    for mode in modes[1:]:
        added = median_of(results[mode], cpu_us) - base_cpu
        bpf_us = median_of(results[mode], lambda r: per_request(r, 1) / 1000)
        entries = median_of(results[mode], lambda r: per_request(r, 0))
        if entries:
            notes.append(f"{mode}: {added:,.1f} µs of server CPU added per request, of which "
                         f"{bpf_us:,.1f} µs BPF program time; the rest, {added - bpf_us:,.1f} µs "
                         f"over {entries:.1f} kernel entries, is "
                         f"{(added - bpf_us) / entries * 1000:,.0f} ns an entry (traps, and "
                         f"attach/detach work)")
    return "\n".join(rows), "\n".join(program_rows), notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(benchlib.ROOT, "build"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="each run's measured time")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--modes", default="untraced,default,objects-off,objects-exact")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the server and the client run on any CPU")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--allow-concurrent", action="store_true")
    args = parser.parse_args()
    # The server on the last CPU, the client on the others (memtrail anywhere): unpinned, the
    # server's threads hand the GIL across CPUs when the host is idle, and its CPU per request
    # swings by 60 % between runs (135 against 215 µs, untraced, in one invocation).
    cpus = sorted(os.sched_getaffinity(0))
    args.cpus = ((None, None) if args.no_pin or len(cpus) < 2
                 else ({cpus[-1]}, set(cpus[:-1])))
    args.memtrail = os.path.join(args.build, "memtrail")
    args.client = os.path.join(args.build, "bench", "memtrail-bench-http-load")
    if os.geteuid() != 0:
        raise BenchError("needs root (BPF)")
    if not os.access(PYTHON, os.X_OK):
        raise BenchError(f"needs Debian's {PYTHON}")
    for program in (args.memtrail, args.client):
        if not os.access(program, os.X_OK):
            raise BenchError(f"no {program}: build first (scripts/build.sh)")
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            raise BenchError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if modes[0] != "untraced":
        raise BenchError("--modes must start with untraced (the baseline)")
    if args.rounds < 1 or args.seconds <= 0 or not 1 <= args.connections <= 1024:
        raise BenchError("--rounds ≥ 1, --seconds > 0 and --connections 1-1024, please")
    notes = []
    others = benchlib.other_tracers()
    if others and not args.allow_concurrent:
        raise BenchError("other tracers or benchmarks run: " + "; ".join(others))
    refuse_foreign_uprobes(args)
    if benchlib.stale_memtrail(args.memtrail):
        notes.append("the memtrail binary is older than bpf/ or userspace/")
    benchlib.install_termination_handlers()
    with open(BPF_STATS) as stats:
        stats_before = stats.read().strip()
    results = {m: [] for m in modes}
    try:
        with open(BPF_STATS, "w") as stats:
            stats.write("1")
        with tempfile.TemporaryDirectory() as work_dir:
            bodies_path = os.path.join(work_dir, "bodies.txt")
            with open(bodies_path, "wb") as bodies:
                bodies.write(b"\n".join(BODIES) + b"\n")
            for round_number in range(1, args.rounds + 1):
                for mode in modes:
                    figures = run_once(mode, args, work_dir, bodies_path)
                    results[mode].append(figures)
                    print(f"round {round_number} {mode:17} "
                          f"requests/s={figures['requests'] / figures['seconds']:.0f} "
                          f"server_cpu_us/request="
                          f"{figures['server_cpu_ns'] / figures['requests'] / 1000:.1f} "
                          f"p99_ms={figures['p99_us'] / 1000:.2f} "
                          f"observed_fraction={figures.get('observed_fraction')}", flush=True)
    finally:
        with open(BPF_STATS, "w") as stats:
            stats.write(stats_before)
    table, program_table, table_notes = tables(modes, results)
    rows = "; ".join(f"{mode}: {DESCRIPTIONS[mode]}" for mode in modes)
    pinning = ("server and client unpinned" if args.cpus[0] is None else
               f"server pinned to CPU {min(args.cpus[0])}, client to CPU "
               f"{','.join(str(c) for c in sorted(args.cpus[1]))}")
    benchlib.report_results(
        f"{table}\n\nBPF programs, per request served since attach (warm-up included):\n\n"
        f"{program_table}", notes + table_notes, not args.no_record,
        title=" — Python web service",
        description=f"`bench/python_web.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--connections {args.connections}` ({PYTHON}, http.server.ThreadingHTTPServer with "
        f"keep-alive on loopback, bench/python_web_server.py; load from "
        f"memtrail-bench-http-load, {args.connections} connections, untraced; {pinning}; "
        f"each run a fresh "
        f"server traced by PID, {args.seconds:g} s measured after {WARMUP:g} s of load; rounds "
        f"interleaved). {rows}.")


if __name__ == "__main__":
    benchlib.run_main(main)
