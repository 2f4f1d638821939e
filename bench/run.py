#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""memtrail's overhead benchmark: ns per malloc+free pair, untraced vs traced, in one run.

Tools are interleaved round by round on the same workload (a fresh workload process per run),
and the median of the rounds is reported. Every memtrail run must have recorded at least the
loop's allocations, or the benchmark fails. Results are appended to bench/RESULTS.md with the
date, kernel and commit. See bench/README.md.

Tools: untraced; memtrail (memtrail leaks -p PID, full tracking, --unwind auto, as shipped:
malloc probed where it returns, two kernel entries per malloc+free); memtrail-fp and
memtrail-dwarf (the same with --unwind fp / dwarf: the stack walk's cost); memtrail-sampled (with
--sample-rate); memtrail-two-trap-floor (memtrail's probes with programs that return at once:
what its two uprobe traps alone cost); memtrail-entry-return and memtrail-three-trap-floor (the
same two with --no-return-sites: malloc probed at entry and return, three entries per pair);
bcc-free-fix (BCC memleak with its free probe moved past free's NULL check); bcc (memleak-bpfcc
-p PID as shipped). memtrail-return-sites and memtrail-probe-floor, the names of the two
designs before return sites were the default, are taken as memtrail and
memtrail-three-trap-floor.

Every memtrail row also says how many times per malloc+free pair the kernel ran its programs
(the kernel's BPF statistics: one program run per uprobe trap or uretprobe return), that is
the kernel entries it pays.

--allocators glibc,jemalloc,tcmalloc,mimalloc runs the same tools once per allocator, the
workload started with that allocator in LD_PRELOAD (glibc: none), one table each and a summary
table of entries per pair and memtrail's cost against its two-trap floor per allocator. BCC's
memleak is pointed at the allocator's library (-O), its mmap and munmap probes left on libc.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, LineReader, other_tracers, owned_programs,  # noqa: E402
                      report_results, run_main, stale_memtrail, terminate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMLEAK = "/usr/sbin/memleak-bpfcc"
ALL_TOOLS = ["untraced", "memtrail", "memtrail-fp", "memtrail-dwarf", "memtrail-sampled",
             "memtrail-two-trap-floor", "memtrail-entry-return", "memtrail-three-trap-floor",
             "bcc-free-fix", "bcc"]
# Earlier names of rows, as results and scripts before return sites were the default used them.
OLD_TOOL_NAMES = {"memtrail-return-sites": "memtrail", "memtrail-probe-floor":
                  "memtrail-three-trap-floor"}
# Rows whose programs return at once: they record nothing.
FLOOR_TOOLS = {"memtrail-three-trap-floor", "memtrail-two-trap-floor"}
# Rows with malloc and calloc probed at entry and return (--no-return-sites).
ENTRY_RETURN_TOOLS = {"memtrail-entry-return", "memtrail-three-trap-floor"}
# --unwind of each memtrail row; "memtrail" runs the default (auto).
UNWIND_OF = {"memtrail-fp": "fp", "memtrail-dwarf": "dwarf"}
# What the memtrail-dwarf runs' reports said about the unwind tables (memory, modules).
unwind_reports = []
# Per memtrail tool: ns of BPF time per run of the malloc return probe (stack walk and record),
# from the kernel's BPF statistics: the stack walk's cost without the traps' noise.
return_probe_ns = {}
# Per memtrail tool: the runs of its programs per malloc+free pair (kernel entries paid).
entries_per_pair = {}
# Per memtrail tool and program: ns of BPF time per run, for the programs run at least once a
# pair (what the record and free paths cost in the kernel, without the traps).
program_ns = {}
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
# --allocators: the library each allocator's rows preload into the workload (glibc: none).
ALLOCATOR_LIBRARIES = {
    "glibc": None,
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "tcmalloc-full": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
}


def return_probe_cost(programs):
    """ns per run of the program that records a malloc: its return probe, or its return-site
    probe (kernel BPF statistics), or None."""
    for name in ("pointer_exit", "site_size_in_chunk_header", "site_size_in_register",
                 "site_size_taken"):
        for program in programs or []:
            if program.get("name") == name:
                runs = program.get("run_cnt", 0)
                if runs:
                    return program.get("run_time_ns", 0) / runs
    return None


def free_probe_offset():
    """Offset of the instruction after glibc free's NULL check, found by disassembly."""
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    try:
        symbols = subprocess.run(["nm", "-D", libc], capture_output=True, text=True).stdout
    except OSError:
        return None
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


def memleak_for_allocator(directory):
    """A copy of BCC's memleak for -O LIBRARY where LIBRARY is an allocator without mmap and
    munmap of its own (jemalloc, mimalloc): those two stay probed in libc, as for glibc."""
    with open(MEMLEAK) as original:
        source = original.read()
    patched = source.replace('attach_probes("mmap")\n',
                             'obj, allocator_obj = "c", obj\n'
                             '        attach_probes("mmap")\n'
                             '        obj = allocator_obj\n', 1)
    patched = patched.replace('name=obj, sym="munmap"', 'name="c", sym="munmap"', 1)
    if patched.count('name="c", sym="munmap"') != 1 or "allocator_obj" not in patched:
        return None
    path = os.path.join(directory, "memleak-allocator.py")
    with open(path, "w") as copy:
        copy.write(patched)
    return path


def stop_process(process, timeout=30):
    """SIGINT (memtrail and memleak stop cleanly on it), then SIGKILL after `timeout`."""
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def exit_text(process):
    status = process.poll()
    return "still running" if status is None else f"exit status {status}"


def start_tracer(tool, args, pid, json_path, started):
    """Starts the tracer and returns (process, reader) once its probes are attached. The
    process goes into `started` at once, so that the caller stops it whatever happens."""
    if tool.startswith("memtrail"):
        command = [args.memtrail, "leaks", "-p", pid, "-q", "--json", json_path]
        if tool == "memtrail-sampled":
            command += ["--sample-rate", str(args.sample_rate)]
        if tool in FLOOR_TOOLS:
            command += ["--probe-floor"]
        if tool in ENTRY_RETURN_TOOLS:
            command += ["--no-return-sites"]
        if args.variant.startswith("C++"):
            command += ["--cxx"]
        if tool in UNWIND_OF:
            command += ["--unwind", UNWIND_OF[tool]]
        tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(tracer)
        reader = LineReader(tracer.stderr)
        # memtrail prints this once the probes of the target are attached.
        if not reader.wait_for(f"memtrail: tracing pid {pid}", args.attach_timeout):
            raise BenchError(f"{tool} did not attach within {args.attach_timeout} s "
                             f"({exit_text(tracer)}):\n{reader.text()}")
        return tracer, reader
    script = args.memleak_fixed if tool == "bcc-free-fix" else MEMLEAK
    allocator_args = []
    if getattr(args, "preload", None):
        script, allocator_args = args.memleak_allocator, ["-O", args.preload]
    # -u: unbuffered, or the lines below would reach the pipe only at memleak's first flush.
    tracer = subprocess.Popen(["/usr/bin/python3", "-u", script, "-p", pid] + allocator_args,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started.append(tracer)
    reader = LineReader(tracer.stdout)
    # memleak compiles its BPF program, prints "Attaching to pid N, Ctrl+C to quit.", then
    # attaches its 20 uprobes, then sleeps its interval (5 s) and prints its first
    # "[HH:MM:SS] Top 10 stacks with outstanding allocations:". That first report is the one
    # line that proves every probe is attached.
    if not reader.wait_for("Attaching to pid", args.attach_timeout):
        raise BenchError(f"{tool}: memleak did not compile within {args.attach_timeout} s "
                         f"({exit_text(tracer)}; kernel headers? run "
                         f"scripts/bench-setup-bcc.sh):\n{reader.text()}")
    if not reader.wait_for("stacks with outstanding allocations", 60, contains=True):
        raise BenchError(f"{tool}: memleak did not finish attaching within 60 s "
                         f"({exit_text(tracer)}):\n{reader.text()}")
    time.sleep(0.2)  # margin
    return tracer, reader


def run_once(tool, args, work_dir, run_index):
    """One workload run under one tool; returns (ns per pair, seconds the run took)."""
    gate = os.path.join(work_dir, f"go-{run_index}")
    json_path = os.path.join(work_dir, f"memtrail-{run_index}.json")
    command = [args.workload, "--steps", str(args.steps), "--wait-file", gate,
               "--wait-timeout", str(args.attach_timeout + 90)]
    if args.threads > 1:
        command += ["--threads", str(args.threads)]
    if args.call_depth:
        command += ["--call-depth", str(args.call_depth)]
    began = time.monotonic()
    environment = None
    if getattr(args, "preload", None):
        environment = dict(os.environ, LD_PRELOAD=args.preload)
    work = subprocess.Popen(command, stdout=subprocess.PIPE, env=environment)
    tracer, started = None, []
    try:
        output = LineReader(work.stdout)
        waiting = output.wait_for("waiting ", 10)
        if not waiting:
            raise BenchError(f"workload did not start: {output.text()!r}")
        pid = waiting.split()[1]
        if tool != "untraced":
            tracer, reader = start_tracer(tool, args, pid, json_path, started)
        with open(gate, "w"):
            pass
        result = output.wait_for("ns_per_pair=", args.timeout)
        if result is None:
            raise BenchError(f"{tool}: workload gave no result within {args.timeout} s "
                             f"(--timeout): {output.text()!r}")
        work.wait(timeout=30)
        match = re.search(r"(?:^| )ns_per_pair=([0-9.]+)", result)
        if work.returncode != 0 or not match:
            raise BenchError(f"workload failed under {tool} (exit status {work.returncode}): "
                             f"{output.text()!r}")
        ns_per_pair = float(match.group(1))
        if tracer is not None and tool.startswith("memtrail"):
            programs = owned_programs(tracer.pid)
            if programs:
                runs = sum(program.get("run_cnt", 0) for program in programs)
                if runs:
                    entries_per_pair.setdefault(tool, []).append(
                        runs / (args.steps * args.threads))
                for program in programs:
                    if program.get("run_cnt", 0) >= args.steps * args.threads:
                        program_ns.setdefault(tool, {}).setdefault(program["name"], []).append(
                            program.get("run_time_ns", 0) / program["run_cnt"])
            cost = return_probe_cost(programs) if tool not in FLOOR_TOOLS else None
            if cost is not None:
                return_probe_ns.setdefault(tool, []).append(cost)
        if tracer is not None and tool.startswith("bcc") and tracer.poll() is not None:
            raise BenchError(f"{tool}: memleak exited during the loop (status "
                             f"{tracer.returncode}):\n{reader.text()}")
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
        for process in started:
            stop_process(process)
    seconds = time.monotonic() - began
    if tool.startswith("memtrail"):
        if tracer.returncode != 0:
            raise BenchError(f"{tool} exited with status {tracer.returncode}:\n{reader.text()}")
        if tool in FLOOR_TOOLS:
            return ns_per_pair, seconds  # its programs record nothing, by design
        try:
            with open(json_path) as report_file:
                report = json.load(report_file)
            recorded = int(report["totals"]["allocations"])
            if tool == "memtrail-dwarf":
                unwind_reports.append(report["unwind"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BenchError(f"{tool}: no usable JSON report ({error}):\n{reader.text()}")
        expected = args.steps * args.threads
        # totals.allocations counts every call the probes saw, with --sample-rate too (it
        # includes totals.unsampled_allocations): fewer than the loop made means memtrail did
        # not trace the whole loop, and its time means nothing.
        if recorded < expected:
            raise BenchError(f"{tool} recorded {recorded} allocations, the loop made {expected}:"
                             " it did not trace the whole loop")
    return ns_per_pair, seconds


def make_table(tools, results, seconds):
    medians = {tool: statistics.median(results[tool]) for tool in tools}
    base = medians.get("untraced")
    bcc_added = medians["bcc"] - base if base is not None and "bcc" in medians else None
    rows = ["| tool | ns/pair (median) | runs | slowdown vs untraced | added ns/pair "
            "| added cost vs BCC memleak | s per run |",
            "|---|---:|---|---:|---:|---:|---:|"]
    for tool in tools:
        median = medians[tool]
        runs = ", ".join(f"{value:.0f}" for value in results[tool])
        slowdown = f"{median / base:,.1f}x" if base else "-"
        added = median - base if base is not None else None
        added_text = f"{added:,.0f}" if added is not None and tool != "untraced" else "-"
        fraction = (f"{added / bcc_added:.3f}" if bcc_added and added is not None
                    and tool != "untraced" else "-")
        run_seconds = f"{statistics.median(seconds[tool]):.1f}"
        rows.append(f"| {tool} | {median:,.1f} | {runs} | {slowdown} | {added_text} | {fraction} "
                    f"| {run_seconds} |")
    if entries_per_pair:
        rows.append("")
        rows.append("Kernel entries per malloc+free pair (BPF program runs / pairs, median): "
                    + ", ".join(f"{tool} {statistics.median(values):.2f}"
                                for tool, values in entries_per_pair.items()) + ".")
    recorders = {tool: values for tool, values in return_probe_ns.items() if tool in
                 ("memtrail", "memtrail-entry-return")}
    if recorders:
        rows.append("In the kernel (BPF statistics, median): the program that records a malloc "
                    "runs " + ", ".join(f"{statistics.median(values):,.0f} ns in {tool}"
                                        for tool, values in recorders.items()) + ".")
    if program_ns:
        rows.append("BPF time per run of each program run once a pair or more (median): "
                    + "; ".join(f"{tool} " + ", ".join(
                        f"{name} {statistics.median(values):,.0f} ns"
                        for name, values in sorted(programs.items()))
                        for tool, programs in program_ns.items()) + ".")
    for tracker, floor_tool in (("memtrail", "memtrail-two-trap-floor"),
                                ("memtrail-entry-return", "memtrail-three-trap-floor")):
        if floor_tool not in medians or tracker not in medians or base is None:
            continue
        floor = medians[floor_tool]
        rows.append("")
        rows.append(f"{floor_tool} (the probes of {tracker} with programs that return at once: "
                    f"the uprobe traps alone) is {floor:,.0f} ns/pair; {tracker}'s BPF work adds "
                    f"{medians[tracker] - floor:,.0f} ns/pair above it: its added cost is "
                    f"{(medians[tracker] - base) / (floor - base):.3f}x the floor's"
                    + (" (goal <= 1.1x)." if tracker == "memtrail" else "."))
        if bcc_added:
            rows.append(f"That floor is {(floor - base) / bcc_added:.3f} of BCC memleak's added "
                        "cost in this run.")
    if "memtrail" in medians and "memtrail-two-trap-floor" in medians and base:
        rows.append(f"memtrail's added cost is "
                    f"{(medians['memtrail'] - base) / (medians['memtrail-two-trap-floor'] - base):.3f}x"
                    " the two-trap floor's: no tracer of every malloc and free with uprobes "
                    "pays fewer than two kernel entries per pair.")
    rows += unwind_summary(medians, base)
    return "\n".join(rows)


def unwind_summary(medians, base):
    """The cost of DWARF unwinding next to the frame-pointer walk on the same stacks, and the
    kernel memory its tables took (issue 8's goal: within 1.5x of the frame-pointer walk)."""
    if base is None or "memtrail-fp" not in medians or "memtrail-dwarf" not in medians:
        return []
    fp_added = medians["memtrail-fp"] - base
    dwarf_added = medians["memtrail-dwarf"] - base
    rows = ["", f"Stack walk: leak tracking with DWARF unwinding (every frame by its CFI table) "
                f"adds {dwarf_added:,.0f} ns/pair, with the frame-pointer walk {fp_added:,.0f}: "
                f"{dwarf_added / fp_added:.2f}x (goal <= 1.5x); CFI lookups cost about "
                f"{medians['memtrail-dwarf'] - medians['memtrail-fp']:,.0f} ns per stack walked "
                "(one walk per malloc)."]
    if "memtrail-fp" in return_probe_ns and "memtrail-dwarf" in return_probe_ns:
        fp_ns = statistics.median(return_probe_ns["memtrail-fp"])
        dwarf_ns = statistics.median(return_probe_ns["memtrail-dwarf"])
        rows.append(f"In the kernel (BPF statistics, median of the runs): the malloc return "
                    f"probe (stack walk and record) runs {dwarf_ns:,.0f} ns with DWARF unwinding, "
                    f"{fp_ns:,.0f} ns with frame pointers ({dwarf_ns / fp_ns:.2f}x).")
    floor = medians.get("memtrail-two-trap-floor")
    if floor is not None and medians["memtrail-fp"] > floor:
        rows.append(f"Above the traps (the floor row): memtrail's BPF work is "
                    f"{medians['memtrail-dwarf'] - floor:,.0f} ns/pair with DWARF unwinding, "
                    f"{medians['memtrail-fp'] - floor:,.0f} with frame pointers "
                    f"({(medians['memtrail-dwarf'] - floor) / (medians['memtrail-fp'] - floor):.2f}x)."
                    )
    if unwind_reports:
        unwind = unwind_reports[-1]
        modules = ", ".join(f"{os.path.basename(m['path'])} {m['rows']:,} rows"
                            for m in unwind["modules"] if m["method"] == "cfi")
        rows.append(f"Unwind tables: {unwind['table_rows']:,} rows, "
                    f"{unwind['table_bytes'] / 1024:,.0f} KiB of kernel memory ({modules}); "
                    f"{unwind['truncated_stacks']} of {unwind['stacks']} stacks truncated.")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000, help="malloc+free pairs per run "
                        "(per thread); default 1,000,000 (a BCC run then takes ~20 s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="threads (multi-threaded variant)")
    parser.add_argument("--call-depth", type=int, default=0,
                        help="run the C workload's loop this many calls deeper (deeper stacks "
                        "for every tracer: the stack walk's cost per frame)")
    parser.add_argument("--workload", choices=["c", "cxx"], default="c",
                        help="c: malloc/free; cxx: new[]/delete[]")
    parser.add_argument("--tools", default=",".join(ALL_TOOLS),
                        help="comma-separated subset of: " + ", ".join(ALL_TOOLS))
    parser.add_argument("--sample-rate", type=int, default=512 * 1024,
                        help="bytes between samples for memtrail-sampled")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"),
                        help="build directory holding memtrail and bench/ (default: build)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per workload loop")
    parser.add_argument("--attach-timeout", type=int, default=120,
                        help="seconds a tracer may take to compile and attach")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run for CI: 100k steps, 1 round, no BCC, nothing recorded")
    parser.add_argument("--allocators", default="glibc",
                        help="comma-separated allocators to run every tool under, the workload "
                        "started with each in LD_PRELOAD: " + ", ".join(ALLOCATOR_LIBRARIES)
                        + " (default glibc)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--allow-concurrent", action="store_true",
                        help="run even while other tracers or benchmark runs are running")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, terminate)
    # Started in the background by a shell, this script ignores SIGINT and its children would
    # inherit that: the tracers would then ignore the SIGINT that asks them to stop. A handled
    # signal is reset to its default in the children.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, terminate)
    tools = [OLD_TOOL_NAMES.get(tool.strip(), tool.strip())
             for tool in args.tools.split(",") if tool.strip()]
    tools = list(dict.fromkeys(tools))  # an old name and its new one: one row
    unknown = [tool for tool in tools if tool not in ALL_TOOLS]
    if unknown or not tools:
        sys.exit(f"bench: unknown tool(s) {', '.join(unknown) or '(none given)'}; "
                 f"choose from {', '.join(ALL_TOOLS)}")
    if args.call_depth and args.workload != "c":
        sys.exit("bench: --call-depth is for the C workload")
    if args.call_depth < 0 or args.call_depth > 1000:
        sys.exit("bench: --call-depth must be from 0 to 1000")
    if args.steps <= 0 or args.rounds <= 0 or args.threads <= 0:
        sys.exit("bench: --steps, --rounds and --threads must be positive")
    notes = []
    if args.quick:
        args.steps, args.rounds, args.no_record = 100_000, 1, True
        if any(tool.startswith("bcc") for tool in tools):
            notes.append("--quick: BCC rows left out")
        tools = [tool for tool in tools if not tool.startswith("bcc")]
    allocators = list(dict.fromkeys(a.strip() for a in args.allocators.split(",") if a.strip()))
    unknown = [a for a in allocators if a not in ALLOCATOR_LIBRARIES]
    if unknown or not allocators:
        sys.exit(f"bench: unknown allocator(s) {', '.join(unknown) or '(none given)'}; "
                 f"choose from {', '.join(ALLOCATOR_LIBRARIES)}")
    for allocator in allocators:
        library = ALLOCATOR_LIBRARIES[allocator]
        if library and not os.path.exists(library):
            sys.exit(f"bench: {library} ({allocator}) is missing: run scripts/install-deps.sh "
                     "--tests, or leave it out of --allocators")
    if allocators != ["glibc"] and "bcc-free-fix" in tools:
        sys.exit("bench: bcc-free-fix patches glibc's free: run it with --allocators glibc")
    if os.geteuid() != 0 and tools != ["untraced"]:
        sys.exit("bench: tracing needs root")
    args.variant = "C++ new[]/delete[]" if args.workload == "cxx" else "C malloc/free"
    args.memtrail = os.path.join(args.build, "memtrail")
    args.workload = os.path.join(args.build, "bench", "memtrail-bench-workload"
                                 + ("-cxx" if args.workload == "cxx" else ""))
    needed = [args.workload]
    if any(tool.startswith("memtrail") for tool in tools):
        needed.append(args.memtrail)
    for path in needed:
        if not os.access(path, os.X_OK):
            sys.exit(f"bench: {path} is missing: build first (scripts/build.sh), pass --build "
                     "DIR, or leave the memtrail rows out with --tools")
    if any(tool.startswith("memtrail") for tool in tools) and stale_memtrail(args.memtrail):
        notes.append(f"{args.memtrail} is older than bpf/ or userspace/: rebuild it, or the "
                     "memtrail rows do not measure this commit")
    if "memtrail-sampled" in tools:
        help_text = subprocess.run([args.memtrail, "leaks", "--help"], capture_output=True,
                                   text=True).stdout
        if "--sample-rate" not in help_text:
            tools.remove("memtrail-sampled")
            notes.append("memtrail-sampled skipped: this memtrail has no --sample-rate yet")
    if any(tool.startswith("bcc") for tool in tools) and not os.path.exists(MEMLEAK):
        sys.exit(f"bench: BCC's memleak ({MEMLEAK}) is missing: run scripts/bench-setup-bcc.sh")
    others = other_tracers()
    if others and tools != ["untraced"]:
        message = ("other tracers or benchmark runs are running; they skew the numbers (2 "
                   "CPUs) and can block memtrail's probes:\n  " + "\n  ".join(others))
        if not args.allow_concurrent:
            sys.exit(f"bench: error: {message}\nwait for them, or pass --allow-concurrent")
        notes.append("run alongside other tracers (--allow-concurrent): numbers suspect")
        print("bench: warning: " + message, file=sys.stderr)
    for note in notes:
        print("note: " + note, flush=True)

    # The kernel's BPF run-time statistics (two clock reads per program run, the same for
    # every memtrail row), restored when the run ends.
    stats_before = None
    if any(tool.startswith("memtrail") for tool in tools) and os.access(BPF_STATS, os.W_OK):
        with open(BPF_STATS) as stats:
            stats_before = stats.read().strip()
        with open(BPF_STATS, "w") as stats:
            stats.write("1")
    tables, summaries = [], []
    try:
        for allocator in allocators:
            args.preload = ALLOCATOR_LIBRARIES[allocator]
            if len(allocators) > 1:
                print(f"allocator {allocator}"
                      + (f" (LD_PRELOAD={args.preload})" if args.preload else ""), flush=True)
            results, seconds = run_rounds(tools, args, notes)
            table = make_table(tools, results, seconds)
            summaries.append(allocator_summary(allocator, results))
            if len(allocators) > 1:
                table = (f"### {allocator}"
                         + (f" (LD_PRELOAD={args.preload})" if args.preload else "")
                         + "\n\n" + table)
            tables.append(table)
            # The per-tool statistics are this allocator's.
            for statistic in (return_probe_ns, entries_per_pair, program_ns):
                statistic.clear()
            unwind_reports.clear()
    finally:
        if stats_before is not None:
            with open(BPF_STATS, "w") as stats:
                stats.write(stats_before)
    if len(allocators) > 1:
        tables.append(summary_table(summaries))
    report_results("\n\n".join(tables), notes, not args.no_record,
                   description=f"workload {args.variant}, {args.threads} thread(s), "
                   + (f"loop {args.call_depth} calls deeper, " if args.call_depth else "")
                   + f"{args.steps:,} steps, {args.rounds} rounds interleaved"
                   + (f"; allocators {', '.join(allocators)}, one after another"
                      if allocators != ["glibc"] else "") + ".")


def allocator_summary(allocator, results):
    """One allocator's figures for the summary table (before its statistics are cleared)."""
    medians = {tool: statistics.median(values) for tool, values in results.items() if values}
    base = medians.get("untraced")
    summary = {"allocator": allocator, "untraced": base}
    for tool in ("memtrail", "memtrail-two-trap-floor"):
        if tool in entries_per_pair:
            summary[f"entries {tool}"] = statistics.median(entries_per_pair[tool])
    if base is not None:
        for tool in ("memtrail", "memtrail-two-trap-floor", "bcc"):
            if tool in medians:
                summary[f"added {tool}"] = medians[tool] - base
    return summary


def summary_table(summaries):
    """Per allocator: the kernel entries memtrail pays a pair, and its added cost against its
    two-trap floor's and BCC memleak's, each measured in that allocator's own rounds."""
    def number(value, form):
        return form.format(value) if value is not None else "-"
    rows = ["### Per allocator", "",
            "| allocator | untraced ns/pair | memtrail entries/pair | floor entries/pair "
            "| memtrail added ns/pair | memtrail / two-trap floor | memtrail / BCC memleak |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        added = s.get("added memtrail")
        floor = s.get("added memtrail-two-trap-floor")
        bcc = s.get("added bcc")
        rows.append(f"| {s['allocator']} | {number(s['untraced'], '{:,.1f}')} "
                    f"| {number(s.get('entries memtrail'), '{:.2f}')} "
                    f"| {number(s.get('entries memtrail-two-trap-floor'), '{:.2f}')} "
                    f"| {number(added, '{:,.0f}')} "
                    f"| {number(added / floor if added is not None and floor else None, '{:.2f}x')} "
                    f"| {number(added / bcc if added is not None and bcc else None, '{:.3f}')} |")
    return "\n".join(rows)


def run_rounds(tools, args, notes):
    """Every tool once per round, interleaved; returns (ns per pair, seconds) per tool."""
    results = {tool: [] for tool in tools}
    seconds = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="memtrail-bench-") as work_dir:
        if getattr(args, "preload", None) and any(tool.startswith("bcc") for tool in tools):
            args.memleak_allocator = memleak_for_allocator(work_dir)
            if not args.memleak_allocator:
                raise BenchError("cannot point BCC's memleak at the allocator: its mmap and "
                                 "munmap probes were not found to keep on libc")
        if "bcc-free-fix" in tools:
            args.memleak_fixed = memleak_with_free_fix(work_dir)
            if not args.memleak_fixed:
                tools.remove("bcc-free-fix")
                note = "bcc-free-fix skipped: free's NULL check not found to patch"
                notes.append(note)
                print("note: " + note, flush=True)
        run_index = 0
        for round_number in range(args.rounds):
            for tool in tools:
                run_index += 1
                value, took = run_once(tool, args, work_dir, run_index)
                results[tool].append(value)
                seconds[tool].append(took)
                print(f"round {round_number + 1}/{args.rounds} {tool:17} {value:10.1f} ns/pair"
                      f"   ({took:.1f} s with attach)", flush=True)
    return results, seconds


if __name__ == "__main__":
    run_main(main)
