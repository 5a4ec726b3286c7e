// /metrics as a Prometheus server would scrape it: the text passes
// `promtool check metrics`, every family has HELP and TYPE, and the values
// add up to the requests the test made.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::Proxy;

namespace {

constexpr const char* kPromtool = "/usr/bin/promtool";

// "name{labels}" → value, for every sample line.
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// The family a sample belongs to: its name without labels, and without the
// _bucket/_sum/_count of a family `types` says is a histogram.
std::string family_of(const std::string& sample, const std::map<std::string, std::string>& types) {
  std::string name = sample.substr(0, sample.find('{'));
  if (types.count(name)) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.ends_with(s)) {
      std::string base = name.substr(0, name.size() - s.size());
      auto t = types.find(base);
      if (t != types.end() && t->second == "histogram") return base;
    }
  }
  return name;
}

std::string fetch_metrics(uint16_t admin_port) {
  auto r = rig::http_get(admin_port, "/metrics", 5000);
  REQUIRE_MESSAGE(r, r.error);
  REQUIRE(r.response->status == 200);
  return r.response->body;
}

struct Run {
  int code = -1;
  std::string output;
};

// `promtool check metrics` on `text`, its stdout and stderr together.
Run promtool_check(const std::string& text) {
  char path[] = "/tmp/offload-metrics-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << text;
  Run run;
  const std::string command = std::string(kPromtool) + " check metrics < " + path + " 2>&1";
  FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) run.output.append(buf, n);
  const int status = ::pclose(p);
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  ::unlink(path);
  return run;
}

// An agent in front of the recording backend that has answered: 5 fast
// 200s on one keep-alive connection, a 404, and one the backend holds 300 ms
// (so it lands above the 0.25 s bucket). Returns /metrics once the last
// exchange is counted.
constexpr int kOk = 5;
constexpr double kRequests = kOk + 2;

std::string metrics_after_requests(Backend& b, Proxy& p) {
  REQUIRE_MESSAGE(b.start(8), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), {}), p.error());
  Client c;
  REQUIRE(c.connect(p.port()));
  for (int i = 0; i < kOk; ++i) {
    REQUIRE(c.send_all(rig::get_request("/ok?metrics")));
    auto r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
  }
  REQUIRE(c.send_all(rig::get_request("/missing?metrics")));
  auto missing = c.read_response(5000);
  REQUIRE_MESSAGE(missing, missing.error);
  CHECK(missing.response->status == 404);
  REQUIRE(c.send_all(rig::get_request("/sleep/300?metrics")));
  auto slow = c.read_response(5000);
  REQUIRE_MESSAGE(slow, slow.error);
  CHECK(slow.response->status == 200);
  // The last exchange is observed when its send completes, which the loop
  // may see just after the client has read it: scrape until it is in.
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text = fetch_metrics(p.admin_port());
    if (samples(text)["offload_request_duration_seconds_count"] >= kRequests) break;
    rig::sleep_ms(10);
  }
  return text;
}

bool agent_only() {
  if (rig::proxy_kind() == "agent") return true;
  MESSAGE("agent-only case: skipped for ", rig::proxy_kind());
  return false;
}

}  // namespace

TEST_CASE("/metrics: every family has HELP and TYPE, and the counts add up to the requests made") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  const std::string text = metrics_after_requests(b, p);
  std::map<std::string, double> m = samples(text);
  INFO(text);

  // HELP and TYPE before the samples of every family, each family once.
  std::map<std::string, std::string> types;
  std::map<std::string, int> helps;
  {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string hash, kind, name, type;
      words >> hash >> kind >> name >> type;
      if (hash != "#") {
        const std::string f = family_of(line.substr(0, line.rfind(' ')), types);
        CHECK_MESSAGE(types.count(f) == 1, "no TYPE before ", line);
        CHECK_MESSAGE(helps[f] == 1, "no HELP before ", line);
        CHECK_MESSAGE(f.starts_with("offload_"), line);
      } else if (kind == "TYPE") {
        CHECK_MESSAGE(types.count(name) == 0, "TYPE twice for ", name);
        types[name] = type;
        if (type == "counter") CHECK_MESSAGE(name.ends_with("_total"), name);
      } else if (kind == "HELP") {
        ++helps[name];
      }
    }
  }
  CHECK(types["offload_request_duration_seconds"] == "histogram");
  CHECK(types["offload_queue_wait_seconds"] == "histogram");
  CHECK(types["offload_upstream_response_seconds"] == "histogram");

  // Values: what this test did, seen from each side.
  CHECK(m["offload_build_info{version=\"" OFFLOAD_EXPECTED_VERSION "\"}"] == 1);
  CHECK(m["offload_requests_total"] == kRequests);
  CHECK(m["offload_responses_total{code=\"2xx\"}"] == kOk + 1);
  CHECK(m["offload_responses_total{code=\"4xx\"}"] == 1);
  CHECK(m["offload_responses_total{code=\"5xx\"}"] == 0);
  CHECK(m["offload_connections_accepted_total"] == 1);
  CHECK(m["offload_client_received_bytes_total"] > 0);
  CHECK(m["offload_client_sent_bytes_total"] > 0);
  double listener_requests = 0, server_requests = 0, server_responses = 0;
  for (const auto& [name, value] : m) {
    if (name.starts_with("offload_listener_requests_total{")) listener_requests += value;
    if (name.starts_with("offload_server_requests_total{")) server_requests += value;
    if (name.starts_with("offload_server_responses_total{")) server_responses += value;
  }
  CHECK(listener_requests == kRequests);
  CHECK(server_requests == kRequests);
  CHECK(server_responses == kRequests);
  for (const std::string h : {"offload_request_duration_seconds", "offload_queue_wait_seconds",
                              "offload_upstream_response_seconds"}) {
    CAPTURE(h);
    CHECK(m[h + "_count"] == kRequests);
    CHECK(m[h + "_bucket{le=\"+Inf\"}"] == kRequests);
  }
  // The 300 ms request is above 0.25 s both end to end and upstream; the
  // buckets are cumulative.
  for (const std::string h : {"offload_request_duration_seconds", "offload_upstream_response_seconds"}) {
    CAPTURE(h);
    CHECK(m[h + "_bucket{le=\"0.25\"}"] <= kRequests - 1);
    CHECK(m[h + "_bucket{le=\"0.25\"}"] <= m[h + "_bucket{le=\"0.5\"}"]);
    CHECK(m[h + "_sum"] >= 0.3);
  }

  // /stats keeps its names (the rig, `stats` and scripts read them).
  CHECK(p.stat("responses_2xx") == kOk + 1);
  CHECK(p.stat("requests") == kRequests);

}

TEST_CASE("/metrics: promtool check metrics finds nothing to report") {
  if (!agent_only()) return;
  if (::access(kPromtool, X_OK) != 0) {
#ifdef OFFLOAD_REQUIRE_ALL_TESTS
    FAIL("no ", kPromtool, " (Debian package prometheus; ci/deps.sh installs it)");
#else
    MESSAGE("SKIP: no ", kPromtool, " (Debian package prometheus; ci/deps.sh installs it)");
#endif
    return;
  }
  Backend b;
  Proxy p;
  const std::string text = metrics_after_requests(b, p);
  Run check = promtool_check(text);
  INFO(text);
  CHECK_MESSAGE(check.code == 0, check.output);
  CHECK_MESSAGE(check.output.empty(), check.output);  // lint findings print, and exit 0 or 3
}
