# SPDX-License-Identifier: Apache-2.0
# For memtrail's report of a Python program that ends: objects kept right before the end.
# Prints "line late N" (the line that keeps them), sleeps WAIT seconds (default 1: memtrail is
# attached and its reports, if any, are past), or with HOLD set waits for a line, keeps COUNT (default 1,500) `Late` instances in a
# module-level list at that line, prints "count late COUNT", "count late_bytes B" (their
# sys.getsizeof sum) and "done". Then, with HOLD set, waits for a line (memtrail stops
# first); without, returns at once: the interpreter finalizes (freeing them) and exits, or with
# EXIT set ends at once with os._exit(EXIT), without finalizing.
import os
import sys
import time


class Late:
    pass


kept = []


def late(count):
    for _ in range(count):
        kept.append(Late())  # line: late


with open(__file__) as source:
    for number, text in enumerate(source, 1):
        if text.rstrip().endswith("# line: late"):
            print(f"line late {number}", flush=True)
if os.environ.get("HOLD"):
    sys.stdin.readline()
else:
    time.sleep(float(os.environ.get("WAIT", "1")))
count = int(os.environ.get("COUNT", "1500"))
late(count)
print(f"count late {count}", flush=True)
print(f"count late_bytes {sum(sys.getsizeof(thing) for thing in kept)}", flush=True)
print("done", flush=True)
if os.environ.get("HOLD"):
    sys.stdin.readline()
if os.environ.get("EXIT"):
    os._exit(int(os.environ["EXIT"]))
