# SPDX-License-Identifier: Apache-2.0
# A Python program whose allocations come from Python code called back from C: sort_pairs()
# calls libc's qsort through ctypes with a Python comparator, which keeps a bytes(1000) (one
# calloc of 1,033 bytes) per comparison. qsort of two elements compares them once, so ROUNDS
# calls keep exactly ROUNDS blocks. Its stacks nest two eval-loop calls with C code between
# them: the comparator's, under libffi's closure and qsort, and sort_pairs()'s, under the script.
# Prints "ready PID", waits for a line, prints the lines marked "# line: NAME", runs, prints
# "done", then waits for "quit" or end of input.
import ctypes
import os
import sys

ROUNDS = int(os.environ.get("ROUNDS", "300"))
kept = []

libc = ctypes.CDLL(None)
COMPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
libc.qsort.restype = None
libc.qsort.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, COMPARE]


def compare(a, b):
    kept.append(bytes(1000))  # line: compare
    return a[0] - b[0]


comparator = COMPARE(compare)


def sort_pairs(rounds):
    for i in range(rounds):
        pair = (ctypes.c_int * 2)(i + 1, i)
        libc.qsort(pair, 2, ctypes.sizeof(ctypes.c_int), comparator)  # line: sort_pairs


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
with open(__file__) as source:
    for number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {number}", flush=True)
sort_pairs(ROUNDS)
assert len(kept) == ROUNDS, len(kept)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
