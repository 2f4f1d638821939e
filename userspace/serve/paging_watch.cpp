// SPDX-License-Identifier: Apache-2.0
// `memtrail paging`'s verdicts, culprits and victims for the always-on tier, as metrics.
#include "serve/paging_watch.h"

namespace memtrail::serve {
namespace {

constexpr model::PagingVerdict kVerdicts[] = {
    model::PagingVerdict::kOk, model::PagingVerdict::kPressure, model::PagingVerdict::kThrashing};

void verdict_series(MetricsText& out, Labels labels, model::PagingVerdict verdict) {
  labels.emplace_back("verdict", "");
  for (auto candidate : kVerdicts) {
    labels.back().second = model::paging_verdict_name(candidate);
    out.sample("memtrail_paging_verdict", labels, candidate == verdict ? 1 : 0);
  }
}

}  // namespace

void PagingWatch::add(const model::PagingSample& sample) {
  if (!analyzer_ || samples_ >= window_) {
    analyzer_ = std::make_unique<aggregator::PagingAnalyzer>();
    samples_ = 0;
  }
  analyzer_->add(sample);
  ++samples_;
  if (analyzer_->intervals() > 0) report_ = analyzer_->report(top_);
}

void PagingWatch::render(MetricsText& out) const {
  out.family("memtrail_paging_verdict", "gauge",
             "1 for the latest paging verdict (ok, pressure, thrashing) of the host (scope=host) "
             "and of memory cgroups under pressure or thrashing now, 0 for the others.");
  if (report_ && !report_->host.empty()) {
    verdict_series(out, {{"scope", "host"}}, report_->host.back().verdict);
  }
  if (report_) {
    for (const auto& cgroup : report_->cgroups) {
      if (cgroup.intervals.empty()) continue;
      auto verdict = cgroup.intervals.back().verdict;
      if (verdict != model::PagingVerdict::kOk) {
        verdict_series(out, {{"scope", "cgroup"}, {"cgroup", cgroup.path}}, verdict);
      }
    }
  }
  out.family("memtrail_process_paging_role", "gauge",
             "1 for processes memtrail paging names: culprits (their footprint grows while "
             "memory is short) and victims (they stall on faults without growing).");
  if (!report_) return;
  for (const auto& process : report_->processes) {
    if (process.role == model::ProcessRole::kNone || process.exited) continue;
    out.sample("memtrail_process_paging_role",
               {{"pid", std::to_string(process.pid)},
                {"comm", process.comm},
                {"cgroup", process.cgroup},
                {"role", model::process_role_name(process.role)}},
               1);
  }
}

}  // namespace memtrail::serve
