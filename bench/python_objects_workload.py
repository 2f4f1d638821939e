# SPDX-License-Identifier: Apache-2.0
# A Python workload for bench/python_objects.py: creates Python objects for SECONDS and prints
# the time per unit of work. WORKLOAD=objects: one unit is one instance of a small class made
# and dropped (exactly one object created, by construction: the loop iterates over
# itertools.repeat, which creates none). WORKLOAD=web: one unit is one request handled the way
# a JSON web service handles it, in process (no socket): a JSON body parsed, a price table
# looked up, dicts, floats and strs built, the response serialized, headers formatted and the
# whole encoded. Prints "ready PID", waits for a line (so a tracer can attach first), warms up
# for WARMUP seconds, then runs; prints "ns_per_unit=X cpu_ns_per_unit=Y units=N units_total=M":
# wall and CPU time (the process's, user and system: the traps' kernel time included) per unit,
# and units_total, which counts the warm-up too (what a tracer attached before the gate saw).
import itertools
import json
import os
import sys
import time

SECONDS = float(os.environ.get("SECONDS", "3"))
WARMUP = float(os.environ.get("WARMUP", "0.3"))
WORKLOAD = os.environ.get("WORKLOAD", "objects")
BATCH = 200 if WORKLOAD == "objects" else 10  # units between two reads of the clock


class Point:
    x = 0  # no __init__: calling the class creates the instance and nothing else


def make_objects(count):
    for _ in itertools.repeat(None, count):
        Point()


PRICES = {f"sku-{n}": 1.5 + n * 0.25 for n in range(64)}


def request_body(n):
    items = [{"sku": f"sku-{(n * 7 + k) % 64}", "qty": 1 + (n + k) % 4} for k in range(1 + n % 5)]
    return json.dumps({"user": 1000 + n, "name": f"customer {n}", "items": items,
                       "note": "leave at the door" if n % 3 == 0 else ""}).encode()


BODIES = [request_body(n) for n in range(64)]


def handle(body):
    request = json.loads(body)
    lines = []
    total = 0.0
    for item in request["items"]:
        cost = PRICES[item["sku"]] * item["qty"]
        total += cost
        lines.append({"sku": item["sku"], "qty": item["qty"], "cost": round(cost, 2)})
    response = {"user": request["user"], "lines": lines, "total": round(total, 2),
                "message": f"Thanks {request['name']}, {len(lines)} items"}
    if request["note"]:
        response["note"] = request["note"].upper()
    payload = json.dumps(response).encode()
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
