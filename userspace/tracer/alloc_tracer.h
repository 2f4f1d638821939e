// SPDX-License-Identifier: Apache-2.0
// Loads the allocator BPF programs, attaches them to target processes, reads their maps.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/unique_fd.h"
#include "inspect/allocator.h"
#include "inspect/process_file.h"
#include "model/snapshot.h"
#include "tracer/hold_guardian.h"
#include "tracer/libbpf_raii.h"
#include "tracer/mapped_regions.h"
#include "tracer/tracer_config.h"
#include "unwind/module_tables.h"

struct memtrail_alloc_bucket;

namespace memtrail::tracer {

class AllocTracer : public unwind::RowStore {
 public:
  // Opens and loads the BPF object (verifier included). Throws memtrail::Error.
  explicit AllocTracer(const TracerConfig& config);
  ~AllocTracer() override;
  AllocTracer(const AllocTracer&) = delete;
  AllocTracer& operator=(const AllocTracer&) = delete;

  // Host-wide mode: attaches every probe of `module` for every process mapping the file; only
  // the processes added with follow() are recorded.
  void attach_everywhere(const inspect::AllocatorModule& module);
  // Adds `pid` to the processes traced (done by attach(); fork adds children in the kernel).
  void follow(uint32_t pid);
  // From now on each program `pid` executes, and those of the processes it forks, is stopped
  // (SIGSTOP) before its first instruction and reported as a held Exec: the caller probes the
  // new program, then continues it. For a launched command only (its parent is memtrail, which
  // no job-control shell watches). Throws memtrail::Error. Each hold is recorded in the map
  // held_processes until continue_held(): the guardian (HoldGuardian, started with the tracer
  // when config.hold_execs) continues those left if memtrail dies holding them.
  void hold_execs(uint32_t pid);
  // No exec is held from now on (the run ends): those held already still wait to be drained.
  void release_holds();
  // Continues a process the kernel held (Exec::held, PythonFinalizing::held; `held_at_ns`:
  // their at_ns), and then forgets its hold.
  void continue_held(uint32_t pid, uint64_t held_at_ns);
  // Takes a process that was followed but never attached (no traced allocator) out again: it
  // has no blocks in the table, so this is cheap, unlike purge_processes(). Returns the mapped
  // regions dropped.
  uint64_t unfollow(uint32_t pid);

  // Attaches every probe of `module` for process `pid` only; other processes mapping the same
  // file pay nothing. The probes go on module.file as open_file() opens it (the file mapped,
  // never a name followed elsewhere). All or nothing: on failure the probes attached so far
  // are removed and memtrail::Error is thrown.
  void attach(uint32_t pid, const inspect::AllocatorModule& module);

  // Whether attach() probes `function` at its return sites (one trap a call) rather than at
  // entry and return: they were proven, fit the cookie, and the configuration allows them
  // (not with --mmap, which tells the allocator's own mappings by its entry probe).
  bool uses_return_sites(const inspect::FunctionProbe& function) const;
  // Whether the class size tables `function`'s sites read (tcmalloc) fit beside those of the
  // modules attached before (MEMTRAIL_CLASS_TABLES): else it keeps entry and return probes.
  bool class_tables_fit(const inspect::FunctionProbe& function) const;

  // How attach() probes a C++ operator (--cxx; see inspect::FunctionProbe's new_via_malloc,
  // array_of, forwards_to). MEMTRAIL_TEST_CXX_OWN_PROBES=1 (tests only): every operator
  // keeps its own probes, as before the analysis, to compare the two.
  enum class CxxProbing {
    kOwnProbes,      // entry (and return) probes of its own
    kAtMallocSites,  // operator new: none; malloc's return sites record its blocks
    kMarksNewArray,  // operator new[]: one entry probe, which marks the call as new[]
    kForwarded,      // operator delete: none; the delete it jumps to releases the block
  };
  CxxProbing cxx_probing(const inspect::FunctionProbe& function) const;

  // From now on the probes record and release no block (removing them would take seconds):
  // the table and the running totals hold still, so a snapshot's counts are exact (the final
  // report's).
  void stop_counting();

  // Reads the maps. Entries that change while being read are skipped and counted. With a
  // sink, the outstanding allocations go to it as they are read, not into the snapshot.
  // Region events are drained first, so mapped regions are as current as the table.
  model::Snapshot snapshot(model::AllocationSink* sink = nullptr);

  // A traced process executed a new program at `at_ns` (CLOCK_MONOTONIC).
  struct Exec {
    uint32_t pid = 0;
    uint64_t at_ns = 0;
    // Stopped before the new program's first instruction (hold_execs): continue it (SIGCONT)
    // once its probes are in. hold_failed: it was to be, but the kernel refused the signal.
    bool held = false;
    bool hold_failed = false;
  };
  // A traced process forked a new one (with follow_forks).
  struct Fork {
    uint32_t parent = 0, child = 0;
  };
  // A traced CPython process entered Py_FinalizeEx (attach_python_finalizing): its program
  // ends, and the interpreter is about to free what its modules keep.
  struct PythonFinalizing {
    uint32_t pid = 0;
    uint64_t at_ns = 0;  // CLOCK_MONOTONIC
    // Stopped there: read its objects (read_python_objects_of), then continue it (SIGCONT).
    // hold_failed: it was to be, but the kernel refused the signal.
    bool held = false;
    bool hold_failed = false;
    // Stopped at libc's _exit (a program that ends without finalizing: os._exit), not at
    // Py_FinalizeEx; after Py_FinalizeEx, every exit gets there too.
    bool at_exit = false;
  };
  struct Lifecycle {
    std::vector<Exec> execs;
    std::vector<Fork> forks;
    std::vector<PythonFinalizing> python_finalizing;
    // Processes stopped at their executable's entry point (attach_program_entry; held: continue
    // them once their interpreter is probed).
    std::vector<Exec> program_entries;
  };
  // Reads the region events the kernel sent since the last call (cheap; call it often, so the
  // ring buffer never fills). Returns the processes that executed a new program meanwhile
  // (their regions are gone; their blocks from before belong to the old image: see
  // purge_processes) and those forked by a target (attach() them to trace them).
  Lifecycle drain_region_events();
  // Readable when a fork event waits (the others wake nobody): for poll(); -1 without regions.
  int region_events_fd() const;
  // Bytes the program break of `pid` moved since attach (the allocator's heap included).
  int64_t break_growth(uint32_t pid) const { return regions_.break_growth(pid); }

  // Appends a module's unwind rows to the walker's row map (written in place): the index of
  // the first, or nullopt when they do not fit in what is left.
  std::optional<uint32_t> store_rows(std::span<const unwind::Row> rows) override;
  uint64_t row_capacity() const override { return row_capacity_; }
  std::optional<uint32_t> store_page_index(std::span<const uint32_t> first_rows) override;

  // Tells the walker where process `pid` maps code and how to unwind each mapping (replaces
  // what it had). Throws memtrail::Error when the map refuses it.
  void set_unwind_mappings(uint32_t pid, std::span<const unwind::WalkerMapping> mappings);
  // A function of a CPython interpreter's file that counts objects by type (--python-types).
  struct PythonObjectProbe {
    std::string function;
    uint64_t file_offset = 0;
    bool release = false;  // frees an object (PyObject_GC_Del); else makes one
    // The function, for the ones that make.
    model::PythonObjectCall call = model::PythonObjectCall::kGenericAlloc;
  };
  // Attaches them for process `pid`, in the interpreter's `file`. All or nothing; throws
  // memtrail::Error.
  void attach_python_types(uint32_t pid, const inspect::ProcessFile& file,
                           const std::vector<PythonObjectProbe>& probes);

  // A creation site of CPython objects (python/creation_sites.h): where in the interpreter's
  // file, and which register holds the new object (enum memtrail_python_register).
  struct PythonObjectSite {
    uint64_t file_offset = 0;
    uint32_t object_register = 0;
  };
  // Attaches the object-creation program to every site, for process `pid`. All or nothing;
  // throws memtrail::Error. `at_next_attach`: the sites wait for the next attach even while
  // attached (the duty cycle starts a process's first window with a window: see
  // session::ObjectWindows::add_process); a failure then is said on stderr, not thrown.
  void attach_python_objects(uint32_t pid, const inspect::ProcessFile& file,
                             const std::vector<PythonObjectSite>& sites,
                             bool at_next_attach = false);
  // Detaches every process's creation sites (false) or attaches them again (true): the duty
  // cycle of --python-objects on. Detaching removes the traps themselves; a flag the program
  // checks would not (a disabled uprobe still traps). Objects recorded stay in the table and
  // are judged as before. Detached, it ends the window's close (see sweep_python_objects). A
  // process whose sites cannot be attached again (it exited) is dropped, and said on stderr unless
  // it is gone. Sites of a process added while detached wait for the next attach.
  void set_python_objects_attached(bool attached);
  bool python_objects_attached() const { return python_objects_attached_; }
  // Process `pid` is gone: its sites are not attached again.
  void forget_python_objects(uint32_t pid);
  // Stops process `pid` at the entry of Py_FinalizeEx (at `file_offset` in the interpreter's
  // `file`), or with `at_exit` of libc's _exit (in libc's `file`), and says so through the
  // region events (Lifecycle::python_finalizing): its objects can be read before the
  // interpreter frees what its modules keep, and before the process and its memory are gone;
  // from then on its allocations and frees are not recorded (with or without object tracking:
  // its report keeps the buffers the finalization frees). Attached for good (not
  // duty-cycled). False, and nothing attached, when nobody reads the region events (the
  // process would stay stopped), without Python frames or objects, or when the kernel refused.
  bool attach_python_finalizing(uint32_t pid, const inspect::ProcessFile& file,
                                uint64_t file_offset, bool at_exit = false);
  // Stops process `pid` at its executable's entry point (at `file_offset` in `file`), where the
  // dynamic linker has mapped its libraries and its own code has not run, and says so through
  // the region events (Lifecycle::program_entries). For a program held at its exec whose
  // Python interpreter is a shared library not mapped yet. False, and nothing attached, when
  // nobody reads the region events, without Python frames or objects, without uprobe_multi
  // links (Linux 6.6), or when the kernel refused. One hold: forget_program_entry closes it.
  bool attach_program_entry(uint32_t pid, const inspect::ProcessFile& file, uint64_t file_offset);
  void forget_program_entry(uint32_t pid) { program_entry_links_.erase(pid); }
  // Reads the liveness and size of every recorded object of process `pid` (a pass over the
  // table), removes the dead ones, and keeps the size of the live ones for its exit report.
  // Returns how many were found alive. Its program has ended (held at its end; the BPF
  // programs record nothing of it from then on, MEMTRAIL_PROCESS_ENDED): its objects are not
  // read again, each stays as this reading found it, so that what finalization frees does not
  // leave its report; until it executes another program (program_executed).
  uint64_t read_python_objects_of(uint32_t pid);
  // Process `pid` executed a new program: its objects are read again (see above).
  void program_executed(uint32_t pid) { python_ended_.erase(pid); }
  // --python-objects on: counts process `pid`'s allocations from now on (those the allocator
  // probes record, sampled ones with --sample-rate): the work by which the share of its objects
  // the attached windows saw is measured. False when they cannot be counted (no object probes
  // configured, or the map is full).
  bool count_allocations(uint32_t pid);
  // Its allocations counted so far; nullopt when they are not counted.
  std::optional<uint64_t> allocations_counted(uint32_t pid) const;
  // It is gone: no longer counted.
  void stop_counting_allocations(uint32_t pid);
  // At the end of an attached window, while its probes are still in (then
  // set_python_objects_attached(false)): reads the liveness of the objects that must be read
  // before the detached time begins, and removes the dead ones from the table, so that an
  // address freed by then and reused while detached by an object of the same type does not keep
  // a dead object's site alive. Read while a creation is still seen: one at a dead object's
  // address meanwhile replaces its record, which the read then leaves alone (read once the
  // probes were out, such a new object was taken for the dead one, alive). Those are the
  // objects recorded in the window (from the python_new_objects ring: also their identity is
  // taken then, before any unseen reuse), and the live ones whose identity cannot prove them
  // later (the watch list: lists, class instances, sets, dicts); not the immutable objects
  // recorded before, whose content tells at the next report whether they are still the object
  // recorded. More objects in the window than the ring holds: the whole table. The objects
  // the program records during the read are read in further passes, until a few are left;
  // then the window ends (python_objects_closing: nothing is recorded from then on, but a
  // creation still removes the record at its address, until the probes are out) and a last
  // pass reads those. Returns what it read.
  struct SweepWork {
    uint64_t objects_read = 0;  // objects judged
    uint64_t removed = 0;       // found dead (or replaced) and removed
    bool whole_table = false;   // the ring overflowed: every object was read
  };
  SweepWork sweep_python_objects();
  // Object identities are checked (python/objects.h, IdentityBy): with --python-objects on,
  // where objects are created unseen while the probes are detached.
  void check_python_identities(bool check) { check_identities_ = check; }
  // Since attach: the window-close sweeps, the objects they read, and those that overflowed.
  struct SweepTotals {
    uint64_t sweeps = 0, objects_read = 0, whole_table = 0;
    double seconds = 0;  // spent in them, the process meanwhile running with no probe
  };
  const SweepTotals& python_sweep_totals() const { return sweep_totals_; }
  // Who decides, at each snapshot, which recorded objects still live and their sizes; without
  // one, recorded objects are neither reported nor removed.
  void set_python_object_judge(model::PythonObjectJudge* judge) { python_judge_ = judge; }

  // Process `pid` runs CPython with its _PyRuntime at `runtime_address`: its stacks get their
  // Python frames (needs config python_layout), and their native walk ends at the outermost
  // frame of the eval loop, whose code is [eval_loop_start, eval_loop_end) (0, 0: unknown, the
  // walk goes on). Throws memtrail::Error when the map refuses it.
  void set_python_process(uint32_t pid, uint64_t runtime_address, uint64_t eval_loop_start,
                          uint64_t eval_loop_end);
  // It no longer runs CPython (exec) or has exited.
  void forget_python_process(uint32_t pid);
  // Stacks created so far (the walker numbers them): unchanged, no new site appeared.
  uint32_t stacks_created() const;
  // Every stack with Python frames: (stack id, pid, frames innermost first).
  void for_each_python_stack(
      const std::function<void(uint32_t id, uint32_t pid,
                               std::span<const model::PythonFrame> frames)>& visit) const;
  // Stack frames met so far in code outside every mapping the walker knows: when this grows,
  // a traced process has mapped code since its mappings were last set.
  uint64_t unknown_code_frames() const;

  // Removes everything the maps hold for the processes of `before_by_pid`, which have exited:
  // their outstanding blocks allocated before the time given (CLOCK_MONOTONIC ns; a process
  // reusing the pid since keeps what it allocated), freed the way the BPF programs free them,
  // their mapped regions, stacks, fallback sites, losses and code mappings (site totals stay:
  // stack ids are never reused). In the same pass over the table, the blocks of `old_images`,
  // processes that executed a new program, allocated before their exec (the new program's are
  // kept; their stacks too: the new program may already use some). One pass for all, because
  // the table may be hundreds of MiB. Returns, per pid, the blocks and regions dropped.
  std::unordered_map<uint32_t, uint64_t> purge_processes(
      const std::unordered_map<uint32_t, uint64_t>& before_by_pid,
      std::span<const Exec> old_images = {});

  // Bytes of kernel memory in the BPF maps, as the kernel charges them (fdinfo memlock).
  uint64_t map_memory_bytes() const;

  const TracerConfig& config() const { return config_; }
  // Whether allocator probes go in uprobe_multi links (else a perf-event link each).
  bool uprobe_multi() const { return uprobe_multi_; }

 private:
  static bool injected_attach_failure();
  // One uprobe (or uretprobe) an allocator module needs, in the order they must be placed.
  struct ProbeRequest {
    bpf_program* program;
    uint64_t offset;
    bool retprobe;
    uint64_t cookie;
    const std::string* function;
  };
  // The links that place `requests` in `file` for `pid` (kEveryProcess: every process); throws
  // on a failure, detaching what it placed.
  struct PlacedProbes {
    std::vector<Link> perf_links;
    std::vector<UniqueFd> multi_links;
  };
  PlacedProbes place_probes(uint32_t pid, const inspect::AllocatorModule& module,
                            const std::string& kernel_path,
                            const std::vector<ProbeRequest>& requests);
  static int on_region_event(void* self, void* data, size_t size);
  // Applies the region events waiting in the ring buffer; exec and fork go to lifecycle_.
  void consume_region_events();
  void attach_lifecycle_tracepoints();
  static constexpr uint32_t kEveryProcess = UINT32_MAX;
  // Frees the table slots of each pid allocated before its time (CLOCK_MONOTONIC ns); returns
  // how many per pid.
  std::unordered_map<uint32_t, uint64_t> free_slots_of(
      const std::unordered_map<uint32_t, uint64_t>& before_by_pid);
  // Drops a process's code mappings (it exited).
  void forget_unwind_mappings(uint32_t pid);
  // One entry of the per-CPU `counters` map, summed over the CPUs.
  uint64_t counter_total(uint32_t index) const;

  // Judges the Python objects read from the table; removes the dead from it, hands the live
  // ones served by pymalloc to `sink` (or the snapshot).
  struct PythonSlot {
    memtrail_alloc_bucket* bucket = nullptr;
    uint32_t slot = 0;
    uint64_t timestamp_ns = 0;
    int32_t site_id = 0;
  };
  // Whether the record found at `where` is still there as found (same address, same creation).
  static bool record_unchanged(const PythonSlot& where, uint64_t address);
  void read_table(std::vector<model::TrackedPythonObject>& python_objects,
                  std::vector<PythonSlot>& python_slots, model::Snapshot& snapshot,
                  model::AllocationSink* sink, bool python_only);
  void judge_python_objects(std::vector<model::TrackedPythonObject>& objects,
                            const std::vector<PythonSlot>& slots, model::Snapshot& snapshot,
                            model::AllocationSink* sink);
  // The table slots of the Python objects `keys` (found in either candidate bucket).
  struct PythonObjectKey;
  void find_python_slots(const std::vector<PythonObjectKey>& keys,
                         std::vector<model::TrackedPythonObject>& objects,
                         std::vector<PythonSlot>& slots);
  // The identity check of a live object (with check_identities_): still the object recorded,
  // perhaps another one (at risk: nothing proves it either way), or surely another one created
  // unseen at its address (replaced: it is removed as dead).
  enum class IdentityVerdict { kSame, kAtRisk, kReplaced };
  // `reads_began_ns`: when the reads of the object's memory began (model::settled_identity).
  IdentityVerdict check_identity(const model::TrackedPythonObject& object, uint64_t timestamp_ns,
                                 uint64_t reads_began_ns);
  // The bytes of Python objects: the BPF program counts each creation in its site's totals,
  // but not its size, which only the liveness read knows. Each object found alive is sized
  // once (by pid, address and creation time) and its bytes added to its site's total from then
  // on; an object that dies between two reads is counted in allocations, not in bytes.
  struct PythonObjectKey {
    uint32_t pid = 0;
    uint64_t address = 0;
    bool operator==(const PythonObjectKey&) const = default;
  };
  struct PythonObjectKeyHash {
    size_t operator()(const PythonObjectKey& key) const {
      return std::hash<uint64_t>()(key.address ^ (uint64_t{key.pid} << 47) ^ key.pid);
    }
  };
  // The size of each object sized, kept for when its process has exited (then it can no
  // longer be read: its exit report shows it as the last report found it).
  struct SizedObject {
    uint64_t timestamp_ns = 0;
    uint64_t size = 0;
    // Its size is in its site's bytes (python_site_bytes_): done once the site's totals, read
    // by a snapshot, count its creation. A liveness read without them (a window's close, the
    // read at Py_FinalizeEx) sizes it, and a later snapshot counts it.
    bool in_site_bytes = false;
  };
  // Counts `sized` in the bytes of its site when `snapshot` read the site's totals after its
  // creation (see SizedObject::in_site_bytes).
  void count_site_bytes(SizedObject& sized, uint32_t pid, int32_t site_id,
                        const model::Snapshot& snapshot,
                        const std::unordered_map<uint64_t, size_t>& site_index);
  std::unordered_map<PythonObjectKey, SizedObject, PythonObjectKeyHash> python_objects_sized_;
  // Processes whose objects were read at their program's end (read_python_objects_of).
  std::unordered_set<uint32_t> python_ended_;
  // Bytes of the objects sized, by (pid, site id): added to the site's total_bytes.
  std::unordered_map<uint64_t, uint64_t> python_site_bytes_;
  // What identified each live object when last checked (check_identities_), and when: the
  // object probes were detached in between (gaps differ, or it was checked while detached)
  // means a new object may have taken its address unseen.
  struct KnownIdentity {
    uint64_t timestamp_ns = 0;  // of the record: a new record at the address starts afresh
    uint64_t identity = 0;
    model::ObjectIdentity kind = model::ObjectIdentity::kNone;
    bool at_risk = false;    // once it could not be proved the same across a gap: for good
    uint64_t gaps = 0;       // python_gaps_ at the check
    bool in_window = false;  // checked inside an attached window (its close's reads too)
  };
  std::unordered_map<PythonObjectKey, KnownIdentity, PythonObjectKeyHash> python_identities_;
  bool check_identities_ = false;
  // Detached periods begun (each window's close, after its sweep), and when the last began.
  uint64_t python_gaps_ = 0;
  uint64_t window_closed_ns_ = 0;
  // A window's close under way, from its sweep to the detach (sweep_python_objects).
  struct Close {
    std::vector<PythonObjectKey> watch_keys;  // the watch list to read, until a pass has
    std::vector<PythonObjectKey> watch_next;  // the live objects its reads put on it
    SweepWork work;
    double read_seconds = 0;
  };
  std::optional<Close> close_;
  // The objects logged since the last read (and the watch list's, once): judged, the dead
  // removed, for close_.
  void read_logged_objects();
  // After the detach: the last objects the window recorded, and the close's totals.
  void finish_close();
  uint64_t logged_python_objects() const;
  // python_new_objects, read in place, and how far the sweeps have read it.
  MappedMap python_log_view_;
  uint64_t python_log_read_ = 0;
  // Live objects the next close sweep reads again (no content identity), from the last judge
  // that saw them: (pid, address).
  std::vector<PythonObjectKey> python_watch_;
  std::vector<PythonObjectKey>* watch_out_ = nullptr;  // set while a judge collects it
  // The watch list's bound: as many as the ring of new objects holds, so that a close reads at
  // most twice that; the live objects beyond it are counted (python_unwatched_, at the latest
  // rebuild), not read at the closes.
  uint64_t watch_skipped_ = 0, python_unwatched_ = 0;
  void watch(const PythonObjectKey& key);
  SweepTotals sweep_totals_;
  // Since attach: objects removed as dead, and of them those found replaced by their identity.
  uint64_t python_removed_total_ = 0, python_replaced_total_ = 0;

  TracerConfig config_;
  model::PythonObjectJudge* python_judge_ = nullptr;
  AllocSkeleton skeleton_;
  // After the skeleton, before every link owner: destroyed once they are all closed.
  std::optional<HoldGuardian> guardian_;
  MappedMap allocs_view_;  // the outstanding-allocations table, read in place
  MappedMap rows_view_;    // the unwind rows, written in place
  uint64_t row_capacity_ = 0;
  uint64_t rows_used_ = 0;
  MappedMap pages_view_;  // the modules' page indexes, written in place
  uint64_t page_capacity_ = 0;
  uint64_t pages_used_ = 0;
  MappedRegions regions_;
  Lifecycle lifecycle_;  // exec and fork events seen by the ring buffer callback
  RingBuffer region_reader_;
  // Allocator probes: uprobe_multi links (Linux 6.6), a link per program and module, where the
  // kernel has them; perf-event links, a probe each, where it does not.
  bool uprobe_multi_ = false;
  bool cxx_own_probes_ = false;    // MEMTRAIL_TEST_CXX_OWN_PROBES
  bool python_end_holds_ = false;  // python_finalizing loaded: see attach_python_finalizing
  // The operators new in the new_calls map, by the offset in its page of the address malloc
  // returns to: their code (one per key: a second, different one keeps its probes).
  std::unordered_map<uint32_t, std::vector<uint8_t>> new_calls_;
  // class_size_tables's slots in use, each a class size table's address from the probed
  // instruction.
  std::vector<int64_t> class_size_tables_;
  bool new_call_known(const inspect::NewViaMalloc& call) const;
  void add_new_call(const inspect::NewViaMalloc& call);
  // The slot of class_size_tables (bpf/alloc.bpf.c) holding this table, written there first if
  // new; 0 for sites that read none.
  uint32_t class_table_slot(inspect::UsableSize usable, int64_t class_sizes_from_here);
  std::vector<UniqueFd> multi_links_;
  std::vector<Link> links_;  // declared last: destroyed first
  // The Python object probes of each process: what attaches them again after a detach.
  struct PythonObjectProbes {
    uint32_t pid = 0;
    inspect::OpenedFile file;  // held open: its kernel path must keep naming the same file
    std::string path;          // as the process maps it, for messages
    std::vector<uint64_t> offsets, cookies;
    UniqueFd link;        // the uprobe_multi link; closed while detached
    bool linked = false;  // once attached (a launched process's wait for the next window)
  };
  // Creates the uprobe_multi link of `probes`; returns the errno on failure, 0 on success.
  int link_python_objects(PythonObjectProbes& probes);
  // Closes every process's object link at once (release_concurrently); the sites stay.
  void unlink_python_objects();
  std::vector<PythonObjectProbes> python_probes_;
  // The end probes of each process (attach_python_finalizing): [0] Py_FinalizeEx's link,
  // [1] _exit's (either may be missing).
  std::unordered_map<uint32_t, std::array<UniqueFd, 2>> python_finalizing_links_;
  std::unordered_map<uint32_t, UniqueFd> program_entry_links_;  // attach_program_entry
  bool program_entry_holds_ = false;                            // program_entry loaded
  bool python_objects_attached_ = true;
};

}  // namespace memtrail::tracer
