// The bus divided among shards: offload-agent --workers 2 --upstream shm:NAME
// in front of offload-demo-server --ring NAME. One attach for the agent, its
// channels shared out (channel c to shard c % 2), each shard serving its own;
// attach and detach reach both shards; a shard without a channel answers 503
// at the queue timeout, never hangs.
#include <doctest/doctest.h>

#include <atomic>
#include <csignal>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bus_rig.h"

using rig::Client;

namespace {

#define REQUIRE_AGENT(agent, name, opts) REQUIRE_MESSAGE((agent).start((name), (opts)), (agent).error())

#define REQUIRE_ATTACHED(agent, n) \
  REQUIRE_MESSAGE((agent).wait_attached((n), 10000), "agent stderr:\n" << (agent).child().stderr_text())

constexpr int kWait = 10000;

bus::AgentOptions two_shards(int max_upstream = 4) {
  bus::AgentOptions o;
  o.max_upstream = max_upstream;
  o.max_clients = 5000;
  o.queue_timeout_ms = 15000;
  o.extra = {"--workers", "2"};
  return o;
}

// One counter of each shard, in shard order (the JSON stats' "shards").
std::vector<int64_t> per_shard(bus::Agent& a, const std::string& name) {
  std::vector<int64_t> out;
  auto r = rig::http_get(a.admin_port(), "/stats?format=json", kWait);
  if (!r) return out;
  auto doc = rig::Json::parse(r.response->body);
  if (!doc) return out;
  const rig::Json* shards = doc->get("shards");
  if (shards == nullptr || shards->type != rig::Json::Type::kArray) return out;
  for (const auto& s : shards->array) out.push_back(s.int_or(name, -1));
  return out;
}

// Waits until shard `i`'s `name` is at least `n`.
bool wait_shard_stat(bus::Agent& a, size_t i, const std::string& name, int64_t n) {
  const int64_t deadline = rig::now_ms() + kWait;
  for (;;) {
    auto v = per_shard(a, name);
    if (v.size() > i && v[i] >= n) return true;
    if (rig::now_ms() >= deadline) return false;
    rig::sleep_ms(10);
  }
}

// What a crowd of kept-alive clients saw.
struct Outcome {
  std::mutex mutex;
  std::vector<std::string> failures;
  std::atomic<int> ok{0};
  std::atomic<int> bad_gateway{0};
  void fail(std::string why) {
    std::lock_guard lock(mutex);
    if (failures.size() < 10) failures.push_back(std::move(why));
  }
  std::string first() {
    std::lock_guard lock(mutex);
    return failures.empty() ? std::string("none") : failures.front();
  }
};

// `clients` threads, each sending `per_client` GET /size/N one after the
// other on one kept-alive connection (a new one after a 502 that closes) and
// checking every body byte. `allow_502`: a 502 (a request in flight when the
// server died) is counted, not a failure.
void crowd(uint16_t port, int clients, int per_client, bool allow_502, Outcome& out,
           const std::atomic<bool>* stop = nullptr) {
  std::vector<std::thread> threads;
  for (int id = 0; id < clients; ++id)
    threads.emplace_back([=, &out] {
      Client c;
      bool open = false;
      for (int k = 0; k < per_client && !(stop != nullptr && stop->load()); ++k) {
        if (!open && !(open = c.connect(port))) return out.fail("client " + std::to_string(id) + ": " + c.error());
        const int n = 100 + (id * 37 + k * 11) % 900;
        if (!c.send_all(rig::get_request("/size/" + std::to_string(n) + "?c=" + std::to_string(id))))
          return out.fail("client " + std::to_string(id) + ": send: " + c.error());
        rig::ReadResult r = c.read_response(20000);
        if (!r) return out.fail("client " + std::to_string(id) + " request " + std::to_string(k) + ": " + r.error);
        if (r.response->status == 502 && allow_502) {
          ++out.bad_gateway;
          if (r.response->closes()) {
            c.close();
            open = false;
          }
          continue;
        }
        if (r.response->status != 200 || r.response->body != bus::demo_pattern(uint64_t(n)))
          return out.fail("client " + std::to_string(id) + ": status " + std::to_string(r.response->status));
        ++out.ok;
        if (r.response->closes()) {
          c.close();
          open = false;
        }
      }
    });
  for (auto& t : threads) t.join();
}

// One request `path?c=i` on each client's own connection, all taken in by
// the agent, and the kernel's spread of them reaching both shards (checked:
// a case that needs both would prove nothing otherwise). Returns each
// shard's active clients.
std::vector<int64_t> send_on_both_shards(bus::Agent& a, std::vector<Client>& clients, const std::string& path) {
  for (size_t i = 0; i < clients.size(); ++i) {
    REQUIRE(clients[i].connect(a.port()));
    REQUIRE(clients[i].send_all(rig::get_request(path + "?c=" + std::to_string(i))));
  }
  const int64_t until = rig::now_ms() + kWait;
  while (a.stat("requests") < int64_t(clients.size()) && rig::now_ms() < until) rig::sleep_ms(5);
  REQUIRE(a.stat("requests") == int64_t(clients.size()));
  const auto active = per_shard(a, "active_clients");
  REQUIRE(active.size() == 2);
  REQUIRE_MESSAGE(active[0] > 0, "no request on shard 0");
  REQUIRE_MESSAGE(active[1] > 0, "no request on shard 1");
  return active;
}

}  // namespace

TEST_CASE("two shards over one bus of 4 channels: 200 clients, 2,000 requests, every answer right, both shards used") {
  REQUIRE(rig::raise_fd_limit() >= 1000);
  const auto name = bus::unique_name("shards");
  bus::Agent a;
  REQUIRE_AGENT(a, name, two_shards(4));
  rig::Child demo;
  REQUIRE(bus::start_demo(demo, name, 4));
  REQUIRE_ATTACHED(a, 1);
  // One attach for the agent, said once (not once per shard), no warning.
  CHECK(a.count_lines("attached with 4 channels") == 1);
  CHECK(a.count_lines("no channel") == 0);

  Outcome out;
  crowd(a.port(), 200, 10, false, out);
  INFO("first failure: " << out.first());
  CHECK(out.ok == 2000);

  // Each shard opened its two channels of the four and carried requests.
  CHECK(per_shard(a, "upstream_connects") == std::vector<int64_t>{2, 2});
  const auto requests = per_shard(a, "requests");
  const auto answered = per_shard(a, "responses_2xx");
  REQUIRE(requests.size() == 2);
  CHECK(requests[0] > 0);
  CHECK(requests[1] > 0);
  CHECK(requests[0] + requests[1] == 2000);
  CHECK(answered == requests);
  CHECK(a.stat("requests") == 2000);
  CHECK(a.stat("responses_2xx") == 2000);
  CHECK(a.stat("upstream_connects") == 4);
  CHECK(a.stat("upstream_bad_responses") == 0);
  MESSAGE("requests per shard: " << requests[0] << " + " << requests[1]);

  // The server answered every one of them over the ring.
  CHECK(demo.stop() == 0);
  auto counters = demo.wait_for_line("offload-demo-server: requests=", 2000);
  REQUIRE_MESSAGE(counters, demo.stderr_text());
  CHECK(counters->find("requests=2000 ") != std::string::npos);
}

TEST_CASE("two shards: the server killed under load gives its in-flight requests 502 on both, the next one serves both") {
  REQUIRE(rig::raise_fd_limit() >= 1000);
  const auto name = bus::unique_name("shardkill");
  bus::Agent a;
  REQUIRE_AGENT(a, name, two_shards(4));
  const pid_t agent_pid = a.child().pid();
  rig::Child demo;
  REQUIRE(bus::start_demo(demo, name, 4));
  REQUIRE_ATTACHED(a, 1);

  // 24 requests that keep the workers busy for 5 s, spread over both shards
  // by the kernel (checked), all in the ring at once (depth 16 per channel).
  std::vector<Client> busy(24);
  send_on_both_shards(a, busy, "/spin/5000000");
  CHECK(a.stat("queue_length") == 0);  // all on channels, none waiting

  // Load on top: kept-alive clients that go on through the kill and restart.
  std::atomic<bool> stop{false};
  Outcome load;
  std::thread loader([&] { crowd(a.port(), 16, 100000, true, load, &stop); });
  rig::sleep_ms(300);

  demo.signal(SIGKILL);
  for (size_t i = 0; i < busy.size(); ++i) {
    auto r = busy[i].read_response(kWait);
    REQUIRE_MESSAGE(r, "client " << i << ": " << r.error);
    CHECK(r.response->status == 502);
  }
  REQUIRE(demo.wait_exit(kWait).has_value());
  REQUIRE(a.child().wait_for_line("server detached", kWait));
  CHECK(a.count_lines("server detached") == 1);  // once for the agent
  CHECK(per_shard(a, "upstream_active") == std::vector<int64_t>{0, 0});

  // No server: new requests wait (the load's, on both shards) and are
  // served once the next server attaches.
  const auto before = per_shard(a, "responses_2xx");
  REQUIRE(before.size() == 2);
  rig::sleep_ms(300);
  rig::Child again;
  REQUIRE(bus::start_demo(again, name, 4));
  REQUIRE_ATTACHED(a, 2);
  CHECK(wait_shard_stat(a, 0, "responses_2xx", before[0] + 50));
  CHECK(wait_shard_stat(a, 1, "responses_2xx", before[1] + 50));
  stop = true;
  loader.join();
  INFO("load's first failure: " << load.first());
  CHECK(load.failures.empty());
  CHECK(load.ok > 100);
  MESSAGE("load: " << load.ok.load() << " answered, " << load.bad_gateway.load() << " 502 (in flight at the kill)");

  // Fresh connections after the reattach: served, on both shards again.
  Outcome after;
  crowd(a.port(), 40, 5, false, after);
  INFO("after: " << after.first());
  CHECK(after.ok == 200);
  CHECK(per_shard(a, "upstream_connects") == std::vector<int64_t>{4, 4});
  CHECK(per_shard(a, "upstream_active") == std::vector<int64_t>{2, 2});
  CHECK(a.child().pid() == agent_pid);
  CHECK(a.count_lines("listening on ") == 1);
  CHECK(a.stat("timeouts_queue") == 0);
  CHECK(a.stat("upstream_bad_responses") == 0);
}

TEST_CASE("two shards over the bus: SIGTERM with requests in flight on both answers every one and exits 0") {
  const auto name = bus::unique_name("shardterm");
  bus::Agent a;
  bus::AgentOptions o = two_shards(4);
  o.extra.insert(o.extra.end(), {"--drain-timeout-ms", "20000"});
  REQUIRE_AGENT(a, name, o);
  rig::Child demo;
  REQUIRE(bus::start_demo(demo, name, 4));
  REQUIRE_ATTACHED(a, 1);

  // 24 requests of 300 ms each: 6 per worker, queued in the channels.
  std::vector<Client> clients(24);
  const auto active = send_on_both_shards(a, clients, "/spin/300000");

  a.child().signal(SIGTERM);
  for (size_t i = 0; i < clients.size(); ++i) {
    auto r = clients[i].read_response(kWait);
    REQUIRE_MESSAGE(r, "client " << i << ": " << r.error);
    CHECK(r.response->status == 200);
  }
  auto code = a.child().wait_exit(kWait);
  REQUIRE_MESSAGE(code, "the agent did not exit after draining");
  CHECK(*code == 0);
  CHECK(a.count_lines("draining") == 2);  // each shard drained
  CHECK(a.count_lines("drain deadline passed") == 0);
  // The server saw the agent go and carries on waiting for the next one.
  CHECK(demo.running());
  MESSAGE("in flight per shard at SIGTERM: " << active[0] << " + " << active[1]);
}

TEST_CASE("a server of 1 worker for 2 shards: one warning; the shard without a channel answers 503 at the queue timeout") {
  const auto name = bus::unique_name("shardone");
  bus::Agent a;
  bus::AgentOptions o = two_shards(4);
  o.queue_timeout_ms = 1000;
  REQUIRE_AGENT(a, name, o);
  rig::Child demo;
  REQUIRE(bus::start_demo(demo, name, 1));
  REQUIRE_ATTACHED(a, 1);
  REQUIRE(a.child().wait_for_line("no channel", kWait));
  CHECK(a.count_lines("attached with 1 channels") == 1);
  CHECK(a.count_lines("the server has 1 channel for 2 shards: shard 1 has no channel") == 1);

  // 32 clients at once: the kernel spreads them over both shards.
  std::vector<Client> clients(32);
  const int64_t start = rig::now_ms();
  for (size_t i = 0; i < clients.size(); ++i) {
    REQUIRE(clients[i].connect(a.port()));
    REQUIRE(clients[i].send_all(rig::get_request("/size/64?c=" + std::to_string(i))));
  }
  int ok = 0, unavailable = 0;
  int64_t slowest = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    auto r = clients[i].read_response(5000);  // well past the 1 s queue timeout: no hang
    REQUIRE_MESSAGE(r, "client " << i << ": " << r.error);
    slowest = std::max(slowest, rig::now_ms() - start);
    if (r.response->status == 200) {
      CHECK(r.response->body == bus::demo_pattern(64));
      ++ok;
    } else {
      CHECK(r.response->status == 503);
      ++unavailable;
    }
  }
  CHECK(slowest < 4000);
  const auto answered = per_shard(a, "responses_2xx");
  const auto refused = per_shard(a, "responses_5xx");
  const auto timeouts = per_shard(a, "timeouts_queue");
  REQUIRE(answered.size() == 2);
  // Shard 0 (channel 0) served all of its own; shard 1 none, each at its timeout.
  CHECK(answered[0] == ok);
  CHECK(answered[1] == 0);
  CHECK(refused == std::vector<int64_t>{0, unavailable});
  CHECK(timeouts == std::vector<int64_t>{0, unavailable});
  CHECK(ok > 0);
  CHECK(unavailable > 0);
  CHECK(per_shard(a, "upstream_connects") == std::vector<int64_t>{1, 0});
  MESSAGE("shard 0 served " << ok << ", shard 1 answered " << unavailable << " with 503");

  // A server with enough workers gives shard 1 its channels: no warning then.
  demo.signal(SIGKILL);
  REQUIRE(demo.wait_exit(kWait).has_value());
  REQUIRE(a.child().wait_for_line("server detached", kWait));
  rig::Child again;
  REQUIRE(bus::start_demo(again, name, 2));
  REQUIRE_ATTACHED(a, 2);
  CHECK(a.count_lines("no channel") == 1);
  CHECK(wait_shard_stat(a, 1, "upstream_connects", 1));
  Outcome after;
  crowd(a.port(), 20, 5, false, after);
  INFO("after: " << after.first());
  CHECK(after.ok == 100);
  const auto served = per_shard(a, "responses_2xx");
  REQUIRE(served.size() == 2);
  CHECK(served[1] > 0);
}
