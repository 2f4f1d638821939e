#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The runs of the BPF programs a process holds (kernel BPF statistics): the kernel entries a
# traced workload paid. Root; kernel.bpf_stats_enabled must be 1.
#   bench/program_runs.py PID > FILE                      "name runs ns" a line
#   bench/program_runs.py PID --since FILE --per N        runs since FILE per event (N events):
#                                                         "entries/event=X (name x, ...)" and
#                                                         the ns per run of each ("ns/run: name
#                                                         X, ...")
import argparse
import collections
import json
import os
import subprocess


def runs_of(pid):
    owned = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                owned.update(int(line.split()[1]) for line in info if line.startswith("prog_id:"))
        except OSError:
            continue
    listing = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                        capture_output=True, text=True).stdout)
    runs, times = collections.Counter(), collections.Counter()
    for program in listing:
        if program.get("id") in owned:
            runs[program.get("name", "?")] += program.get("run_cnt", 0)
            times[program.get("name", "?")] += program.get("run_time_ns", 0)
    return runs, times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pid", type=int)
    parser.add_argument("--since", help="an earlier output of this script")
    parser.add_argument("--per", type=float, help="events since then")
    args = parser.parse_args()
    runs, times = runs_of(args.pid)
    if not args.since:
        for name, count in sorted(runs.items()):
            print(name, count, times[name])
        return
    before, before_ns = collections.Counter(), collections.Counter()
    with open(args.since) as earlier:
        for line in earlier:
            fields = line.split()
            if len(fields) >= 2:
                before[fields[0]] = int(fields[1])
                before_ns[fields[0]] = int(fields[2]) if len(fields) > 2 else 0
    added = {name: runs[name] - before[name] for name in runs if runs[name] > before[name]}
    # Programs that ran for fewer than 1 % of the events are left out of the list, not the sum.
    named = ", ".join(f"{name} {count / args.per:.2f}" for name, count in sorted(added.items())
                      if count >= args.per / 100)
    # The kernel's run time per run (bpf_stats_enabled): what each program's own work costs.
    run_ns = ", ".join(f"{name} {(times[name] - before_ns[name]) / count:.0f}"
                       for name, count in sorted(added.items()) if count >= args.per / 100)
    print(f"entries/event={sum(added.values()) / args.per:.2f} ({named}) ns/run: {run_ns}")


if __name__ == "__main__":
    main()
