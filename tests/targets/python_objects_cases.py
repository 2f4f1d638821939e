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
#   sizes     one line per kind keeps 30 objects of one type (str of each width, one whose
#             UTF-8 cache is filled after reports have read it, bytes, int, float, complex,
#             tuple, list grown by appends, dict after deletions, set after growth, frozenset,
#             instances plain and with __slots__, bytearray, OrderedDict, deque, defaultdict,
#             Counter, int and str subclasses); states each kind's type name (tp_name), the sum
#             of its sys.getsizeof, and the part of it in blocks malloc serves (a deque's, each
#             over 512 bytes); also keeps array.array objects, whose __sizeof__ adds memory
#             memtrail does not read ("count estimated_NAME 1": their type's __name__)
#   immutable for the duty cycle: rounds in which a first line keeps strs and tuples for a
#             while, then drops them, and a second line at once makes as many of the same
#             types and sizes, other content, at the same addresses (mostly while the probes
#             are detached, as they are 90 % of the time)
#   many      for the duty cycle: about 250,000 strs kept, then a quiet time
#   churn     for the duty cycle: rounds in which a churner keeps dicts for a while, then drops
#             them onto the dict free list, and a keeper at once takes them from it
#   closing   for the duty cycle: rounds in which, once its object creations run slow (the probes
#             are attached), a first line makes 400 strs, and once they run fast again (the
#             window's close has begun: the probes are out), those die and a second line makes
#             400 strs of the same size, other content, at their addresses, and keeps them
#             (with MEMTRAIL_TEST_CLOSE_DELAY_MS, memtrail's read at that close comes later)
#   ending    for the duty cycle: rounds in which, once its object creations run slow after running
#             fast (a window begins), a first line makes 400 Item instances, and if the creations still
#             run slow 0.6 s later (the window has ended, its probes held in by
#             MEMTRAIL_TEST_CLOSING_DELAY_MS), those die and a second line makes 400 Items at
#             their addresses and keeps them
#   stopping  a first line makes 100 ints (28 bytes) and keeps one, the program says "done"
#             (memtrail is stopped then), and 15 ms later a second line makes 100 ints of 32
#             bytes, mostly at the dead ones' addresses (pymalloc's size class of 32 bytes),
#             and keeps them: while memtrail's final reading runs, its tracing stopped
# Prints "ready PID", waits for a line, prints "line NAME N" for the lines memtrail must find,
# runs the scenario, prints "count NAME N" for what it states (sys.getsizeof sums, how many
# addresses were reused, verified with id()), "done", then waits for "quit" or end of input.
import array
import collections
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


def trap_time(count=200):
    # Each creation traps while the object probes are attached: 50-100x slower then.
    began = time.perf_counter()
    for _ in range(count):
        Item()
    return time.perf_counter() - began


def wait_for_probes(attached, fast, timeout=20.0):
    # Two chunks in a row: another process taking the CPU can make one slow, not one fast.
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = seen + 1 if (trap_time() > 10 * fast) == attached else 0
        if seen == 2:
            return True
    return False


def close_first(count, round_number):
    made = []
    for i in range(count):
        made.append(f"close-{round_number:04d}-{i:050d}")  # line: close_first
    return made


def close_second(count, round_number):
    for i in range(count):
        kept.append(f"after-{round_number:04d}-{i:050d}")  # line: close_second


def closing():
    # The speed with the probes detached: over 1.5 s, most of it detached at the default duty.
    fast, began = float("inf"), time.monotonic()
    while time.monotonic() - began < 1.5:
        fast = min(fast, trap_time())
    swapped = reused = 0
    for round_number in range(int(os.environ.get("ROUNDS", "3"))):
        if not wait_for_probes(True, fast):
            continue
        old = close_first(400, round_number)
        if not wait_for_probes(False, fast):
            continue
        time.sleep(0.15)  # the links are closed by now: no creation is seen
        addresses = set(id(text) for text in old)
        del old
        start = len(kept)
        close_second(400, round_number)
        reused += sum(id(text) in addresses for text in kept[start:])
        addresses.clear()
        swapped += 1
    time.sleep(0.5)
    print(f"count swapped {swapped}", flush=True)
    print(f"count reused {reused}", flush=True)


def end_first(count):
    made = []
    for _ in range(count):
        made.append(Item())  # line: end_first
    return made


def end_second(count):
    for _ in range(count):
        kept.append(Item())  # line: end_second


def ending():
    # The probes are in over 2 s of every 3 (each window's end held), out for the rest.
    fast, began = float("inf"), time.monotonic()
    while time.monotonic() - began < 3.5:
        fast = min(fast, trap_time())
    swapped = reused = 0
    for _ in range(int(os.environ.get("ROUNDS", "2"))):
        # A window's start: slow after fast (the time its end is held is slow too, but records
        # nothing).
        if not wait_for_probes(False, fast) or not wait_for_probes(True, fast):
            continue
        made_at = time.monotonic()
        old = end_first(400)
        time.sleep(max(0.0, 0.6 - (time.monotonic() - made_at)))
        if trap_time() > 10 * fast:  # still attached: the window's end, held
            addresses = set(id(item) for item in old)
            del old
            start = len(kept)
            end_second(400)
            reused += sum(id(item) in addresses for item in kept[start:])
            addresses.clear()
            swapped += 1
        old = None
    time.sleep(0.5)
    print(f"count swapped {swapped}", flush=True)
    print(f"count reused {reused}", flush=True)


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


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a):
        self.a = a


class Number(int):
    pass


class Text(str):
    pass


def tp_name(kind):
    # A static type's tp_name names its module (but builtins'); a class's is its name.
    if kind.__flags__ & (1 << 9) or kind.__module__ == "builtins":  # Py_TPFLAGS_HEAPTYPE
        return kind.__name__
    return kind.__module__ + "." + kind.__qualname__


def sizes():
    count = 30
    made = {kind: [] for kind in ("str_ascii", "str_latin1", "str_ucs2", "str_ucs4", "str_utf8",
                                  "bytes", "int", "float", "complex", "tuple", "list", "dict",
                                  "set", "frozenset", "instance", "slotted", "bytearray",
                                  "odict", "deque", "defaultdict", "counter", "int_subclass",
                                  "str_subclass")}
    estimated = []
    for i in range(count):
        made["str_ascii"].append("a" * 30 + str(i))  # line: str_ascii
        made["str_latin1"].append("é" * 10 + str(i))  # line: str_latin1
        made["str_ucs2"].append("ሴ" * 10 + str(i))  # line: str_ucs2
        made["str_ucs4"].append("\U0001F600" * 10 + str(i))  # line: str_ucs4
        made["str_utf8"].append("ü" * (10 + i) + str(i))  # line: str_utf8
        made["bytes"].append(b"x" * (i % 50) + bytes(1))  # line: bytes
        made["int"].append(10**30 + i)  # line: int
        made["float"].append(i + 0.5)  # line: float
        made["complex"].append(complex(i, 1))  # line: complex
        made["tuple"].append((i, "t", None))  # line: tuple
        grown = []  # line: list
        for k in range(i % 9):
            grown.append(k)
        made["list"].append(grown)
        table = {}  # line: dict
        for k in range(10):
            table[k] = k
        for k in range(i % 6):
            del table[k]
        made["dict"].append(table)
        bag = set()  # line: set
        bag.update(range(i % 12))
        made["set"].append(bag)
        made["frozenset"].append(frozenset(range(i % 7)))  # line: frozenset
        made["instance"].append(Item())  # line: instance
        made["slotted"].append(Slotted(i))  # line: slotted
        buffer = bytearray(b"x" * (i % 20))  # line: bytearray
        buffer += b"y" * 30
        made["bytearray"].append(buffer)
        ordered = collections.OrderedDict()  # line: odict
        for k in range(i % 8):
            ordered[k] = k
        made["odict"].append(ordered)
        queue = collections.deque()  # line: deque
        queue.extend(range(i * 5))  # line: deque_extend
        made["deque"].append(queue)
        default = collections.defaultdict(list)  # line: defaultdict
        for k in range(i % 4):
            default[k]
        made["defaultdict"].append(default)
        made["counter"].append(collections.Counter("abcdefg"[: i % 7 + 1]))  # line: counter
        made["int_subclass"].append(Number(10**20 + i))  # line: int_subclass
        made["str_subclass"].append(Text("ü" * i + str(i)))  # line: str_subclass
        estimated.append(array.array("d", [0.5] * i))  # line: estimated
    kept.append(made)
    kept.append(estimated)
    time.sleep(0.6)  # read by reports (every 0.25 s) before their UTF-8 caches are filled
    for text in made["str_utf8"]:
        type(text, (), {})  # a class named by it: CPython fills its UTF-8 cache
    time.sleep(0.3)
    for kind, things in made.items():
        name = tp_name(type(things[0]))
        print(f"count getsizeof_{kind}={name} {sum(sys.getsizeof(t) for t in things)}",
              flush=True)
        print(f"count objects_{kind} {len(things)}", flush=True)
        # The part of __sizeof__ past the object's own (object.__sizeof__) that malloc serves:
        # a deque's blocks (over 512 bytes each); the others' buffers here are pymalloc's.
        malloc = 0
        if kind == "deque":
            malloc = sum(t.__sizeof__() - object.__sizeof__(t) for t in things)
        print(f"count malloc_{kind} {malloc}", flush=True)
    # Their names: the last part of a tp_name (array's type is a heap type made from a spec,
    # whose tp_name "array.array" Python code cannot read).
    for name in sorted(set(type(thing).__name__ for thing in estimated)):
        print(f"count estimated_{name} 1", flush=True)


print(f"ready {os.getpid()}", flush=True)
sys.stdin.readline()
with open(__file__) as source:
    for line_number, text in enumerate(source, 1):
        if "# line: " in text and "print" not in text:
            print(f"line {text.split('# line: ')[1].strip()} {line_number}", flush=True)
{"exact": exact, "freelist": freelist, "reuse": reuse, "thread": thread, "immutable": immutable,
 "churn": churn_rounds, "many": many, "sizes": sizes, "stopping": stopping,
 "closing": closing, "ending": ending}[scenario]()
time.sleep(0.3)
print("done", flush=True)
for line in sys.stdin:
    if line.startswith("quit"):
        break
