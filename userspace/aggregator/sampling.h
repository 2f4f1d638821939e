// SPDX-License-Identifier: Apache-2.0
// Byte sampling (--sample-rate): the tables the BPF side draws from, and the estimator that
// keeps sampled totals unbiased.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace memtrail::aggregator {

// Each byte is sampled with probability 1/rate, so an allocation of `size` bytes is recorded
// with probability 1 - exp(-size/rate) (tcmalloc's and jemalloc's scheme). A recorded one
// stands for size / P bytes and 1 / P allocations: summing those is unbiased.
double sampling_probability(uint64_t size, uint64_t rate);
double estimated_bytes(uint64_t size, uint64_t rate);        // size itself when rate is 0
double estimated_allocations(uint64_t size, uint64_t rate);  // 1 when rate is 0

// 16.16 fixed-point tables for the BPF program, of the sizes the tracer asks for (its BPF
// program's): the `count` quantiles (i + 0.5) / count of the unit exponential distribution,
// the distance to the next sample in units of rate;
std::vector<uint32_t> exponential_quantiles(size_t count);
// `count` points of x / (1 - exp(-x)) at x = i / steps_per_rate: bytes per sample, in units of
// rate.
std::vector<uint32_t> sample_weight_table(size_t count, uint32_t steps_per_rate);

}  // namespace memtrail::aggregator
