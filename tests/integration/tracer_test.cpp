// SPDX-License-Identifier: Apache-2.0
// The BPF object itself: every program passes the verifier, maps are sized as configured, and a
// tracer with nothing attached reads back an empty snapshot.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "python/cpython.h"
#include "tracer/alloc_tracer.h"

namespace memtrail::tracer {
namespace {

bool bpf_required() {
  const char* required = std::getenv("MEMTRAIL_REQUIRE_BPF");
  return required && std::string(required) == "1";
}

TEST(AllocTracer, EveryProgramLoadsAndAFreshTracerIsEmpty) {
  if (geteuid() != 0) {
    if (bpf_required()) FAIL() << "MEMTRAIL_REQUIRE_BPF=1 but not root";
    GTEST_SKIP() << "loading BPF programs needs root";
  }
  TracerConfig config;
  config.max_outstanding_allocations = 4096;
  config.max_fallback_sites = 256;
  config.max_stacks = 256;
  std::unique_ptr<AllocTracer> tracer;
  try {
    tracer = std::make_unique<AllocTracer>(config);  // open + load: the verifier runs here
  } catch (const Error& error) {
    FAIL() << error.what() << " / " << error.hint();
  }
  model::Snapshot snapshot = tracer->snapshot();
  EXPECT_TRUE(snapshot.allocations.empty());
  EXPECT_TRUE(snapshot.sites.empty());
  EXPECT_TRUE(snapshot.stacks.empty());
  EXPECT_EQ(snapshot.counters.allocations, 0u);
  EXPECT_EQ(snapshot.counters.drops, 0u);
  EXPECT_GT(snapshot.taken_at_ns, 0u);
}

// Each --unwind mode (and sampling) specializes the programs differently before the verifier
// sees them (read-only data prunes branches): every combination must stay within its budget.
TEST(AllocTracer, EveryUnwindModeAndSamplingPassesTheVerifier) {
  if (geteuid() != 0) {
    if (bpf_required()) FAIL() << "MEMTRAIL_REQUIRE_BPF=1 but not root";
    GTEST_SKIP() << "loading BPF programs needs root";
  }
  for (auto mode : {unwind::UnwindMode::kFramePointers, unwind::UnwindMode::kDwarf,
                    unwind::UnwindMode::kAuto}) {
    for (uint64_t sample_rate : {uint64_t{0}, uint64_t{1} << 19}) {
      TracerConfig config;
      config.max_outstanding_allocations = 4096;
      config.max_fallback_sites = 256;
      config.max_stacks = 256;
      config.unwind_mode = mode;
      config.unwind_table_rows = 1024;
      config.sample_rate = sample_rate;
      try {
        AllocTracer tracer(config);
        EXPECT_EQ(tracer.row_capacity(), mode == unwind::UnwindMode::kFramePointers ? 0u : 1024u);
      } catch (const Error& error) {
        ADD_FAILURE() << "--unwind " << model::unwind_mode_name(mode) << ", --sample-rate "
                      << sample_rate << ": " << error.what() << " / " << error.hint();
      }
    }
  }
}

// Every switch userspace can set on the BPF object (tracer::TracerConfig, as session_config
// translates the options) changes which programs load and what read-only data prunes in them,
// so the verifier sees a different program for each combination: --mmap (trace_regions),
// forks followed or not (--no-follow-forks), --all (host_wide), --python-frames (a frame
// layout), --python-types (a type layout), --python-objects, a launched command's execs held,
// each --unwind mode, --sample-rate, and the benchmarks' probe floor (--return-sites chooses
// where the loaded programs are attached, not which load). Every combination loads, through
// AllocTracer as memtrail does.
struct Switches {
  bool trace_regions, follow_forks, host_wide, python_frames, python_types, sampling, probe_floor,
      python_objects, hold_execs;
  model::UnwindMode unwind;

  std::string describe() const {
    std::ostringstream out;
    out << (trace_regions ? "--mmap" : "no --mmap") << ", "
        << (follow_forks ? "forks followed" : "--no-follow-forks") << ", "
        << (host_wide ? "--all" : "no --all") << ", "
        << (python_frames ? "--python-frames mixed" : "--python-frames native") << ", "
        << (python_types ? "--python-types" : "no --python-types") << ", --unwind "
        << model::unwind_mode_name(unwind) << ", "
        << (sampling ? "--sample-rate 512KiB" : "no sampling") << ", "
        << (probe_floor ? "probe floor" : "no probe floor") << ", "
        << (python_objects ? "--python-objects on" : "--python-objects off") << ", "
        << (hold_execs ? "execs held" : "execs not held");
    return out.str();
  }
};

// The switches as factors: 9 on/off, then the unwind mode (3 values).
constexpr int kFactors = 10;
std::array<int, kFactors> levels_of(const Switches& s) {
  return {s.trace_regions, s.follow_forks,
          s.host_wide,     s.python_frames,
          s.python_types,  s.sampling,
          s.probe_floor,   s.python_objects,
          s.hold_execs,    static_cast<int>(s.unwind)};
}

// Every combination: 2^9 x 3 = 1,536.
std::vector<Switches> every_combination() {
  std::vector<Switches> combinations;
  for (unsigned bits = 0; bits < (1u << 9); ++bits) {
    for (auto mode :
         {model::UnwindMode::kFramePointers, model::UnwindMode::kDwarf, model::UnwindMode::kAuto}) {
      combinations.push_back({(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0,
                              (bits & 16) != 0, (bits & 32) != 0, (bits & 64) != 0,
                              (bits & 128) != 0, (bits & 256) != 0, mode});
    }
  }
  return combinations;
}

// A covering array of strength 3, chosen greedily from every combination: for any three
// switches, every setting of those three is in some combination loaded. Verifier failures
// come from switches meeting (one branch kept by one, pruned by another): loading all of
// them takes about 0.77 s each on 2 busy cores; the covering array takes a few dozen.
std::vector<Switches> covering_array(const std::vector<Switches>& all) {
  auto key = [](int a, int b, int c, const std::array<int, kFactors>& l) {
    return ((a * kFactors + b) * kFactors + c) * 27 + (l[a] * 3 + l[b]) * 3 + l[c];
  };
  std::set<int> uncovered;
  for (const Switches& s : all) {
    auto l = levels_of(s);
    for (int a = 0; a < kFactors; ++a)
      for (int b = a + 1; b < kFactors; ++b)
        for (int c = b + 1; c < kFactors; ++c) uncovered.insert(key(a, b, c, l));
  }
  std::vector<Switches> chosen;
  while (!uncovered.empty()) {
    const Switches* best = nullptr;
    size_t best_gain = 0;
    for (const Switches& s : all) {
      auto l = levels_of(s);
      size_t gain = 0;
      for (int a = 0; a < kFactors; ++a)
        for (int b = a + 1; b < kFactors; ++b)
          for (int c = b + 1; c < kFactors; ++c) gain += uncovered.count(key(a, b, c, l));
      if (gain > best_gain) {
        best_gain = gain;
        best = &s;
      }
    }
    auto l = levels_of(*best);
    for (int a = 0; a < kFactors; ++a)
      for (int b = a + 1; b < kFactors; ++b)
        for (int c = b + 1; c < kFactors; ++c) uncovered.erase(key(a, b, c, l));
    chosen.push_back(*best);
  }
  return chosen;
}

TEST(AllocTracer, EveryCombinationOfSwitchesPassesTheVerifier) {
  if (geteuid() != 0) {
    if (bpf_required()) FAIL() << "MEMTRAIL_REQUIRE_BPF=1 but not root";
    GTEST_SKIP() << "loading BPF programs needs root";
  }
  // MEMTRAIL_VERIFIER_ALL=1 loads all of them (about 20 minutes).
  const char* all = std::getenv("MEMTRAIL_VERIFIER_ALL");
  std::vector<Switches> combinations = every_combination();
  if (!all || std::string(all) != "1") combinations = covering_array(combinations);
  auto started = std::chrono::steady_clock::now();
  for (const Switches& switches : combinations) {
    TracerConfig config;
    config.max_outstanding_allocations = 4096;
    config.max_fallback_sites = 256;
    config.max_stacks = 256;
    config.unwind_table_rows = 1024;
    config.trace_regions = switches.trace_regions;
    config.follow_forks = switches.follow_forks;
    config.host_wide = switches.host_wide;
    if (switches.python_frames) config.python_layout = python::frame_layout();
    if (switches.python_types) config.python_type_layout = python::type_layout();
    config.unwind_mode = switches.unwind;
    config.sample_rate = switches.sampling ? uint64_t{1} << 19 : 0;
    config.probe_floor = switches.probe_floor;
    config.python_objects = switches.python_objects;
    config.hold_execs = switches.hold_execs;
    try {
      AllocTracer tracer(config);  // open + load: the verifier runs here
    } catch (const Error& error) {
      ADD_FAILURE() << switches.describe() << ": " << error.what() << " / " << error.hint();
    }
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("%zu combinations loaded in %.1f s\n", combinations.size(), seconds);
}

}  // namespace
}  // namespace memtrail::tracer
