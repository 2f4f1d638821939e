# SPDX-License-Identifier: Apache-2.0
# A Python program for memtrail's Python frames, run by Debian's /usr/bin/python3. One function
# keeps what it allocates in a module-level list (grow), one allocates as much and drops it
# (churn), and one leaks through C: malloc called with ctypes (leak_native); another thread
# keeps 50 more (threaded_leak), and deep() keeps one 40 Python frames down. Blocks of more than
# 512 bytes leave pymalloc for the C allocator, so each bytes(1000) is one calloc of 1,033
# bytes (the object's 33-byte header, then its data). Prints "ready PID", waits for a line,
# prints the lines marked "# line: NAME", runs ROUNDS rounds, prints "done", then waits for
# "quit" or end of input.
import ctypes
import os
import sys
import threading
import time

ROUNDS = int(os.environ.get("ROUNDS", "10"))
PER_ROUND = 200
kept = []

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]


def grow(count):
    for _ in range(count):
        kept.append(bytes(1000))  # line: grow


def churn(count):
    dropped = [bytes(1000) for _ in range(count)]  # line: churn
    del dropped


def leak_native(count):
    for _ in range(count):
        libc.malloc(4000)  # line: leak_native


def deep(depth):
    """Allocates 40 Python frames down: more than memtrail keeps (32). 16 locals (and as many
    stack slots to unpack them) make each frame ~370 bytes: the 32 kept span more of the data
    stack than the BPF walker reads at once (4 KiB), so the frames beyond are read one by one."""
    _a, _b, _c, _d, _e, _f, _g, _h, _i, _j, _k, _l, _m, _n, _o, _p = range(16)
    if depth > 0:
        return deep(depth - 1)  # line: deep_call
    kept.append(bytearray(2000))  # line: deep


def threaded_leak(count):
    for _ in range(count):
        kept.append(bytes(3000))  # line: threaded


class Worker:
    def step(self):
        grow(PER_ROUND)  # line: step
        churn(PER_ROUND)
        leak_native(3)


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
# The lines the test expects in the stacks: "line NAME N" for each "# line: NAME" above.
with open(__file__) as source:
    for number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {number}", flush=True)
deep(40)
# Another thread: its own thread state and frames (the main thread waits without the GIL).
thread = threading.Thread(target=threaded_leak, args=(50,))
thread.start()
thread.join()
worker = Worker()
for _ in range(ROUNDS):
    worker.step()
    time.sleep(0.05)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
