# SPDX-License-Identifier: Apache-2.0
# For memtrail's Python objects, run by Debian's /usr/bin/python3: a keeper stores a class
# instance, a str and a tuple (of two large ints) in a dict attribute, all made on one line,
# while a churner builds three times as many of the same and drops them. Every object is
# smaller than 512 bytes (pymalloc's). Prints "ready PID", waits for a line, prints
# "line keep N" and "line churn N" (the lines that make the objects), runs ROUNDS rounds of
# PER_ROUND (default 500) PAUSE s apart (default 0.1), prints "kept N" and "done", then waits
# for "quit" or end of input.
# BUSY=S: instead of the rounds, keeps and churns without a pause for S seconds, each time also
# handling a 64 KiB body the way a service handles a request (built, encoded and checksummed:
# three malloc'd blocks, as pymalloc serves only 512 bytes or less), CPU-bound throughout; then
# prints "count kept N" too.
# GATE=0: starts at once (a launched command: nothing to wait for), without reading a line
# first. BODY=N: in BUSY, the body's size (default 65536; 0: no body, objects alone); in the
# rounds (default 0: none), each keep() also makes and drops an N-byte bytes object (over 512
# bytes: one malloc'd block, an allocation at the pace of the objects), and prints "count kept
# N" too. STARTUP=N: first, as a program starting up (loading its modules and
# configuration), makes and drops N bytes objects of 600 bytes (N allocations in a burst).
import os
import sys
import time
import zlib

ROUNDS = int(os.environ.get("ROUNDS", "10"))
BUSY = float(os.environ.get("BUSY", "0"))
PER_ROUND = int(os.environ.get("PER_ROUND", "500"))
PAUSE = float(os.environ.get("PAUSE", "0.1"))
GATE = os.environ.get("GATE", "1") != "0"
BODY = int(os.environ.get("BODY", "65536" if BUSY else "0"))
STARTUP = int(os.environ.get("STARTUP", "0"))


class Record:
    def __init__(self, number):
        self.number = number


class Keeper:
    def __init__(self):
        self.kept = {}

    def keep(self, number):
        self.kept[number + 100000] = (Record(number), "k" * 60 + str(number), (number + 1000000, number + 2000000))  # line: keep


def churn(number):
    for copy in range(3):
        dropped = (Record(number), "c" * 60 + str(number), (number + 1000000, number + 2000000))  # line: churn
        del dropped


for _ in range(STARTUP):
    loaded = bytes(600)
    del loaded
keeper = Keeper()
print(f"ready {os.getpid()}", flush=True)
if GATE:
    sys.stdin.readline()
with open(__file__) as source:
    for line_number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {line_number}", flush=True)
number = 0
if BUSY:
    deadline = time.monotonic() + BUSY
    while time.monotonic() < deadline:
        keeper.keep(number)
        churn(number)
        if BODY:
            zlib.crc32(("b" * BODY + str(number)).encode())
        number += 1
else:
    for _ in range(ROUNDS):
        for _ in range(PER_ROUND):
            keeper.keep(number)
            churn(number)
            if BODY:
                body = bytes(BODY)
                del body
            number += 1
        time.sleep(PAUSE)
print(f"kept {len(keeper.kept)}", flush=True)
if BUSY or BODY:
    print(f"count kept {len(keeper.kept)}", flush=True)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
