// SPDX-License-Identifier: Apache-2.0
// The leaks options translated into a session's configuration: pure, no root, no BPF.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli/options.h"
#include "session/config.h"

namespace memtrail::session {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

cli::LeaksOptions pid_options() {
  cli::LeaksOptions options;
  options.pids = {4242};
  return options;
}

TEST(SessionConfig, TablesAreSizedFromAvailableMemoryUnlessGiven) {
  auto sized = session_config(pid_options(), 24 * kGiB);
  EXPECT_EQ(sized.tracer.max_outstanding_allocations, cli::max_allocations_for(24 * kGiB));
  EXPECT_EQ(sized.tracer.max_stacks, cli::max_stacks_for(24 * kGiB));
  EXPECT_TRUE(sized.max_allocations_from_memory);  // -v says so

  auto options = pid_options();
  options.max_allocations = 4096;
  options.max_stacks = 5000;
  auto given = session_config(options, 24 * kGiB);
  EXPECT_EQ(given.tracer.max_outstanding_allocations, 4096u);
  EXPECT_EQ(given.tracer.max_stacks, 5000u);
  EXPECT_FALSE(given.max_allocations_from_memory);
  // Unreadable meminfo (0): the smallest tables.
  auto smallest = session_config(pid_options(), 0);
  EXPECT_EQ(smallest.tracer.max_outstanding_allocations, 262144u);
  EXPECT_EQ(smallest.tracer.max_stacks, 16384u);
}

TEST(SessionConfig, UnwindTableRowsComeFromMibOrTheDefaultForTheMode) {
  constexpr uint64_t kRowsPerMib = 1024 * 1024 / tracer::kUnwindRowBytes;
  auto defaults = session_config(pid_options(), kGiB);
  EXPECT_EQ(defaults.tracer.unwind_mode, model::UnwindMode::kAuto);
  EXPECT_EQ(defaults.tracer.unwind_table_rows, 8 * kRowsPerMib);  // a million rows

  cli::LeaksOptions host_wide;
  host_wide.all = true;
  auto all = session_config(host_wide, kGiB);
  EXPECT_EQ(all.tracer.unwind_table_rows, 16 * kRowsPerMib);  // every binary of the host
  EXPECT_TRUE(all.tracer.host_wide);
  EXPECT_TRUE(all.host_wide());

  auto options = pid_options();
  options.unwind = model::UnwindMode::kDwarf;
  options.unwind_table_mib = 64;
  auto given = session_config(options, kGiB);
  EXPECT_EQ(given.tracer.unwind_mode, model::UnwindMode::kDwarf);
  EXPECT_EQ(given.tracer.unwind_table_rows, 64 * kRowsPerMib);
  options.unwind_table_mib = 4096;  // the CLI's most: 2^29 rows still fit in 32 bits
  EXPECT_EQ(session_config(options, kGiB).tracer.unwind_table_rows, 4096 * kRowsPerMib);
}

TEST(SessionConfig, PythonLayoutsOnlyWhenTheirWalkIsWanted) {
  auto mixed = session_config(pid_options(), kGiB);
  EXPECT_EQ(mixed.python_frames, model::PythonFramesMode::kMixed);
  EXPECT_TRUE(mixed.tracer.python_layout.has_value());
  EXPECT_FALSE(mixed.tracer.python_type_layout.has_value());  // --python-types is opt-in
  EXPECT_FALSE(mixed.python_types);

  auto options = pid_options();
  options.python_frames = model::PythonFramesMode::kNative;
  options.python_types = true;
  options.python_objects = false;
  auto native = session_config(options, kGiB);
  EXPECT_EQ(native.python_frames, model::PythonFramesMode::kNative);
  EXPECT_FALSE(native.tracer.python_layout.has_value());  // no Python walk: no cost
  EXPECT_TRUE(native.tracer.python_type_layout.has_value());
  EXPECT_TRUE(native.python_types);

  options.python_frames = model::PythonFramesMode::kPython;
  EXPECT_TRUE(session_config(options, kGiB).tracer.python_layout.has_value());
}

// With object tracking, the types come from the tracked objects: --python-types adds no probe.
TEST(SessionConfig, PythonTypesComeFromTheTrackedObjectsWhenObjectsAreTracked) {
  auto options = pid_options();
  options.python_types = true;
  options.python_objects = true;
  auto config = session_config(options, kGiB);
  EXPECT_TRUE(config.tracer.python_objects);
  EXPECT_FALSE(config.tracer.python_type_layout.has_value());
  EXPECT_FALSE(config.python_types);
}

TEST(SessionConfig, ModesTargetsAndReportSettingsCarryOver) {
  cli::LeaksOptions options;
  options.command = {"./server", "--port", "8080"};
  options.sample_rate = 4096;
  options.mmap = true;
  options.no_follow_forks = true;
  options.verbose = true;
  options.probe_floor = true;
  options.trace_cxx = true;
  options.interval_s = 2;
  options.min_age_s = 1.5;
  options.top = 20;
  auto config = session_config(options, kGiB);
  EXPECT_EQ(config.command, options.command);
  EXPECT_TRUE(config.pids.empty());
  EXPECT_EQ(config.tracer.sample_rate, 4096u);
  EXPECT_TRUE(config.tracer.trace_regions);
  EXPECT_FALSE(config.tracer.follow_forks);
  EXPECT_TRUE(config.tracer.verbose);
  EXPECT_TRUE(config.verbose());
  EXPECT_TRUE(config.tracer.probe_floor);
  EXPECT_FALSE(config.host_wide());
  EXPECT_TRUE(config.trace_cxx);
  EXPECT_DOUBLE_EQ(config.interval_s, 2);
  EXPECT_DOUBLE_EQ(config.min_age_s, 1.5);
  EXPECT_EQ(config.top, 20u);
  EXPECT_FALSE(config.suppressions.list().empty());  // the built-in ones

  auto defaults = session_config(pid_options(), kGiB);
  EXPECT_EQ(defaults.pids, (std::vector<uint32_t>{4242}));
  EXPECT_TRUE(defaults.tracer.follow_forks);  // children are traced by default
  EXPECT_FALSE(defaults.tracer.trace_regions);
}

TEST(SessionConfig, HostWideFiltersCarryOver) {
  cli::LeaksOptions options;
  options.all = true;
  options.comms = {"nginx"};
  options.cgroups = {"/system.slice"};
  options.excluded_pids = {42};
  auto config = session_config(options, kGiB);
  EXPECT_EQ(config.comms, options.comms);
  EXPECT_EQ(config.cgroups, options.cgroups);
  EXPECT_EQ(config.excluded_pids, options.excluded_pids);
}

TEST(SessionConfig, CustomAllocatorsAreOpenedThroughEachProcesssRoot) {
  auto options = pid_options();
  std::string error;
  auto allocator =
      cli::parse_allocator_option("/usr/lib/libfoo.so:foo_alloc=malloc,foo_free=free", error);
  ASSERT_TRUE(allocator) << error;
  options.allocators.push_back(*allocator);
  auto config = session_config(options, kGiB);
  ASSERT_EQ(config.allocators.size(), 1u);
  EXPECT_EQ(config.allocators[0].path, "/usr/lib/libfoo.so");

  auto in_process = config.custom_allocators_for(4242);
  ASSERT_EQ(in_process.size(), 1u);
  EXPECT_EQ(in_process[0].path, "/usr/lib/libfoo.so");
  // Resolved inside the process's root when probed, never by a path out of it.
  EXPECT_EQ(in_process[0].file.pid, 4242u);
  EXPECT_EQ(in_process[0].file.path, "/usr/lib/libfoo.so");
  EXPECT_FALSE(in_process[0].file.mapped());
  ASSERT_EQ(in_process[0].functions.size(), 2u);
  EXPECT_EQ(in_process[0].functions[0].symbol, "foo_alloc");
  EXPECT_EQ(in_process[0].functions[0].role, "malloc");
  EXPECT_EQ(in_process[0].functions[1].symbol, "foo_free");
  EXPECT_EQ(in_process[0].functions[1].role, "free");
  // pid 0: memtrail's own view (a command not started yet).
  EXPECT_EQ(config.custom_allocators_for(0)[0].file.pid, 0u);
  EXPECT_EQ(config.custom_allocators_for(0)[0].file.path, "/usr/lib/libfoo.so");
}

}  // namespace
}  // namespace memtrail::session
