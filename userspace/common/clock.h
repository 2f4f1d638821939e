// SPDX-License-Identifier: Apache-2.0
// The clocks memtrail compares: CLOCK_MONOTONIC (the BPF programs' bpf_ktime_get_ns) and the
// wall clock reports are stamped with.
#pragma once

#include <cstdint>

namespace memtrail {

// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
uint64_t monotonic_now_ns();

// Milliseconds since the Unix epoch.
int64_t unix_now_ms();

}  // namespace memtrail
