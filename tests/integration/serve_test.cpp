// SPDX-License-Identifier: Apache-2.0
// memtrail serve end to end with real clients: a real Prometheus scraping it every second,
// promtool, go tool pprof, a fake Pyroscope ingest server, a cgroup shaped like a Kubernetes
// pod's, refused and malformed requests, and the agent's memory while processes come and go.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "profile.pb.h"
#include "report/formats.h"
#include "subprocess.h"
#include "test_support.h"

namespace memtrail::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A port nobody listens on now (the kernel's pick for port 0).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

struct Reply {
  int status = 0;  // 0: no answer
  std::string body;
  std::string content_type;
};

Reply get(int port, const std::string& path, const httplib::Headers& headers = {},
          int timeout_s = 30) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(timeout_s);
  auto result = client.Get(path, headers);
  if (!result) return {};
  return {result->status, result->body, result->get_header_value("Content-Type")};
}

// The gated leaky target growing steadily: 20 blocks of `size` bytes every 100 ms.
struct GrowingTarget {
  explicit GrowingTarget(int seconds, size_t size = 4096)
      : process({MEMTRAIL_LEAKY, "grow", std::to_string(seconds), std::to_string(size)}) {
    auto ready = process.wait_for_stdout("ready ", 10s);
    EXPECT_TRUE(ready);
    process.write_stdin("go\n");
  }
  Subprocess process;
};

// `memtrail serve` on its own port, ready (its first scan done) when constructed.
class Agent {
 public:
  explicit Agent(std::vector<std::string> extra = {}) : port_(free_port()) {
    std::vector<std::string> argv = {MEMTRAIL_BINARY, "serve", "--listen",
                                     "127.0.0.1:" + std::to_string(port_)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    process_.emplace(argv);
    auto deadline = Clock::now() + 20s;
    while (Clock::now() < deadline) {
      if (testing::get(port_, "/readyz").status == 200) return;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "memtrail serve never became ready; stderr: " << process_->drain_stderr();
  }
  ~Agent() {
    if (process_) {
      process_->signal(SIGTERM);
      process_->wait(20s);
    }
  }
  int port() const { return port_; }
  Subprocess& process() { return *process_; }
  Reply get(const std::string& path, const httplib::Headers& headers = {}) const {
    return testing::get(port_, path, headers);
  }

 private:
  int port_;
  std::optional<Subprocess> process_;
};

// The lines of `text` starting with `prefix`.
std::vector<std::string> lines_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
  }
  return lines;
}

perftools::profiles::Profile decode(const std::string& gzipped) {
  perftools::profiles::Profile profile;
  EXPECT_TRUE(profile.ParseFromString(report::gunzip(gzipped)));
  return profile;
}

// The function names of a profile's samples' innermost frames, with their inuse_space.
std::map<std::string, int64_t> innermost_functions(const perftools::profiles::Profile& profile,
                                                   int value_index) {
  std::map<uint64_t, std::string> functions;
  for (const auto& function : profile.function()) {
    functions[function.id()] = profile.string_table(function.name());
  }
  std::map<uint64_t, std::string> locations;
  for (const auto& location : profile.location()) {
    if (location.line_size() > 0)
      locations[location.id()] = functions[location.line(0).function_id()];
  }
  std::map<std::string, int64_t> bytes;
  for (const auto& sample : profile.sample()) {
    if (sample.location_id_size() == 0) continue;
    bytes[locations[sample.location_id(0)]] += sample.value(value_index);
  }
  return bytes;
}

TEST(Serve, EndpointsAndRefusedRequests) {
  REQUIRE_BPF_OR_SKIP();
  Agent agent({"-i", "0.5", "--max-sessions", "1"});
  auto root = agent.get("/");
  EXPECT_EQ(root.status, 200);
  for (const char* endpoint : {"/metrics", "/debug/pprof/heap", "/debug/pprof/allocs",
                               "/report.json", "/healthz", "/readyz"}) {
    EXPECT_NE(root.body.find(endpoint), std::string::npos) << endpoint;
  }
  EXPECT_EQ(agent.get("/healthz").body, "ok\n");
  struct Refusal {
    std::string path;
    int status;
    std::string body;
  };
  std::string self = std::to_string(agent.process().pid());
  for (const auto& refusal : std::vector<Refusal>{
           {"/debug/pprof/heap", 400,
            "bad request: give the target: pid=N, comm=NAME or cgroup=PATH\n"},
           {"/debug/pprof/heap?pid=x", 400,
            "bad request: pid must be a process id from 1 to 4194304, not 'x'\n"},
           {"/debug/pprof/heap?pid=1&seconds=301", 400,
            "bad request: seconds must be a whole number from 1 to 300, not '301'\n"},
           {"/report.json?pid=1&comm=a", 400,
            "bad request: give exactly one of pid=, comm= and cgroup=\n"},
           {"/debug/pprof/allocs?pid=1&gc=1", 400,
            "bad request: unknown parameter 'gc' (known: pid, comm, cgroup, seconds)\n"},
           {"/debug/pprof/heap?pid=4194304", 404, "no process 4194304\n"},
           {"/debug/pprof/heap?comm=no-such-program", 404,
            "no process named 'no-such-program' as of the last scan\n"},
           {"/debug/pprof/heap?cgroup=/a/../../etc", 400,
            "bad request: cgroup must be a cgroup path as in /proc/PID/cgroup, without . or .. "
            "components\n"},
           {"/debug/pprof/heap?pid=" + self, 400,
            "pid " + self + " is memtrail itself, which it does not trace\n"},
           {"/metrics?x=1", 400, "bad request: /metrics takes no parameters\n"},
           {"/no/such/endpoint", 404,
            "not found: GET /no/such/endpoint (GET / lists the endpoints)\n"},
       }) {
    auto reply = agent.get(refusal.path);
    EXPECT_EQ(reply.status, refusal.status) << refusal.path;
    EXPECT_EQ(reply.body, refusal.body) << refusal.path;
  }
  httplib::Client client("127.0.0.1", agent.port());
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->body, "method not allowed: POST (every endpoint is read-only: GET)\n");
  // Garbage on the socket: a 400, and the agent keeps serving.
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(agent.port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    std::string garbage = "\x01\x02 NOT HTTP\r\n\r\n";
    ASSERT_EQ(::write(fd, garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
    char buffer[256] = {};
    ssize_t got = ::read(fd, buffer, sizeof buffer - 1);
    ::close(fd);
    ASSERT_GT(got, 0);
    EXPECT_EQ(std::string(buffer).substr(0, 12), "HTTP/1.1 400");
  }

  // One session at a time (--max-sessions 1): a second profile meanwhile is refused with 429.
  GrowingTarget target(20);
  std::string pid = std::to_string(target.process.pid());
  Reply first;
  std::thread running([&] { first = agent.get("/debug/pprof/heap?pid=" + pid + "&seconds=4"); });
  auto deadline = Clock::now() + 10s;
  Reply second;
  while (Clock::now() < deadline) {
    auto metrics = agent.get("/metrics").body;
    if (lines_with(metrics, "memtrail_profile_sessions_active 1").size() == 1) {
      second = agent.get("/debug/pprof/heap?pid=" + pid + "&seconds=1");
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  running.join();
  EXPECT_EQ(second.status, 429);
  EXPECT_EQ(second.body,
            "too many profiles at once: 1 are being traced (--max-sessions); retry later\n");
  EXPECT_EQ(first.status, 200) << first.body;
  auto metrics = agent.get("/metrics").body;
  EXPECT_EQ(lines_with(metrics, "memtrail_profiles_total{result=\"refused_busy\"} 1").size(), 1u);
  EXPECT_EQ(lines_with(metrics, "memtrail_profiles_total{result=\"ok\"} 1").size(), 1u);
  EXPECT_EQ(agent.get("/healthz").status, 200);
}

TEST(Serve, BearerTokenAndStartupErrors) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  { std::ofstream(dir.file("token")) << "s3cret\n"; }
  // --readyz needs the token too, so wait for the port by hand.
  int port = free_port();
  Subprocess agent({MEMTRAIL_BINARY, "serve", "--listen", "127.0.0.1:" + std::to_string(port),
                    "--auth-token-file", dir.file("token")});
  ASSERT_TRUE(agent.wait_for_stderr("memtrail: serving on", 10s));
  auto unauthorized = get(port, "/metrics");
  EXPECT_EQ(unauthorized.status, 401);
  EXPECT_EQ(unauthorized.body,
            "unauthorized: send 'Authorization: Bearer <token of --auth-token-file>'\n");
  EXPECT_EQ(get(port, "/metrics", {{"Authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(get(port, "/debug/pprof/heap?pid=1", {{"Authorization", "Bearer s3creT"}}).status, 401);
  auto deadline = Clock::now() + 10s;
  while (Clock::now() < deadline &&
         get(port, "/readyz", {{"Authorization", "Bearer s3cret"}}).status != 200) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(get(port, "/metrics", {{"Authorization", "Bearer s3cret"}}).status, 200);

  // The port is taken: one clear error line, exit 1.
  Subprocess taken({MEMTRAIL_BINARY, "serve", "--listen", "127.0.0.1:" + std::to_string(port)});
  EXPECT_EQ(taken.wait(10s), 1);
  EXPECT_EQ(taken.drain_stderr(),
            "memtrail: error: listen on 127.0.0.1:" + std::to_string(port) +
                " failed\nmemtrail: hint: is another memtrail (or another program) using the "
                "port? Choose another with --listen ADDR:PORT\n");
  Subprocess no_token({MEMTRAIL_BINARY, "serve", "--auth-token-file", dir.file("missing")});
  EXPECT_EQ(no_token.wait(10s), 1);
  EXPECT_NE(no_token.drain_stderr().find("memtrail: error: read --auth-token-file " +
                                         dir.file("missing") + " failed: No such file"),
            std::string::npos);
  Subprocess bad_listen({MEMTRAIL_BINARY, "serve", "--listen", "9752"});
  EXPECT_EQ(bad_listen.wait(10s), 2);
  EXPECT_EQ(bad_listen.drain_stderr(),
            "memtrail: error: --listen must be ADDR:PORT, as 127.0.0.1:9752, not '9752'\n"
            "memtrail: hint: see memtrail serve --help\n");
  Subprocess bad_trace({MEMTRAIL_BINARY, "serve", "--trace", "nginx"});
  EXPECT_EQ(bad_trace.wait(10s), 1);
  EXPECT_EQ(bad_trace.drain_stderr(),
            "memtrail: error: --trace must be pid:N, comm:NAME or cgroup:PATH, not 'nginx'\n"
            "memtrail: hint: see memtrail serve --help\n");
  agent.signal(SIGTERM);
  EXPECT_EQ(agent.wait(20s), 0);
}

// SIGTERM while a profile is being traced: the client gets a 503 saying why, and the agent
// exits 0 with its probes gone.
TEST(Serve, SigtermStopsCleanlyDuringAProfile) {
  REQUIRE_BPF_OR_SKIP();
  GrowingTarget target(30);
  std::string pid = std::to_string(target.process.pid());
  auto agent = std::make_unique<Agent>(std::vector<std::string>{"-i", "0.5"});
  Reply reply;
  int port = agent->port();
  std::thread profile(
      [&] { reply = get(port, "/debug/pprof/heap?pid=" + pid + "&seconds=60", {}, 90); });
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline &&
         lines_with(agent->get("/metrics").body, "memtrail_profile_sessions_active 1").empty()) {
    std::this_thread::sleep_for(50ms);
  }
  auto stopped_at = Clock::now();
  agent->process().signal(SIGTERM);
  EXPECT_EQ(agent->process().wait(20s), 0);
  profile.join();
  EXPECT_LT(Clock::now() - stopped_at, 15s);
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.body, "memtrail is stopping: the profile was not finished\n");
  // The target runs on, untraced.
  EXPECT_EQ(::kill(target.process.pid(), 0), 0);
}

// --trace comm:NAME traces host-wide, narrowed to that name: a program of that name started
// after the agent has its leaking site in /metrics, and nothing else is listed.
TEST(Serve, TraceByCommFindsAProgramStartedLater) {
  REQUIRE_BPF_OR_SKIP();
  Agent agent({"-i", "1", "--trace", "comm:leaky", "--trace-interval", "1"});
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline &&
         lines_with(agent.get("/metrics").body, "memtrail_trace_target_up{target=\"comm:leaky\"} 1")
             .empty()) {
    std::this_thread::sleep_for(100ms);
  }
  GrowingTarget target(30);
  std::string pid = std::to_string(target.process.pid());
  std::vector<std::string> sites;
  deadline = Clock::now() + 30s;
  std::string metrics;
  while (Clock::now() < deadline) {
    metrics = agent.get("/metrics").body;
    sites = lines_with(metrics, "memtrail_site_outstanding_bytes{target=\"comm:leaky\",pid=\"" +
                                    pid + "\",comm=\"leaky\",");
    bool found = false;
    for (const auto& line : sites)
      found |= line.find("function=\"grow_steadily\"") != std::string::npos;
    if (found) break;
    std::this_thread::sleep_for(500ms);
  }
  bool grow_site = false;
  for (const auto& line : sites) {
    grow_site |= line.find("function=\"grow_steadily\"") != std::string::npos;
  }
  EXPECT_TRUE(grow_site) << metrics;
  for (const auto& line : lines_with(metrics, "memtrail_site_outstanding_bytes{")) {
    EXPECT_NE(line.find("comm=\"leaky\""), std::string::npos) << line;
  }
}

// A real Prometheus scraping every second: the growing process's verdict and growth rate, and
// with --trace its leaking site's verdict, through Prometheus' HTTP API; promtool accepts
// /metrics.
TEST(Serve, PrometheusScrapesGrowthAndTracedLeak) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  GrowingTarget target(60);
  std::string pid = std::to_string(target.process.pid());
  Agent agent({"-i", "1", "--trace", "pid:" + pid, "--trace-interval", "1"});
  int prometheus_port = free_port();
  {
    std::ofstream config(dir.file("prometheus.yml"));
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
              "scrape_configs:\n  - job_name: memtrail\n    static_configs:\n"
              "      - targets: ['127.0.0.1:"
           << agent.port() << "']\n";
  }
  Subprocess prometheus({"/usr/bin/prometheus", "--config.file=" + dir.file("prometheus.yml"),
                         "--storage.tsdb.path=" + dir.file("data"),
                         "--web.listen-address=127.0.0.1:" + std::to_string(prometheus_port)});
  auto query = [&](const std::string& promql) -> std::optional<double> {
    auto reply =
        get(prometheus_port, "/api/v1/query?query=" + httplib::detail::encode_query_param(promql));
    if (reply.status != 200) return std::nullopt;
    auto json = nlohmann::json::parse(reply.body, nullptr, false);
    if (json.is_discarded() || json["data"]["result"].empty()) return std::nullopt;
    std::string value = json["data"]["result"][0]["value"][1];
    return std::stod(value);
  };
  std::optional<double> process_leak, growth, site_leak, rise;
  auto deadline = Clock::now() + 60s;
  while (Clock::now() < deadline &&
         !(process_leak == 1.0 && site_leak == 1.0 && growth && rise > (1 << 20))) {
    std::this_thread::sleep_for(1s);
    process_leak = query("memtrail_process_memory_verdict{pid=\"" + pid + "\",verdict=\"leak\"}");
    growth = query("memtrail_process_private_growth_bytes_per_second{pid=\"" + pid +
                   "\",comm=\"leaky\"} > 0");
    site_leak = query("memtrail_site_verdict{target=\"pid:" + pid +
                      "\",function=\"grow_steadily\","
                      "verdict=\"leak\"}");
    // Prometheus stored the growth over time too: private memory rose by megabytes.
    rise = query("delta(memtrail_process_anon_bytes{pid=\"" + pid + "\"}[1m])");
  }
  EXPECT_EQ(process_leak, 1.0);
  EXPECT_EQ(site_leak, 1.0);
  // 20 blocks of 4096 bytes every 100 ms: 819,200 B/s allocated, each block on pages of its own.
  ASSERT_TRUE(growth);
  EXPECT_GT(*growth, 819200 * 0.6);
  EXPECT_LT(*growth, 819200 * 1.4);
  ASSERT_TRUE(rise);
  EXPECT_GT(*rise, 1 << 20);
  // The site's bytes as Prometheus sees them match its allocation rate too.
  auto site_bytes = query("memtrail_site_outstanding_bytes{target=\"pid:" + pid +
                          "\",function=\"grow_steadily\"}");
  ASSERT_TRUE(site_bytes);
  EXPECT_EQ(static_cast<uint64_t>(*site_bytes) % 4096, 0u);

  // promtool's linter on what memtrail serves, with a traced target's sites in it.
  auto metrics = agent.get("/metrics");
  EXPECT_EQ(metrics.content_type, "text/plain; version=0.0.4; charset=utf-8");
  Subprocess promtool({"/usr/bin/promtool", "check", "metrics"});
  promtool.write_stdin(metrics.body);
  promtool.close_stdin();
  EXPECT_EQ(promtool.wait(20s), 0);
  EXPECT_EQ(promtool.drain_stdout() + promtool.drain_stderr(), "");
  EXPECT_EQ(lines_with(metrics.body, "memtrail_build_info{version=").size(), 1u);
}

TEST(Serve, GoToolPprofNamesTheLeakingFunction) {
  REQUIRE_BPF_OR_SKIP();
  TempDir dir;
  ::setenv("HOME", dir.file("").c_str(), 1);
  ::setenv("PPROF_TMPDIR", dir.file("").c_str(), 1);
  GrowingTarget target(40);
  std::string pid = std::to_string(target.process.pid());
  Agent agent({"-i", "1"});
  std::string url =
      "http://127.0.0.1:" + std::to_string(agent.port()) + "/debug/pprof/heap?pid=" + pid;
  Subprocess pprof({"/usr/bin/go", "tool", "pprof", "-top", "-seconds", "5", url});
  ASSERT_EQ(pprof.wait(60s), 0) << pprof.drain_stderr();
  std::string top = pprof.drain_stdout();
  // The first node line is the leaking function, with all of the in-use bytes.
  std::regex first_node(
      R"(\n\s+[0-9.]+[kM]?B\s+100%\s+100%\s+[0-9.]+[kM]?B\s+100%\s+grow_steadily\n)");
  EXPECT_TRUE(std::regex_search(top, first_node)) << top;
  EXPECT_NE(top.find("Type: inuse_space"), std::string::npos) << top;

  // /debug/pprof/allocs: alloc_space by default, period type space/bytes, string labels.
  auto allocs = agent.get("/debug/pprof/allocs?pid=" + pid + "&seconds=2");
  ASSERT_EQ(allocs.status, 200) << allocs.body;
  auto profile = decode(allocs.body);
  EXPECT_EQ(profile.string_table(profile.default_sample_type()), "alloc_space");
  EXPECT_EQ(profile.string_table(profile.period_type().type()), "space");
  EXPECT_EQ(profile.string_table(profile.period_type().unit()), "bytes");
  EXPECT_EQ(profile.period(), 1);
  auto bytes = innermost_functions(profile, 1);  // alloc_space
  ASSERT_TRUE(bytes.count("grow_steadily"));
  EXPECT_EQ(bytes["grow_steadily"] % 4096, 0);
  EXPECT_GE(bytes["grow_steadily"], 4096 * 20 * 10);  // >= 1 s of 20 blocks per 100 ms
  bool comm_label = false;
  for (const auto& label : profile.sample(0).label()) {
    if (profile.string_table(label.key()) == "comm") {
      comm_label = profile.string_table(label.str()) == "leaky";
    }
  }
  EXPECT_TRUE(comm_label);

  // /report.json: the memtrail.leaks JSON of the same session.
  auto json_reply = agent.get("/report.json?pid=" + pid + "&seconds=2");
  ASSERT_EQ(json_reply.status, 200);
  auto json = nlohmann::json::parse(json_reply.body);
  EXPECT_EQ(json["schema"], "memtrail.leaks/2");
  auto sites = sites_with_function(json, "grow_steadily", target.process.pid());
  ASSERT_EQ(sites.size(), 1u);
  EXPECT_EQ(sites[0]["outstanding_bytes"].get<uint64_t>() % 4096, 0u);
}

// A process in a memory cgroup laid out as the kubelet's cgroupfs driver lays out a pod's
// container gets that pod's uid and the container's id.
TEST(Serve, PodShapedCgroupGetsPodUidAndContainerId) {
  REQUIRE_BPF_OR_SKIP();
  const std::string root = "/sys/fs/cgroup/memory";
  struct stat info {};
  ASSERT_EQ(::stat((root + "/memory.usage_in_bytes").c_str(), &info), 0)
      << "the memory controller is expected on cgroup v1 here";
  const std::string uid = "0b5c9f3e-1d2a-4e6b-8c7d-9a0b1c2d3e4f";
  const std::string id = "d7a1c2b3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
  const std::string kubepods = root + "/memtrail-it-kubepods-" + std::to_string(::getpid());
  // The parser needs a "kubepods" component: the test's own top directory is named
  // <...>/kubepods so that it cannot collide with a real kubelet's.
  const std::vector<std::string> dirs = {kubepods, kubepods + "/kubepods",
                                         kubepods + "/kubepods/burstable",
                                         kubepods + "/kubepods/burstable/pod" + uid,
                                         kubepods + "/kubepods/burstable/pod" + uid + "/" + id};
  for (const auto& path : dirs) ASSERT_EQ(::mkdir(path.c_str(), 0755), 0) << path;
  struct Cleanup {
    std::vector<std::string> dirs;
    ~Cleanup() {
      for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) ::rmdir(it->c_str());
    }
  } cleanup{dirs};
  {
    GrowingTarget target(30, 1024);
    {
      std::ofstream procs(dirs.back() + "/cgroup.procs");
      procs << target.process.pid() << "\n";
    }
    Agent agent({"-i", "0.5"});
    std::string cgroup = dirs.back().substr(root.size());
    std::string labels = "pid=\"" + std::to_string(target.process.pid()) +
                         "\",comm=\"leaky\",cgroup=\"" + cgroup + "\",pod_uid=\"" + uid +
                         "\",container_id=\"" + id + "\"";
    std::string metrics;
    auto deadline = Clock::now() + 10s;
    while (Clock::now() < deadline) {
      metrics = agent.get("/metrics").body;
      if (!lines_with(metrics, "memtrail_process_anon_bytes{" + labels + "}").empty()) break;
      std::this_thread::sleep_for(200ms);
    }
    EXPECT_EQ(lines_with(metrics, "memtrail_process_anon_bytes{" + labels + "}").size(), 1u)
        << metrics;
    EXPECT_EQ(lines_with(metrics, "memtrail_cgroup_processes{cgroup=\"" + cgroup + "\",pod_uid=\"" +
                                      uid + "\",container_id=\"" + id + "\"} 1")
                  .size(),
              1u);
    // The pod's cgroup can be profiled by its path.
    auto json = agent.get("/report.json?cgroup=" + httplib::detail::encode_query_param(cgroup) +
                          "&seconds=2");
    ASSERT_EQ(json.status, 200) << json.body;
    EXPECT_EQ(sites_with_function(nlohmann::json::parse(json.body), "grow_steadily").size(), 1u);
  }
  // The target has exited (and been reaped): the cgroups are empty and can go.
}

// A fake of Pyroscope's /ingest: each push is a multipart form with the profile and its sample
// type config, the labels in the name.
TEST(Serve, PushesProfilesToPyroscopeIngest) {
  REQUIRE_BPF_OR_SKIP();
  struct Push {
    std::string name, from, until, format, profile, config, profile_filename;
  };
  std::mutex mutex;
  std::vector<Push> pushes;
  httplib::Server fake;
  fake.Post("/pyroscope/ingest", [&](const httplib::Request& request, httplib::Response& response) {
    Push push;
    push.name = request.get_param_value("name");
    push.from = request.get_param_value("from");
    push.until = request.get_param_value("until");
    push.format = request.get_param_value("format");
    if (request.has_file("profile")) {
      push.profile = request.get_file_value("profile").content;
      push.profile_filename = request.get_file_value("profile").filename;
    }
    if (request.has_file("sample_type_config")) {
      push.config = request.get_file_value("sample_type_config").content;
    }
    std::lock_guard lock(mutex);
    pushes.push_back(push);
    response.status = 200;
  });
  int fake_port = fake.bind_to_any_port("127.0.0.1");
  std::thread server([&] { fake.listen_after_bind(); });
  struct Stop {
    httplib::Server& server;
    std::thread& thread;
    ~Stop() {
      server.stop();
      thread.join();
    }
  } stop{fake, server};

  GrowingTarget target(40);
  std::string pid = std::to_string(target.process.pid());
  Agent agent({"--trace", "pid:" + pid, "--trace-interval", "1", "--pyroscope-url",
               "http://127.0.0.1:" + std::to_string(fake_port) + "/pyroscope",
               "--pyroscope-interval", "1"});
  auto deadline = Clock::now() + 30s;
  std::optional<Push> with_leak;
  while (Clock::now() < deadline && !with_leak) {
    std::this_thread::sleep_for(500ms);
    std::lock_guard lock(mutex);
    for (const auto& push : pushes) {
      if (push.profile.empty()) continue;
      auto bytes = innermost_functions(decode(push.profile), 3);
      if (bytes["grow_steadily"] >= 4096 * 20 * 10) with_leak = push;
    }
  }
  ASSERT_TRUE(with_leak) << "no push carried the leak; pushes: " << pushes.size();
  EXPECT_EQ(with_leak->format, "pprof");
  std::string name_start = "memtrail.memory{target=pid:" + pid + ",comm=leaky,cgroup=/";
  EXPECT_EQ(with_leak->name.substr(0, name_start.size()), name_start);
  EXPECT_EQ(with_leak->name.back(), '}');
  EXPECT_LT(std::stoll(with_leak->from), std::stoll(with_leak->until));
  auto config = nlohmann::json::parse(with_leak->config);
  EXPECT_EQ(config["inuse_space"]["units"], "bytes");
  EXPECT_EQ(config["alloc_space"]["cumulative"], true);
  auto profile = decode(with_leak->profile);
  EXPECT_EQ(profile.string_table(profile.period_type().type()), "space");
  std::map<std::string, std::string> labels;
  for (const auto& label : profile.sample(0).label()) {
    if (label.str()) labels[profile.string_table(label.key())] = profile.string_table(label.str());
  }
  EXPECT_EQ(labels["comm"], "leaky");
  EXPECT_EQ(labels["target"], "pid:" + pid);
  EXPECT_EQ(lines_with(agent.get("/metrics").body, "memtrail_pyroscope_pushes_total{result=\"ok\"}")
                .size(),
            1u);
}

// The agent's own memory stays flat while processes come and go, and the series of those that
// exited are gone.
TEST(Serve, AgentMemoryFlatWithProcessesComingAndGoing) {
  REQUIRE_BPF_OR_SKIP();
  Agent agent({"-i", "0.1"});
  std::atomic<bool> done{false};
  std::atomic<int> started{0};
  std::thread churn([&] {
    while (!done) {
      Subprocess child({"/bin/sleep", "0.3"});
      ++started;
      std::this_thread::sleep_for(20ms);
    }
  });
  auto agent_anon = [&] {
    std::ifstream status("/proc/" + std::to_string(agent.process().pid()) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
    }
    return 0LL;
  };
  std::this_thread::sleep_for(5s);  // warm-up: buffers and maps at their working size
  long long before = agent_anon();
  std::this_thread::sleep_for(15s);
  long long after = agent_anon();
  done = true;
  churn.join();
  EXPECT_GT(started.load(), 300);
  EXPECT_LT(after - before, 512 * 1024) << "before " << before << " after " << after;
  // A process that exited has no series any more.
  Subprocess gone({"/bin/sleep", "0.5"});
  std::string gone_pid = "pid=\"" + std::to_string(gone.pid()) + "\"";
  std::this_thread::sleep_for(300ms);
  EXPECT_NE(agent.get("/metrics").body.find(gone_pid), std::string::npos);
  gone.wait(5s);
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(agent.get("/metrics").body.find(gone_pid), std::string::npos);
}

}  // namespace
}  // namespace memtrail::testing
