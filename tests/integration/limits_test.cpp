// Resource exhaustion and shutdown, end to end: a small buffer_memory_max,
// a temp_dir where no spill file can be opened, the response_spill_max
// back-pressure, the drain deadline expiring and a second SIGINT.
//
// No elapsed-time assertions beyond generous hang bounds (and lower bounds on
// the agent's own timers, which load cannot break: a timer measured from
// before its cause can only be seen to fire late).
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

// Reads the rest of one response on `c` as fast as it comes.
rig::ReadResult read_all(Client& c) { return c.read_response(60000); }

bool response_done_at_backend(Backend& b, const std::string& target) {
  auto rec = b.record();
  if (!rec) return false;
  const auto* q = rec->find(target);
  return q != nullptr && q->response_done_us > 0;
}

}  // namespace

TEST_CASE("a small buffer_memory_max: requests over it get 503, counted, and the agent serves again once memory frees") {
  if (rig::proxy_kind() != "agent") return;
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.max_upstream = 16;
  o.response_buffer = "64k";
  o.response_spill_max = "0";  // responses stay in memory: each reader holds its blocks
  o.extra_flags = {"--buffer-memory-max", "1m"};
  start_pair(b, p, 32, o);
  constexpr int kClients = 40;
  constexpr uint64_t kSize = 1u << 20;
  std::vector<Client> clients(kClients);
  std::vector<std::string> targets;
  int refused = 0;
  for (int i = 0; i < kClients; ++i) {
    targets.push_back("/size/" + std::to_string(kSize) + "?holder=" + std::to_string(i));
    REQUIRE(clients[i].connect(p.port(), 3000, 4096));
    REQUIRE(clients[i].send_all(rig::get_request(targets.back())));
    // The response has begun (or was refused) before the next client asks.
    int got = clients[i].recv_some(1024, kWait);
    REQUIRE_MESSAGE(got > 0, "client " << i << " got no answer");
    if (clients[i].buffer().rfind("HTTP/1.1 503", 0) == 0) ++refused;
  }
  CHECK(refused >= 1);
  CHECK(p.stat("buffer_exhausted") >= 1);
  // Every client gets either its whole response or a refusal with a close, never wrong bytes.
  int whole = 0;
  for (int i = 0; i < kClients; ++i) {
    CAPTURE(i);
    auto r = read_all(clients[i]);
    if (!r) {
      CHECK_MESSAGE(r.closed, r.error);  // cut short: only by a close
      continue;
    }
    if (r.response->status == 200) {
      CHECK_SAME_BYTES(r.response->body, rig::pattern_string(kSize));
      ++whole;
    } else {
      CHECK(r.response->status == 503);
      CHECK(r.response->closes());
    }
  }
  CHECK(whole >= 1);
  for (auto& c : clients) c.close();
  // Memory comes back: a new request is served (bounded retries while the
  // agent notices the closes).
  bool served = false;
  for (int i = 0; i < 100 && !served; ++i) {
    auto r = rig::http_get(p.port(), "/size/100000?after", kWait);
    served = r && r.response->status == 200 && r.response->body == rig::pattern_string(100000);
    if (!served) rig::sleep_ms(50);
  }
  CHECK(served);
  CHECK(p.child().running());
}

TEST_CASE("a temp_dir where no spill file can be opened: large responses still arrive byte-exact") {
  if (rig::proxy_kind() != "agent") return;
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.response_buffer = "64k";
  o.extra_flags = {"--temp-dir", "/nonexistent/offload-spill"};
  start_pair(b, p, 8, o);
  constexpr uint64_t kSize = 4u << 20;
  const std::string target = "/size/" + std::to_string(kSize) + "?no-spill";
  Client c;
  REQUIRE(c.connect(p.port(), 3000, 4096));
  REQUIRE(c.send_all(rig::get_request(target)));
  // Not reading: the response piles up past response_buffer, where it would spill.
  b.wait_record([&](const rig::Record& r) {
    const auto* q = r.find(target);
    return q != nullptr && q->response_done_us > 0;
  }, 2000);
  auto r = read_all(c);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK_SAME_BYTES(r.response->body, rig::pattern_string(kSize));
  CHECK(p.stat("spilled_responses") == 0);
  auto next = rig::http_get(p.port(), "/ok?after-no-spill", kWait);
  REQUIRE_MESSAGE(next, next.error);
  CHECK(next.response->status == 200);
  CHECK(p.child().running());
}

TEST_CASE("response_spill_max: past memory and the spill limit the agent stops reading upstream, and nothing is lost") {
  if (rig::proxy_kind() != "agent") return;
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.max_upstream = 1;
  o.persistent = 1;
  o.response_buffer = "64k";
  o.response_spill_max = "1m";
  start_pair(b, p, 8, o);
  // Far more than the agent may hold (64 KiB + 1 MiB) plus what loopback
  // socket buffers take.
  constexpr uint64_t kSize = 48u << 20;
  const std::string target = "/size/" + std::to_string(kSize) + "?spill-limit";
  Client c;
  REQUIRE(c.connect(p.port(), 3000, 4096));
  REQUIRE(c.send_all(rig::get_request(target)));
  bool spilled = false;
  for (int i = 0; i < kWait / 10 && !spilled; ++i) {
    spilled = p.stat("spilled_responses") >= 1;
    if (!spilled) rig::sleep_ms(10);
  }
  REQUIRE(spilled);
  // Room for the backend to finish if nothing held it back; it must not.
  rig::sleep_ms(500);
  CHECK_MESSAGE(!response_done_at_backend(b, target), "the backend wrote the whole response while the client read nothing");
  auto r = read_all(c);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK_SAME_BYTES(r.response->body, rig::pattern_string(kSize));
  CHECK(response_done_at_backend(b, target));
}

// ---------------------------------------------------------------- shutdown

TEST_CASE("SIGTERM: when the drain deadline passes with a request still in flight, the agent exits anyway") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.drain_timeout_ms = 300;  // the response timeout stays at its 60 s default
  start_pair(b, p, 8, o);
  Client c;
  REQUIRE(c.connect(p.port()));
  REQUIRE(c.send_all(rig::get_request("/silent?drain")));
  REQUIRE(b.wait_record([](const rig::Record& r) { return r.find("/silent?drain") != nullptr; }, kWait));
  const int64_t signalled = rig::now_ms();
  p.child().signal(SIGTERM);
  auto code = p.child().wait_exit(kWait);  // far below the 60 s the request could still take
  REQUIRE_MESSAGE(code, "the agent did not exit after its drain deadline");
  CHECK(rig::now_ms() - signalled >= 250);  // not before the deadline
  std::string got;
  CHECK(c.wait_closed(kWait, &got));
  CHECK(got.find("HTTP/1.1 200") == std::string::npos);
}

TEST_CASE("a second SIGINT exits at once, without waiting for the drain") {
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.drain_timeout_ms = 120000;
  start_pair(b, p, 8, o);
  Client c;
  REQUIRE(c.connect(p.port()));
  REQUIRE(c.send_all(rig::get_request("/silent?sigint")));
  REQUIRE(b.wait_record([](const rig::Record& r) { return r.find("/silent?sigint") != nullptr; }, kWait));
  p.child().signal(SIGINT);
  if (p.is_agent()) REQUIRE(p.child().wait_for_line("draining", kWait));
  // Draining a request that will not end: still running.
  CHECK(!p.child().wait_exit(300).has_value());
  p.child().signal(SIGINT);
  auto code = p.child().wait_exit(kWait);  // far below the 120 s drain deadline
  REQUIRE_MESSAGE(code, "a second SIGINT did not stop the agent");
  CHECK(c.wait_closed(kWait));
}
