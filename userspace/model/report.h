// SPDX-License-Identifier: Apache-2.0
// The report model: everything a renderer needs, symbolized, ranked and free of BPF details.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/snapshot.h"

namespace memtrail::model {

// One symbolized frame. Inlined functions yield several frames for the same address: the
// innermost first, each marked `inlined` except the outermost (the real, called function).
struct Frame {
  uint64_t address = 0;  // absolute address in the traced process
  std::string module;    // path of the mapped file as the process sees it, or "[unknown]"
  uint64_t offset = 0;   // address in the module's own ELF address space (what addr2line takes)
  std::optional<std::string> function;  // demangled
  std::optional<std::string> file;
  std::optional<uint32_t> line;
  bool inlined = false;
  // A Python frame (--python-frames): address is the code object's, module "[python]", offset
  // the bytecode offset of its instruction, function the qualified name.
  bool python = false;
};

// How a site's outstanding memory moved over the run, and what that makes it.
struct Growth {
  std::string verdict;  // "leak", "suspect", "steady", "transient", "too_short"
  double bytes_per_s = 0;
  double r_squared = 0;
  double grew_share = 0;
  size_t points = 0;
  double span_s = 0;
  bool freed_any = false;
  double median_age_s = 0;  // of the outstanding blocks, to a factor of 2
  std::string reason;
  struct Point {
    double t_s = 0;  // since tracing started
    double bytes = 0;
    double allocations = 0;
  };
  std::vector<Point> series;
};

// CPython objects of one type, in one process or at one site. From the tracked objects
// (--python-objects on): the live objects found at the report, by the type they were created
// with. From the allocator probes (--python-types with --python-objects off): the objects the
// garbage collector tracks, made minus freed since memtrail attached.
struct PythonType {
  uint32_t pid = 0;
  std::string type;                 // tp_name: "dict", "Session", "collections.OrderedDict"
  int64_t outstanding_objects = 0;  // (allocator probes: negative when more were freed)
  int64_t outstanding_bytes = 0;  // those objects' own size (as sys.getsizeof, GC header included)
  double growth_objects_per_s = 0;  // least-squares slope of outstanding_objects over the run
  uint64_t made = 0, freed = 0;     // allocator probes only
  double growth_bytes_per_s = 0;    // of outstanding_bytes (tracked objects only)
  std::string source = "allocator_probes";  // or "objects"
  // How outstanding_bytes were sized (kSizingExact, kSizingEstimated); empty when the report
  // does not say (read back from a report written before it did).
  std::string sizing = {};
  // Not known exact: an estimate, or a kind of sizing this build does not know.
  bool sized_by_estimate() const { return !sizing.empty() && sizing != kSizingExact; }
  // sys.getsizeof's figure as memtrail charges it, computed as the type's own __sizeof__ does.
  static constexpr const char* kSizingExact = "exact";
  // An estimate: the type's basic and item sizes, its __sizeof__ counting memory memtrail does
  // not read (array.array's items, a class's __sizeof__ in Python); or, from the allocator
  // probes, the objects' own size whatever their __sizeof__.
  static constexpr const char* kSizingEstimated = "estimated";
};

struct LeakSite {
  uint32_t pid = 0;
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t total_allocated_bytes = 0;
  uint64_t total_allocations = 0;
  // Of total_allocations, those freed: total_allocations = freed_allocations + the site's
  // blocks not freed (outstanding_allocations, plus those --min-age hides).
  uint64_t freed_allocations = 0;
  double oldest_age_s = 0;
  std::string allocator;          // the traced function that returned the memory, e.g. "malloc"
  uint64_t mismatched_frees = 0;  // its blocks released by the wrong function (new/free, ...)
  std::vector<Frame> stack;       // innermost (the allocator's caller) first
  // The stack stops before the program's outermost frame: a frame without a frame pointer (or
  // the depth limit) ended the walk, or the stack could not be stored and only the calling
  // function is known. The frames shown are right; outer callers are missing.
  bool stack_truncated = false;
  // Why the walk stopped (see model::Snapshot::Stack), or "stack_map_full" when only the
  // calling function is known; empty when not truncated or not known (older reports).
  std::string stack_truncation_reason;
  std::optional<Growth> growth;  // absent only in reports built without a history
  // Memory kept on purpose (a built-in or --suppressions entry matched a frame): why.
  std::optional<std::string> suppressed;
  // Its counts and bytes are estimates: Python objects seen in part of the time
  // (--python-objects on), scaled by the share of the process's objects the probes saw
  // (Target::python_objects_observed_fraction).
  bool estimated = false;
  // What the site holds: "python_objects" (CPython objects charged to the stack that created
  // them) or "native" (blocks of a traced allocator, mapped regions); empty when not known (a
  // site that freed everything, a report from before sites said it).
  std::string kind;
  // Its Python objects by type, most bytes first (kind "python_objects").
  std::vector<PythonType> python_types;
  // Some of its bytes are estimates by size: objects of a type sized by estimate.
  bool sized_by_estimate() const {
    for (const auto& type : python_types)
      if (type.sized_by_estimate()) return true;
    return false;
  }
};

// A traced process's private memory over the run next to its traced allocations.
struct ProcessMemory {
  double rss_anon_bytes = 0;   // at the report (RssAnon: heap and anonymous mappings)
  bool assessed = false;       // enough history to compare the two
  double rss_bytes_per_s = 0;  // least-squares slopes over the run
  double traced_bytes_per_s = 0;
  bool untraced_growth = false;  // private memory grows beyond what traced allocations explain
  std::string reason;
  struct Point {
    double t_s = 0, rss_anon_bytes = 0, traced_bytes = 0;
  };
  std::vector<Point> series;
  // Which share of the RssAnon growth over the run the traced bytes explain (defined in
  // aggregator::MemoryCoverage). Absent in reports written before memtrail said it.
  struct Coverage {
    bool assessed = false;
    double span_s = 0;
    double rss_anon_growth_bytes = 0;
    double traced_growth_bytes = 0;
    double share = 0;    // traced / RssAnon growth, when assessed
    std::string reason;  // why not, when not
  };
  std::optional<Coverage> coverage;
};

// One module whose functions memtrail probes in a process.
struct TracedAllocator {
  std::string name;  // "glibc", "static glibc", "jemalloc", "tcmalloc", "mimalloc", "custom", ...
  std::string path;
  std::vector<std::string> functions;  // the probed names (aliases at one address: the first)
  std::string note;                    // a caveat, e.g. delete being free itself in tcmalloc
};

// A mapped allocator that gets no probe: its allocations are not seen.
struct UntracedAllocator {
  std::string name;
  std::string path;
  std::string reason;
  bool expected = false;  // glibc's malloc shadowed by the process's allocator: normal
};

// A traced process that exited while others were still traced: what it left behind. Its
// blocks were then removed from memtrail's maps (so that dead processes never fill them); its
// sites stay in the report as they were at its exit.
struct ExitSummary {
  double after_s = 0;  // seconds after tracing started
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t sites = 0;
  uint64_t purged_blocks = 0;  // table slots freed for other processes
};

// The CPython interpreter a traced process runs (--python-frames).
struct PythonRuntime {
  std::string version;  // "3.11.2"
  std::string module;   // the file defining _PyRuntime: the python executable or libpython
  bool frames = false;  // its stacks show Python frames
  std::string reason;   // why not, when not
};

// A file mapped by a traced process, where the frames of its reported sites point (pprof's
// Mapping: go tool pprof names the first one, the main executable, as the profile's File).
struct MappedFile {
  std::string path;
  uint64_t start = 0;        // first address of the mapping
  uint64_t limit = 0;        // one past its last address
  uint64_t file_offset = 0;  // offset in the file of `start`
};

struct Target {
  uint32_t pid = 0;
  std::string comm;
  std::vector<std::string> cmdline;
  std::string exe;
  std::string allocator_module;  // file whose malloc was probed (the primary allocator)
  bool exited = false;
  std::optional<ProcessMemory> memory;  // absent before the first interval
  std::string allocator;                // its name: "glibc", "jemalloc", ... (see TracedAllocator)
  std::vector<TracedAllocator> allocators;  // every probed module, in load order
  std::vector<UntracedAllocator> untraced_allocators;
  ProcessLosses losses;             // what could not be tracked in this process
  std::optional<ExitSummary> exit;  // set when it exited before the end of tracing
  // Bytes the program break moved since attach, whoever moved it (malloc's main heap
  // included); absent when mapped memory is not followed (no --mmap).
  std::optional<int64_t> break_growth_bytes;
  std::optional<uint32_t> parent_pid;  // traced because this traced process forked it
  std::string cgroup;  // its cgroup (the unified hierarchy's path, else the first listed)
  // Its sites with outstanding memory (all of them, not only the reported top ones).
  uint64_t outstanding_bytes = 0;
  uint64_t sites = 0;
  std::optional<PythonRuntime> python =
      std::nullopt;  // absent: not a CPython process (or not looked at)
  // Why its Python objects are not traced although its frames are (the interpreter's code is
  // not what the creation-site scan expects, or the probes failed): a note says it.
  std::string python_objects_reason = std::string();
  // Why some of its Python objects' sizes are short of sys.getsizeof's (OrderedDict's
  // __sizeof__ is not the code memtrail reads it from): a note says so. Empty: all are exact.
  std::string python_sizes_reason = std::string();
  // The types of its Python objects sized by estimate (their basic and item sizes), their
  // __sizeof__ counting memory memtrail does not read: a note names them.
  std::vector<std::string> python_estimated_types = {};
  // A command memtrail launched: traced from its first instruction, nothing predates attach.
  bool traced_from_start = false;
  // With --sample-rate: frees of blocks the tracer never recorded, because the sampler passed
  // them over (or, in a process attached later, they predate attach). No loss: counted apart
  // from losses.unmatched_frees, which is then 0.
  uint64_t untracked_frees = 0;
  // Its executable's code mapping first (when known), then every other file mapping that a
  // frame of its reported sites (leaks and freed sites) points into. Empty in reports from
  // before they were kept, and for what memtrail never saw mapped.
  std::vector<MappedFile> mappings = {};
  // --python-objects on: the share of its Python objects the duty-cycled probes saw (its
  // allocations, or else the time, inside attached windows over all since they were placed;
  // aggregator::ObservedShare); its object sites are that share scaled up. Absent: exact, or
  // no object probes.
  std::optional<double> python_objects_observed_fraction = std::nullopt;
  // What that share was measured by: "allocations" or "time" (empty when absent).
  std::string python_objects_share_basis = {};
};

struct Totals {
  uint64_t allocations = 0;  // successful allocator calls seen (sampled or not)
  uint64_t frees = 0;
  uint64_t outstanding_bytes = 0;
  uint64_t outstanding_allocations = 0;
  uint64_t unmatched_frees = 0;
  uint64_t untracked_frees =
      0;  // --sample-rate: frees of unsampled blocks (Target::untracked_frees)
  uint64_t drops = 0;
  uint64_t failed_calls = 0;
  uint64_t stack_failures = 0;
  uint64_t site_drops = 0;
  uint64_t unsampled_allocations = 0;    // calls passed over by --sample-rate
  uint64_t mismatched_frees = 0;         // blocks released by the wrong function
  uint64_t usable_size_allocations = 0;  // recorded at the allocator's usable size
  uint64_t region_events_lost = 0;       // mmap/munmap/mremap/brk calls not followed
  uint64_t sites = 0;                    // distinct sites with outstanding memory (before --top)
  // outstanding_bytes and outstanding_allocations include Python objects seen part of the time
  // and scaled (LeakSite::estimated): estimates. The other counts are counted.
  bool estimated = false;
  // Read once the probes stopped counting (the final report): every count exact. Otherwise read
  // while the programs run: a block freed during the read counts as freed already.
  bool exact = false;
};

// How call stacks were walked (--unwind), and how many ended early.
struct UnwindModule {
  std::string path;
  std::string method;  // "cfi" (its CFI table), "frame_pointers" or "none"
  std::string reason;
  uint64_t rows = 0;
};

struct UnwindSummary {
  std::string mode;                  // "auto", "dwarf" or "fp"
  uint64_t stacks = 0;               // distinct stacks captured
  uint64_t stacks_using_tables = 0;  // of which at least one frame was unwound by CFI
  uint64_t truncated_stacks = 0;
  std::map<std::string, uint64_t> truncated_by_reason;
  std::vector<UnwindModule> modules;  // every code module of the traced processes
  uint64_t table_rows = 0;            // rows stored, shared by processes mapping the same file
  uint64_t table_bytes = 0;
  uint64_t table_capacity_rows = 0;
  uint64_t mappings_beyond_limit = 0;  // code mappings the walker had no room for
  // CPython walks through nested eval loops: the native frames below the innermost one walked,
  // or reused from a memo of the same registers over unchanged stack words.
  uint64_t python_segments_walked = 0;
  uint64_t python_segments_reused = 0;
};

// Probes that could not be attached (host-wide, --all): on which file, why, and what it cost.
struct AttachFailure {
  std::string path;        // the allocator's file
  std::string reason;      // the last failure's message
  uint64_t failures = 0;   // attempts that failed
  uint64_t processes = 0;  // processes left untraced because of it (at discovery)
  bool attached = false;   // a later attempt succeeded
};

// Exited processes folded into counts rather than listed, so that a host starting programs
// all day keeps a bounded report (and memtrail bounded state).
struct FoldedExits {
  uint64_t nothing_outstanding = 0;  // exited with no outstanding bytes
  uint64_t over_cap = 0;             // exit summaries beyond the kept ones
  uint64_t over_cap_outstanding_bytes = 0;
};

// Sites whose blocks were all freed, beyond those the report lists (Report::freed_sites):
// counted with what they allocated.
struct FreedSitesOmitted {
  uint64_t sites = 0;
  uint64_t allocations = 0;
  uint64_t bytes = 0;
  // Some of those sites are Python objects seen part of the time (LeakSite::estimated): the
  // sums are estimates.
  bool estimated = false;
};

// How the Python object probes ran (--python-objects on or exact).
struct PythonObjectsCoverage {
  bool exact = true;          // attached all the time: counts are counts
  double attached_share = 1;  // of each period, when duty-cycled
  double period_s = 0;
  // Over the traced CPython processes: the share of their objects the probes saw (their
  // allocations, or else the time, inside attached windows over all since their probes were
  // placed), and what it was measured by: "allocations", "time", or "mixed" (processes
  // measured differently: the mean of their shares). Sites marked estimated are what was seen
  // divided by their process's share.
  // "none" (and 0) when no process has had an object window yet (before_first_window).
  double observed_fraction = 1;
  std::string share_basis = "time";
  // The processes with object probes whose first window is to come, or that ended before it
  // (a short program memtrail launched): none of their objects was seen.
  std::vector<uint32_t> before_first_window = {};
  // Since attach, over all processes: objects recorded at their creation, those created
  // without a readable type (not recorded: never dropped in silence), and those the liveness
  // reads found dead and removed.
  uint64_t recorded = 0, untyped = 0, found_dead = 0;
  // Of found_dead, those whose content showed another object of the same type at their address
  // (created while the probes were detached); and, at this report, live records that may be
  // such another object, nothing proving otherwise (0 when exact).
  uint64_t found_replaced = 0, at_risk = 0;
  // The liveness reads at each attached window's close, the objects they read, and those that
  // read the whole table (see AllocTracer::sweep_python_objects).
  uint64_t window_sweeps = 0, sweep_objects_read = 0, whole_table_sweeps = 0;
  double sweep_seconds = 0;  // their time, summed
  // Live objects no content identifies beyond the bound of those the window closes read (the
  // watch list: as many as the ring of new objects holds), at the latest reading: their death
  // while attached is found at the next report, not at the close.
  uint64_t unwatched = 0;
};

struct Report {
  std::string tool_version;
  std::string host;
  std::string kernel;
  int64_t start_time_unix_ms = 0;
  int64_t end_time_unix_ms = 0;
  double duration_s = 0;
  double min_age_s = 0;
  uint64_t sample_rate = 0;  // bytes; 0: every allocation recorded, numbers exact
  uint32_t top = 0;
  bool final = false;  // the last report of the run (not an interval)
  std::vector<Target> targets;
  Totals totals;
  std::vector<LeakSite> leaks;          // ranked by outstanding bytes, at most `top`
  std::optional<UnwindSummary> unwind;  // absent in reports from before --unwind
  // CPython objects by type and process, fastest growing first: from the tracked objects
  // (--python-objects on), else from the allocator probes (--python-types); absent without
  // either.
  std::optional<std::vector<PythonType>> python_types;
  // --python-objects on or exact; absent without object probes.
  std::optional<PythonObjectsCoverage> python_objects;
  std::vector<std::string>
      notes;  // caveats the reader must see (drops, invisible pre-attach allocations)
  std::vector<AttachFailure> attach_failures;  // version 2; empty: every attach succeeded
  FoldedExits folded_exits;                    // version 2
  // Sites that allocated and freed everything (outstanding 0): what they allocated, for
  // alloc_space/alloc_objects in pprof and "freed_sites" in JSON; the leak list is about
  // outstanding memory. The kMaxFreedSites that allocated the most bytes, most first; the rest
  // counted in freed_omitted.
  static constexpr size_t kMaxFreedSites = 200;
  std::vector<LeakSite> freed_sites;
  FreedSitesOmitted freed_omitted;
};

}  // namespace memtrail::model
