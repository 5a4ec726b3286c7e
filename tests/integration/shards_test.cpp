// One shard per core: two shards behind one port (SO_REUSEPORT), their
// counters summed by the admin thread, and SIGTERM draining both.
#include <doctest/doctest.h>

#include <csignal>
#include <string>
#include <vector>

#include "cases.h"
#include "rig.h"

using cases::start_pair;
using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

constexpr int kWait = 10000;

// The agent's JSON stats: the totals and, with several shards, "shards".
std::optional<rig::Json> json_stats(Proxy& p) {
  auto r = rig::http_get(p.admin_port(), "/stats?format=json", kWait);
  if (!r) return std::nullopt;
  return rig::Json::parse(r.response->body);
}

// One counter of each shard, in shard order; empty if there is no breakdown.
std::vector<int64_t> per_shard(const rig::Json& stats, const std::string& name) {
  std::vector<int64_t> out;
  const rig::Json* shards = stats.get("shards");
  if (shards == nullptr || shards->type != rig::Json::Type::kArray) return out;
  for (const auto& s : shards->array) out.push_back(s.int_or(name, -1));
  return out;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Polls the stats until `pred` holds (bounded by kWait).
template <class Pred>
std::optional<rig::Json> wait_stats(Proxy& p, Pred pred) {
  const int64_t deadline = rig::now_ms() + kWait;
  for (;;) {
    auto s = json_stats(p);
    if (s && pred(*s)) return s;
    if (rig::now_ms() >= deadline) return s;
    rig::sleep_ms(10);
  }
}

}  // namespace

TEST_CASE("two shards serve 1,000 clients and their counters add up exactly to what the clients did") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.max_upstream = 8;
  o.extra_flags = {"--workers", "2"};
  start_pair(b, p, 16, o);
  if (!p.is_agent()) return;

  // 10 batches of 100 clients open at once; client i sends 1 + i % 2
  // requests on its connection, one after the other.
  constexpr int kClients = 1000, kBatch = 100;
  int requests = 0, answered = 0;
  for (int first = 0; first < kClients; first += kBatch) {
    std::vector<Client> clients(kBatch);
    for (int k = 0; k < kBatch; ++k) REQUIRE_MESSAGE(clients[k].connect(p.port()), clients[k].error());
    for (int round = 0; round < 2; ++round) {
      for (int k = 0; k < kBatch; ++k) {
        const int i = first + k;
        if (round > i % 2) continue;
        REQUIRE(clients[k].send_all(rig::get_request("/ok?c=" + std::to_string(i) + "&r=" + std::to_string(round))));
        ++requests;
      }
      for (int k = 0; k < kBatch; ++k) {
        const int i = first + k;
        if (round > i % 2) continue;
        auto r = clients[k].read_response(kWait);
        REQUIRE_MESSAGE(r, r.error);
        CHECK(r.response->status == 200);
        CHECK(r.response->body == "ok\n");
        ++answered;
      }
    }
  }
  REQUIRE(requests == 1500);
  REQUIRE(answered == 1500);

  // Every client is closed: wait for both shards to have seen it.
  auto s = wait_stats(p, [](const rig::Json& j) { return j.int_or("active_clients", -1) == 0; });
  REQUIRE(s);
  CHECK(s->int_or("active_clients", -1) == 0);
  CHECK(s->int_or("accepted", -1) == kClients);
  CHECK(s->int_or("requests", -1) == requests);
  CHECK(s->int_or("responses_2xx", -1) == requests);
  CHECK(s->int_or("responses_4xx", -1) + s->int_or("responses_5xx", -1) == 0);
  CHECK(s->int_or("queue_length", -1) == 0);

  // The breakdown: two shards, both used, their figures summing to the totals.
  const std::vector<int64_t> accepted = per_shard(*s, "accepted");
  REQUIRE(accepted.size() == 2);
  CHECK(accepted[0] > 0);
  CHECK(accepted[1] > 0);
  CHECK(sum(accepted) == kClients);
  CHECK(sum(per_shard(*s, "requests")) == requests);
  CHECK(sum(per_shard(*s, "responses_2xx")) == requests);
  CHECK(sum(per_shard(*s, "bytes_in")) == s->int_or("bytes_in", -1));
  CHECK(sum(per_shard(*s, "bytes_out")) == s->int_or("bytes_out", -1));
  // Both pools together stay within max_upstream.
  CHECK(s->int_or("upstream_active", -1) <= 8);
  MESSAGE("accepted per shard: " << accepted[0] << " + " << accepted[1]);

  // The backend saw each request once.
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->requests == uint64_t(requests));
  CHECK(p.stop() == 0);
}

TEST_CASE("SIGTERM with requests in flight on both shards answers every one and exits 0") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.max_upstream = 64;  // 32 per shard: every request below is at the backend at once
  o.drain_timeout_ms = 20000;
  o.extra_flags = {"--workers", "2"};
  start_pair(b, p, 64, o);
  if (!p.is_agent()) return;

  // 40 clients, each with a request the backend holds for 1.5 s; the
  // kernel's hash spreads them over the shards (checked below).
  std::vector<Client> clients;
  std::vector<int64_t> active;
  for (int i = 0; i < 40; ++i) {
    clients.emplace_back();
    REQUIRE_MESSAGE(clients.back().connect(p.port()), clients.back().error());
    REQUIRE(clients.back().send_all(rig::get_request("/sleep/1500?c=" + std::to_string(i))));
  }
  const size_t n = clients.size();
  REQUIRE(b.wait_record([n](const rig::Record& r) { return r.requests == n; }, kWait));
  auto s = json_stats(p);
  REQUIRE(s);
  active = per_shard(*s, "active_clients");
  REQUIRE(active.size() == 2);
  REQUIRE_MESSAGE(active[0] > 0, "no request on shard 0");
  REQUIRE_MESSAGE(active[1] > 0, "no request on shard 1");

  p.child().signal(SIGTERM);
  for (size_t i = 0; i < n; ++i) {
    auto r = clients[i].read_response(kWait);
    REQUIRE_MESSAGE(r, "client " << i << ": " << r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "slept 1500\n");
  }
  auto code = p.child().wait_exit(kWait);
  REQUIRE_MESSAGE(code, "the agent did not exit after draining");
  CHECK(*code == 0);
  int draining = 0;
  for (const auto& line : p.child().stderr_lines()) draining += line.find("draining") != std::string::npos;
  CHECK(draining == 2);  // each shard drained
  MESSAGE("in flight per shard at SIGTERM: " << active[0] << " + " << active[1]);
}

TEST_CASE("bad shard settings stop the agent at start-up with the key named") {
  Backend b;
  REQUIRE_MESSAGE(b.start(4), b.error());
  Proxy p;
  ProxyOptions o;
  o.extra_flags = {"--workers", "3", "--cpus", "0,1"};
  if (rig::proxy_kind() != "agent") return;
  CHECK(!p.start(b.port(), o));
  auto code = p.child().wait_exit(kWait);
  REQUIRE(code);
  CHECK(*code == 2);
  CHECK(p.child().stderr_text().find("workers: bad value '3'") != std::string::npos);
}
