# SPDX-License-Identifier: Apache-2.0
# A Python program whose second module's code takes the address of the first's: memtrail must
# not name B's frames after A. reused_code_a.py and reused_code_b.py have the same shape, so
# their <module> code objects are of one size: A's is freed right after its import, and B's,
# made next, takes its place (CPython's allocator hands the last freed block of a size out
# first). Each keeps 1000 bytes(600) at its "# line:" line: one calloc of 633 bytes each (the
# 33-byte header, then the data: past pymalloc's 512 bytes). Between the imports it sleeps
# longer than memtrail's naming period, so A's code is named while it lives. Prints "ready
# PID", waits for a line, prints the "line NAME N" lines of both modules and "line same_code 1"
# when the two code objects had one address (0 when not: the test then proves nothing), prints
# "done", then waits for "quit" or end of input.
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
here = os.path.dirname(os.path.abspath(__file__))
for name in ("reused_code_a.py", "reused_code_b.py"):
    with open(os.path.join(here, name)) as source:
        for number, text in enumerate(source, 1):
            if "# line: " in text:
                print(f"line {text.split('# line: ')[1].strip()} {number}", flush=True)
import reused_code_a  # noqa: E402

time.sleep(0.6)
import reused_code_b  # noqa: E402

print(f"code objects at {reused_code_a.CODE_ID:#x} and {reused_code_b.CODE_ID:#x}",
      file=sys.stderr, flush=True)
print(f"line same_code {int(reused_code_a.CODE_ID == reused_code_b.CODE_ID)}", flush=True)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
