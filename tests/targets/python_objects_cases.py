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
#   immutable for the duty cycle: rounds in which a first line keeps strs and tuples for a
#             while, then drops them, and a second line at once makes as many of the same
#             types and sizes, other content, at the same addresses (mostly while the probes
#             are detached, as they are 90 % of the time)
#   many      for the duty cycle: about 250,000 strs kept, then a quiet time
#   churn     for the duty cycle: rounds in which a churner keeps dicts for a while, then drops
#             them onto the dict free list, and a keeper at once takes them from it
#   stopping  a first line makes 100 ints (28 bytes) and keeps one, the program says "done"
#             (memtrail is stopped then), and 15 ms later a second line makes 100 ints of 32
#             bytes, mostly at the dead ones' addresses (pymalloc's size class of 32 bytes),
#             and keeps them: while memtrail's final reading runs, its tracing stopped
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


def make_first(count, round_number):
    made = []
    for i in range(count):
        if i % 2:
            made.append(f"first-{round_number:04d}-{i:050d}")  # line: first_str
        else:
            made.append((i % 200, round_number % 200, 0))  # line: first_tuple
    return made


def make_second(count, round_number):
    for i in range(count):
        if i % 2:
            kept.append(f"other-{round_number:04d}-{i:051d}")  # line: second_str
        else:
            kept.append((i % 200, round_number % 200, 1))  # line: second_tuple


def same_addresses(old, new):
    addresses = set(id(thing) for thing in old)
    return sum(id(thing) in addresses for thing in new)


def immutable():
    reused = 0
    rounds = int(os.environ.get("ROUNDS", "12"))
    for round_number in range(rounds):
        old = []
        for _ in range(10):  # over 0.5 s: some of them in attached windows
            old.extend(make_first(200, round_number))
            time.sleep(0.05)
        time.sleep(0.3)
        addresses = set(id(thing) for thing in old)
        del old[:]
        start = len(kept)
        make_second(2000, round_number)
        reused += sum(id(thing) in addresses for thing in kept[start:])
        addresses.clear()
    time.sleep(0.5)
    print(f"count kept {len(kept)}", flush=True)
    print(f"count reused {reused}", flush=True)


def churn_dicts(count, round_number):
    made = []
    for j in range(count):
        made.append({"c": round_number, "j": j})  # line: churn_dict
    return made


def keep_dicts(count, round_number):
    for j in range(count):
        kept.append({"k": round_number, "j": j})  # line: keep_dict


def churn_rounds():
    reused = 0
    rounds = int(os.environ.get("ROUNDS", "12"))
    for round_number in range(rounds):
        held = []
        for _ in range(10):
            held.extend(churn_dicts(8, round_number))
            time.sleep(0.05)
        addresses = set(id(d) for d in held)
        del held[:]  # the last 80 onto the dict free list
        start = len(kept)
        keep_dicts(80, round_number)
        reused += sum(id(d) in addresses for d in kept[start:])
        addresses.clear()
    time.sleep(0.5)
    print(f"count kept {len(kept)}", flush=True)
    print(f"count reused {reused}", flush=True)


def many():
    # About 250,000 strs kept over 5 s (the probes see those made while attached), then a
    # quiet second and a half: window closes with many objects tracked and few new.
    for batch in range(250):
        for i in range(1000):
            kept.append(f"many-{batch:04d}-{i:030d}")  # line: many
        time.sleep(0.02)
    time.sleep(1.5)
    print(f"count kept {len(kept)}", flush=True)


def stopping():
    small, large = "123456", "1234567890123"
    dropped = [int(small) for _ in range(100)]  # line: dropped_int
    kept.append(dropped[0])
    addresses = set(id(number) for number in dropped[1:])
    del dropped
    print("done", flush=True)
    time.sleep(0.015)
    kept.append([int(large) for _ in range(100)])  # line: made_int
    print(f"count reused {sum(id(number) in addresses for number in kept[-1])}", flush=True)


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
{"exact": exact, "freelist": freelist, "reuse": reuse, "thread": thread, "immutable": immutable,
 "churn": churn_rounds, "many": many, "stopping": stopping}[scenario]()
time.sleep(0.3)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
