// SPDX-License-Identifier: Apache-2.0
// The BPF object itself: every program passes the verifier, maps are sized as configured, and a
// tracer with nothing attached reads back an empty snapshot.
#include "tracer/alloc_tracer.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "common/error.h"

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

}  // namespace
}  // namespace memtrail::tracer
