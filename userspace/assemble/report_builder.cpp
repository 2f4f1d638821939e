// SPDX-License-Identifier: Apache-2.0
// Assemble the report model from a snapshot, its aggregate and the symbolizer.
#include "assemble/report_builder.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <set>
#include <unordered_map>

#include "common/format.h"
#include "common/host.h"
#include "common/version.h"
#include "inspect/allocator.h"

namespace memtrail::assemble {
namespace {

// The processes with object probes and no window yet (PythonObjectsCoverage::before_first_window):
// nothing of theirs was seen, which an empty Python section alone would not say.
std::string before_first_window_note(const model::PythonObjectsCoverage& objects,
                                     const std::vector<model::Target>& targets) {
  std::string ended, waiting;
  for (uint32_t pid : objects.before_first_window) {
    auto target = std::find_if(targets.begin(), targets.end(),
                               [pid](const model::Target& t) { return t.pid == pid; });
    std::string& list = target != targets.end() && target->exited ? ended : waiting;
    list += (list.empty() ? "" : ", ") + std::to_string(pid);
  }
  std::string note = "No Python object of ";
  if (!ended.empty()) note += "pid " + ended + " (it ended before its first object window)";
  if (!ended.empty() && !waiting.empty()) note += " or of ";
  if (!waiting.empty()) note += "pid " + waiting + " (its first object window is to come)";
  return note +
         " was seen: a process started while memtrail runs is measured from the next window, "
         "and when memtrail launches a command the first window opens " +
         human_duration(objects.period_s) +
         " after the start, so that a program's start-up does not stand for its steady work. "
         "--python-objects exact sees every object of a short program.";
}

// "42 %", "1.8 %", "0.05 %": two significant digits below 10 %.
std::string percent(double share) {
  char text[32];
  double value = share * 100;
  std::snprintf(text, sizeof(text), value >= 10 ? "%.0f %%" : (value >= 1 ? "%.1f %%" : "%.2f %%"),
                value);
  return text;
}

// Functions at the bottom of every user stack: a walk that got this far has every frame the
// user cares about, even if it stopped inside the C library's start code (built without frame
// pointers) before the last frame.
bool is_entry_function(const std::optional<std::string>& function) {
  static const std::set<std::string> kEntries = {"main",
                                                 "__libc_start_call_main",
                                                 "__libc_start_main",
                                                 "__libc_start_main_impl",
                                                 "_start",
                                                 "start_thread",
                                                 "clone",
                                                 "clone3",
                                                 "__clone",
                                                 "__clone3",
                                                 "__GI___clone",
                                                 "__GI___clone3"};
  return function && kEntries.count(*function) != 0;
}

// libc's wrappers of the system calls that map memory, and their internal names.
bool is_syscall_wrapper(const std::optional<std::string>& function) {
  static const std::set<std::string> kWrappers = {
      "mmap",          "mmap64",     "__mmap",      "__mmap64",  "mremap",  "__mremap",
      "brk",           "__brk",      "sbrk",        "__sbrk",    "syscall", "__GI___mmap64",
      "__GI___mremap", "__GI___brk", "__GI___sbrk", "__brk_call"};
  return function && kWrappers.count(*function) != 0;
}

std::vector<std::string> notes_for(const model::Totals& totals, const ReportContext& context,
                                   uint64_t missed_entries) {
  std::vector<std::string> notes;
  bool all_from_start =
      !context.targets.empty() &&
      std::all_of(context.targets.begin(), context.targets.end(),
                  [](const model::Target& target) { return target.traced_from_start; });
  if (context.sample_rate == 0) {
    notes.push_back(
        "Allocations made before memtrail attached are invisible; frees of such blocks are "
        "counted as unmatched frees (" +
        with_thousands(totals.unmatched_frees) + " so far).");
  } else {
    // A free of a block the sampler passed over finds nothing, like one from before attach:
    // neither is a loss, and they cannot be told apart.
    notes.push_back("Sampling one allocation per " + human_bytes(context.sample_rate) +
                    " allocated on average (--sample-rate): outstanding and total bytes and "
                    "counts are unbiased estimates. " +
                    with_thousands(totals.untracked_frees) +
                    (all_from_start ? " frees of blocks the sampler passed over were counted "
                                      "apart (no loss)."
                                    : " frees of blocks not tracked (unsampled, or from before "
                                      "attach) were counted apart (no loss)."));
  }
  if (!totals.exact) {
    notes.push_back(
        "Counts are read while the traced programs run: a block freed during the "
        "read (milliseconds) counts as freed already. The final report's counts "
        "are exact.");
  }
  if (context.min_age_s > 0) {
    notes.push_back("Allocations younger than " + human_duration(context.min_age_s) +
                    " are hidden from the sites (they are in the totals).");
  }
  if (totals.drops > 0) {
    notes.push_back(with_thousands(totals.drops) +
                    " allocations were not tracked because the outstanding-allocation table (" +
                    with_thousands(context.max_outstanding_allocations) +
                    " allocations) had no room for them: raise --max-allocations.");
  }
  if (totals.region_events_lost > 0) {
    notes.push_back(with_thousands(totals.region_events_lost) +
                    " mmap/munmap/mremap/brk calls were not followed (their event buffer was "
                    "full): mapped memory may be missing or shown after it was released.");
  }
  if (totals.stack_failures > 0) {
    notes.push_back(with_thousands(totals.stack_failures) +
                    " call stacks could not be stored (the stack map was full: raise "
                    "--max-stacks); those sites show only the calling function and are marked "
                    "truncated.");
  }
  if (context.history && context.history->sites_not_followed() > 0) {
    notes.push_back(with_thousands(context.history->sites_not_followed()) +
                    " samples of sites beyond the first 20,000 were not kept: those sites have no "
                    "growth history and show as too_short.");
  }
  if (totals.usable_size_allocations > 0) {
    notes.push_back(with_thousands(totals.usable_size_allocations) +
                    " allocations were recorded at the allocator's usable size (the size asked "
                    "for rounded up to its chunk size or size class), not the size asked for: "
                    "malloc's probe on that path sees no register holding it "
                    "(usable_size_allocations).");
  }
  if (totals.mismatched_frees > 0) {
    notes.push_back(with_thousands(totals.mismatched_frees) +
                    " blocks were released by a function that does not pair with the one that "
                    "allocated them (new/free, malloc/delete, new[]/delete): undefined behaviour; "
                    "see mismatched_frees per site.");
  }
  if (totals.site_drops > 0) {
    notes.push_back(with_thousands(totals.site_drops) +
                    " allocations found the per-site totals map full: their sites lack "
                    "total_allocated_bytes.");
  }
  // Never silent about allocators: what a process maps but memtrail does not probe.
  for (const auto& target : context.targets) {
    for (const auto& untraced : target.untraced_allocators) {
      if (untraced.expected) continue;
      notes.push_back("pid " + std::to_string(target.pid) + " maps " + untraced.name + " (" +
                      untraced.path + "), which memtrail does not trace: " + untraced.reason + ".");
    }
    if (target.python && !target.python->frames && !target.python->reason.empty() &&
        target.python->reason != "--python-frames native") {
      notes.push_back("pid " + std::to_string(target.pid) + " (" + target.python->module +
                      "): " + target.python->reason + ".");
    }
    if (target.python && !target.python_objects_reason.empty()) {
      notes.push_back("pid " + std::to_string(target.pid) + " (" + target.python->module +
                      "): its Python objects are not traced (its native allocations are): " +
                      target.python_objects_reason + ".");
    }
    if (target.python && !target.python_sizes_reason.empty()) {
      notes.push_back("pid " + std::to_string(target.pid) + " (" + target.python->module +
                      "): its OrderedDict objects are sized as the dicts they are, without "
                      "their nodes and fast-nodes array (lower bounds of sys.getsizeof): " +
                      target.python_sizes_reason + ".");
    }
    if (!target.python_estimated_types.empty()) {
      std::string names;
      // "; " between them: why one is (a C __sizeof__'s code not followed) may hold commas.
      for (const auto& name : target.python_estimated_types) {
        names += (names.empty() ? "" : "; ") + name;
      }
      notes.push_back("pid " + std::to_string(target.pid) +
                      ": Python objects of these types are sized by estimate (their basic and "
                      "item sizes; \"sizing\": \"estimated\" in JSON, \"~\" in text), their "
                      "__sizeof__ counting memory memtrail does not read: " +
                      names + ".");
    }
    for (const auto& allocator : target.allocators) {
      if (allocator.note.empty()) continue;
      notes.push_back("pid " + std::to_string(target.pid) + ", " + allocator.name + " (" +
                      allocator.path + "): " + allocator.note + ".");
    }
  }
  if (context.children_missed > 0) {
    notes.push_back(
        with_thousands(context.children_missed) +
        " processes forked by traced ones exited before memtrail could follow them "
        "(short-lived commands, most often): what they allocated is not in the report.");
  }
  if (missed_entries > 0) {
    notes.push_back(with_thousands(missed_entries) +
                    " allocator returns had no recorded call (e.g. calls in progress at attach); "
                    "they were not counted.");
  }
  return notes;
}

// Puts the Python frames the walker recorded into a CPython process's stack, as
// --python-frames says. The native frames were symbolized (and judged complete) first.
void add_python_frames(model::LeakSite& leak, const model::Snapshot::Stack& stack,
                       const PythonNaming& naming) {
  if (stack.python_frames.empty() || naming.mode == python::FramesMode::kNative || !naming.reader) {
    return;
  }
  auto interpreter = naming.interpreters.find(leak.pid);
  if (interpreter == naming.interpreters.end()) return;
  std::vector<model::Frame> frames;
  std::vector<bool> entries;
  for (const auto& frame : stack.python_frames) {
    frames.push_back(naming.reader->frame(leak.pid, interpreter->second, frame));
    entries.push_back(frame.entry);
  }
  leak.stack =
      python::mix_frames(leak.stack, frames, entries, interpreter->second.module, naming.mode);
  if (stack.python_truncated) {
    leak.stack_truncated = true;
    leak.stack_truncation_reason = "python_depth";
  }
}

// A type's figures as the report shows them, with its growth over the run when followed.
model::PythonType python_type(const aggregator::PythonTypeKey& key,
                              const aggregator::PythonTypeAmount& amount,
                              const ReportContext& context) {
  model::PythonType type;
  type.pid = key.pid;
  type.type = key.type;
  type.outstanding_objects = static_cast<int64_t>(amount.objects);
  type.outstanding_bytes = static_cast<int64_t>(amount.bytes);
  type.source = "objects";
  type.sizing = amount.sized_by_estimate ? model::PythonType::kSizingEstimated
                                         : model::PythonType::kSizingExact;
  if (context.python_type_history) {
    if (auto growth = context.python_type_history->growth(key)) {
      type.growth_objects_per_s = growth->objects_per_s;
      type.growth_bytes_per_s = growth->bytes_per_s;
    }
  }
  return type;
}

// The Python objects of a site by type name (types of one name add up), most bytes first.
std::vector<model::PythonType> site_python_types(const aggregator::SiteSummary& site,
                                                 const ReportContext& context) {
  std::vector<model::PythonType> types;
  if (site.python_types.empty() || !context.python_type_name) return types;
  std::map<std::string, aggregator::PythonTypeAmount> by_name;
  for (const auto& sum : site.python_types) {
    auto& amount = by_name[context.python_type_name(site.pid, sum.type)];
    amount.objects += sum.objects;
    amount.bytes += sum.bytes;
    bool exact = context.python_type_exact && context.python_type_exact(site.pid, sum.type);
    amount.sized_by_estimate = amount.sized_by_estimate || !exact;
  }
  for (const auto& [name, amount] : by_name) {
    types.push_back(python_type({site.pid, site.site_id, name}, amount, context));
  }
  std::stable_sort(types.begin(), types.end(), [](const auto& a, const auto& b) {
    if (a.outstanding_bytes != b.outstanding_bytes)
      return a.outstanding_bytes > b.outstanding_bytes;
    return a.outstanding_objects > b.outstanding_objects;
  });
  return types;
}

// Every process's Python objects by type (of all its sites, not only those listed), fastest
// growing first, then most bytes.
std::vector<model::PythonType> process_python_types(const aggregator::PythonTypeTotals& totals,
                                                    const ReportContext& context,
                                                    const std::set<uint32_t>& pids) {
  std::vector<model::PythonType> types;
  for (const auto& [key, amount] : totals) {
    if (key.site_id || !pids.count(key.pid)) continue;
    types.push_back(python_type(key, amount, context));
  }
  std::stable_sort(types.begin(), types.end(), [](const auto& a, const auto& b) {
    if (a.growth_bytes_per_s != b.growth_bytes_per_s) {
      return a.growth_bytes_per_s > b.growth_bytes_per_s;
    }
    return a.outstanding_bytes > b.outstanding_bytes;
  });
  return types;
}

// A site's model without its growth: counts, symbolized stack, suppression.
model::LeakSite symbolized_site(const aggregator::SiteSummary& site,
                                const model::Snapshot& snapshot, symbolizer::Symbolizer& symbolizer,
                                const ReportContext& context) {
  model::LeakSite leak;
  leak.pid = site.pid;
  leak.outstanding_bytes = site.outstanding_bytes;
  leak.outstanding_allocations = site.outstanding_allocations;
  leak.total_allocated_bytes = site.total_allocated_bytes;
  leak.total_allocations = site.total_allocations;
  leak.freed_allocations = site.freed_allocations;
  leak.oldest_age_s =
      snapshot.taken_at_ns > site.oldest_timestamp_ns
          ? static_cast<double>(snapshot.taken_at_ns - site.oldest_timestamp_ns) / 1e9
          : 0.0;
  leak.allocator = inspect::kind_name(site.kind);
  leak.kind = site.kind == model::AllocationKind::kPythonObject ? "python_objects" : "native";
  leak.python_types = site_python_types(site, context);
  leak.mismatched_frees = site.mismatched_frees;
  leak.estimated = site.estimated;
  std::vector<uint64_t> addresses;
  auto stack = snapshot.stacks.find(site.site_id);
  if (site.site_id >= 0 && stack != snapshot.stacks.end() && !stack->second.addresses.empty()) {
    addresses = stack->second.addresses;
    leak.stack_truncated = stack->second.truncated;
    leak.stack_truncation_reason = stack->second.truncation_reason;
  } else {
    leak.stack_truncated = true;  // only the caller is known
    leak.stack_truncation_reason = "stack_map_full";
    if (site.caller_address != 0) addresses.push_back(site.caller_address);
  }
  for (uint64_t address : addresses) {
    auto frames = symbolizer.symbolize(site.pid, address);
    leak.stack.insert(leak.stack.end(), frames.begin(), frames.end());
  }
  // A region's stack starts in the system call's libc wrapper: the site is its caller. (A
  // freed site's kind is unknown: it may have been a region.)
  if (model::is_region(site.kind) || site.kind == model::AllocationKind::kUnknown) {
    while (leak.stack.size() > 1 && is_syscall_wrapper(leak.stack.front().function)) {
      leak.stack.erase(leak.stack.begin());
    }
  }
  if (leak.stack_truncated && !leak.stack.empty() && site.site_id >= 0 &&
      std::any_of(leak.stack.begin(), leak.stack.end(),
                  [](const model::Frame& frame) { return is_entry_function(frame.function); })) {
    leak.stack_truncated = false;
    leak.stack_truncation_reason.clear();
  }
  if (context.python && stack != snapshot.stacks.end() && site.site_id >= 0) {
    add_python_frames(leak, stack->second, *context.python);
  }
  if (context.suppressions) leak.suppressed = context.suppressions->match(leak.stack);
  return leak;
}

// The files `target`'s reported frames point into, its executable's first: what pprof's
// mappings need. A process the symbolizer forgot (retired) keeps those it had.
void add_mappings(model::Target& target, const model::Report& report,
                  symbolizer::Symbolizer& symbolizer) {
  if (!symbolizer.knows(target.pid)) return;
  std::vector<model::MappedFile> mappings;
  auto add = [&mappings](const inspect::Mapping& mapping) {
    for (const auto& known : mappings) {
      if (known.start == mapping.start && known.path == mapping.path) return;
    }
    mappings.push_back({mapping.path, mapping.start, mapping.end, mapping.file_offset});
  };
  if (const auto* main = symbolizer.executable_mapping(target.pid, target.exe)) add(*main);
  for (const auto* sites : {&report.leaks, &report.freed_sites}) {
    for (const auto& site : *sites) {
      if (site.pid != target.pid) continue;
      for (const auto& frame : site.stack) {
        if (frame.python) continue;
        const auto* mapping = symbolizer.mapping_at(target.pid, frame.address);
        if (mapping && mapping->is_file()) add(*mapping);
      }
    }
  }
  // Frames of mappings kept from before (a process that executed a new program, say) stay.
  for (const auto& kept : target.mappings) {
    bool present = std::any_of(mappings.begin(), mappings.end(), [&](const auto& mapping) {
      return mapping.start == kept.start && mapping.path == kept.path;
    });
    if (!present) mappings.push_back(kept);
  }
  target.mappings = std::move(mappings);
}

}  // namespace

model::Report build_report(const model::Snapshot& snapshot, const aggregator::Aggregate& aggregate,
                           symbolizer::Symbolizer& symbolizer, const ReportContext& context,
                           size_t max_sites) {
  model::Report report;
  report.tool_version = kVersion;
  report.host = host_name();
  report.kernel = kernel_release();
  report.start_time_unix_ms = context.start_unix_ms;
  report.end_time_unix_ms = context.end_unix_ms;
  report.duration_s = context.duration_s;
  report.min_age_s = context.min_age_s;
  report.sample_rate = context.sample_rate;
  report.top = context.top;
  report.final = context.final;
  report.targets = context.targets;
  std::unordered_map<uint32_t, model::Target*> target_of;
  for (auto& target : report.targets) {
    auto lost = snapshot.losses.find(target.pid);
    if (lost != snapshot.losses.end()) target.losses = lost->second;
    if (context.sample_rate > 0) {  // frees of unsampled blocks: no loss (see notes_for)
      target.untracked_frees = target.losses.unmatched_frees;
      target.losses.unmatched_frees = 0;
    }
    target_of[target.pid] = &target;
    if (target.exit) {  // its sites were taken out of the maps when it exited
      target.outstanding_bytes = target.exit->outstanding_bytes;
      target.sites = target.exit->sites;
    }
  }
  for (const auto& site : aggregate.sites) {
    auto target = target_of.find(site.pid);
    if (target == target_of.end()) continue;
    target->second->outstanding_bytes += site.outstanding_bytes;
    ++target->second->sites;
  }

  const auto& counters = snapshot.counters;
  auto& totals = report.totals;
  totals.allocations = counters.allocations + counters.unsampled;
  totals.unsampled_allocations = counters.unsampled;
  totals.frees = counters.frees;
  totals.outstanding_bytes = aggregate.totals.outstanding_bytes;
  totals.outstanding_allocations = aggregate.totals.outstanding_allocations;
  totals.estimated = aggregate.totals.estimated;
  totals.unmatched_frees = context.sample_rate > 0 ? 0 : counters.unmatched_frees;
  totals.untracked_frees = context.sample_rate > 0 ? counters.unmatched_frees : 0;
  totals.exact = context.final;  // the probes stopped counting before the final reading
  totals.drops = counters.drops;
  totals.failed_calls = counters.failed_calls;
  totals.stack_failures = counters.stack_failures;
  totals.site_drops = counters.site_drops;
  totals.mismatched_frees = counters.mismatched_frees;
  totals.usable_size_allocations = counters.usable_size_allocations;
  totals.region_events_lost = counters.region_events_lost;
  totals.sites = aggregate.sites.size();

  size_t count = std::min(max_sites, aggregate.sites.size());
  report.leaks.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const auto& site = aggregate.sites[i];
    model::LeakSite leak = symbolized_site(site, snapshot, symbolizer, context);
    if (site.growth) {
      const auto& assessed = *site.growth;
      model::Growth growth;
      growth.verdict = aggregator::verdict_name(assessed.verdict);
      growth.bytes_per_s = assessed.growth_bytes_per_s;
      growth.r_squared = assessed.r_squared;
      growth.grew_share = assessed.grew_share;
      growth.points = assessed.points;
      growth.span_s = assessed.span_s;
      growth.freed_any = assessed.freed_any;
      growth.median_age_s = assessed.median_age_s;
      growth.reason = assessed.reason;
      const auto* series =
          context.history ? context.history->series(site.pid, site.site_id) : nullptr;
      if (series) {
        for (const auto& point : *series) {
          growth.series.push_back({point.t_s, point.bytes, point.allocations});
        }
      }
      leak.growth = std::move(growth);
    }
    report.leaks.push_back(std::move(leak));
  }
  // Sites that freed all they allocated, of the report's processes: the most allocated bytes
  // first, up to the cap (and `max_sites`: an interval's text shows only their sum); the rest
  // counted.
  size_t freed_cap = std::min(max_sites, model::Report::kMaxFreedSites);
  for (const auto& site : aggregate.freed_sites) {
    if (!target_of.count(site.pid)) continue;
    if (report.freed_sites.size() < freed_cap) {
      report.freed_sites.push_back(symbolized_site(site, snapshot, symbolizer, context));
      // Known from blocks, all gone; a site of Python objects is known by where it starts.
      if (site.kind == model::AllocationKind::kUnknown) {
        report.freed_sites.back().allocator.clear();
        report.freed_sites.back().kind.clear();
      }
      continue;
    }
    ++report.freed_omitted.sites;
    report.freed_omitted.allocations += site.total_allocations;
    report.freed_omitted.bytes += site.total_allocated_bytes;
    report.freed_omitted.estimated = report.freed_omitted.estimated || site.estimated;
  }
  for (auto& target : report.targets) add_mappings(target, report, symbolizer);
  std::stable_partition(report.leaks.begin(), report.leaks.end(),
                        [](const model::LeakSite& leak) { return !leak.suppressed; });
  if (context.python_object_types) {
    std::set<uint32_t> pids;
    for (const auto& target : report.targets) pids.insert(target.pid);
    report.python_types = process_python_types(*context.python_object_types, context, pids);
  } else {
    report.python_types = context.python_types;
  }
  report.python_objects = context.python_objects;
  if (report.python_objects) {
    report.python_objects->recorded = counters.python_objects;
    report.python_objects->untyped = counters.python_objects_untyped;
    report.python_objects->found_dead = counters.python_objects_dead;
    report.python_objects->found_replaced = counters.python_objects_replaced;
    report.python_objects->at_risk = counters.python_objects_at_risk;
    report.python_objects->window_sweeps = counters.python_sweeps;
    report.python_objects->sweep_objects_read = counters.python_sweep_objects;
    report.python_objects->whole_table_sweeps = counters.python_sweeps_whole;
    report.python_objects->sweep_seconds = counters.python_sweep_seconds;
    report.python_objects->unwatched = counters.python_unwatched;
  }
  bool untyped_objects = report.python_objects && report.python_objects->untyped > 0;
  report.notes = notes_for(totals, context, counters.missed_entries);
  if (report.python_objects && !report.python_objects->exact &&
      !report.python_objects->before_first_window.empty()) {
    report.notes.push_back(before_first_window_note(*report.python_objects, report.targets));
  }
  if (report.python_objects && !report.python_objects->exact &&
      report.python_objects->share_basis != "none") {
    const auto& objects = *report.python_objects;
    // What the share was measured by (aggregator::ObservedShare).
    std::string measured =
        objects.share_basis == "allocations"
            ? "each process's allocations made while they were attached (the allocator probes "
              "count them "
              "all the time; a process slowed by the object probes makes fewer of both then)"
        : objects.share_basis == "mixed"
            ? "allocations for some processes and time for others (each target's "
              "python_objects_share_basis in JSON)"
            : "the time they were attached (too few allocations to measure by: a busy process "
              "slows under the probes and creates fewer objects while they are attached, so "
              "its estimates are low)";
    report.notes.push_back(
        "Python objects were seen " + percent(objects.observed_fraction) +
        " of the work, measured by " + measured + "; probes attached " +
        percent(objects.attached_share) + " of every " + human_duration(objects.period_s) +
        ", --python-objects exact attaches them all the time. Their sites' counts, bytes and "
        "growth, marked ~, are what was seen scaled up by that share: estimates, and so are "
        "the totals that include them. Objects created while the probes were detached are not "
        "seen; those seen stay followed until they die.");
    if (objects.at_risk > 0) {
      report.notes.push_back(
          with_thousands(objects.at_risk) +
          " live Python objects recorded (as seen, not scaled) cannot be proved to be the "
          "objects recorded: lists, class instances, sets (nothing identifies them) and dicts "
          "changed while the probes were detached. If one of them died then and a new object "
          "of its type took its address, the new one is counted at the dead one's line. strs, "
          "bytes, ints, floats, tuples and unchanged dicts are proved by their content or "
          "version (" +
          with_thousands(objects.found_replaced) +
          " found replaced and removed); --python-objects exact sees every creation.");
    }
  }
  if (report.python_objects && report.python_objects->unwatched > 0) {
    report.notes.push_back(
        with_thousands(report.python_objects->unwatched) +
        " live Python objects no content identifies (lists, class instances, sets, dicts) were "
        "beyond the bound of those each window's close reads (as many as the ring of new "
        "objects holds): one of them dying while the probes are attached is found dead at the "
        "next report instead; should a new object of its type take its address unseen "
        "meanwhile, it is counted at the dead one's line (as those at risk).");
  }
  if (untyped_objects) {
    report.notes.push_back(with_thousands(report.python_objects->untyped) +
                           " Python objects were created without a readable type and were not "
                           "recorded: the object sites miss them.");
  }
  if (counters.python_types_lost > 0) {
    report.notes.push_back(with_thousands(counters.python_types_lost) +
                           " Python objects were not counted by type: the map of (process, type) "
                           "pairs was full.");
  }
  if (context.python_type_history && context.python_type_history->series_not_followed() > 0) {
    report.notes.push_back(with_thousands(context.python_type_history->series_not_followed()) +
                           " samples of Python types beyond the first 20,000 (type, site) "
                           "pairs were not kept: those types show no growth.");
  }
  if (report.python_types && !context.python_object_types) {
    report.notes.push_back(
        "Python objects by type count the objects CPython's garbage collector tracks (class "
        "instances, dict, list, tuple, set, ...), made minus freed since memtrail attached: an "
        "object from before attach that is freed makes the count lower. A type's free lists "
        "(up to 80 dicts or lists kept for reuse) may show as outstanding.");
  }
  if (context.unwind) {
    report.unwind = context.unwind;
    auto& unwind = *report.unwind;
    unwind.python_segments_walked = snapshot.counters.python_segments_walked;
    unwind.python_segments_reused = snapshot.counters.python_segments_reused;
    for (const auto& [id, stack] : snapshot.stacks) {
      ++unwind.stacks;
      if (stack.used_tables) ++unwind.stacks_using_tables;
      if (!stack.truncated) continue;
      ++unwind.truncated_stacks;
      ++unwind.truncated_by_reason[stack.truncation_reason];
    }
  }
  return report;
}

void count_omitted(model::FreedSitesOmitted& omitted, const std::vector<model::LeakSite>& sites) {
  for (const auto& site : sites) {
    ++omitted.sites;
    omitted.allocations += site.total_allocations;
    omitted.bytes += site.total_allocated_bytes;
    omitted.estimated = omitted.estimated || site.estimated;
  }
}

void add_freed_sites(model::Report& report, const std::vector<model::LeakSite>& sites,
                     const model::FreedSitesOmitted& omitted) {
  report.freed_omitted.sites += omitted.sites;
  report.freed_omitted.allocations += omitted.allocations;
  report.freed_omitted.bytes += omitted.bytes;
  report.freed_omitted.estimated = report.freed_omitted.estimated || omitted.estimated;
  if (sites.empty()) return;
  auto& kept = report.freed_sites;
  kept.insert(kept.end(), sites.begin(), sites.end());
  std::stable_sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.total_allocated_bytes > b.total_allocated_bytes;
  });
  if (kept.size() <= model::Report::kMaxFreedSites) return;
  std::vector<model::LeakSite> beyond(
      std::make_move_iterator(kept.begin() + model::Report::kMaxFreedSites),
      std::make_move_iterator(kept.end()));
  kept.resize(model::Report::kMaxFreedSites);
  count_omitted(report.freed_omitted, beyond);
}

}  // namespace memtrail::assemble
