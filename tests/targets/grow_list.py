# SPDX-License-Identifier: Apache-2.0
# A Python program whose module-level list keeps growing (for `memtrail leaks` on CPython): run
# by Debian's /usr/bin/python3. Prints "ready PID", waits for a line, appends dicts in steps
# (pymalloc takes new arenas for them: 1 MiB mmaps memtrail follows), printing "step N" after
# each, prints "done", waits for "quit" or end of input.
import os
import sys
import time

kept = []


def grow(count):
    for i in range(count):
        kept.append({"id": i, "name": "x" * 24})  # line: keep


def churn(count):
    dropped = [{"id": i} for i in range(count)]
    del dropped


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
for step in range(12):
    grow(20000)
    churn(20000)
    # Progress: traced, each of its ~80,000 objects a step pays a probe (seconds a step).
    print(f"step {step}", flush=True)
    time.sleep(0.25)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
