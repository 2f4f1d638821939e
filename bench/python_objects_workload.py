# SPDX-License-Identifier: Apache-2.0
# A Python workload for bench/python_objects.py: creates Python objects for SECONDS and prints
# the time per unit of work. WORKLOAD=objects: one unit is one instance of a small class made
# and dropped (exactly one object created, by construction: the loop iterates over
# itertools.repeat, which creates none). WORKLOAD=web: one unit is one request handled the way
# a JSON web service handles it, in process (no socket): a JSON body parsed, a price table
# looked up, dicts, floats and strs built, the response serialized, headers formatted and the
# whole encoded (the handler is bench/python_web_app.py's, which bench/python_web.py serves over
# HTTP). Prints "ready PID", waits for a line (so a tracer can attach first), warms up
# for WARMUP seconds, then runs; prints "ns_per_unit=X cpu_ns_per_unit=Y units=N units_total=M":
# wall and CPU time (the process's, user and system: the traps' kernel time included) per unit,
# and units_total, which counts the warm-up too (what a tracer attached before the gate saw).
import itertools
import os
import sys
import time

from python_web_app import BODIES, respond

SECONDS = float(os.environ.get("SECONDS", "3"))
WARMUP = float(os.environ.get("WARMUP", "0.3"))
WORKLOAD = os.environ.get("WORKLOAD", "objects")
BATCH = 200 if WORKLOAD == "objects" else 10  # units between two reads of the clock


class Point:
    x = 0  # no __init__: calling the class creates the instance and nothing else


def make_objects(count):
    for _ in itertools.repeat(None, count):
        Point()


def handle(body):
    payload = respond(body)
    headers = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n")
    return headers.encode() + payload


def serve(count):
    for body in itertools.islice(itertools.cycle(BODIES), count):
        handle(body)


work = make_objects if WORKLOAD == "objects" else serve


def run_for(seconds):
    units = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds
    while True:
        work(BATCH)
        units += BATCH
        now = time.perf_counter()
        if now >= deadline:
            return units, now - started, time.process_time() - cpu_started


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
warm_units, _, _ = run_for(WARMUP)
units, elapsed, cpu = run_for(SECONDS)
print(f"ns_per_unit={elapsed / units * 1e9:.1f} cpu_ns_per_unit={cpu / units * 1e9:.1f} "
      f"units={units} units_total={units + warm_units}", flush=True)
