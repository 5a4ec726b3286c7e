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

// A request body under body_buffer (64 KiB) is held in buffer memory until
// it is complete, whatever the socket buffers take, so holders that send
// most of one and stop fill it deterministically: 24 x 60,000 bytes in
// 64 KiB blocks cannot fit in 1 MiB.
TEST_CASE("a small buffer_memory_max: a request over it gets 503, counted, and the agent serves again once memory frees") {
  if (rig::proxy_kind() != "agent") return;
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.response_buffer = "64k";
  o.extra_flags = {"--buffer-memory-max", "1m"};
  start_pair(b, p, 8, o);
  constexpr int kHolders = 24;
  const std::string part(60000, 'h');
  std::vector<Client> holders(kHolders);
  for (int i = 0; i < kHolders; ++i) {
    REQUIRE(holders[i].connect(p.port()));
    REQUIRE(holders[i].send_all("POST /echo?holder=" + std::to_string(i) +
                                " HTTP/1.1\r\nHost: t\r\nContent-Length: 65000\r\n\r\n"));
    // A holder refused already takes no more.
    if (!holders[i].send_all(part, kWait)) continue;
  }
  // Each holder either waits for the rest of its body or was refused: wait
  // until a refusal is in. A refusal is a 503 the client can read (the agent
  // frees the body it held to make room for it), not a bare close.
  int refused = 0, answered = 0;
  std::vector<bool> done(kHolders, false);
  const int64_t deadline = rig::now_ms() + kWait;
  while (answered == 0 && rig::now_ms() < deadline) {
    for (int i = 0; i < kHolders; ++i) {
      if (done[i]) continue;
      int n = holders[i].recv_some(4096, 10);
      if (n == -1) continue;
      rig::ResponseParser parser;
      std::string copy = holders[i].buffer();
      auto state = parser.feed(copy, n <= 0);
      if (n > 0 && state == rig::ResponseParser::State::kNeedMore) continue;
      done[i] = true;
      ++answered;
      CAPTURE(i);
      CHECK_MESSAGE(state == rig::ResponseParser::State::kDone, "closed without a response: " << parser.error());
      if (state != rig::ResponseParser::State::kDone) continue;
      CHECK(parser.response().status == 503);
      CHECK(parser.response().closes());
      refused += parser.response().status == 503;
    }
  }
  CHECK(refused >= 1);
  CHECK(answered < kHolders);  // the ones that fit are still waiting for their bodies
  CHECK(p.stat("buffer_exhausted") >= 1);
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->bytes_in() == 0);  // incomplete requests never go upstream
  for (auto& c : holders) c.close();
  // Memory comes back: a request with a body is served (bounded retries
  // while the agent notices the closes).
  const std::string body = rig::pattern_string(500000);
  bool served = false;
  for (int i = 0; i < 100 && !served; ++i) {
    Client c;
    REQUIRE(c.connect(p.port()));
    REQUIRE(c.send_all(cases::post("/echo?after", body)));
    auto r = c.read_response(kWait);
    served = r && r.response->status == 200 && r.response->body == body;
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
  // Far more than the agent may hold (64 KiB + 1 MiB) plus what the kernel
  // buffers of both connections (client side, upstream side) can take.
  const uint64_t kSize = 2 * rig::loopback_buffering_max() + (8u << 20);
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
