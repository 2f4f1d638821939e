// SPDX-License-Identifier: Apache-2.0
// Byte sampling: the BPF side's tables and the unbiased estimator.
#include "aggregator/sampling.h"

#include <cmath>

namespace memtrail::aggregator {
namespace {

uint32_t fixed_16_16(double value) { return static_cast<uint32_t>(std::lround(value * 65536.0)); }

}  // namespace

double sampling_probability(uint64_t size, uint64_t rate) {
  if (rate == 0) return 1.0;
  return -std::expm1(-static_cast<double>(size) / static_cast<double>(rate));
}

double estimated_bytes(uint64_t size, uint64_t rate) {
  double probability = sampling_probability(size, rate);
  return probability > 0 ? static_cast<double>(size) / probability : 0.0;
}

double estimated_allocations(uint64_t size, uint64_t rate) {
  double probability = sampling_probability(size, rate);
  return probability > 0 ? 1.0 / probability : 0.0;
}

std::vector<uint32_t> exponential_quantiles(size_t count) {
  std::vector<uint32_t> table(count);
  for (size_t i = 0; i < table.size(); ++i) {
    double uniform = (static_cast<double>(i) + 0.5) / static_cast<double>(table.size());
    table[i] = fixed_16_16(-std::log1p(-uniform));
  }
  return table;
}

std::vector<uint32_t> sample_weight_table(size_t count, uint32_t steps_per_rate) {
  std::vector<uint32_t> table(count);
  for (size_t i = 0; i < table.size(); ++i) {
    double x = static_cast<double>(i) / steps_per_rate;
    table[i] = fixed_16_16(i == 0 ? 1.0 : x / -std::expm1(-x));  // the limit at 0 is 1
  }
  return table;
}

}  // namespace memtrail::aggregator
