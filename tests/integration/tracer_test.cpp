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

}  // namespace
}  // namespace memtrail::tracer
