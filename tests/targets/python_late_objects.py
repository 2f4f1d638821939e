# SPDX-License-Identifier: Apache-2.0
# For memtrail's report of a Python program that ends: objects kept right before the end.
# Prints "line late N" (the line that keeps them), sleeps WAIT seconds (default 1: memtrail is
# attached and its reports, if any, are past), or with HOLD set waits for a line, keeps COUNT (default 1,500) `Late` instances in a
# module-level list at that line, prints "count late COUNT", "count late_bytes B" (their
# sys.getsizeof sum) and "done". Then, with HOLD set, waits for a line (memtrail stops
# first); without, returns at once: the interpreter finalizes (freeing them) and exits, or with
# EXIT set ends at once with os._exit(EXIT), without finalizing.
# With BUFFERS set, also keeps, right after them, a list, a set and a dict of 1,000 items each
# at lines of their own, their tables malloc's blocks (over pymalloc's 512 bytes), which the
# interpreter frees as it finalizes: prints "line late_NAME N" for each and "count
# late_NAME_table B", the bytes of that table (sys.getsizeof less that of an empty one).
import os
import re
import sys
import time


class Late:
    pass


kept = []


def late(count):
    for _ in range(count):
        kept.append(Late())  # line: late


def late_buffers():
    kept.append([None] * 1000)  # line: late_list
    kept.append(set(range(1000)))  # line: late_set
    kept.append(dict.fromkeys(range(1000)))  # line: late_dict
    for thing, empty in zip(kept[-3:], ([], set(), {})):
        name = type(thing).__name__
        print(f"count late_{name}_table {sys.getsizeof(thing) - sys.getsizeof(empty)}", flush=True)


with open(__file__) as source:
    for number, text in enumerate(source, 1):
        marked = re.search(r"  # line: (\w+)$", text.rstrip())
        if marked:
            print(f"line {marked.group(1)} {number}", flush=True)
if os.environ.get("HOLD"):
    sys.stdin.readline()
else:
    time.sleep(float(os.environ.get("WAIT", "1")))
count = int(os.environ.get("COUNT", "1500"))
late(count)
print(f"count late {count}", flush=True)
print(f"count late_bytes {sum(sys.getsizeof(thing) for thing in kept)}", flush=True)
if os.environ.get("BUFFERS"):
    late_buffers()
print("done", flush=True)
if os.environ.get("HOLD"):
    sys.stdin.readline()
if os.environ.get("EXIT"):
    os._exit(int(os.environ["EXIT"]))
