#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""memtrail's overhead benchmark: ns per malloc+free pair, untraced vs traced, in one run.

Tools are interleaved round by round on the same workload, and the median of the rounds is
reported. Every memtrail run must have recorded at least the loop's allocations, or the run
fails. Results are appended to bench/RESULTS.md with the date, kernel and commit.
See bench/README.md.
"""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMLEAK = "/usr/sbin/memleak-bpfcc"


class BenchError(Exception):
    pass


class LineReader:
    """Collects a pipe's lines in a thread so that waits can have deadlines."""

    def __init__(self, stream):
        self.lines = []
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for raw in stream:
            with self.condition:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.condition.notify_all()

    def wait_for(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():  # deadline, or the pipe closed
                    return None
                self.condition.wait(min(left, 0.1))

    def text(self):
        with self.condition:
            return "\n".join(self.lines)


def free_probe_offset():
    """Offset of the instruction after glibc free's NULL check, found by disassembly."""
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    symbols = subprocess.run(["nm", "-D", libc], capture_output=True, text=True).stdout
    match = re.search(r"^([0-9a-f]+) [TW] free(@@\S+)?$", symbols, re.M)
    if not match:
        return None
    start = int(match.group(1), 16)
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", libc,
                           f"--start-address={start:#x}", f"--stop-address={start + 32:#x}"],
                          capture_output=True, text=True).stdout
    instructions = re.findall(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", code, re.M)
    if (len(instructions) >= 3 and instructions[0][1] == "test"
            and instructions[0][2].startswith("%rdi,%rdi") and instructions[1][1] == "je"
            and instructions[2][1] == "push"):
        return int(instructions[2][0], 16) - start
    return None


def memleak_with_free_fix(directory):
    """A copy of BCC's memleak whose free probe sits after the NULL check (as memtrail's)."""
    offset = free_probe_offset()
    if offset is None:
        return None
    with open(MEMLEAK) as original:
        source = original.read()
    patched = source.replace('sym="free", fn_name="free_enter"',
                             f'sym="free", sym_off={offset}, fn_name="free_enter"')
    if patched == source:
        return None
    path = os.path.join(directory, "memleak-free-fix.py")
    with open(path, "w") as copy:
        copy.write(patched)
    return path


def run_once(tool, args, workload, work_dir, run_index):
    """One workload run under one tool; returns ns per pair."""
    gate = os.path.join(work_dir, f"go-{run_index}")
    command = [workload, "--steps", str(args.steps), "--wait-file", gate]
    if args.threads > 1:
        command += ["--threads", str(args.threads)]
    work = subprocess.Popen(command, stdout=subprocess.PIPE)
    tracer = None
    json_path = os.path.join(work_dir, f"memtrail-{run_index}.json")
    try:
        waiting = work.stdout.readline().decode()
        if not waiting.startswith("waiting "):
            raise BenchError(f"workload did not start: {waiting!r}")
        pid = waiting.split()[1]
        if tool.startswith("memtrail"):
            command = [args.memtrail, "leaks", "-p", pid, "-q", "--json", json_path]
            if tool == "memtrail-sampled":
                command += ["--sample-rate", str(args.sample_rate)]
            tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            reader = LineReader(tracer.stderr)
            if not reader.wait_for("memtrail: tracing pid", 30):
                raise BenchError("memtrail did not attach:\n" + reader.text())
        elif tool.startswith("bcc"):
            script = args.memleak_fixed if tool == "bcc-free-fix" else MEMLEAK
            tracer = subprocess.Popen(["/usr/bin/python3", script, "-p", pid],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            reader = LineReader(tracer.stdout)
            if not reader.wait_for("Attaching to pid", 120):
                raise BenchError("memleak did not start:\n" + reader.text())
            # memleak prints that line just before attaching its probes: leave it the time.
            time.sleep(3)
        with open(gate, "w"):
            pass
        out, _ = work.communicate(timeout=args.timeout)
        match = re.search(r"ns_per_pair=([0-9.]+)", out.decode())
        if work.returncode != 0 or not match:
            raise BenchError(f"workload failed under {tool}: {out.decode()!r}")
        ns_per_pair = float(match.group(1))
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
    if tool.startswith("memtrail"):
        with open(json_path) as report_file:
            report = json.load(report_file)
        recorded = report["totals"]["allocations"]
        expected = args.steps * args.threads
        # Sampling records a subset by design; full tracking must have seen every allocation.
        if tool == "memtrail" and recorded < expected:
            raise BenchError(f"memtrail recorded {recorded} allocations, the loop made {expected}")
    return ns_per_pair


def git_commit():
    result = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return "uncommitted"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "bpf", "userspace"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("+changes" if dirty else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000, help="malloc+free pairs per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="threads (multi-threaded variant)")
    parser.add_argument("--workload", choices=["c", "cxx"], default="c",
                        help="c: malloc/free; cxx: new[]/delete[]")
    parser.add_argument("--tools", default="untraced,memtrail,memtrail-sampled,bcc-free-fix,bcc",
                        help="comma-separated: untraced, memtrail, memtrail-sampled, "
                             "bcc-free-fix, bcc")
    parser.add_argument("--sample-rate", type=int, default=512 * 1024,
                        help="bytes between samples for memtrail-sampled")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"), help="build directory")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per workload run")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100k steps, 1 round, no BCC, nothing recorded")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    if args.quick:
        args.steps, args.rounds, args.no_record = 100_000, 1, True
        tools = [tool for tool in tools if not tool.startswith("bcc")]
    if os.geteuid() != 0:
        sys.exit("bench: tracing needs root")
    args.memtrail = os.path.join(args.build, "memtrail")
    workload = os.path.join(args.build, "bench",
                            "memtrail-bench-workload" + ("-cxx" if args.workload == "cxx" else ""))
    for path in (args.memtrail, workload):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench: {path} is missing: build first (scripts/build.sh)")
    notes = []
    if "memtrail-sampled" in tools:
        help_text = subprocess.run([args.memtrail, "leaks", "--help"], capture_output=True,
                                   text=True).stdout
        if "--sample-rate" not in help_text:
            tools.remove("memtrail-sampled")
            notes.append("memtrail-sampled skipped: this memtrail has no --sample-rate yet")
    if any(tool.startswith("bcc") for tool in tools) and not os.path.exists(MEMLEAK):
        sys.exit("bench: BCC's memleak is missing: run scripts/bench-setup-bcc.sh")

    results = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="memtrail-bench-") as work_dir:
        if "bcc-free-fix" in tools:
            args.memleak_fixed = memleak_with_free_fix(work_dir)
            if not args.memleak_fixed:
                tools.remove("bcc-free-fix")
                notes.append("bcc-free-fix skipped: free's NULL check not found to patch")
        run_index = 0
        for round_number in range(args.rounds):
            for tool in tools:
                run_index += 1
                value = run_once(tool, args, workload, work_dir, run_index)
                results[tool].append(value)
                print(f"round {round_number + 1}/{args.rounds} {tool:17} {value:10.1f} ns/pair",
                      flush=True)

    medians = {tool: statistics.median(values) for tool, values in results.items() if values}
    base = medians.get("untraced")
    bcc_added = medians["bcc"] - base if base is not None and "bcc" in medians else None
    header = ("| tool | ns/pair (median) | runs | slowdown vs untraced | added ns/pair "
              "| added cost vs BCC memleak |")
    rows = [header, "|---|---:|---|---:|---:|---:|"]
    for tool in tools:
        median = medians[tool]
        runs = ", ".join(f"{value:.0f}" for value in results[tool])
        slowdown = f"{median / base:.1f}x" if base else "-"
        added = median - base if base is not None else None
        added_text = f"{added:,.0f}" if added is not None else "-"
        fraction = (f"{added / bcc_added:.3f}" if bcc_added and added is not None
                    and tool != "untraced" else "-")
        rows.append(f"| {tool} | {median:,.1f} | {runs} | {slowdown} | {added_text} | {fraction} |")
    table = "\n".join(rows)
    print()
    print(table)
    for note in notes:
        print("note: " + note)

    if not args.no_record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        variant = f"{args.workload}, {args.threads} thread(s)"
        section = (f"\n## {stamp} — commit {git_commit()}\n\n"
                   f"Kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu_model()}); workload "
                   f"{variant}, {args.steps:,} steps, {args.rounds} rounds interleaved.\n\n"
                   f"{table}\n")
        for note in notes:
            section += f"\nNote: {note}\n"
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as results_file:
            results_file.write(section)
        print("\nrecorded in bench/RESULTS.md")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        sys.exit(f"bench: {error}")
