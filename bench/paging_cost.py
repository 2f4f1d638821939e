#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""memtrail paging's cost: ns per page fault, untraced vs traced by `memtrail paging`, in one run.

Two workloads (bench/faults.c): minor (fresh anonymous pages, as many faults per second as the
host gives) and major (a file dropped from the page cache and read back one page per fault).
Each runs untraced, under `memtrail paging --deep never` (tier 1: hooks that fire only on major
faults, reclaim, OOM kills and exits) and under `memtrail paging --deep always` (tier 1 plus
the per-fault hooks that `--deep auto` attaches only while memory is under pressure). Runs are
interleaved round by round, a fresh workload process per run, and the median of the rounds is
reported, with memtrail's own CPU time and peak RSS; then memtrail's CPU per interval with no
workload, and the BPF programs' run time per fault (kernel BPF statistics, one run of each
workload per mode), on which the goals are judged. Every traced run must have written its JSON
report, and for the major workload its count of the workload's major faults must match the
workload's own getrusage count, or the benchmark fails. Results are appended to
bench/RESULTS.md. See bench/README.md, "Paging cost".
"""
import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, LineReader, other_tracers, report_results,  # noqa: E402
                      run_main, stale_memtrail, terminate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ["untraced", "tier1", "tier1+2"]
DEEP = {"tier1": "never", "tier1+2": "always"}
# Programs that fire on every fault (attached by --deep); every other one of memtrail's is tier 1.
TIER2_PROGRAMS = {"on_page_fault_user", "on_count_memcg_events", "on_mod_memcg_lruvec_state"}
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}  # __NR_bpf
BPF_ENABLE_STATS = 32  # enum bpf_cmd
WORKLOADS = ["minor", "major"]
PAGES_PER_MIB = 256  # 4 KiB pages; faults.c uses the real page size, this only sizes runs
# Goals: traced / untraced CPU time per fault, against the untraced median of the same
# invocation. CPU time, because the BPF programs run in the faulting task and count there, while
# waiting for one of the 2 CPUs (shared with builds) or for the disk does not. The traced side is
# the untraced median plus the BPF run time per fault measured with the kernel's statistics
# (the direct measurement varies ±25 % between runs on this host, more than the costs to judge);
# the measured ratio is the fallback where the statistics are unavailable. Tier 1 never fires on
# a minor fault and costs well under 1 % of a major fault. Tier 1+2 runs ≈450 ns of BPF on every
# fault (paging-signals.md §7.1: +25-30 % where a fresh anonymous page costs 1.75 µs), which is
# why it is attached only under pressure.
GOALS = {("minor", "tier1"): 1.05, ("minor", "tier1+2"): 1.35,
         ("major", "tier1"): 1.05, ("major", "tier1+2"): 1.05}
IDLE_CPU_GOAL = 0.01  # memtrail's CPU with nothing to trace: at most 1 % of one CPU


def cpu_ns(pid):
    """CPU time of all of a process's threads so far: the sum of their schedstat run times (ns
    resolution; /proc/PID/stat counts in 10 ms ticks, too coarse for a 1 s run)."""
    total, read = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    total += int(stat.read().split()[0])
                    read = True
            except (OSError, IndexError, ValueError):
                pass  # the thread ended meanwhile
        if not read:  # a kernel without CONFIG_SCHED_INFO: utime + stime, in ticks
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total = (int(fields[11]) + int(fields[12])) * 1e9 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    return total


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def reap(process, timeout):
    """Waits for `process` with os.wait4, for its resource usage (peak RSS and CPU over its
    whole life, final report included). Returns the rusage, or None when the process was
    reaped elsewhere; raises subprocess.TimeoutExpired after `timeout` seconds."""
    if process.returncode is not None:
        return None
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.01)


def stop_memtrail(process, timeout=30):
    """SIGINT (memtrail then writes its final report and exits 0), SIGKILL after `timeout`."""
    if process.returncode is not None:
        return None
    try:
        process.send_signal(signal.SIGINT)
        return reap(process, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return reap(process, 30)


def start_memtrail(args, deep, json_path, started):
    """Starts `memtrail paging` and returns (process, stderr reader, seconds to attach) once its
    BPF programs are attached. The process goes into `started` at once, so that the caller
    stops it whatever happens."""
    command = [args.memtrail, "paging", "--quiet", "--deep", deep,
               "--interval", str(args.interval), "--json", json_path]
    began = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started.append(process)
    reader = LineReader(process.stderr)
    # Printed once every tier 1 program (and with --deep always, every tier 2 one) is attached;
    # the baseline sample of /proc and cgroupfs follows at once.
    if not reader.wait_for("memtrail: watching paging", args.attach_timeout):
        status = "still running" if process.poll() is None else f"exit status {process.returncode}"
        raise BenchError(f"memtrail paging --deep {deep} did not attach within "
                         f"{args.attach_timeout} s ({status}):\n{reader.text()}")
    attach_s = time.monotonic() - began
    time.sleep(args.settle)  # let the baseline sample finish before the workload starts
    return process, reader, attach_s


def parse_workload(text):
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "ns_per_fault" and len(words) % 2 == 0:
            return {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}
    return None


def workload_command(args, workload, mib=None, rounds=None):
    if workload == "minor":
        return [args.faults, "minor", "--mib", str(mib or args.minor_mib),
                "--rounds", str(rounds or args.minor_rounds)]
    return [args.faults, "major", "--dir", args.data_dir, "--mib", str(mib or args.major_mib),
            "--rounds", str(rounds or 1)]


def run_workload(args, command, started):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started.append(process)
    try:
        out, err = process.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(command)} took more than {args.timeout} s (--timeout)")
    result = parse_workload(out.decode(errors="replace"))
    if process.returncode != 0 or result is None:
        raise BenchError(f"{' '.join(command)} failed (exit status {process.returncode}): "
                         f"{(out + err).decode(errors='replace').strip()}")
    result["pid"] = process.pid
    return result


def kill_all(started):
    """Workloads are killed; memtrail gets SIGINT first so it detaches and exits cleanly."""
    for process in started:
        if process.returncode is not None or process.poll() is not None:
            continue
        if os.path.basename(str(process.args[0])) == "memtrail":
            try:
                stop_memtrail(process, timeout=10)
            except ChildProcessError:
                pass
        else:
            process.kill()
            process.wait()


def load_report(json_path, reader, label):
    try:
        with open(json_path) as report_file:
            report = json.load(report_file)
    except (OSError, ValueError) as error:
        raise BenchError(f"{label}: no usable JSON report ({error}):\n{reader.text()}")
    if report.get("schema") != "memtrail.paging/1":
        raise BenchError(f"{label}: JSON schema {report.get('schema')!r}, expected "
                         "memtrail.paging/1")
    return report


def check_traced(report, tool, workload, result, args, label, notes):
    """The run counts only if memtrail really traced it: a tracer that missed events would look
    cheap."""
    sources = report.get("sources") or []
    if tool == "tier1+2":
        missing = [source for source in sources if str(source).startswith("unavailable")]
        if missing or not report.get("deep_s", 0) > 0:
            raise BenchError(f"{label}: the per-fault hooks were not attached (deep_s "
                             f"{report.get('deep_s')}; {'; '.join(missing) or 'no reason given'})"
                             ": this row would not measure them")
    not_recorded = (report.get("not_recorded") or {}).get("process_events", 0)
    if not_recorded:
        notes.add(f"memtrail reported process events it could not record ({not_recorded} in "
                  "one run): its per-process map was full")
    if workload != "major":
        return  # minor faults leave no per-process trace in tier 1, by design
    pid = int(result["pid"])
    entries = [p for p in report.get("processes", []) if p.get("pid") == pid]
    counted = sum(int(p.get("major_faults", 0)) for p in entries)
    expected = int(result["proc_majflt"])
    if not entries:
        raise BenchError(f"{label}: the workload (pid {pid}, {expected} major faults) is not "
                         "in memtrail's report")
    if abs(counted - expected) > max(args.tolerance * expected, 2):
        raise BenchError(f"{label}: memtrail counted {counted} major faults for pid {pid}, the "
                         f"workload's getrusage says {expected} (tolerance "
                         f"{args.tolerance:.0%})")


def run_once(tool, workload, args, work_dir, run_index, notes):
    """One workload run under one tool; returns a dict of measurements."""
    json_path = os.path.join(work_dir, f"paging-{run_index}.json")
    started, memtrail, reader = [], None, None
    measured = {}
    try:
        if tool != "untraced":
            memtrail, reader, measured["attach_s"] = start_memtrail(args, DEEP[tool], json_path,
                                                                    started)
            cpu_before, wall_before = cpu_ns(memtrail.pid), time.monotonic()
        result = run_workload(args, workload_command(args, workload), started)
        if memtrail is not None:
            cpu_after, wall_after = cpu_ns(memtrail.pid), time.monotonic()
            if memtrail.poll() is not None or cpu_before is None or cpu_after is None:
                raise BenchError(f"memtrail paging --deep {DEEP[tool]} exited during the run "
                                 f"(status {memtrail.returncode}):\n{reader.text()}")
            measured["cpu_per_s"] = (cpu_after - cpu_before) / 1e9 / (wall_after - wall_before)
            # Stopped right after the workload: memtrail must read its counters at exit (it
            # once lost the last moments' events, 3232 of a run's 4096 major faults), and the
            # count check below holds it to that.
            hwm = peak_rss_kib(memtrail.pid)
            usage = stop_memtrail(memtrail)
            measured["peak_rss_kib"] = max(hwm, usage.ru_maxrss if usage else 0)
    finally:
        kill_all(started)
    measured.update(result)
    if memtrail is not None:
        label = f"{workload} under {tool} (run {run_index})"
        if memtrail.returncode != 0:
            raise BenchError(f"{label}: memtrail exited with status {memtrail.returncode}:\n"
                             f"{reader.text()}")
        check_traced(load_report(json_path, reader, label), tool, workload, result, args, label,
                     notes)
    if workload == "major":
        if result["resident_before"] > 0:
            notes.add("some file pages were still cached when a major round began (DONTNEED "
                      "could not drop them): those touches were minor faults")
        if result["majflt"] < 0.9 * result["faults"]:
            notes.add(f"the major workload took {result['majflt']:.0f} major faults for "
                      f"{result['faults']:.0f} pages in one run")
    return measured


def measure_idle(args, deep, work_dir):
    """memtrail paging with no workload of ours: CPU per interval (the /proc and cgroupfs scan
    and the map reads), start-up time and CPU, peak RSS."""
    json_path = os.path.join(work_dir, f"idle-{deep}.json")
    started = []
    try:
        memtrail, reader, attach_s = start_memtrail(args, deep, json_path, started)
        startup_cpu = cpu_ns(memtrail.pid)
        began = time.monotonic()
        time.sleep(args.idle_seconds)
        cpu = cpu_ns(memtrail.pid)
        elapsed = time.monotonic() - began
        if memtrail.poll() is not None or cpu is None:
            raise BenchError(f"memtrail paging --deep {deep} exited while idle (status "
                             f"{memtrail.returncode}):\n{reader.text()}")
        hwm = peak_rss_kib(memtrail.pid)
        usage = stop_memtrail(memtrail)
    finally:
        kill_all(started)
    # The scan reads /proc/PID/{stat,status} of every process each interval: its cost grows
    # with their number, which other users of the host change.
    processes = sum(1 for entry in os.listdir("/proc") if entry.isdigit())
    if memtrail.returncode != 0:
        raise BenchError(f"idle memtrail (--deep {deep}) exited with status "
                         f"{memtrail.returncode}:\n{reader.text()}")
    report = load_report(json_path, reader, f"idle memtrail (--deep {deep})")
    cpu_s = (cpu - startup_cpu) / 1e9
    return {"cpu_per_interval_s": cpu_s / (elapsed / args.interval), "cpu_share": cpu_s / elapsed,
            "attach_s": attach_s, "startup_cpu_s": startup_cpu / 1e9,
            "peak_rss_kib": max(hwm, usage.ru_maxrss if usage else 0),
            "intervals": len(report.get("intervals", [])), "processes": processes}


def enable_bpf_stats():
    """BPF_ENABLE_STATS: the kernel times every BPF program run while the returned fd is open and
    stops when it closes, even if this script is killed (the kernel.bpf_stats_enabled sysctl
    would stay on). None where the call is not available."""
    number = BPF_SYSCALL.get(platform.machine())
    if number is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)  # bpf_attr.enable_stats.type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(number, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    return fd if fd >= 0 else None


def bpf_programs():
    """Loaded BPF programs by id, with run_cnt and run_time_ns while statistics are on."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                         check=True).stdout
    return {program["id"]: program for program in json.loads(out)}


def program_counters(ours):
    """(monotonic time, {program name: [runs, ns]}) of memtrail's programs, summed by name."""
    programs = bpf_programs()
    now = time.monotonic()
    totals = {}
    for program_id, name in ours.items():
        entry = totals.setdefault(name, [0, 0])
        entry[0] += programs.get(program_id, {}).get("run_cnt", 0)
        entry[1] += programs.get(program_id, {}).get("run_time_ns", 0)
    return now, totals


def attribute_runs(window, background, window_s, background_s, workload_faults,
                   workload_majflt):
    """Splits each program's runs and ns in the workload's window between the workload and the
    rest of the host. The programs are host-wide, and the builds that share this host fault too,
    in bursts, so subtracting a background rate does not work (it took more than the window held).
    Instead: page_fault_user runs once per user fault, so its runs in the window less the
    workload's own faults (getrusage) are the others' faults, and each other program's runs per
    fault of the others come from the background windows. on_major_fault runs once per major
    fault (the major workload's check proves it): the workload's are its own major faults. Rare
    tier 1 events (reclaim passes and swap-outs of a thrashing neighbour, exits) are not tied to
    faults: their background rate is subtracted."""
    meter = "on_page_fault_user"
    others_faults = None
    if meter in window and background[meter][0] > 0:
        others_faults = max(0.0, window[meter][0] - workload_faults)
    result = {}
    for name, (runs, ns) in window.items():
        ns_per_run = ns / runs if runs else 0.0
        if name == "on_major_fault":
            own_runs = min(runs, workload_majflt)
            own_ns = own_runs * ns_per_run
        elif name == meter and others_faults is not None:
            own_runs = runs - others_faults
            bg_runs, bg_ns = background[meter]
            own_ns = max(0.0, ns - others_faults * bg_ns / bg_runs)
        elif name in TIER2_PROGRAMS and others_faults is not None:
            bg_runs, bg_ns = background[name]
            others_runs = min(runs, others_faults * bg_runs / background[meter][0])
            own_runs = runs - others_runs
            own_ns = max(0.0, ns - others_runs * (bg_ns / bg_runs if bg_runs else ns_per_run))
        else:
            bg_runs, bg_ns = background[name]
            own_runs = max(0.0, runs - bg_runs * window_s / background_s)
            own_ns = max(0.0, ns - bg_ns * window_s / background_s)
        result[name] = {"runs": own_runs, "ns": own_ns, "raw_runs": runs, "raw_ns": ns}
    return result


def measure_bpf_time(args, deep, work_dir, notes):
    """BPF run time per fault of the workload, by program: one run of each workload under
    --deep `deep` with the kernel's BPF statistics on. Precise where the workload's own timing
    is not (a fault costs 15-30 µs on this host, ±25 % from run to run, so a 2 % cost drowns in
    the noise). The programs are host-wide: see attribute_runs for how the host's other faults
    are taken out. The statistics add their own time to each run, and leave out the kernel's
    dispatch to the program (trampoline, perf overflow path)."""
    if not shutil.which("bpftool"):
        notes.add("BPF run time per fault not measured: bpftool is missing")
        return None
    stats_fd = enable_bpf_stats()
    if stats_fd is None:
        notes.add("BPF run time per fault not measured: BPF_ENABLE_STATS failed")
        return None
    started, measured = [], {}
    try:
        before = set(bpf_programs())
        memtrail, reader, _ = start_memtrail(args, deep,
                                             os.path.join(work_dir, f"bpf-stats-{deep}.json"),
                                             started)
        # Ours: loaded since memtrail started (other tracers were refused at the start).
        ours = {i: p.get("name", "?") for i, p in bpf_programs().items() if i not in before}
        if not ours:
            raise BenchError("no BPF program of memtrail's found with bpftool")
        for workload in WORKLOADS:
            repetitions = []
            for _ in range(args.stats_runs):
                t_a, a = program_counters(ours)
                time.sleep(args.background_seconds)
                t_b, b = program_counters(ours)
                result = run_workload(args, workload_command(args, workload), started)
                t_c, c = program_counters(ours)
                time.sleep(args.background_seconds)
                t_d, d = program_counters(ours)
                window = {name: [c[name][k] - b[name][k] for k in (0, 1)] for name in c}
                background = {name: [(b[name][k] - a[name][k]) + (d[name][k] - c[name][k])
                                     for k in (0, 1)] for name in c}
                programs = attribute_runs(window, background, t_c - t_b,
                                          (t_b - t_a) + (t_d - t_c),
                                          result["proc_minflt"] + result["proc_majflt"],
                                          result["proc_majflt"])
                total = sum(p["ns"] for p in programs.values()) / result["faults"]
                repetitions.append((total, result["faults"], programs))
            # A program can be preempted, and its run time then includes the wait (a build
            # takes the CPU): the repetition with the median total keeps such outliers out.
            repetitions.sort(key=lambda repetition: repetition[0])
            total, faults, programs = repetitions[len(repetitions) // 2]
            measured[workload] = {"faults": faults, "programs": programs,
                                  "totals": [r[0] for r in repetitions]}
        if memtrail.poll() is not None:
            raise BenchError(f"memtrail exited during the BPF statistics run:\n{reader.text()}")
        stop_memtrail(memtrail)
    finally:
        kill_all(started)
        os.close(stats_fd)
    return measured


def calibrate(args, work_dir):
    """Sizes the runs for this host (faults cost 2-30 µs here depending on the host and its
    load): minor rounds of --minor-mib, and a major file, that take the target time untraced."""
    started = []
    try:
        if args.minor_rounds is None:
            result = run_workload(args, workload_command(args, "minor", rounds=1), started)
            seconds_per_round = result["ns_per_fault"] * args.minor_mib * PAGES_PER_MIB / 1e9
            args.minor_rounds = max(1, min(64, round(args.minor_seconds / seconds_per_round)))
        if args.major_mib is None:
            probe_mib = 4
            result = run_workload(args, workload_command(args, "major", mib=probe_mib), started)
            os.unlink(os.path.join(args.data_dir, f"memtrail-bench-faults-{probe_mib}MiB.dat"))
            mib = args.major_seconds * 1e9 / (result["ns_per_fault"] * PAGES_PER_MIB)
            args.major_mib = int(max(4, min(1024, round(mib / 4) * 4)))
        # The file is written once, before any timed run.
        subprocess.run([args.faults, "prepare", "--dir", args.data_dir, "--mib",
                        str(args.major_mib)], check=True, stdout=subprocess.DEVNULL)
    finally:
        kill_all(started)


def filesystem_of(path):
    """The type of the file system holding `path` (longest mount point that contains it)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def memory_pressure_avg10():
    """PSI "some" avg10 of the host's memory, in %."""
    try:
        with open("/proc/pressure/memory") as pressure:
            for line in pressure:
                if line.startswith("some"):
                    return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return 0.0


def wait_until_quiet(args, notes):
    """Before each run: other sessions share this host, and start tracers (their memtrail would
    double the BPF work on every fault) and thrashing tests (reclaim makes faults slower) at any
    time. Waits for both to end, at most --wait seconds; a tracer still running then is an
    error, memory pressure only a note."""
    if args.allow_concurrent:
        return
    deadline, said = time.monotonic() + args.wait, False
    while True:
        others, pressure = other_tracers(), memory_pressure_avg10()
        if not others and pressure < args.max_pressure:
            return
        if time.monotonic() > deadline:
            if others:
                raise BenchError("other tracers kept running for --wait seconds:\n  "
                                 + "\n  ".join(others))
            notes.add(f"some runs started under memory pressure (PSI some avg10 {pressure:.0f} "
                      f"% after waiting {args.wait} s)")
            return
        if not said:
            what = ("other tracers: " + "; ".join(others)) if others else \
                f"memory pressure (PSI some avg10 {pressure:.1f} %)"
            print(f"waiting for {what[:200]}", flush=True)
            said = True
        time.sleep(2)


def memory_stall_us():
    """PSI "some" total of the host's memory (µs): another workload thrashing skews faults."""
    try:
        with open("/proc/pressure/memory") as pressure:
            for line in pressure:
                if line.startswith("some"):
                    return int(line.split("total=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def bpf_ns_per_fault(bpf_time, tool, workload):
    m = bpf_time[tool][workload]
    return sum(p["ns"] for p in m["programs"].values()) / m["faults"]


def make_tables(args, results, idle, bpf_time):
    rows = ["| workload | run | ns/fault (median) | runs | added ns/fault | overhead "
            "| CPU ns/fault (median) | added CPU ns/fault | CPU overhead | BPF ns/fault "
            "| BPF time / untraced CPU | goal | faults/s | memtrail CPU ms per s of run "
            "| memtrail peak RSS MiB |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    missed = []
    for workload in WORKLOADS:
        base = statistics.median(r["ns_per_fault"] for r in results[(workload, "untraced")])
        base_cpu = statistics.median(r["cpu_ns_per_fault"]
                                     for r in results[(workload, "untraced")])
        for tool in TOOLS:
            runs = results[(workload, tool)]
            median = statistics.median(r["ns_per_fault"] for r in runs)
            median_cpu = statistics.median(r["cpu_ns_per_fault"] for r in runs)
            values = ", ".join(f"{r['ns_per_fault']:,.0f}" for r in runs)
            cells = ["-"] * 9
            if tool != "untraced":
                limit = GOALS[(workload, tool)]
                if bpf_time:
                    bpf = bpf_ns_per_fault(bpf_time, tool, workload)
                    ratio, basis = 1 + bpf / base_cpu, "BPF time"
                else:
                    bpf, ratio, basis = None, median_cpu / base_cpu, "measured CPU"
                met = ratio <= limit
                if not met:
                    missed.append(f"{workload} under {tool}: {ratio:.3f}x > {limit:.2f}x "
                                  f"({basis})")
                cells = [f"{median - base:+,.0f}", f"{(median / base - 1) * 100:+.1f} %",
                         f"{median_cpu - base_cpu:+,.0f}",
                         f"{(median_cpu / base_cpu - 1) * 100:+.1f} %",
                         f"{bpf:,.0f}" if bpf is not None else "-",
                         f"{bpf / base_cpu:.2%}" if bpf is not None else "-",
                         f"≤ {limit:.2f}x: {'met' if met else 'MISSED'}"
                         + ("" if bpf_time else " (measured CPU)"),
                         f"{statistics.median(r['cpu_per_s'] for r in runs) * 1e3:.1f}",
                         f"{max(r['peak_rss_kib'] for r in runs) / 1024:.1f}"]
            rows.append(f"| {workload} | {tool} | {median:,.0f} | {values} | {cells[0]} "
                        f"| {cells[1]} | {median_cpu:,.0f} | {cells[2]} | {cells[3]} | {cells[4]} "
                        f"| {cells[5]} | {cells[6]} | {1e9 / median:,.0f} | {cells[7]} "
                        f"| {cells[8]} |")
    faults = {w: int(results[(w, "untraced")][0]["faults"]) for w in WORKLOADS}
    rows += ["", f"Faults per run: minor {faults['minor']:,} ({args.minor_mib} MiB x "
             f"{args.minor_rounds} rounds of fresh anonymous pages), major {faults['major']:,} "
             f"({args.major_mib} MiB file, one major fault per page). Goals: the traced/untraced "
             "ratio of CPU per fault, estimated as (untraced CPU ns + BPF ns) / untraced CPU ns "
             "when BPF statistics were available, else measured."]

    if bpf_time:
        rows += ["", "| BPF statistics run | workload | faults | BPF ns per fault (median) "
                 "| repetitions | programs: runs per fault x ns per run | others' share of the "
                 "runs (subtracted) |",
                 "|---|---|---:|---:|---|---|---:|"]
        for tool in TOOLS[1:]:
            for workload in WORKLOADS:
                m = bpf_time[tool][workload]
                programs = m["programs"].values()
                parts = [f"{name} {p['runs'] / m['faults']:.2f} x {p['ns'] / p['runs']:,.0f}"
                         for name, p in sorted(m["programs"].items()) if p["runs"] >= 0.5]
                raw = sum(p["raw_runs"] for p in programs)
                others = 1 - sum(p["runs"] for p in programs) / raw if raw else 0
                rows.append(f"| {tool} (--deep {DEEP[tool]}) | {workload} | {m['faults']:,.0f} "
                            f"| {bpf_ns_per_fault(bpf_time, tool, workload):,.0f} "
                            f"| {', '.join(f'{t:,.0f}' for t in m['totals'])} "
                            f"| {'; '.join(parts) or 'none ran'} | {others:.0%} |")
        deep_ns = bpf_ns_per_fault(bpf_time, "tier1+2", "minor")
        rows += ["", f"At 300,000 minor faults/s, tier 1+2's BPF time "
                 f"({deep_ns:,.0f} ns per fault) is {deep_ns * 3e5 / 1e9:.1%} of one CPU; tier 1's "
                 f"({bpf_ns_per_fault(bpf_time, 'tier1', 'minor'):,.0f} ns) "
                 f"{bpf_ns_per_fault(bpf_time, 'tier1', 'minor') * 3e5 / 1e9:.2%}."]

    rows += ["", "| memtrail paging, no workload | CPU ms per interval | share of one CPU | goal "
             "| processes on the host | µs per process | intervals seen | attach s "
             "| start-up CPU ms | peak RSS MiB |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for tool in TOOLS[1:]:
        m = idle[tool]
        met = m["cpu_share"] <= IDLE_CPU_GOAL
        if not met:
            missed.append(f"idle {tool}: {m['cpu_share']:.2%} of a CPU > {IDLE_CPU_GOAL:.0%}")
        rows.append(f"| {tool} (--deep {DEEP[tool]}) | {m['cpu_per_interval_s'] * 1e3:.1f} "
                    f"| {m['cpu_share']:.2%} "
                    f"| ≤ {IDLE_CPU_GOAL:.0%}: {'met' if met else 'MISSED'} "
                    f"| {m['processes']} | {m['cpu_per_interval_s'] * 1e6 / m['processes']:.0f} "
                    f"| {m['intervals']} | {m['attach_s']:.2f} | {m['startup_cpu_s'] * 1e3:.0f} "
                    f"| {m['peak_rss_kib'] / 1024:.1f} |")
    return "\n".join(rows), missed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="runs per workload and tool "
                        "(median reported; default 7)")
    parser.add_argument("--minor-mib", type=int, default=256, help="anonymous MiB per minor round")
    parser.add_argument("--minor-rounds", type=int, help="minor rounds per run (default: as "
                        "many as take --minor-seconds untraced, measured at start)")
    parser.add_argument("--minor-seconds", type=float, default=1.0)
    parser.add_argument("--major-mib", type=int, help="file size for the major workload "
                        "(default: what takes --major-seconds untraced, measured at start)")
    parser.add_argument("--major-seconds", type=float, default=1.5)
    parser.add_argument("--dir", default="/var/tmp", help="disk-backed directory for the major "
                        "workload's file (default /var/tmp; not tmpfs)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="memtrail's --interval, traced runs and idle (default 1)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="how long memtrail's idle CPU is measured (default 10)")
    parser.add_argument("--background-seconds", type=float, default=1.0, help="windows before "
                        "and after each BPF statistics run, for the host's other faults")
    parser.add_argument("--stats-runs", type=int, default=3, help="runs of each workload with "
                        "BPF statistics, per mode (the median is reported; default 3)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="allowed relative "
                        "difference of memtrail's major-fault count (default 0.03)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between memtrail's attach and the workload's start")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"),
                        help="build directory holding memtrail and bench/ (default: build)")
    parser.add_argument("--memtrail", help="memtrail binary (default: BUILD/memtrail)")
    parser.add_argument("--faults", help="workload (default: BUILD/bench/memtrail-bench-faults)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per workload run")
    parser.add_argument("--wait", type=int, default=600, help="seconds to wait, before a run, "
                        "for other tracers and memory pressure to end (default 600)")
    parser.add_argument("--max-pressure", type=float, default=5.0, help="host memory PSI some "
                        "avg10 (%%) above which a run waits (default 5)")
    parser.add_argument("--attach-timeout", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short runs, "
                        "2 s idle, nothing recorded")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--allow-concurrent", action="store_true",
                        help="run even while other tracers or benchmarks are running")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    # Started in the background by a shell, this script ignores SIGINT and its children would
    # inherit that: memtrail would then ignore the SIGINT that asks it to stop.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.quick:
        args.rounds, args.no_record, args.idle_seconds, args.stats_runs = 1, True, 2.0, 1
        args.minor_seconds, args.major_seconds = 0.2, 0.3
    if min(args.rounds, args.minor_mib, args.interval, args.stats_runs) <= 0:
        sys.exit("bench: --rounds, --minor-mib, --interval and --stats-runs must be positive")
    if os.geteuid() != 0:
        sys.exit("bench: memtrail paging needs root")
    args.memtrail = args.memtrail or os.path.join(args.build, "memtrail")
    args.faults = args.faults or os.path.join(args.build, "bench", "memtrail-bench-faults")
    for path in (args.memtrail, args.faults):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench: {path} is missing: build first (cmake --build BUILD), or pass "
                     "--build DIR, --memtrail or --faults")
    if subprocess.run([args.memtrail, "paging", "--help"], capture_output=True).returncode != 0:
        sys.exit(f"bench: {args.memtrail} has no paging subcommand")
    if filesystem_of(args.dir) in ("tmpfs", "ramfs", "?"):
        sys.exit(f"bench: {args.dir} is not on a disk file system ({filesystem_of(args.dir)}): "
                 "its pages cannot be dropped and re-read; pass --dir")
    notes = set()
    if stale_memtrail(args.memtrail):
        notes.add(f"{args.memtrail} is older than bpf/ or userspace/: rebuild it, or the rows "
                  "do not measure this tree")
    others = other_tracers()
    if others:
        message = ("other tracers or benchmarks are running; they skew the numbers (2 CPUs) "
                   "and memtrail paging counts host-wide:\n  " + "\n  ".join(others))
        if not args.allow_concurrent:
            sys.exit(f"bench: error: {message}\nwait for them, or pass --allow-concurrent")
        notes.add("run alongside other tracers (--allow-concurrent): numbers suspect")
        print("bench: warning: " + message, file=sys.stderr)

    results = {(w, t): [] for w in WORKLOADS for t in TOOLS}
    idle = {}
    stall_before, began = memory_stall_us(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="memtrail-paging-", dir=args.dir) as data_dir, \
            tempfile.TemporaryDirectory(prefix="memtrail-paging-") as work_dir:
        args.data_dir = data_dir
        # A private copy: others rebuild memtrail while this runs (the linker rewrites the file
        # in place), and every row must measure the same binary.
        private = os.path.join(work_dir, "memtrail")
        shutil.copy2(args.memtrail, private)
        args.memtrail = private
        wait_until_quiet(args, notes)
        calibrate(args, work_dir)
        print(f"sizes: minor {args.minor_mib} MiB x {args.minor_rounds} rounds, major "
              f"{args.major_mib} MiB file; memtrail --interval {args.interval:g}", flush=True)
        run_index = 0
        for round_number in range(args.rounds):
            # The tools' order rotates each round, so that none always follows the same
            # neighbour (page cache, free memory, the other CPU's state).
            order = TOOLS[round_number % 3:] + TOOLS[:round_number % 3]
            for workload in WORKLOADS:
                for tool in order:
                    run_index += 1
                    wait_until_quiet(args, notes)
                    m = run_once(tool, workload, args, work_dir, run_index, notes)
                    results[(workload, tool)].append(m)
                    extra = (f"  memtrail {m['cpu_per_s'] * 1e3:5.1f} ms CPU/s"
                             if "cpu_per_s" in m else "")
                    print(f"round {round_number + 1}/{args.rounds} {workload} {tool:8} "
                          f"{m['ns_per_fault']:9,.0f} ns/fault {m['cpu_ns_per_fault']:9,.0f} CPU "
                          f"ns/fault  majflt {m['majflt']:.0f}{extra}", flush=True)
        for tool in TOOLS[1:]:
            wait_until_quiet(args, notes)
            idle[tool] = measure_idle(args, DEEP[tool], work_dir)
            print(f"idle {tool:8} {idle[tool]['cpu_per_interval_s'] * 1e3:.1f} ms CPU per "
                  f"interval, {idle[tool]['processes']} processes on the host", flush=True)
        bpf_time = {}
        for tool in TOOLS[1:]:
            wait_until_quiet(args, notes)
            bpf_time[tool] = measure_bpf_time(args, DEEP[tool], work_dir, notes)
            if bpf_time[tool] is None:
                bpf_time = None
                break
    stall_after, elapsed = memory_stall_us(), time.monotonic() - began
    if stall_before is not None and stall_after is not None:
        share = (stall_after - stall_before) / 1e6 / elapsed
        if share >= 0.01:
            notes.add(f"the host's memory was under pressure during the run (PSI some "
                      f"{share:.0%}): another workload was reclaiming, and faults cost more")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    processes = sum(1 for entry in os.listdir("/proc") if entry.isdigit())

    table, missed = make_tables(args, results, idle, bpf_time)
    report_results(table, sorted(notes), not args.no_record, title=" — paging cost",
                   description=f"bench/paging_cost.py, {args.rounds} rounds interleaved, memtrail "
                   f"--interval {args.interval:g}; {processes} processes on the host, load "
                   f"average {load:.1f} at the end.")
    if missed:
        print("goals missed: " + "; ".join(missed))
        if args.strict:
            sys.exit(1)


if __name__ == "__main__":
    run_main(main)
