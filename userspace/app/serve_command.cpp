// SPDX-License-Identifier: Apache-2.0
// `memtrail serve`: the always-on agent behind an HTTP server. Threads: the HTTP server's pool
// (each on-demand profile runs its session on the request's thread), one scanner (the
// always-on tier), one per --trace target, and the main thread waiting for a signal.
#include "app/serve_command.h"

#include <httplib.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "app/runtime.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "common/version.h"
#include "report/formats.h"
#include "report/json_report.h"
#include "sampler/cgroups.h"
#include "sampler/host.h"
#include "sampler/processes.h"
#include "serve/host_memory.h"
#include "serve/metrics_text.h"
#include "serve/paging_watch.h"
#include "serve/pyroscope.h"
#include "serve/requests.h"
#include "serve/traced_sites.h"
#include "session/config.h"
#include "session/session.h"

namespace memtrail::app {
namespace {

using Clock = std::chrono::steady_clock;
using serve::Labels;
using serve::MetricsText;

constexpr const char* kMetricsType = "text/plain; version=0.0.4; charset=utf-8";

std::string read_text_file(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

uint64_t available_memory() {
  model::HostSample sample;
  sampler::parse_meminfo(read_text_file("/proc/meminfo"), sample);
  return sample.mem_available_bytes;
}

std::string read_token(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    int error_number = errno;
    throw Error(errno_message("read --auth-token-file " + path, error_number),
                "give a file holding the token on its first line");
  }
  std::string token;
  std::getline(file, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) {
    throw Error("--auth-token-file " + path + " holds no token",
                "write the token on the file's first line");
  }
  return token;
}

// The agent's own process: the metrics node_exporter-style exporters give about themselves.
void render_own_process(MetricsText& out, Clock::time_point started) {
  auto stat = sampler::parse_proc_stat(read_text_file("/proc/self/stat"));
  model::ProcessSample sample;
  sampler::parse_proc_status(read_text_file("/proc/self/status"), sample);
  long page = ::sysconf(_SC_PAGESIZE);
  long ticks = ::sysconf(_SC_CLK_TCK);
  out.family("process_resident_memory_bytes", "gauge", "Resident memory of memtrail itself.");
  out.sample("process_resident_memory_bytes", {},
             stat ? static_cast<double>(stat->rss_pages) * static_cast<double>(page) : 0);
  out.family("memtrail_agent_anon_bytes", "gauge",
             "Anonymous resident memory of memtrail itself (RssAnon): flat in a steady state.");
  out.sample("memtrail_agent_anon_bytes", {}, static_cast<double>(sample.rss_anon_bytes));
  // utime and stime are fields 14 and 15 of /proc/self/stat; parse_proc_stat does not keep
  // them, so read them here.
  std::string text = read_text_file("/proc/self/stat");
  double cpu_s = 0;
  auto close = text.rfind(')');
  if (close != std::string::npos) {
    std::istringstream fields(text.substr(close + 2));
    std::string field;
    for (int index = 3; index <= 15 && fields >> field; ++index) {
      if (index == 14 || index == 15) cpu_s += std::strtod(field.c_str(), nullptr);
    }
    cpu_s /= static_cast<double>(ticks);
  }
  out.family("process_cpu_seconds_total", "counter", "CPU time memtrail itself has used.");
  out.sample("process_cpu_seconds_total", {}, cpu_s);
  out.family("memtrail_agent_uptime_seconds", "gauge", "Seconds since the agent started.");
  out.sample("memtrail_agent_uptime_seconds", {},
             std::chrono::duration<double>(Clock::now() - started).count());
}

// Counters keyed by a bounded set of labels, for the agent's own health.
class LabelledCounter {
 public:
  void add(const std::string& key, uint64_t amount = 1) {
    std::lock_guard lock(mutex_);
    counts_[key] += amount;
  }
  std::map<std::string, uint64_t> values() const {
    std::lock_guard lock(mutex_);
    return counts_;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> counts_;
};

// Which endpoint a request was for, as a bounded label value.
std::string endpoint_label(const std::string& path) {
  static const std::set<std::string> kKnown = {
      "/",           "/healthz", "/readyz", "/metrics", "/debug/pprof/heap", "/debug/pprof/allocs",
      "/report.json"};
  return kKnown.count(path) ? path : "other";
}

class Agent {
 public:
  explicit Agent(const cli::ServeOptions& options)
      : options_(options),
        host_(serve::HostMemoryConfig{options.interval_s, options.window, options.max_processes,
                                      options.max_cgroups}),
        paging_(options.window, 20),
        started_(Clock::now()) {
    if (!options.auth_token_file.empty()) token_ = read_token(options.auth_token_file);
    for (const auto& text : options.trace) {
      std::string error;
      auto selector = serve::parse_trace_selector(text, error);
      if (!selector) throw Error(error, "see memtrail serve --help");
      selectors_.push_back(*selector);
      serve::TracedTarget target;
      target.selector = selector->text();
      traced_.push_back(std::move(target));
    }
    stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd_) {
      int error_number = errno;
      throw Error(errno_message("eventfd", error_number));
    }
    try {
      layout_ = sampler::detect_cgroup_layout();
    } catch (const Error& error) {
      std::cerr << "memtrail: warning: " << error.what() << "; processes get no cgroup\n";
    }
  }

  void run(int signal_fd);

 private:
  void scan_loop();
  void scan_once(sampler::ProcessScanner& scanner);
  void trace_loop(size_t index);
  void push_to_pyroscope(size_t index, const model::Report& report, int64_t from_s,
                         int64_t until_s);
  bool wait_for_stop(Clock::duration duration);
  void setup_routes(httplib::Server& server);
  std::string metrics();
  void handle_profile(const httplib::Request& request, httplib::Response& response,
                      const std::string& kind);
  // The pids a selector means now; `error` and an HTTP status when none.
  std::vector<uint32_t> resolve(const serve::TargetSelector& target, int& status,
                                std::string& error);
  void say(httplib::Response& response, int status, const std::string& line) {
    response.status = status;
    response.set_content(line + "\n", "text/plain; charset=utf-8");
  }

  cli::ServeOptions options_;
  std::string token_;
  std::vector<serve::TargetSelector> selectors_;
  UniqueFd stop_fd_;
  sampler::CgroupLayout layout_;

  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;

  mutable std::mutex host_mutex_;  // host_, paging_, host_metrics_, scan counters
  serve::HostMemory host_;
  serve::PagingWatch paging_;
  std::string host_metrics_;
  uint64_t scans_ = 0;
  double scan_seconds_ = 0, last_scan_seconds_ = 0;
  sampler::ProcessScanCounters scan_skipped_;
  std::atomic<bool> ready_{false};
  std::atomic<int64_t> last_scan_ms_{0};

  std::mutex traced_mutex_;
  std::vector<serve::TracedTarget> traced_;

  std::atomic<uint32_t> active_sessions_{0};
  LabelledCounter requests_, profiles_, pushes_;
  Clock::time_point started_;
};

bool Agent::wait_for_stop(Clock::duration duration) {
  std::unique_lock lock(stop_mutex_);
  return stop_cv_.wait_for(lock, duration, [&] { return stopping_; });
}

void Agent::scan_once(sampler::ProcessScanner& scanner) {
  auto begin = Clock::now();
  sampler::ProcessScanCounters counters;
  auto processes = scanner.scan(&counters);
  std::erase_if(processes, [](const model::ProcessSample& sample) {
    return sample.pid == static_cast<uint32_t>(::getpid());
  });
  std::vector<model::CgroupSample> cgroups;
  if (layout_.version != 0) {
    std::set<std::string> paths;
    for (const auto& process : processes) {
      if (!process.cgroup.empty()) paths.insert(process.cgroup);
    }
    for (const auto& path : paths) {
      if (auto sample = sampler::read_cgroup_sample(layout_, path)) {
        cgroups.push_back(std::move(*sample));
      }
    }
  }
  double t_s = std::chrono::duration<double>(begin - started_).count();
  model::PagingSample paging;
  paging.t_s = t_s;
  paging.unix_ms = unix_now_ms();
  paging.host = sampler::read_host_sample();
  paging.cgroups = cgroups;
  MetricsText text;
  std::lock_guard lock(host_mutex_);
  host_.update(t_s, processes, cgroups);
  host_.render(text);
  paging.processes = std::move(processes);
  paging_.add(paging);
  paging_.render(text);
  host_metrics_ = text.take();
  ++scans_;
  last_scan_seconds_ = std::chrono::duration<double>(Clock::now() - begin).count();
  scan_seconds_ += last_scan_seconds_;
  scan_skipped_.vanished += counters.vanished;
  scan_skipped_.unreadable += counters.unreadable;
  last_scan_ms_ = unix_now_ms();
  ready_ = true;
}

void Agent::scan_loop() {
  sampler::ProcessScanner scanner(layout_);
  auto interval = duration_from_seconds(options_.interval_s);
  auto next = Clock::now();
  for (;;) {
    try {
      scan_once(scanner);
    } catch (const std::exception& error) {
      std::cerr << "memtrail: scan failed: " << error.what() << "\n";
    }
    next += interval;
    auto now = Clock::now();
    if (next <= now) next = now + interval;
    if (wait_for_stop(next - now)) return;
  }
}

std::vector<uint32_t> Agent::resolve(const serve::TargetSelector& target, int& status,
                                     std::string& error) {
  const auto self = static_cast<uint32_t>(::getpid());
  std::vector<uint32_t> pids;
  if (target.kind == serve::TargetSelector::Kind::kPid) {
    if (target.pid == self) {
      status = 400;
      error = "pid " + std::to_string(target.pid) + " is memtrail itself, which it does not trace";
      return {};
    }
    if (::kill(static_cast<pid_t>(target.pid), 0) != 0 && errno == ESRCH) {
      status = 404;
      error = "no process " + std::to_string(target.pid);
      return {};
    }
    return {target.pid};
  }
  {
    std::lock_guard lock(host_mutex_);
    pids = target.kind == serve::TargetSelector::Kind::kComm ? host_.pids_with_comm(target.name)
                                                             : host_.pids_in_cgroup(target.name);
  }
  std::erase(pids, self);
  if (pids.empty()) {
    status = 404;
    error = std::string("no process ") +
            (target.kind == serve::TargetSelector::Kind::kComm ? "named '" : "in cgroup '") +
            target.name + "' as of the last scan";
  }
  return pids;
}

void Agent::handle_profile(const httplib::Request& request, httplib::Response& response,
                           const std::string& kind) {
  std::multimap<std::string, std::string> query(request.params.begin(), request.params.end());
  std::string error;
  serve::ProfileLimits limits{options_.default_profile_s, options_.max_profile_s};
  auto parsed = serve::parse_profile_request(query, limits, error);
  if (!parsed) {
    profiles_.add("bad_request");
    return say(response, 400, "bad request: " + error);
  }
  int status = 0;
  auto pids = resolve(parsed->target, status, error);
  if (pids.empty()) {
    profiles_.add("no_target");
    return say(response, status, error);
  }
  // A slot, or 429: each session loads its own BPF programs and tables.
  uint32_t active = active_sessions_.load();
  do {
    if (active >= options_.max_sessions) {
      profiles_.add("refused_busy");
      response.set_header("Retry-After", std::to_string(static_cast<int>(parsed->seconds)));
      return say(response, 429,
                 "too many profiles at once: " + std::to_string(options_.max_sessions) +
                     " are being traced (--max-sessions); retry later");
    }
  } while (!active_sessions_.compare_exchange_weak(active, active + 1));
  struct Slot {
    std::atomic<uint32_t>& count;
    ~Slot() { --count; }
  } slot{active_sessions_};

  cli::LeaksOptions leaks;
  leaks.pids = pids;
  leaks.verbose = options_.verbose;
  // Several readings over the profile, so that its sites get verdicts.
  leaks.interval_s = std::clamp(parsed->seconds / 8, 0.25, 10.0);
  model::Report report;
  bool aborted = false;
  try {
    session::Session session(session::session_config(leaks, available_memory()));
    session.start();
    auto deadline = session.started_at() + duration_from_seconds(parsed->seconds);
    auto interval = duration_from_seconds(leaks.interval_s);
    auto next_reading = session.started_at() + interval;
    for (;;) {
      auto now = Clock::now();
      if (now >= deadline) break;
      session.housekeep(now);
      if (now >= next_reading) {
        session.measure();
        next_reading += interval;
      }
      auto wake = std::min({deadline, next_reading, session.next_housekeeping()});
      if (session.wait(wake, stop_fd_.get())) {
        aborted = true;
        break;
      }
      if (session.finished()) break;
    }
    session.stop();
    report = session.take_report(true, SIZE_MAX);
  } catch (const Error& failure) {
    profiles_.add("failed");
    std::string line =
        std::string("profile of ") + parsed->target.text() + " failed: " + failure.what();
    if (!failure.hint().empty()) line += "; hint: " + failure.hint();
    std::cerr << "memtrail: " << line << "\n";
    return say(response, 500, line);
  }
  if (aborted) {
    profiles_.add("aborted");
    return say(response, 503, "memtrail is stopping: the profile was not finished");
  }
  profiles_.add("ok");
  if (kind == "json") {
    response.set_content(report::json_text(report::to_json(report, leaks.interval_s, 2)),
                         "application/json");
    return;
  }
  report::PprofOptions pprof;
  pprof.default_sample_type = kind == "allocs" ? "alloc_space" : "inuse_space";
  if (pids.size() == 1) {
    std::lock_guard lock(host_mutex_);
    if (auto view = host_.process(pids.front())) {
      pprof.labels = {{"comm", view->comm}, {"cgroup", view->cgroup}};
      if (view->pod) {
        pprof.labels.emplace_back("pod_uid", view->pod->pod_uid);
        pprof.labels.emplace_back("container_id", view->pod->container_id);
      }
    }
  }
  response.set_header("Content-Disposition", "attachment; filename=\"profile.pb.gz\"");
  response.set_content(report::to_pprof(report, pprof), "application/octet-stream");
}

void Agent::push_to_pyroscope(size_t index, const model::Report& report, int64_t from_s,
                              int64_t until_s) {
  // http://host:port[/prefix]: httplib's client takes the scheme, host and port; the prefix
  // goes in front of /ingest.
  const std::string& url = options_.pyroscope_url;
  auto host_start = url.find("//") + 2;
  auto path_start = url.find('/', host_start);
  std::string origin = url.substr(0, path_start);
  std::string base_path = path_start == std::string::npos ? "" : url.substr(path_start);
  Labels labels;
  std::string selector;
  {
    std::lock_guard lock(traced_mutex_);
    selector = traced_[index].selector;
  }
  labels.emplace_back("target", selector);
  if (!report.targets.empty()) {
    const auto& first = report.targets.front();
    labels.emplace_back("comm", first.comm);
    std::lock_guard lock(host_mutex_);
    if (auto view = host_.process(first.pid)) {
      labels.emplace_back("cgroup", view->cgroup);
      if (view->pod) {
        labels.emplace_back("pod_uid", view->pod->pod_uid);
        labels.emplace_back("container_id", view->pod->container_id);
      }
    }
  }
  report::PprofOptions pprof;
  for (const auto& [key, value] : labels) pprof.labels.emplace_back(key, value);
  std::string profile = report::to_pprof(report, pprof);
  httplib::Client client(origin);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  client.set_write_timeout(10);
  httplib::MultipartFormDataItems items = {
      {"profile", profile, "profile.pprof", "application/octet-stream"},
      {"sample_type_config", serve::pyroscope_sample_type_config(), "sample_type_config.json",
       "application/json"},
  };
  auto target = serve::pyroscope_ingest_target(
      base_path, serve::pyroscope_name("memtrail.memory", labels), from_s, until_s);
  auto result = client.Post(target, items);
  if (result && result->status / 100 == 2) {
    pushes_.add("ok");
    return;
  }
  pushes_.add("failed");
  std::cerr << "memtrail: push to " << url << " failed: "
            << (result
                    ? "HTTP " + std::to_string(result->status) + " " + result->body.substr(0, 200)
                    : httplib::to_string(result.error()))
            << "\n";
}

void Agent::trace_loop(size_t index) {
  const serve::TargetSelector selector = selectors_[index];
  cli::LeaksOptions leaks;
  leaks.verbose = options_.verbose;
  leaks.interval_s = options_.trace_interval_s;
  // Always on, a trap for every Python object created would slow every CPython service of the
  // node for good: objects are for the profiles asked for (/debug/pprof/heap?seconds=N).
  leaks.python_objects = false;
  switch (selector.kind) {
    case serve::TargetSelector::Kind::kPid:
      leaks.pids = {selector.pid};
      break;
    case serve::TargetSelector::Kind::kComm:
      leaks.all = true;
      leaks.comms = {selector.name};
      break;
    case serve::TargetSelector::Kind::kCgroup:
      leaks.all = true;
      leaks.cgroups = {selector.name};
      break;
  }
  leaks.excluded_pids = {static_cast<uint32_t>(::getpid())};
  if (!leaks.all) leaks.excluded_pids.clear();
  auto set_state = [&](bool running, const std::string& error, model::Report* report) {
    std::lock_guard lock(traced_mutex_);
    auto& target = traced_[index];
    target.running = running;
    target.error = error;
    if (report) {
      target.report = std::move(*report);
    } else if (!running) {
      target.report = {};
    }
  };
  const auto interval = duration_from_seconds(options_.trace_interval_s);
  const auto push_interval = duration_from_seconds(options_.pyroscope_interval_s);
  for (;;) {
    try {
      session::Session session(session::session_config(leaks, available_memory()));
      session.start();
      set_state(true, "", nullptr);
      auto next_reading = session.started_at() + interval;
      auto next_push = session.started_at() + push_interval;
      int64_t pushed_until_s = unix_now_ms() / 1000;
      bool stop = false;
      while (!stop) {
        auto now = Clock::now();
        session.housekeep(now);
        if (now >= next_reading) {
          auto report = session.take_report(false, SIZE_MAX);
          if (!options_.pyroscope_url.empty() && now >= next_push) {
            int64_t until_s = unix_now_ms() / 1000;
            push_to_pyroscope(index, report, pushed_until_s, std::max(until_s, pushed_until_s + 1));
            pushed_until_s = std::max(until_s, pushed_until_s + 1);
            next_push = now + push_interval;
          }
          if (report.leaks.size() > options_.max_sites) report.leaks.resize(options_.max_sites);
          set_state(true, "", &report);
          next_reading = now + interval;
        }
        auto wake = std::min(next_reading, session.next_housekeeping());
        if (!options_.pyroscope_url.empty()) wake = std::min(wake, next_push);
        if (session.wait(wake, stop_fd_.get())) stop = true;
        if (!stop && session.finished()) {
          set_state(false, "every target exited", nullptr);
          std::cerr << "memtrail: --trace " << selector.text() << ": every target exited\n";
          return;
        }
      }
      session.stop();
      return;
    } catch (const Error& failure) {
      set_state(false, failure.what(), nullptr);
      std::cerr << "memtrail: --trace " << selector.text() << " failed: " << failure.what()
                << (failure.hint().empty() ? "" : "; hint: " + failure.hint())
                << "; retrying in 30 s\n";
    }
    if (wait_for_stop(std::chrono::seconds(30))) return;
  }
}

std::string Agent::metrics() {
  MetricsText out;
  out.family("memtrail_build_info", "gauge", "memtrail's version; always 1.");
  out.sample("memtrail_build_info", {{"version", kVersion}}, 1);
  render_own_process(out, started_);
  std::string host_text;
  {
    std::lock_guard lock(host_mutex_);
    out.family("memtrail_scans_total", "counter", "Scans of every process and memory cgroup.");
    out.sample("memtrail_scans_total", {}, static_cast<double>(scans_));
    out.family("memtrail_scan_seconds_total", "counter", "Wall time spent scanning.");
    out.sample("memtrail_scan_seconds_total", {}, scan_seconds_);
    out.family("memtrail_last_scan_duration_seconds", "gauge", "How long the last scan took.");
    out.sample("memtrail_last_scan_duration_seconds", {}, last_scan_seconds_);
    out.family("memtrail_scan_skipped_processes_total", "counter",
               "Processes a scan skipped: vanished (exited while read: normal), unreadable.");
    out.sample("memtrail_scan_skipped_processes_total", {{"reason", "vanished"}},
               static_cast<double>(scan_skipped_.vanished));
    out.sample("memtrail_scan_skipped_processes_total", {{"reason", "unreadable"}},
               static_cast<double>(scan_skipped_.unreadable));
    host_text = host_metrics_;
  }
  out.family("memtrail_profile_sessions_active", "gauge", "On-demand profiles being traced.");
  out.sample("memtrail_profile_sessions_active", {}, active_sessions_.load());
  out.family("memtrail_profiles_total", "counter",
             "On-demand profile requests by result (ok, failed, aborted, refused_busy, "
             "bad_request, no_target).");
  for (const auto& [result, count] : profiles_.values()) {
    out.sample("memtrail_profiles_total", {{"result", result}}, static_cast<double>(count));
  }
  out.family("memtrail_http_requests_total", "counter", "HTTP requests by endpoint and status.");
  for (const auto& [key, count] : requests_.values()) {
    auto space = key.find(' ');
    out.sample("memtrail_http_requests_total",
               {{"endpoint", key.substr(0, space)}, {"code", key.substr(space + 1)}},
               static_cast<double>(count));
  }
  if (!options_.pyroscope_url.empty()) {
    out.family("memtrail_pyroscope_pushes_total", "counter",
               "Profiles pushed to --pyroscope-url, by result.");
    for (const auto& [result, count] : pushes_.values()) {
      out.sample("memtrail_pyroscope_pushes_total", {{"result", result}},
                 static_cast<double>(count));
    }
  }
  std::string text = out.take() + host_text;
  if (!traced_.empty()) {
    MetricsText sites;
    std::lock_guard lock(traced_mutex_);
    serve::render_traced_sites(traced_, sites);
    text += sites.text();
  }
  return text;
}

void Agent::setup_routes(httplib::Server& server) {
  server.set_pre_routing_handler([this](const httplib::Request& request,
                                        httplib::Response& response) {
    if (!token_.empty() &&
        !serve::bearer_token_matches(request.get_header_value("Authorization"), token_)) {
      response.set_header("WWW-Authenticate", "Bearer");
      say(response, 401, "unauthorized: send 'Authorization: Bearer <token of --auth-token-file>'");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  server.set_logger([this](const httplib::Request& request, const httplib::Response& response) {
    requests_.add(endpoint_label(request.path) + " " + std::to_string(response.status));
    if (options_.verbose) {
      std::cerr << "memtrail: " << request.method << " " << request.path << " -> "
                << response.status << "\n";
    }
  });
  server.set_error_handler([this](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    static const std::set<std::string> kOtherMethods = {"POST",    "PUT",     "DELETE", "PATCH",
                                                        "OPTIONS", "CONNECT", "TRACE"};
    if (kOtherMethods.count(request.method)) {
      say(response, 405,
          "method not allowed: " + request.method.substr(0, 16) +
              " (every endpoint is read-only: GET)");
    } else if (response.status == 404) {
      say(response, 404,
          "not found: " + request.method + " " + request.path.substr(0, 200) +
              " (GET / lists the endpoints)");
    } else {
      say(response, response.status, "bad request (HTTP " + std::to_string(response.status) + ")");
    }
  });
  server.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& response, std::exception_ptr error) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& exception) {
          what = exception.what();
        } catch (...) {
        }
        say(response, 500, "internal error: " + what);
      });
  server.Get("/", [this](const httplib::Request&, httplib::Response& response) {
    say(response, 200,
        std::string("memtrail ") + kVersion +
            " serve\n"
            "GET /metrics                  Prometheus text: every process's and memory cgroup's "
            "memory and growth verdict, --trace targets' sites, memtrail's own health\n"
            "GET /debug/pprof/heap?pid=N&seconds=S   exact leak tracing of a process (or "
            "comm=NAME, "
            "cgroup=PATH) for S seconds: gzipped pprof, inuse_space\n"
            "GET /debug/pprof/allocs?...   the same, alloc_space by default\n"
            "GET /report.json?...          the same as memtrail.leaks JSON\n"
            "GET /healthz                  200 while the scanner keeps scanning\n"
            "GET /readyz                   200 once the first scan is done");
  });
  server.Get("/healthz", [this](const httplib::Request&, httplib::Response& response) {
    int64_t age_ms = unix_now_ms() - last_scan_ms_.load();
    if (ready_ && age_ms <= static_cast<int64_t>(options_.interval_s * 3000) + 5000) {
      say(response, 200, "ok");
    } else if (!ready_) {
      say(response, 503, "starting: the first scan is not done");
    } else {
      say(response, 503, "unhealthy: no scan for " + std::to_string(age_ms / 1000) + " s");
    }
  });
  server.Get("/readyz", [this](const httplib::Request&, httplib::Response& response) {
    if (ready_) {
      say(response, 200, "ready");
    } else {
      say(response, 503, "not ready: the first scan is not done");
    }
  });
  server.Get("/metrics", [this](const httplib::Request& request, httplib::Response& response) {
    if (!request.params.empty())
      return say(response, 400, "bad request: /metrics takes no parameters");
    response.set_content(metrics(), kMetricsType);
  });
  server.Get("/debug/pprof/heap",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_profile(request, response, "heap");
             });
  server.Get("/debug/pprof/allocs",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_profile(request, response, "allocs");
             });
  server.Get("/report.json", [this](const httplib::Request& request, httplib::Response& response) {
    handle_profile(request, response, "json");
  });
}

void Agent::run(int signal_fd) {
  httplib::Server server;
  // Long profiles hold a thread each: room for them and for scrapes beside them.
  size_t threads = options_.max_sessions + 4;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(64 * 1024);
  // httplib's default also sets SO_REUSEPORT, which would let a second agent share the port
  // in silence: only SO_REUSEADDR (a restarted agent binds at once).
  server.set_socket_options([](socket_t socket) {
    int yes = 1;
    ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  setup_routes(server);
  if (!server.bind_to_port(options_.listen_address.c_str(), options_.listen_port)) {
    throw Error("listen on " + options_.listen_address + ":" +
                    std::to_string(options_.listen_port) + " failed",
                "is another memtrail (or another program) using the port? Choose another with "
                "--listen ADDR:PORT");
  }
  std::cerr << "memtrail: serving on http://" << options_.listen_address << ":"
            << options_.listen_port << "/ (scan every " << options_.interval_s << " s)\n";
  std::thread listener([&] { server.listen_after_bind(); });
  std::thread scanner([this] { scan_loop(); });
  std::vector<std::thread> tracers;
  for (size_t i = 0; i < selectors_.size(); ++i) tracers.emplace_back([this, i] { trace_loop(i); });

  pollfd polled{signal_fd, POLLIN, 0};
  while (::poll(&polled, 1, -1) < 0 && errno == EINTR) {
  }
  consume_signal(signal_fd);
  std::cerr << "memtrail: stopping\n";
  {
    std::lock_guard lock(stop_mutex_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  uint64_t one = 1;
  ssize_t written = ::write(stop_fd_.get(), &one, sizeof one);
  (void)written;
  server.stop();
  listener.join();
  scanner.join();
  for (auto& tracer : tracers) tracer.join();
}

}  // namespace

int run_serve(const cli::ServeOptions& options) {
  // Before any thread starts, so that every thread has the signals blocked.
  UniqueFd signal_fd = open_signalfd();
  Agent agent(options);
  agent.run(signal_fd.get());
  return kExitOk;
}

}  // namespace memtrail::app
