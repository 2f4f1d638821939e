# SPDX-License-Identifier: Apache-2.0
# A Python workload for bench/python_frames.sh: at a call depth of DEPTH Python frames, makes
# and drops COUNT objects and prints the time per object. WORKLOAD=bytes (default): bytes(1000)
# objects, each one calloc and one free (pymalloc hands blocks over 512 bytes to the C
# allocator); WORKLOAD=objects: instances of a small class (pymalloc's, which no malloc probe
# sees; --python-types counts each). Prints "ready PID", waits for a line (so a tracer can
# attach first), then runs.
import os
import sys
import time

COUNT = int(os.environ.get("COUNT", "200000"))
DEPTH = int(os.environ.get("DEPTH", "12"))
WORKLOAD = os.environ.get("WORKLOAD", "bytes")


class Point:
    def __init__(self, x):
        self.x = x


def churn(count):
    if WORKLOAD == "objects":
        for x in range(count):
            Point(x)
    else:
        for _ in range(count):
            bytes(1000)


def nest(depth, count):
    if depth <= 1:
        churn(count)
    else:
        nest(depth - 1, count)


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
nest(DEPTH, COUNT // 10)  # warm up
started = time.perf_counter()
nest(DEPTH, COUNT)
elapsed = time.perf_counter() - started
print(f"alloc_free_ns {elapsed / COUNT * 1e9:.0f}", flush=True)
