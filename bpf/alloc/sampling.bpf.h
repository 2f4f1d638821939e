/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* --sample-rate: which allocations are recorded, and how many bytes each one stands for. */
#ifndef MEMTRAIL_ALLOC_SAMPLING_BPF_H
#define MEMTRAIL_ALLOC_SAMPLING_BPF_H

#include "common.bpf.h"
#include "alloc_events.h"
#include "alloc/counters.bpf.h"
#include "alloc/inflight.bpf.h"

/* --sample-rate in bytes; 0 records every allocation. Set by userspace before load. */
const volatile __u64 sample_rate = 0;
const volatile __u32 sample_quantiles[MEMTRAIL_SAMPLE_QUANTILES] = {};
const volatile __u32 sample_weights[MEMTRAIL_SAMPLE_WEIGHTS] = {};

static __always_inline __s64 sample_distance(__u64 rate)
{
	__u32 quantile = sample_quantiles[bpf_get_prandom_u32() & (MEMTRAIL_SAMPLE_QUANTILES - 1)];

	return ((rate * quantile) >> 16) + 1;
}

/* The bytes this allocation stands for: its size when every allocation is recorded; with
 * --sample-rate, 0 when it is passed over, else the unbiased estimate size / P(sampled). */
static __always_inline __u64 sampled_bytes(struct inflight_call *call, __u64 size)
{
	__u64 rate = sample_rate, position, index, remainder;
	__u32 low, high;

	if (!rate)
		return size;
	if (!call->sampler_ready) {
		call->sample_countdown = sample_distance(rate);
		call->sampler_ready = 1;
	}
	call->sample_countdown -= size;
	if (call->sample_countdown > 0) {
		count(MEMTRAIL_CTR_UNSAMPLED);
		return 0;
	}
	/* Sample points form a Poisson process over the bytes: the distance from here to the
	 * next one is again exponential, whatever came before. */
	call->sample_countdown = sample_distance(rate);
	position = size * MEMTRAIL_SAMPLE_WEIGHT_STEPS;
	index = position / rate;
	if (index >= MEMTRAIL_SAMPLE_WEIGHTS - 1)
		return size; /* size >= 8 * rate: sampled with probability > 0.9997 */
	remainder = position - index * rate;
	index &= 1023; /* for the verifier: already < MEMTRAIL_SAMPLE_WEIGHTS - 1 */
	low = sample_weights[index];
	high = sample_weights[index + 1];
	/* rate * (low + (high - low) * remainder / rate), interpolated in 16.16 */
	return (rate * low + (high - low) * remainder) >> 16;
}

#endif /* MEMTRAIL_ALLOC_SAMPLING_BPF_H */
