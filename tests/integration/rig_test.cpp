// The rig checked on its own, against the recording backend directly (no
// proxy): the backend serves and records what the agent tests rely on, and
// the measures those tests use ("arrived in one piece", "the worker was free
// before the client finished") do tell a buffering proxy from none.
#include <doctest/doctest.h>

#include <csignal>
#include <string>
#include <vector>

#include "rig.h"

using rig::Backend;
using rig::Client;

namespace {

const std::string& big_pattern() {
  static const std::string s = rig::pattern_string(8u << 20);
  return s;
}

}  // namespace

TEST_CASE("rig: response parser handles length, chunked, close-delimited and interim responses") {
  {
    std::string in = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n";
    rig::ResponseParser p;
    REQUIRE(p.feed(in, false) == rig::ResponseParser::State::kDone);
    CHECK(p.response().body == "hello");
    rig::ResponseParser p2;
    REQUIRE(p2.feed(in, false) == rig::ResponseParser::State::kDone);
    CHECK(p2.response().status == 204);
    CHECK(in.empty());
  }
  {
    std::string in = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    rig::ResponseParser p;
    REQUIRE(p.feed(in, false) == rig::ResponseParser::State::kDone);
    CHECK(p.response().status == 200);
    CHECK(p.response().body == "abc");
  }
  {
    std::string in = "HTTP/1.0 200 OK\r\n\r\nuntil";
    rig::ResponseParser p;
    CHECK(p.feed(in, false) == rig::ResponseParser::State::kNeedMore);
    in += " close";
    CHECK(p.feed(in, true) == rig::ResponseParser::State::kDone);
    CHECK(p.response().body == "until close");
  }
  {
    std::string in = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
    rig::ResponseParser p;
    CHECK(p.feed(in, true) == rig::ResponseParser::State::kError);
  }
  {
    std::string in = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    rig::ResponseParser p;
    CHECK(p.feed(in, false) == rig::ResponseParser::State::kError);
  }
}

TEST_CASE("rig: json parser reads the shapes the record and the stats use") {
  auto j = rig::Json::parse(R"({"a":1,"b":[true,false,null],"c":{"d":-2.5,"e":"x\u0001\"y"},"f":[]})");
  REQUIRE(j);
  CHECK(j->int_or("a", 0) == 1);
  CHECK(j->get("b")->array.size() == 3);
  CHECK(j->get("c")->str_or("e", "") == std::string("x\x01\"y"));
  CHECK(!rig::Json::parse("{\"a\":1,}"));
  CHECK(!rig::Json::parse("[1,2"));
  auto stats = rig::Json::parse(R"({"requests":5,"shards":[{"requests":2,"accepted":1},{"requests":3,"accepted":4}]})");
  REQUIRE(stats);
  auto flat = rig::flatten_stats(*stats);
  CHECK(flat["requests"] == 5);  // the top-level total wins
  CHECK(flat["accepted"] == 5);  // otherwise summed over shards
}

TEST_CASE("rig: child process start, ready line, stop by pid") {
  rig::Child c;
  REQUIRE(c.start("/bin/sh", {"-c", "echo 'thing: listening on 127.0.0.1:4242' 1>&2; exec sleep 30"}));
  auto line = c.wait_for_line("listening on", 5000);
  REQUIRE(line);
  CHECK(rig::port_from_line(*line) == 4242);
  CHECK(c.running());
  CHECK(c.stop(2000) == 128 + SIGTERM);
  rig::Child quick;
  REQUIRE(quick.start("/bin/sh", {"-c", "echo one line 1>&2; exit 2"}));
  CHECK(quick.wait_exit(5000) == 2);
  CHECK(!quick.wait_for_line("never printed", 200));
}

TEST_CASE("rig: backend serves its endpoints with keep-alive and pipelining") {
  Backend b;
  REQUIRE_MESSAGE(b.start(4), b.error());
  Client c;
  REQUIRE(c.connect(b.port()));
  std::string pipelined = rig::get_request("/size/1000") + rig::get_request("/chunked/70000") +
                          "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" +
                          "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n" +
                          "HEAD /size/123 HTTP/1.1\r\nHost: t\r\n\r\n" + rig::get_request("/nope");
  REQUIRE(c.send_all(pipelined));
  auto r1 = c.read_response();
  REQUIRE_MESSAGE(r1, r1.error);
  CHECK(r1.response->body == rig::pattern_string(1000));
  auto r2 = c.read_response();
  REQUIRE_MESSAGE(r2, r2.error);
  CHECK(r2.response->chunked);
  CHECK(r2.response->body == rig::pattern_string(70000));
  auto r3 = c.read_response();
  REQUIRE(r3);
  CHECK(r3.response->body == "hello");
  auto r4 = c.read_response();
  REQUIRE(r4);
  CHECK(r4.response->body == "abcde");
  auto r5 = c.read_response(5000, /*head_request=*/true);
  REQUIRE(r5);
  CHECK(r5.response->header("content-length") == "123");
  auto r6 = c.read_response();
  REQUIRE(r6);
  CHECK(r6.response->status == 404);
  auto sleep = rig::http_get(b.port(), "/sleep/50");
  REQUIRE(sleep);
  CHECK(sleep.response->body == "slept 50\n");

  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->max_connections >= 1);
  const auto* chunked = rec->all_requests().at(3);
  CHECK(chunked->body == "abcde");
  CHECK(chunked->complete);
  CHECK(rec->find("/size/1000")->status == 200);
  CHECK(rec->find("/nope")->status == 404);
  CHECK(rec->requests == 7);
}

TEST_CASE("rig: backend records /close, /silent and an incomplete request") {
  Backend b;
  REQUIRE(b.start(4));
  auto closed = rig::http_get(b.port(), "/close", 3000);
  CHECK(!closed);
  CHECK(closed.closed);
  Client silent;
  REQUIRE(silent.connect(b.port()));
  REQUIRE(silent.send_all(rig::get_request("/silent")));
  auto none = silent.read_response(300);
  CHECK(!none);
  CHECK(!none.closed);
  Client partial;
  REQUIRE(partial.connect(b.port()));
  REQUIRE(partial.send_all("GET /partial HTTP/1.1\r\nHost: "));
  partial.close();
  // The backend notices the partial client's close a moment after it
  // records its bytes: wait for both, bounded.
  auto rec = b.wait_record(
      [](const rig::Record& r) {
        if (r.current_connections != 1) return false;  // the silent one
        for (const auto* q : r.all_requests()) {
          if (!q->complete) return true;
        }
        return false;
      },
      3000);
  REQUIRE(rec);
  CHECK(rec->find("/silent") != nullptr);
  CHECK(rec->find("/close") != nullptr);
  bool found = false;
  for (const auto* q : rec->all_requests()) {
    if (!q->complete) {
      found = true;
      CHECK(q->raw == "GET /partial HTTP/1.1\r\nHost: ");
    }
  }
  CHECK(found);
}

// The control for "arrived as one complete request in one piece": without a
// proxy, a trickled request reaches the backend in many reads spread in time.
TEST_CASE("rig: a trickled request reaches the backend directly in many pieces") {
  Backend b;
  REQUIRE(b.start(4));
  Client c;
  REQUIRE(c.connect(b.port()));
  std::string req = rig::get_request("/size/5?direct");
  REQUIRE(c.send_trickle(req, 4, 10));
  auto r = c.read_response();
  REQUIRE(r);
  auto rec = b.record();
  REQUIRE(rec);
  const auto* q = rec->find("/size/5?direct");
  REQUIRE(q);
  CHECK(q->complete);
  // One read per 4-byte piece, give or take pieces a busy machine merges:
  // half of them is still far from the one read a buffered request takes.
  CHECK(q->reads >= static_cast<int>(req.size() / 4 / 2));
  CHECK(q->last_byte_us > q->first_byte_us);
}

// The control for "the worker was free long before the client finished":
// without a proxy, a slow reader of 8 MiB holds a one-worker backend, and the
// next client is served only once the backend has written the whole response.
// Order, not speed: the slow client stops after 1 MiB, and while it reads
// nothing the backend cannot finish (socket buffers hold a few MiB at most).
TEST_CASE("rig: a slow reader holds a backend worker when there is no proxy") {
  Backend b;
  REQUIRE(b.start(1));
  Client slow;
  REQUIRE(slow.connect(b.port(), 3000, 64 * 1024));
  REQUIRE(slow.send_all(rig::get_request("/size/8388608")));
  rig::ResponseParser parser;
  const int64_t deadline = rig::now_ms() + 30000;
  while (parser.body_received() < (1u << 20) && rig::now_ms() < deadline) {
    REQUIRE(slow.recv_some(64 * 1024, 5000) > 0);
    REQUIRE(parser.feed(slow.buffer(), false) == rig::ResponseParser::State::kNeedMore);
  }
  REQUIRE(parser.body_received() >= (1u << 20));
  Client other;
  REQUIRE(other.connect(b.port()));
  REQUIRE(other.send_all(rig::get_request("/ok")));
  // The one worker is still writing to the slow reader: the other waits.
  CHECK(other.recv_some(1024, 500) == -1);
  auto mid = b.record();
  REQUIRE(mid);
  REQUIRE(mid->find("/size/8388608"));
  CHECK(mid->find("/size/8388608")->response_done_us == 0);
  CHECK(mid->find("/ok") == nullptr);
  auto state = rig::ResponseParser::State::kNeedMore;
  while (state == rig::ResponseParser::State::kNeedMore && rig::now_ms() < deadline) {
    int n = slow.recv_some(64 * 1024, 5000);
    REQUIRE(n != -2);
    state = parser.feed(slow.buffer(), n == 0);
  }
  REQUIRE_MESSAGE(state == rig::ResponseParser::State::kDone, parser.error());
  CHECK(parser.response().body == big_pattern());
  slow.close();  // a worker serves one connection until it closes
  auto other_r = other.read_response(10000);
  REQUIRE(other_r);
  auto rec = b.record();
  REQUIRE(rec);
  const auto* big = rec->find("/size/8388608");
  REQUIRE(big);
  // The other client was served only after the whole response was written.
  const auto* ok = rec->find("/ok");
  REQUIRE(ok);
  CHECK(ok->first_byte_us >= big->response_done_us);
}

TEST_CASE("rig: backend tracks concurrent connections") {
  Backend b;
  REQUIRE(b.start(16));
  std::vector<Client> clients(6);
  for (auto& c : clients) {
    REQUIRE(c.connect(b.port()));
    REQUIRE(c.send_all(rig::get_request("/ok")));
    REQUIRE(c.read_response());
  }
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->current_connections == 6);
  CHECK(rec->max_connections == 6);
  for (auto& c : clients) c.close();
  auto after = b.wait_record([](const rig::Record& r) { return r.current_connections == 0; }, 3000);
  REQUIRE(after);
  CHECK(after->max_connections == 6);
  REQUIRE(b.reset());
  auto reset = b.record();
  REQUIRE(reset);
  CHECK(reset->max_connections == 0);
  CHECK(reset->connections.empty());
}
