// Regression tests for the hardening issue: each case is a symptom seen from
// outside (a hang, a crash, a stall), driven against the real agent in front
// of the recording backend, and fails on the code that had the defect.
#include <doctest/doctest.h>

#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

void start_pair(Backend& b, Proxy& p, int workers, const ProxyOptions& o) {
  REQUIRE_MESSAGE(b.start(workers), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), o), p.error());
}

}  // namespace

TEST_CASE("an empty-bodied POST and PUT (Content-Length: 0) reach the backend and are answered") {
  Backend b;
  Proxy p;
  start_pair(b, p, 4, {});
  for (const char* method : {"POST", "PUT"}) {
    CAPTURE(method);
    Client c;
    REQUIRE_MESSAGE(c.connect(p.port()), c.error());
    std::string target = std::string("/ok?empty-") + method;
    REQUIRE(c.send_all(std::string(method) + " " + target + " HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    auto rec = b.record();
    REQUIRE(rec);
    const rig::RecordedRequest* got = rec->find(target);
    REQUIRE(got != nullptr);
    CHECK(got->method == method);
    CHECK(got->complete);
    CHECK(got->body_bytes == 0);
    CHECK(got->raw.find("Content-Length: 0\r\n") != std::string::npos);
    // The connection goes on: a second request on it is answered too.
    REQUIRE(c.send_all(rig::get_request("/ok")));
    rig::ReadResult r2 = c.read_response(5000);
    REQUIRE_MESSAGE(r2, r2.error);
    CHECK(r2.response->status == 200);
  }
}

TEST_CASE("a backend restart costs the requests that arrive meanwhile latency, not errors") {
  auto backend = std::make_unique<Backend>();
  REQUIRE_MESSAGE(backend->start(4), backend->error());
  const uint16_t port = backend->port();
  Proxy p;
  ProxyOptions o;
  o.queue_timeout_ms = 20000;  // far longer than the restart
  REQUIRE_MESSAGE(p.start(port, o), p.error());
  auto first = rig::http_get(p.port(), "/ok", 5000);
  REQUIRE_MESSAGE(first, first.error);
  REQUIRE(first.response->status == 200);

  backend->child().signal(SIGKILL);
  REQUIRE(backend->child().wait_exit(5000).has_value());
  backend.reset();
  // Requests while the backend is down: a GET and a POST, on connections of their own.
  Client get, post;
  REQUIRE_MESSAGE(get.connect(p.port()), get.error());
  REQUIRE_MESSAGE(post.connect(p.port()), post.error());
  REQUIRE(get.send_all(rig::get_request("/ok?during-restart")));
  REQUIRE(post.send_all("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"));
  // The agent tries to connect meanwhile (and fails) while both wait.
  for (int i = 0; i < 500 && p.stat("upstream_connect_errors") < 2; ++i) rig::sleep_ms(10);
  CHECK(p.stat("upstream_connect_errors") >= 2);
  CHECK(get.recv_some(1, 0) == -1);  // nothing answered yet

  Backend again;
  REQUIRE_MESSAGE(again.start(4, port), again.error());
  rig::ReadResult g = get.read_response(15000);
  REQUIRE_MESSAGE(g, g.error);
  CHECK(g.response->status == 200);
  rig::ReadResult q = post.read_response(15000);
  REQUIRE_MESSAGE(q, q.error);
  CHECK(q.response->status == 200);
  CHECK(q.response->body == "hello");
  auto rec = again.record();
  REQUIRE(rec);
  CHECK(rec->find("/ok?during-restart") != nullptr);
  CHECK(p.stat("responses_5xx") == 0);
}
