#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""memtrail's own costs besides the per-call overhead (see bench/README.md):

- start to first report: from starting `memtrail leaks -p PID` to its first report;
- memory per outstanding allocation at 100k and 1M outstanding, with --max-allocations sized
  for them: memtrail's private memory (RssAnon: the table it maps from the kernel is counted
  once, as map memory) plus the memory of its BPF maps, divided by the allocations it holds;
  also its private memory before the workload held anything;
- time to build a report at 100k and 1M outstanding allocations (read, aggregate, symbolize);
- cost to an untraced process while another one is traced: the two pinned to different CPUs,
  so that what is measured is interference through the kernel and caches, not two busy
  processes sharing one CPU.
Results are appended to bench/RESULTS.md unless --no-record.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, BenchError, LineReader, report_results, run_main, stop  # noqa: E402


def pinned_to(cpu):
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_workload(workload, gate, extra, cpu=None):
    process = subprocess.Popen([workload, "--wait-file", gate] + extra, stdout=subprocess.PIPE,
                               preexec_fn=pinned_to(cpu))
    line = process.stdout.readline().decode()
    if not line.startswith("waiting "):
        process.kill()
        raise BenchError(f"workload did not start: {line!r}")
    return process, line.split()[1]


def status_bytes(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def private_rss_bytes(pid):
    """RssAnon: memory of the process's own; the BPF table it maps is counted as map memory."""
    return status_bytes(pid, "RssAnon")


def peak_private_bytes(pid):
    """Peak RSS (VmHWM) less the mapped table and files, which RssAnon leaves out: an upper
    bound of the private memory while a report was built."""
    return status_bytes(pid, "VmHWM") - status_bytes(pid, "RssFile") - status_bytes(pid, "RssShmem")


def bpf_map_bytes(pid):
    """Memory of the BPF maps `pid` holds, as the kernel charges it (fdinfo's memlock).

    Read from /proc/PID/fdinfo rather than `bpftool map show`: Debian's bpftool is built
    without the `pids` feature, so it cannot tell whose maps are whose."""
    seen, total = set(), 0
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue  # closed meanwhile
        if "map_id" in fields and "memlock" in fields:
            map_id = int(fields["map_id"])
            if map_id not in seen:
                seen.add(map_id)
                total += int(fields["memlock"])
    return total


def start_to_first_report(args, work_dir):
    samples = []
    for attempt in range(args.rounds):
        workload, pid = start_workload(args.workload, os.path.join(work_dir, f"idle{attempt}"),
                                       ["--steps", "1"])
        started = time.monotonic()
        tracer = subprocess.Popen([args.memtrail, "leaks", "-p", pid, "--interval", "0.05"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = tracer.stdout.readline()
        elapsed = time.monotonic() - started
        stop(tracer)
        workload.kill()
        workload.wait()
        if not first.startswith(b"memtrail leaks:"):
            raise BenchError(f"no report from memtrail: {first!r}")
        # The report comes one interval after attach: that interval is not memtrail's cost.
        samples.append(elapsed - 0.05)
    return statistics.median(samples)


def footprint(args, work_dir, outstanding):
    gate = os.path.join(work_dir, f"hold{outstanding}")
    workload, pid = start_workload(args.workload, gate, ["--steps", "1", "--hold", str(outstanding)])
    tracer = subprocess.Popen([args.memtrail, "leaks", "-p", pid, "-v", "--interval", "2",
                               "--max-allocations", str(outstanding)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reader = LineReader(tracer.stderr)
        if not reader.wait_for("memtrail: tracing pid", 30):
            raise BenchError("memtrail did not attach:\n" + reader.text())
        if not reader.wait_for("memtrail: report:", 30):
            raise BenchError("memtrail did not report:\n" + reader.text())
        rss_before = private_rss_bytes(tracer.pid)
        with open(gate, "w"):
            pass
        held = ""
        for line in workload.stdout:  # the loop's timing line comes first
            held = line.decode()
            if held.startswith("held"):
                break
        if not held.startswith("held"):
            raise BenchError(f"workload did not hold its blocks: {held!r}")
        # Two reports after the blocks exist: the second one read all of them.
        deadline = time.monotonic() + 120
        timings = []
        while time.monotonic() < deadline:
            timings = [line for line in reader.text().splitlines()
                       if line.startswith("memtrail: report:")
                       and int(line.split()[2]) >= outstanding]
            if len(timings) >= 2:
                break
            time.sleep(0.2)
        if len(timings) < 2:
            raise BenchError("memtrail did not report the held blocks:\n" + reader.text())
        rss = private_rss_bytes(tracer.pid)
        peak = peak_private_bytes(tracer.pid)
        maps = bpf_map_bytes(tracer.pid)
        numbers = [float(value) for value in re.findall(r"in ([0-9.]+) ms", timings[-1])]
        report_ms = sum(numbers)
    finally:
        stop(tracer)
        workload.kill()
        workload.wait()
    return {"outstanding": outstanding, "rss": rss, "rss_before": rss_before, "maps": maps,
            "per_allocation": (rss + maps) / outstanding, "peak": peak,
            "peak_per_allocation": (peak + maps) / outstanding, "report_ms": report_ms}


def neighbor_cost(args, work_dir):
    """ns/pair of an untraced process while another runs beside it, untraced or traced."""
    results = {"beside untraced": [], "beside traced": []}
    for attempt in range(args.rounds):
        for case in results:
            gate = os.path.join(work_dir, f"neighbor{attempt}{case[-5:]}")
            measured, _ = start_workload(args.workload, gate, ["--steps", str(args.steps)], cpu=0)
            other, other_pid = start_workload(args.workload, gate,
                                              ["--steps", str(args.steps // 200)], cpu=1)
            tracer = None
            if case == "beside traced":
                tracer = subprocess.Popen([args.memtrail, "leaks", "-p", other_pid, "-q"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          preexec_fn=pinned_to(1))
                if not LineReader(tracer.stderr).wait_for("memtrail: tracing pid", 30):
                    raise BenchError("memtrail did not attach")
            with open(gate, "w"):
                pass
            out, _ = measured.communicate(timeout=600)
            other.communicate(timeout=600)
            if tracer:
                stop(tracer)
            os.unlink(gate)
            results[case].append(float(re.search(rb"ns_per_pair=([0-9.]+)", out).group(1)))
    return {case: statistics.median(values) for case, values in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20_000_000,
                        help="steps of the untraced process in the neighbour measurement")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("footprint: tracing needs root")
    args.memtrail = os.path.join(args.build, "memtrail")
    args.workload = os.path.join(args.build, "bench", "memtrail-bench-workload")

    with tempfile.TemporaryDirectory(prefix="memtrail-footprint-") as work_dir:
        first_report = start_to_first_report(args, work_dir)
        print(f"start to first report: {first_report * 1000:.0f} ms", flush=True)
        footprints = []
        for outstanding in (100_000, 1_000_000):
            result = footprint(args, work_dir, outstanding)
            footprints.append(result)
            print(f"{outstanding:>9,} outstanding: private memory {result['rss'] / 2**20:.1f} MiB "
                  f"({result['rss_before'] / 2**20:.1f} before) + BPF maps "
                  f"{result['maps'] / 2**20:.1f} MiB = {result['per_allocation']:.0f} B per "
                  f"allocation ({result['peak_per_allocation']:.0f} at the peak of a report); "
                  f"report built in {result['report_ms']:.0f} ms", flush=True)
        neighbor = neighbor_cost(args, work_dir)
        print(f"untraced neighbour: {neighbor['beside untraced']:.1f} ns/pair beside an "
              f"untraced process, {neighbor['beside traced']:.1f} beside a traced one", flush=True)

    lines = [f"| start to first report | {first_report * 1000:.0f} ms |"]
    for result in footprints:
        lines.append(f"| memory at {result['outstanding']:,} outstanding (--max-allocations "
                     f"{result['outstanding']:,}) | private {result['rss'] / 2**20:.1f} MiB "
                     f"({result['rss_before'] / 2**20:.1f} MiB before any was held) + BPF maps "
                     f"{result['maps'] / 2**20:.1f} MiB = **{result['per_allocation']:.0f} B per "
                     f"allocation**; at the peak of a report, private {result['peak'] / 2**20:.1f}"
                     f" MiB: {result['peak_per_allocation']:.0f} B per allocation |")
        lines.append(f"| report built at {result['outstanding']:,} outstanding | "
                     f"{result['report_ms']:.0f} ms |")
    change = neighbor["beside traced"] / neighbor["beside untraced"] - 1
    lines.append(f"| untraced process beside a traced one (other CPU) | "
                 f"{neighbor['beside traced']:.1f} ns/pair vs {neighbor['beside untraced']:.1f} "
                 f"beside an untraced one ({change:+.1%}) |")
    table = "| measure | result |\n|---|---|\n" + "\n".join(lines)
    report_results(table, [], not args.no_record, title=" — footprint",
                   description=f"{args.rounds} rounds; BPF maps include the unwind row table "
                   "(--unwind-table-mib, 16 MiB by default).")


if __name__ == "__main__":
    run_main(main)
