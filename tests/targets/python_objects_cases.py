# SPDX-License-Identifier: Apache-2.0
# For memtrail's Python objects (--python-objects on), run by Debian's /usr/bin/python3: one
# scenario, named by the first argument, whose outcome the interpreter itself states.
#   exact     one line keeps exactly 3,000 Item instances, 2,000 strs and 1,000 tuples;
#             another keeps 100 bytes objects of 2,000 bytes (malloc's blocks)
#   freelist  a churner makes dicts and drops them (onto the dict free list); the keeper's
#             dicts are then taken from that free list
#   reuse     a first line keeps Items for a while, then drops them; a second line makes as
#             many Items, at the same addresses
#   thread    a thread keeps Items
# Prints "ready PID", waits for a line, prints "line NAME N" for the lines memtrail must find,
# runs the scenario, prints "count NAME N" for what it states (sys.getsizeof sums, how many
# addresses were reused, verified with id()), "done", then waits for "quit" or end of input.
import os
import sys
import threading
import time

scenario = sys.argv[1]


class Item:
    pass


kept = []


def exact():
    for i in range(6000):
        kept.append(Item() if i % 6 < 3 else ("s" * 40 + str(i)) if i % 6 < 5 else (i, i))  # line: exact
        if i % 1000 == 999:
            time.sleep(0.1)
    big = []
    for i in range(100):
        big.append(b"b" * 2000 + bytes(1 + i % 2))  # line: big
    print(f"count bytes_big {sum(sys.getsizeof(blob) for blob in big)}", flush=True)
    kept.append(big)
    sizes = {}
    for thing in kept[:-1]:
        name = type(thing).__name__
        sizes[name] = sizes.get(name, 0) + sys.getsizeof(thing)
    for name, total in sorted(sizes.items()):
        print(f"count bytes_{name} {total}", flush=True)
    print(f"count bytes {sum(sizes.values())}", flush=True)


churned = set()


def note(dicts):
    churned.update(id(d) for d in dicts)


def churn(count):
    dropped = []
    for j in range(count):
        dropped.append({"c": j})  # line: churn
    note(dropped)
    del dropped  # onto the dict free list (it keeps 80)


def keep_dict(j):
    kept.append({"k": j})  # line: keep


def freelist():
    reused = 0
    for _ in range(20):
        churned.clear()
        churn(50)
        for j in range(50):
            keep_dict(j)
        reused += sum(id(d) in churned for d in kept[-50:])
        time.sleep(0.05)
    churned.clear()
    print(f"count kept {len(kept)}", flush=True)
    print(f"count reused {reused}", flush=True)


def first(count):
    made = []
    for _ in range(count):
        made.append(Item())  # line: first
    return made


def second(count):
    for _ in range(count):
        kept.append(Item())  # line: second


def reuse():
    count = 2000
    old = first(count)
    time.sleep(1.0)  # seen alive by several reports
    addresses = set(id(item) for item in old)
    del old
    second(count)
    reused = sum(id(item) in addresses for item in kept)
    addresses.clear()
    time.sleep(0.5)
    print(f"count kept {len(kept)}", flush=True)
    print(f"count reused {reused}", flush=True)


def in_thread(count):
    for _ in range(count):
        kept.append(Item())  # line: thread
        if len(kept) % 500 == 0:
            time.sleep(0.05)


def thread():
    worker = threading.Thread(target=in_thread, args=(3000,))
    worker.start()
    worker.join()
    print(f"count kept {len(kept)}", flush=True)


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
with open(__file__) as source:
    for line_number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {line_number}", flush=True)
{"exact": exact, "freelist": freelist, "reuse": reuse, "thread": thread}[scenario]()
time.sleep(0.3)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
