#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The runs of the BPF programs a process holds (kernel BPF statistics): the kernel entries a
# traced workload paid. Root; kernel.bpf_stats_enabled must be 1.
#   bench/program_runs.py PID > FILE                      "name runs" a line
#   bench/program_runs.py PID --since FILE --per N        runs since FILE per event (N events):
#                                                         "entries/event=X (name x, ...)"
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
    runs = collections.Counter()
    for program in listing:
        if program.get("id") in owned:
            runs[program.get("name", "?")] += program.get("run_cnt", 0)
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pid", type=int)
    parser.add_argument("--since", help="an earlier output of this script")
    parser.add_argument("--per", type=float, help="events since then")
    args = parser.parse_args()
    runs = runs_of(args.pid)
    if not args.since:
        for name, count in sorted(runs.items()):
            print(name, count)
        return
    with open(args.since) as earlier:
        before = collections.Counter({line.split()[0]: int(line.split()[1])
                                      for line in earlier if line.strip()})
    added = {name: runs[name] - before[name] for name in runs if runs[name] > before[name]}
    # Programs that ran for fewer than 1 % of the events are left out of the list, not the sum.
    named = ", ".join(f"{name} {count / args.per:.2f}" for name, count in sorted(added.items())
                      if count >= args.per / 100)
    print(f"entries/event={sum(added.values()) / args.per:.2f} ({named})")


if __name__ == "__main__":
    main()
