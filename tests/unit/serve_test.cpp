// SPDX-License-Identifier: Apache-2.0
// memtrail serve's pure parts: pod identity, the Prometheus text, requests, the always-on
// tier's verdicts and folding, traced sites, Pyroscope's ingest API.
#include <gtest/gtest.h>

#include <string>

#include "serve/host_memory.h"
#include "serve/metrics_text.h"
#include "serve/paging_watch.h"
#include "serve/pod_identity.h"
#include "serve/pyroscope.h"
#include "serve/requests.h"
#include "serve/traced_sites.h"

namespace memtrail::serve {
namespace {

constexpr const char* kUid = "7f6c8f1e-2a7b-4c1d-9e3f-0123456789ab";
constexpr const char* kId = "4c01db0b339c6b1d0f5e2c3f0a8a7d3b9e2d1c0b5a4f3e2d1c0b9a8f7e6d5c4b";

TEST(PodIdentity, CgroupfsBurstable) {
  auto pod = parse_pod_identity(std::string("/kubepods/burstable/pod") + kUid + "/" + kId);
  ASSERT_TRUE(pod);
  EXPECT_EQ(pod->pod_uid, kUid);
  EXPECT_EQ(pod->container_id, kId);
  EXPECT_EQ(pod->qos, "burstable");
}

TEST(PodIdentity, CgroupfsGuaranteedPodCgroupHasNoContainer) {
  auto pod = parse_pod_identity(std::string("/kubepods/pod") + kUid);
  ASSERT_TRUE(pod);
  EXPECT_EQ(pod->pod_uid, kUid);
  EXPECT_EQ(pod->container_id, "");
  EXPECT_EQ(pod->qos, "guaranteed");
}

TEST(PodIdentity, SystemdContainerdCrioDocker) {
  std::string uid_underscores = kUid;
  for (auto& c : uid_underscores) {
    if (c == '-') c = '_';
  }
  for (std::string prefix : {"cri-containerd-", "crio-", "docker-"}) {
    std::string path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" +
                       uid_underscores + ".slice/" + prefix + kId + ".scope";
    auto pod = parse_pod_identity(path);
    ASSERT_TRUE(pod) << path;
    EXPECT_EQ(pod->pod_uid, kUid) << path;
    EXPECT_EQ(pod->container_id, kId) << path;
    EXPECT_EQ(pod->qos, "besteffort") << path;
  }
  auto guaranteed = parse_pod_identity("/kubepods.slice/kubepods-pod" + uid_underscores +
                                       ".slice/cri-containerd-" + kId + ".scope");
  ASSERT_TRUE(guaranteed);
  EXPECT_EQ(guaranteed->qos, "guaranteed");
  EXPECT_EQ(guaranteed->container_id, kId);
}

TEST(PodIdentity, NestedUnderKubeletSliceAndCrioConmon) {
  std::string uid_underscores = kUid;
  for (auto& c : uid_underscores) {
    if (c == '-') c = '_';
  }
  auto pod = parse_pod_identity(
      "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable"
      ".slice/kubelet-kubepods-burstable-pod" +
      uid_underscores + ".slice/crio-conmon-" + kId + ".scope");
  ASSERT_TRUE(pod);
  EXPECT_EQ(pod->pod_uid, kUid);
  EXPECT_EQ(pod->container_id, "");  // conmon's scope is not the container
}

TEST(PodIdentity, NotAPod) {
  EXPECT_FALSE(parse_pod_identity("/"));
  EXPECT_FALSE(parse_pod_identity("/system.slice/docker-" + std::string(kId) + ".scope"));
  EXPECT_FALSE(parse_pod_identity("/user.slice/pod" + std::string(kUid)));  // not under kubepods
  EXPECT_FALSE(parse_pod_identity("/kubepods/burstable/podnot-a-uid/" + std::string(kId)));
  auto short_id = parse_pod_identity(std::string("/kubepods/pod") + kUid + "/xyz");
  ASSERT_TRUE(short_id);
  EXPECT_EQ(short_id->container_id, "");
}

TEST(MetricsText, FamiliesEscapingAndValues) {
  MetricsText out;
  out.family("memtrail_x_bytes", "gauge", "A help\\text\nwith a newline.");
  out.sample("memtrail_x_bytes", {{"comm", "a\"b\\c\nd"}, {"empty", ""}, {"pid", "7"}}, 1536);
  out.sample("memtrail_x_bytes", {}, 0.25);
  EXPECT_EQ(out.text(),
            "# HELP memtrail_x_bytes A help\\\\text\\nwith a newline.\n"
            "# TYPE memtrail_x_bytes gauge\n"
            "memtrail_x_bytes{comm=\"a\\\"b\\\\c\\nd\",pid=\"7\"} 1536\n"
            "memtrail_x_bytes 0.25\n");
  EXPECT_EQ(format_sample_value(1.0 / 0.0), "+Inf");
  EXPECT_EQ(format_sample_value(0.0 / 0.0), "NaN");
  EXPECT_EQ(format_sample_value(18446744073709551615.0), "1.8446744073709552e+19");
}

TEST(Requests, ProfileQueries) {
  ProfileLimits limits{10, 300};
  std::string error;
  auto request = parse_profile_request({{"pid", "42"}, {"seconds", "5"}}, limits, error);
  ASSERT_TRUE(request) << error;
  EXPECT_EQ(request->target.kind, TargetSelector::Kind::kPid);
  EXPECT_EQ(request->target.pid, 42u);
  EXPECT_EQ(request->seconds, 5);
  request = parse_profile_request({{"comm", "nginx"}}, limits, error);
  ASSERT_TRUE(request);
  EXPECT_EQ(request->seconds, 10);
  EXPECT_EQ(request->target.text(), "comm:nginx");
  request = parse_profile_request({{"cgroup", "kubepods/pod1/"}}, limits, error);
  ASSERT_TRUE(request);
  EXPECT_EQ(request->target.name, "/kubepods/pod1");

  struct Bad {
    std::multimap<std::string, std::string> query;
    std::string error;
  };
  for (const auto& bad : std::vector<Bad>{
           {{}, "give the target: pid=N, comm=NAME or cgroup=PATH"},
           {{{"pid", "0"}}, "pid must be a process id from 1 to 4194304, not '0'"},
           {{{"pid", "-1"}}, "pid must be a process id from 1 to 4194304, not '-1'"},
           {{{"pid", "12x"}}, "pid must be a process id from 1 to 4194304, not '12x'"},
           {{{"pid", "1"}, {"comm", "a"}}, "give exactly one of pid=, comm= and cgroup="},
           {{{"pid", "1"}, {"seconds", "301"}},
            "seconds must be a whole number from 1 to 300, not '301'"},
           {{{"pid", "1"}, {"seconds", "1.5"}},
            "seconds must be a whole number from 1 to 300, not '1.5'"},
           {{{"pid", "1"}, {"seconds", "0"}},
            "seconds must be a whole number from 1 to 300, not '0'"},
           {{{"pid", "1"}, {"debug", "1"}},
            "unknown parameter 'debug' (known: pid, comm, cgroup, seconds)"},
           {{{"cgroup", "/a/../../etc"}},
            "cgroup must be a cgroup path as in /proc/PID/cgroup, without . or .. components"},
           {{{"comm", ""}}, "comm must be a non-empty printable name of at most 4096 bytes"},
       }) {
    error.clear();
    EXPECT_FALSE(parse_profile_request(bad.query, limits, error));
    EXPECT_EQ(error, bad.error);
  }
}

TEST(Requests, TraceSelectorsAndToken) {
  std::string error;
  auto selector = parse_trace_selector("pid:42", error);
  ASSERT_TRUE(selector);
  EXPECT_EQ(selector->pid, 42u);
  selector = parse_trace_selector("cgroup:/system.slice/db.service", error);
  ASSERT_TRUE(selector);
  EXPECT_EQ(selector->text(), "cgroup:/system.slice/db.service");
  EXPECT_FALSE(parse_trace_selector("42", error));
  EXPECT_EQ(error, "--trace must be pid:N, comm:NAME or cgroup:PATH, not '42'");
  EXPECT_FALSE(parse_trace_selector("pid:x", error));
  EXPECT_EQ(error, "--trace pid must be a process id from 1 to 4194304, not 'x'");

  EXPECT_TRUE(bearer_token_matches("Bearer s3cret", "s3cret"));
  EXPECT_FALSE(bearer_token_matches("Bearer s3cre", "s3cret"));
  EXPECT_FALSE(bearer_token_matches("Bearer s3creT", "s3cret"));
  EXPECT_FALSE(bearer_token_matches("Basic s3cret", "s3cret"));
  EXPECT_FALSE(bearer_token_matches("", "s3cret"));
  EXPECT_FALSE(bearer_token_matches("Bearer ", ""));
}

model::ProcessSample process(uint32_t pid, const std::string& comm, uint64_t anon,
                             const std::string& cgroup = "/") {
  model::ProcessSample sample;
  sample.pid = pid;
  sample.start_time_ticks = 100 + pid;
  sample.comm = comm;
  sample.cgroup = cgroup;
  sample.rss_anon_bytes = anon;
  return sample;
}

// The lines of `text` that start with `prefix`.
std::vector<std::string> lines_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    std::string line = text.substr(start, end - start);
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

TEST(HostMemory, GrowingProcessIsALeakNeverFoldedAndExitedSeriesGo) {
  HostMemory host({1, 60, 1, 10});
  std::string pod_cgroup = std::string("/kubepods/burstable/pod") + kUid + "/" + kId;
  for (int i = 0; i < 6; ++i) {
    std::vector<model::ProcessSample> samples = {
        process(10, "big", 100 << 20),  // large, flat
        process(20, "leaky", (1 << 20) + static_cast<uint64_t>(i) * 65536, pod_cgroup),  // grows
        process(30, "small", 4096)};
    if (i == 5) samples.pop_back();  // pid 30 exits
    host.update(i, samples, {});
  }
  MetricsText out;
  host.render(out);
  std::string text = out.take();
  // Cap 1: the growing process keeps its series, though the flat one is larger.
  auto verdicts = lines_with(text, "memtrail_process_memory_verdict{");
  std::string leaky_labels = std::string("pid=\"20\",comm=\"leaky\",cgroup=\"") + pod_cgroup +
                             "\",pod_uid=\"" + kUid + "\",container_id=\"" + kId + "\"";
  EXPECT_NE(std::find(verdicts.begin(), verdicts.end(),
                      "memtrail_process_memory_verdict{" + leaky_labels + ",verdict=\"leak\"} 1"),
            verdicts.end())
      << text;
  EXPECT_NE(std::find(verdicts.begin(), verdicts.end(),
                      "memtrail_process_memory_verdict{" + leaky_labels + ",verdict=\"steady\"} 0"),
            verdicts.end());
  EXPECT_EQ(verdicts.size(), 4u);  // one process, four verdicts
  EXPECT_EQ(lines_with(text, "memtrail_process_anon_bytes{pid=\"10\"").size(), 0u);
  EXPECT_EQ(lines_with(text, "memtrail_process_anon_bytes{pid=\"30\"").size(), 0u);
  EXPECT_EQ(lines_with(text, "memtrail_processes ")[0], "memtrail_processes 2");
  EXPECT_EQ(lines_with(text, "memtrail_processes_folded ")[0], "memtrail_processes_folded 1");
  EXPECT_EQ(lines_with(text, "memtrail_folded_processes_private_bytes ")[0],
            "memtrail_folded_processes_private_bytes 104857600");
  auto growth = lines_with(text, "memtrail_process_private_growth_bytes_per_second{pid=\"20\"");
  ASSERT_EQ(growth.size(), 1u);
  EXPECT_EQ(growth[0].substr(growth[0].rfind(' ') + 1), "65536");
  EXPECT_EQ(host.pids_in_cgroup("/kubepods"), std::vector<uint32_t>{20});
  EXPECT_EQ(host.pids_with_comm("big"), std::vector<uint32_t>{10});
  EXPECT_FALSE(host.process(30));
  // A cgroup's series are the sum of its processes'.
  EXPECT_EQ(lines_with(text, "memtrail_cgroup_anon_bytes{cgroup=\"/\"")[0],
            "memtrail_cgroup_anon_bytes{cgroup=\"/\"} 104857600");
}

TEST(HostMemory, FoldsBeyondTheCapAndAReusedPidStartsOver) {
  HostMemory host({1, 60, 2, 10});
  std::vector<model::ProcessSample> samples;
  for (uint32_t pid = 1; pid <= 5; ++pid) samples.push_back(process(pid, "p", pid * 4096));
  for (int i = 0; i < 5; ++i) host.update(i, samples, {});
  MetricsText out;
  host.render(out);
  std::string text = out.take();
  EXPECT_EQ(lines_with(text, "memtrail_processes_folded ")[0], "memtrail_processes_folded 3");
  EXPECT_EQ(lines_with(text, "memtrail_folded_processes_private_bytes ")[0],
            "memtrail_folded_processes_private_bytes " + std::to_string((1 + 2 + 3) * 4096));
  EXPECT_EQ(lines_with(text, "memtrail_process_anon_bytes{").size(), 2u);
  EXPECT_EQ(lines_with(text,
                       "memtrail_process_memory_verdict{pid=\"5\",comm=\"p\",cgroup=\"/\","
                       "verdict=\"steady\"} 1")
                .size(),
            1u);
  // pid 5 reused by another program: its history starts over (too short for a verdict).
  samples.back().start_time_ticks = 999;
  host.update(5, samples, {});
  MetricsText again;
  host.render(again);
  EXPECT_EQ(lines_with(again.text(),
                       "memtrail_process_memory_verdict{pid=\"5\",comm=\"p\","
                       "cgroup=\"/\",verdict=\"too_short\"} 1")
                .size(),
            1u);
}

TEST(TracedSites, StableIdFunctionAndVerdictSeries) {
  model::LeakSite site;
  site.pid = 42;
  site.outstanding_bytes = 4096;
  model::Frame leaf;
  leaf.module = "/usr/bin/leaky";
  leaf.offset = 0x1234;
  leaf.function = "leak_some";
  model::Frame caller = leaf;
  caller.offset = 0x2000;
  caller.function = "main";
  site.stack = {leaf, caller};
  model::LeakSite same_elsewhere = site;
  same_elsewhere.pid = 43;
  for (auto& frame : same_elsewhere.stack) frame.module = "/other/root/usr/bin/leaky";
  EXPECT_EQ(stable_site_id(site), stable_site_id(same_elsewhere));
  model::LeakSite other = site;
  other.stack[0].offset = 0x1238;
  EXPECT_NE(stable_site_id(site), stable_site_id(other));
  EXPECT_EQ(stable_site_id(site).size(), 16u);
  EXPECT_EQ(innermost_function(site), "leak_some");
  other.stack[0].function.reset();
  EXPECT_EQ(innermost_function(other), "leaky+0x1238");

  site.growth = model::Growth{};
  site.growth->verdict = "leak";
  TracedTarget target;
  target.selector = "pid:42";
  target.running = true;
  target.report.leaks = {site};
  target.report.totals.sites = 3;
  model::Target traced;
  traced.pid = 42;
  traced.comm = "leaky";
  target.report.targets = {traced};
  MetricsText out;
  render_traced_sites({target}, out);
  std::string labels = "target=\"pid:42\",pid=\"42\",comm=\"leaky\",site=\"" +
                       stable_site_id(site) + "\",function=\"leak_some\"";
  std::string text = out.take();
  EXPECT_EQ(lines_with(text, "memtrail_site_verdict{" + labels + ",verdict=\"leak\"} 1").size(), 1u)
      << text;
  EXPECT_EQ(lines_with(text, "memtrail_site_verdict{").size(), 5u);
  EXPECT_EQ(lines_with(text, "memtrail_site_outstanding_bytes{" + labels + "} 4096").size(), 1u);
  EXPECT_EQ(lines_with(text, "memtrail_trace_sites_folded{target=\"pid:42\"} 2").size(), 1u);
}

TEST(PagingWatch, HostVerdictFromPressureAndRestartAfterTheWindow) {
  PagingWatch watch(3, 20);
  MetricsText empty;
  watch.render(empty);
  EXPECT_TRUE(lines_with(empty.text(), "memtrail_paging_verdict{").empty());
  auto sample = [](double t_s, uint64_t some_us) {
    model::PagingSample sample;
    sample.t_s = t_s;
    sample.host.psi.available = true;
    sample.host.psi.some_total_us = some_us;
    sample.host.mem_total_bytes = 8ull << 30;
    sample.host.mem_available_bytes = 4ull << 30;
    return sample;
  };
  watch.add(sample(0, 0));
  watch.add(sample(1, 300000));  // stalled 30 % of the second: pressure
  MetricsText out;
  watch.render(out);
  EXPECT_EQ(lines_with(out.text(), "memtrail_paging_verdict{scope=\"host\",verdict=\"pressure\"} 1")
                .size(),
            1u)
      << out.text();
  EXPECT_EQ(
      lines_with(out.text(), "memtrail_paging_verdict{scope=\"host\",verdict=\"ok\"} 0").size(),
      1u);
  watch.add(sample(2, 300000));  // calm again
  // The window (3 samples) is full: a new analyzer starts, the last verdict stays meanwhile.
  watch.add(sample(3, 300000));
  MetricsText kept;
  watch.render(kept);
  EXPECT_EQ(
      lines_with(kept.text(), "memtrail_paging_verdict{scope=\"host\",verdict=\"ok\"} 1").size(),
      1u)
      << kept.text();
}

TEST(Pyroscope, NameAndIngestTarget) {
  EXPECT_EQ(pyroscope_name("memtrail.memory",
                           {{"comm", "my app,{x}"}, {"pod_uid", ""}, {"cgroup", "/a/b"}}),
            "memtrail.memory{comm=my_app__x_,cgroup=/a/b}");
  EXPECT_EQ(pyroscope_ingest_target("/proxy/", "app{a=b}", 100, 110),
            "/proxy/ingest?name=app%7Ba%3Db%7D&from=100&until=110&format=pprof&spyName=memtrail");
}

}  // namespace
}  // namespace memtrail::serve
