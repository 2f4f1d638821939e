/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The Python frames of an allocating CPython thread (see struct memtrail_python_layout). */
#ifndef MEMTRAIL_ALLOC_PYTHON_FRAMES_BPF_H
#define MEMTRAIL_ALLOC_PYTHON_FRAMES_BPF_H

#include "common.bpf.h"
#include "arch_x86_64.bpf.h"
#include "alloc_events.h"

/* --python-frames other than native: CPython processes get their Python frames walked. */
const volatile bool python_frames = false;
const volatile struct memtrail_python_layout python_layout = {};

/* CPython processes, by tgid (userspace adds them when it finds their _PyRuntime). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_process);
} python_processes SEC(".maps");

/* The Python frames of each stack that has any, by stack id. Memory only for Python stacks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_stack);
} python_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct memtrail_python_stack);
} python_scratch SEC(".maps");

/* The frames of a thread's Python calls lie one after the other in its data stack (CPython
 * pushes each on the current chunk, callers below callees): one read of the span below the
 * first frame holds most of the frames the walk goes on to, where a read per frame cost ~115 ns
 * each on a web server's ~13 frames (measured). Frames elsewhere (a generator's, an older
 * chunk's, beyond the span) are read one by one, as before. */
#define PYTHON_WINDOW 4096

struct python_window {
	__u64 chunk, limit; /* the thread's datastack_chunk and datastack_limit */
	__u8 tstate[MEMTRAIL_PYTHON_TSTATE_READ]; /* from python_tstate_low() on */
	__u64 low, high; /* what bytes hold, [low, high); empty until read */
	__u64 read;	 /* the window was read (or its read failed): not again */
	__u8 single[MEMTRAIL_PYTHON_FRAME_READ]; /* a frame outside the window, read alone */
	__u8 bytes[PYTHON_WINDOW];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct python_window);
} python_window_scratch SEC(".maps");

/* Threads searched in the interpreter's list when the GIL holder is another thread. */
#define PYTHON_MAX_THREADS 16

static __always_inline __u64 read_user_u64(__u64 address)
{
	__u64 value = 0;

	if (bpf_probe_read_user(&value, sizeof(value), (const void *)address))
		return 0;
	return value;
}

struct python_walk {
	struct memtrail_python_stack *stack;
	__u64 frame;
	__u64 hash;
	__u32 entries;		      /* entry frames read: one per eval-loop call */
	struct python_window *window; /* NULL: every frame read on its own */
};

/* The MEMTRAIL_PYTHON_FRAME_READ bytes at walk->frame: from the window when it holds them
 * (read, on the first frame in the current chunk, from that frame back to the chunk's start or
 * PYTHON_WINDOW bytes), else read alone; NULL when they cannot be read. In map memory: a
 * buffer on the BPF stack put the programs over its 512 bytes. */
static __always_inline const __u8 *python_frame_bytes(struct python_walk *walk)
{
	struct python_window *window = walk->window;
	__u64 frame = walk->frame, chunk, limit, high, low, size, offset;

	if (!window)
		return NULL;
	chunk = window->chunk;
	limit = window->limit;
	if (!window->read && frame >= chunk && frame < limit) {
		window->read = 1;
		high = frame + MEMTRAIL_PYTHON_FRAME_READ;
		if (high > limit)
			high = limit;
		low = high - chunk > PYTHON_WINDOW ? high - PYTHON_WINDOW : chunk;
		size = high - low;
		if (size && size <= PYTHON_WINDOW &&
		    !bpf_probe_read_user(window->bytes, size, (const void *)low)) {
			window->low = low;
			window->high = high;
		}
	}
	if (frame >= window->low && frame + MEMTRAIL_PYTHON_FRAME_READ <= window->high) {
		offset = frame - window->low;
		if (offset <= PYTHON_WINDOW - MEMTRAIL_PYTHON_FRAME_READ) {
			return &window->bytes[offset];
		}
	}
	if (bpf_probe_read_user(window->single, sizeof(window->single), (const void *)frame))
		return NULL;
	return window->single;
}

static __always_inline __u64 frame_u64(const __u8 *raw, __u32 offset)
{
	if (offset > MEMTRAIL_PYTHON_FRAME_READ - sizeof(__u64))
		return 0;
	return *(const __u64 *)&raw[offset];
}

static __always_inline __u8 frame_u8(const __u8 *raw, __u32 offset)
{
	if (offset > MEMTRAIL_PYTHON_FRAME_READ - 1)
		return 0;
	return raw[offset];
}

static long python_step(__u32 index, struct python_walk *walk)
{
	const __u8 *raw;
	__u64 code, globals, previous, prev_instr, first_instr, lasti, packed;
	__u8 is_entry, owner;
	__u32 slot;

	if (!walk->frame)
		return 1;
	if (index >= MEMTRAIL_MAX_PYTHON_DEPTH) {
		walk->stack->flags |= MEMTRAIL_PYTHON_TRUNCATED;
		return 1;
	}
	raw = python_frame_bytes(walk);
	if (!raw) {
		walk->stack->flags |= MEMTRAIL_PYTHON_UNREADABLE;
		return 1;
	}
	/* Userspace checks that every field lies within raw; the bounds are for the verifier. */
	code = frame_u64(raw, python_layout.frame_code);
	globals = frame_u64(raw, python_layout.frame_globals);
	previous = frame_u64(raw, python_layout.frame_previous);
	prev_instr = frame_u64(raw, python_layout.frame_prev_instr);
	is_entry = frame_u8(raw, python_layout.frame_is_entry);
	owner = frame_u8(raw, python_layout.frame_owner);
	walk->frame = previous;
	if (owner == python_layout.owner_cstack)
		return 0; /* a shim the interpreter pushes for C calls: no Python code */
	first_instr = code + python_layout.code_adaptive;
	/* A frame being set up has no instruction yet (prev_instr before the first): index 0. */
	lasti = prev_instr >= first_instr ? (prev_instr - first_instr) / 2 : 0;
	if (lasti > MEMTRAIL_PYTHON_LASTI_MAX)
		lasti = MEMTRAIL_PYTHON_LASTI_MAX;
	packed = (code & MEMTRAIL_PYTHON_CODE_MASK) | (lasti << MEMTRAIL_PYTHON_LASTI_SHIFT) |
		 (is_entry ? MEMTRAIL_PYTHON_ENTRY : 0);
	slot = index & (MEMTRAIL_MAX_PYTHON_DEPTH - 1);
	walk->stack->frames[slot] = packed;
	walk->stack->globals[slot] = globals;
	walk->stack->depth = index + 1;
	walk->hash = (walk->hash ^ packed) * 0x100000001B3ULL;
	walk->hash = (walk->hash ^ globals) * 0x100000001B3ULL;
	if (is_entry)
		walk->entries++;
	return 0;
}

/* The PyThreadState fields the walk reads lie in [python_tstate_low(), python_tstate_high()).
 * (python_layout is read-only data: the verifier knows these, and drops the branches they
 * decide.) */
static __always_inline __u32 python_tstate_low(void)
{
	__u32 low = python_layout.tstate_thread_id;

	if (python_layout.tstate_cframe < low)
		low = python_layout.tstate_cframe;
	if (python_layout.tstate_datastack_chunk < low)
		low = python_layout.tstate_datastack_chunk;
	return low;
}

static __always_inline __u32 python_tstate_high(void)
{
	__u32 high = python_layout.tstate_thread_id;

	if (python_layout.tstate_cframe > high)
		high = python_layout.tstate_cframe;
	if (python_layout.tstate_datastack_limit > high)
		high = python_layout.tstate_datastack_limit;
	return high + sizeof(__u64);
}

/* The field at `offset` of the thread state read into window->tstate. */
static __always_inline __u64 tstate_u64(struct python_window *window, __u32 offset)
{
	__u32 at = offset - python_tstate_low();

	if (at > MEMTRAIL_PYTHON_TSTATE_READ - sizeof(__u64))
		return 0;
	return *(__u64 *)&window->tstate[at];
}

/* Reads the fields of thread state `tstate` the walk needs into window->tstate, in one read
 * (where a read each cost ~115 ns; userspace checks that they lie within
 * MEMTRAIL_PYTHON_TSTATE_READ bytes); false when it fails. */
static __always_inline bool read_thread_state(struct python_window *window, __u64 tstate)
{
	__u32 size = python_tstate_high() - python_tstate_low();

	if (!tstate || size > MEMTRAIL_PYTHON_TSTATE_READ)
		return false;
	return !bpf_probe_read_user(window->tstate, size,
				    (const void *)(tstate + python_tstate_low()));
}

/* The thread state in the interpreter's list whose thread_id is this thread's pthread_self()
 * (arch_thread_pointer), for a thread that is not the GIL holder; 0 when none is. */
__noinline __u64 python_listed_thread_state(__u64 runtime, __u64 pthread_id)
{
	__u64 tstate, interp;

	if (!runtime || !pthread_id)
		return 0;
	interp = read_user_u64(runtime + python_layout.runtime_interp_main);
	if (!interp)
		return 0;
	tstate = read_user_u64(interp + python_layout.interp_threads_head);
	for (int i = 0; i < PYTHON_MAX_THREADS && tstate; i++) {
		if (read_user_u64(tstate + python_layout.tstate_thread_id) == pthread_id)
			return tstate;
		tstate = read_user_u64(tstate + python_layout.tstate_next);
	}
	return 0;
}

/* Reads the calling thread's PyThreadState into window->tstate: the GIL holder's when that is
 * this thread (the common case: Python code allocating), else the listed one that is. False
 * when none is, or it cannot be read. A global function: checked once by the verifier. */
__noinline bool python_thread_state(struct python_window *window, __u64 runtime, __u64 pthread_id)
{
	__u64 tstate;

	if (!window || !runtime || !pthread_id)
		return false;
	tstate = read_user_u64(runtime + python_layout.runtime_tstate_current);
	if (read_thread_state(window, tstate) &&
	    tstate_u64(window, python_layout.tstate_thread_id) == pthread_id)
		return true;
	tstate = python_listed_thread_state(runtime, pthread_id);
	return read_thread_state(window, tstate);
}

/* Reads the Python frames of the calling thread into the scratch stack and mixes them into
 * `hash`; NULL when the process is not a CPython one memtrail walks. For one, the native stack
 * from `sp` (the walk's first stack pointer) is read at once into the scratch's span, and
 * `scratch->eval_loops` says where the native walk may end: after the eval-loop frame of the
 * outermost entry frame, when every frame of the chain was read (a chain cut short leaves eval
 * loops unaccounted for: count 0). */
static __always_inline struct memtrail_python_stack *
capture_python(__u32 tgid, __u64 sp, __u64 *hash, struct walk_scratch *scratch)
{
	struct python_walk walk = {};
	struct memtrail_python_process *process;
	struct memtrail_python_stack *stack;
	struct task_struct *task;
	struct python_window *window;
	struct stack_words frame;
	__u64 cframe;
	__u32 zero = 0;

	if (!python_frames)
		return NULL;
	process = bpf_map_lookup_elem(&python_processes, &tgid);
	if (!process)
		return NULL;
	stack = bpf_map_lookup_elem(&python_scratch, &zero);
	window = bpf_map_lookup_elem(&python_window_scratch, &zero);
	if (!stack || !window)
		return NULL;
	scratch->python = 1;
	/* The walks of a CPython thread are deep (~14 native frames to the outermost eval loop
	 * of a web server's request), and its current _PyCFrame lies on that stack: read at once. */
	stack_span_fill(&scratch->span, sp);
	stack->tgid = tgid;
	stack->depth = 0;
	stack->flags = 0;
	task = bpf_get_current_task_btf();
	if (!python_thread_state(window, process->runtime_address, arch_thread_pointer(task))) {
		stack->flags = MEMTRAIL_PYTHON_NO_THREAD;
	} else {
		cframe = tstate_u64(window, python_layout.tstate_cframe);
		frame.word[0] = 0;
		if (!cframe ||
		    stack_read(scratch, &frame, 8, cframe + python_layout.cframe_current_frame))
			frame.word[0] = 0;
		walk.frame = frame.word[0];
		stack_span_reach(&scratch->span, cframe + python_layout.cframe_current_frame + 8);
		walk.stack = stack;
		walk.hash = *hash;
		window->low = window->high = window->read = 0;
		window->chunk = tstate_u64(window, python_layout.tstate_datastack_chunk);
		window->limit = tstate_u64(window, python_layout.tstate_datastack_limit);
		walk.window = window;
		bpf_loop(MEMTRAIL_MAX_PYTHON_DEPTH + 1, python_step, &walk, 0);
		*hash = walk.hash;
		if (!stack->flags && process->eval_loop_end > process->eval_loop_start) {
			scratch->eval_loops.start = process->eval_loop_start;
			scratch->eval_loops.end = process->eval_loop_end;
			scratch->eval_loops.count = walk.entries;
		}
	}
	*hash ^= ((__u64)stack->flags << 56) | stack->depth;
	return stack;
}

#endif /* MEMTRAIL_ALLOC_PYTHON_FRAMES_BPF_H */
