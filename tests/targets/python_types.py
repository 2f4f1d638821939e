# SPDX-License-Identifier: Apache-2.0
# For memtrail's --python-types, run by Debian's /usr/bin/python3: each round keeps PER_ROUND
# Session objects and as many dicts in module-level lists (grow), and makes and drops as many
# of each (churn). Prints "ready PID", waits for a line, prints "size Session N" (what
# sys.getsizeof says of one, GC header included), "line grow N" (where grow appends), and
# "kept N" at the end, runs ROUNDS rounds
# 0.1 s apart, prints "done", then waits for "quit" or end of input.
import os
import sys
import time

ROUNDS = int(os.environ.get("ROUNDS", "10"))
PER_ROUND = 300


class Session:
    def __init__(self, number):
        self.number = number


sessions = []
records = []


def grow(count):
    for number in range(count):
        sessions.append(Session(number))  # line: grow
        records.append({"number": number})


def churn(count):
    dropped = [Session(number) for number in range(count)]
    scratch = [{"number": number} for number in range(count)]
    del dropped, scratch


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
print(f"size Session {sys.getsizeof(Session(0))}", flush=True)
with open(__file__) as source:
    for number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {number}", flush=True)
for _ in range(ROUNDS):
    grow(PER_ROUND)
    churn(PER_ROUND)
    time.sleep(0.1)
print(f"kept {len(sessions)}", flush=True)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
