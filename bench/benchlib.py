#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What memtrail's benchmark harnesses share: errors, stopping on signals, reading a child's
output with deadlines, refusing to run next to other tracers, and recording where a result
came from (commit, CPU). Standard library only."""
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(Exception):
    pass


class Terminated(BenchError):
    pass


def terminate(signum, _frame):
    # SIGTERM / SIGHUP: unwind through the finally blocks so that tracers and workloads die too.
    raise Terminated(f"stopped by signal {signum}")


def install_termination_handlers():
    """SIGTERM and SIGHUP raise Terminated, so that `finally` blocks stop what a run started."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)


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
        with self.condition:
            self.condition.notify_all()

    def wait_for(self, prefix, timeout, contains=False):
        """The first line starting with (or containing) `prefix`; None on timeout or EOF."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for line in self.lines:
                    if (prefix in line) if contains else line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():  # deadline, or the pipe closed
                    return None
                self.condition.wait(min(left, 0.1))

    def text(self, last=40):
        with self.condition:
            return "\n".join(self.lines[-last:])


def owned_programs(tracer_pid):
    """The BPF programs (bpftool's JSON) the tracer holds, or None."""
    try:
        listing = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                            capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    owned = set()  # program ids the tracer holds file descriptors of
    fd_dir = f"/proc/{tracer_pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:bpf-prog":
                    continue
                with open(f"/proc/{tracer_pid}/fdinfo/{fd}") as info:
                    for line in info:
                        if line.startswith("prog_id:"):
                            owned.add(int(line.split()[1]))
            except OSError:
                continue
    except OSError:
        return None
    return [program for program in listing if program.get("id") in owned]


def stop(process):
    """Stops a tracer as a user would (SIGINT: it writes its final report), killing it after
    a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def attach_memtrail(memtrail, pid, json_path, extra_args, label):
    """Starts `memtrail leaks -p PID` writing its JSON report to `json_path` (removed first) and
    waits until it traces: (the tracer, a LineReader of its stderr)."""
    if os.path.exists(json_path):
        os.unlink(json_path)
    command = [memtrail, "leaks", "-p", str(pid), "-q", "--json", json_path] + list(extra_args)
    tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors = LineReader(tracer.stderr)
    if errors.wait_for("memtrail: tracing pid", 60) is None:
        kill_if_running(tracer)
        raise BenchError(f"{label}: memtrail did not attach: {errors.text()!r}")
    return tracer, errors


def finish_memtrail(tracer, errors, label, json_path):
    """Stops a tracer started by attach_memtrail; its JSON report, None when it wrote none."""
    stop(tracer)
    if tracer.returncode != 0:
        raise BenchError(f"{label}: memtrail exited {tracer.returncode}: {errors.text()!r}")
    if not os.path.exists(json_path):
        return None
    with open(json_path) as report_file:
        return json.load(report_file)


def kill_if_running(process):
    """For the `finally` of a run: a process still running is killed and reaped."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def other_tracers():
    """Processes that would skew the run or share its hooks: any memtrail (its paging
    subcommand attaches host-wide, like this benchmark's), memtrail's integration tests (they
    load BPF programs), BCC tools, bpftrace, and the other benchmarks."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                words = [word.decode(errors="replace") for word in cmdline.read().split(b"\0")
                         if word]
        except OSError:
            continue
        names = [os.path.basename(word) for word in words[:3]]
        if names and names[0] == "flock":
            continue  # waiting for a lock, or the parent of what holds it (seen on its own)
        if any(name == "memtrail" or name.endswith("-bpfcc") or name == "bpftrace"
               or name in ("memleak-free-fix.py", "footprint.py", "paging_cost.py",
                            "python_objects.py", "python_web.py")
               or (name == "run.py" and "bench" in " ".join(words[:3]))
               or (name.endswith("_integration_test") and names.index(name) == 0)
               or "/bcc/tools/" in word for name, word in zip(names, words)):
            found.append(f"{entry} {' '.join(words)[:100]}")
    return found


def foreign_uprobes(allowed_pids=()):
    """Processes other than `allowed_pids` that hold BPF programs on uprobes (bpftool's perf and
    link listings), one line each: "pid N (command): K uprobes". Another tool's probe on libc's
    malloc traps in every process using it, the benchmark's included, and its holder may not
    show up by name (other_tracers); its refcount offset also makes memtrail's own attach fail.
    None when bpftool cannot say."""
    held = {}  # pid -> uprobes
    try:
        for listing in ("perf", "link"):
            entries = json.loads(subprocess.run(["bpftool", "-j", listing], check=True,
                                                capture_output=True, text=True).stdout or "[]")
            for entry in entries:
                kind = str(entry.get("fd_type") or entry.get("type") or "")
                pid = entry.get("pid")
                if "uprobe" in kind and pid not in allowed_pids:
                    held[pid] = held.get(pid, 0) + 1
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    found = []
    for pid, count in sorted(held.items(), key=lambda item: str(item[0])):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                name = comm.read().strip()
        except (OSError, TypeError):
            name = "?"
        found.append(f"pid {pid} ({name}): {count} uprobes")
    return found


def stale_memtrail(binary):
    """True when a source of memtrail changed after the binary was built."""
    built = os.path.getmtime(binary)
    for top in ("bpf", "userspace"):
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if os.path.getmtime(os.path.join(directory, name)) > built:
                    return True
    return False


def git_commit():
    result = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return "uncommitted"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report_results(table, notes, record, title="", description=""):
    """Prints `table` and `notes`; with `record`, also appends them to bench/RESULTS.md under a
    heading with the time, the commit and `title`, after `description` (where, what, how)."""
    print()
    print(table)
    for note in notes:
        print("note: " + note)
    if not record:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {stamp} — commit {git_commit()}{title}\n\n"
               f"Kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu_model()}); "
               f"{description}\n\n{table}\n")
    for note in notes:
        section += f"\nNote: {note}\n"
    results_path = os.path.join(ROOT, "bench", "RESULTS.md")
    new_file = not os.path.exists(results_path)
    with open(results_path, "a") as results_file:
        if new_file:
            results_file.write("# Overhead benchmark results\n\nAppended by bench/run.py "
                               "(bench/run.sh), bench/paging_cost.py and bench/footprint.py; see "
                               "bench/README.md for how to read them.\n")
        results_file.write(section)
    print("\nrecorded in bench/RESULTS.md")


def run_main(main):
    """Runs a harness's main(): a BenchError or Ctrl-C becomes one line on stderr and exit 1."""
    try:
        main()
    except BenchError as error:
        sys.exit(f"bench: error: {error}")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")

