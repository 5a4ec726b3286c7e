// The upstream pool in front of a server with a fixed number of blocking
// workers: the recording backend with 4 workers serves 4 connections, each
// until it closes, and leaves any further connection unserved in its queue
// (it never closes a served one to make room). A pool that sends requests on
// those waits for the response timeout; one that opens a connection per
// burst churns.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cases.h"
#include "rig.h"

using cases::start_pair;
using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

// `clients` keep-alive connections, each sending `per_client` GETs one after
// the other. Counts the 200s and the reads that failed within `read_ms`.
struct Load {
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  std::string first_error;
  std::mutex mutex;
};

void run_load(uint16_t port, int clients, int per_client, int read_ms, Load& load) {
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      Client c;
      if (!c.connect(port)) {
        load.failed += per_client;
        return;
      }
      for (int i = 0; i < per_client; ++i) {
        const std::string target = "/ok?c=" + std::to_string(t) + "&i=" + std::to_string(i);
        rig::ReadResult r;
        if (c.send_all(rig::get_request(target))) r = c.read_response(read_ms);
        if (r && r.response->status == 200) {
          ++load.ok;
          continue;
        }
        ++load.failed;
        std::lock_guard lock(load.mutex);
        if (load.first_error.empty()) load.first_error = target + ": " + (r ? std::to_string(r.response->status) : r.error);
        return;  // this connection's state is unknown now
      }
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace

TEST_CASE("persistent 16, max-upstream 64 before a 4-worker server: every request answered before the response timeout, few connections") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.persistent = 16;
  o.max_upstream = 64;
  o.response_timeout_ms = 30000;
  o.queue_timeout_ms = 60000;
  start_pair(b, p, 4, o);

  constexpr int kClients = 16;
  constexpr int kPerClient = 125;  // 2,000 requests
  Load load;
  // A read bound below the response timeout: a request sent where no worker
  // serves it would only be answered (504) when that timeout fires.
  run_load(p.port(), kClients, kPerClient, 25000, load);
  INFO("first error: " << (load.first_error.empty() ? std::string("none") : load.first_error));
  CHECK(load.failed == 0);
  CHECK(load.ok == kClients * kPerClient);

  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->requests >= uint64_t(kClients * kPerClient));
  if (!p.is_agent()) return;
  CHECK(p.stat("timeouts_response") == 0);
  CHECK(p.stat("responses_5xx") == 0);
  // Opened: the start-up burst (one per waiting client: the limit starts at
  // the given 64) and, once the server stalled the surplus, at most one
  // probe per 128 responses; a pool that went on opening one per waiting
  // request, or churned, would open hundreds.
  const int64_t connects = p.stat("upstream_connects");
  CHECK(connects >= 4);
  CHECK(connects <= 16 + kClients * kPerClient / 128);
  CHECK(uint64_t(connects) == rec->accepted);
  // The limit came down to what the server serves (4) and probes again
  // now and then: never back at 16.
  CHECK(p.stat("upstream_limit") >= 1);
  CHECK(p.stat("upstream_limit") <= 5);
}

TEST_CASE("defaults before a 4-worker server: the pool stays at the server's size") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.response_timeout_ms = 30000;
  start_pair(b, p, 4, o);

  constexpr int kClients = 16;
  constexpr int kPerClient = 125;
  Load load;
  run_load(p.port(), kClients, kPerClient, 25000, load);
  INFO("first error: " << (load.first_error.empty() ? std::string("none") : load.first_error));
  CHECK(load.failed == 0);
  CHECK(load.ok == kClients * kPerClient);
  if (!p.is_agent()) return;
  CHECK(p.stat("timeouts_response") == 0);
  // The limit starts at persistent (4): the first 4 connections, then at
  // most one probe per 128 responses.
  const int64_t connects = p.stat("upstream_connects");
  CHECK(connects <= 4 + kClients * kPerClient / 128);
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->max_connections <= 5 + 1);  // 4 served, a probe, one closing as another opens
}
