// The request path end to end, beyond the parser: retries, HTTP/1.0 clients,
// responses without a body and interim responses, upstream responses that
// would desynchronise a reused connection, Connection: close on either side,
// header size limits, IPv6 and the resource limits. Each case runs the real
// agent in front of the recording backend; answers the backend would never
// write by itself come from its X-Script header.
//
// Nothing here measures elapsed time: a timeout is checked by its outcome and
// the order of events, and every wait has a generous bound that only catches
// a hang.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cases.h"
#include "rig.h"

using cases::post;
using cases::scripted;
using cases::start_pair;
using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

constexpr int kWait = 10000;  // a generous bound for anything that should take milliseconds

// One upstream channel, opened at start-up: a second request can only go over
// the same backend connection (reused) or over a new one (the first closed).
ProxyOptions one_channel() {
  ProxyOptions o;
  o.max_upstream = 1;
  o.persistent = 1;
  return o;
}

// Sends `request` on `c` and reads one response.
rig::ReadResult round_trip(Client& c, const std::string& request, bool head = false) {
  if (!c.send_all(request)) {
    rig::ReadResult r;
    r.error = "send: " + c.error();
    return r;
  }
  return c.read_response(kWait, head);
}

// Waits until the backend has recorded `target`.
bool backend_saw(Backend& b, std::string_view target) {
  return b.wait_record([&](const rig::Record& r) { return r.find(target) != nullptr; }, kWait).has_value();
}

// The backend connection ids that carried `first` and `second`; 0 if not recorded.
std::pair<uint64_t, uint64_t> connections_of(Backend& b, std::string_view first, std::string_view second) {
  auto rec = b.record();
  if (!rec) return {0, 0};
  const auto* a = rec->connection_of(first);
  const auto* z = rec->connection_of(second);
  return {a ? a->id : 0, z ? z->id : 0};
}

}  // namespace

// ------------------------------------------------------------------ retries

TEST_CASE("a GET whose upstream closes before answering is retried exactly once, then 502") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  auto r = rig::http_get(p.port(), "/close", kWait);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 502);
  CHECK(r.response->closes());
  // A later request is recorded after any retry would have been.
  REQUIRE(rig::http_get(p.port(), "/ok?after", kWait));
  REQUIRE(backend_saw(b, "/ok?after"));
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->count("/close") == 2);
  if (p.is_agent()) CHECK(p.stat("upstream_retries") == 1);
}

TEST_CASE("a GET whose first attempt is closed unanswered gets the second attempt's answer") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  auto r = rig::http_get(p.port(), "/flaky/get", kWait);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "ok\n");
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->count("/flaky/get") == 2);
}

TEST_CASE("a HEAD whose upstream closes before answering is retried once") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  Client c;
  REQUIRE(c.connect(p.port()));
  auto r = round_trip(c, "HEAD /flaky/head HTTP/1.1\r\nHost: t\r\n\r\n", /*head=*/true);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body.empty());
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->count("/flaky/head") == 2);
}

TEST_CASE("a POST is never retried: the upstream closing before an answer is a 502 and one delivery") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  for (const char* target : {"/close", "/flaky/post"}) {
    CAPTURE(target);
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, post(target, "a body that must be delivered at most once"));
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 502);
    CHECK(r.response->closes());
  }
  // A PUT with a body is not retried either (only GET and HEAD are).
  {
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, "PUT /flaky/put HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nput");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 502);
  }
  REQUIRE(rig::http_get(p.port(), "/ok?after", kWait));
  REQUIRE(backend_saw(b, "/ok?after"));
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->count("/close") == 1);
  CHECK(rec->count("/flaky/post") == 1);
  CHECK(rec->count("/flaky/put") == 1);
  if (p.is_agent()) CHECK(p.stat("upstream_retries") == 0);
}

// ------------------------------------------------------------ HTTP/1.0 clients

TEST_CASE("HTTP/1.0 client without keep-alive: the response, then the agent closes") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  Client c;
  REQUIRE(c.connect(p.port()));
  auto r = round_trip(c, "GET /size/100?http10 HTTP/1.0\r\nHost: t\r\n\r\n");
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == rig::pattern_string(100));
  CHECK(!r.response->chunked);
  CHECK(c.wait_closed(kWait));
  auto rec = b.record();
  REQUIRE(rec);
  REQUIRE(rec->find("/size/100?http10"));
  CHECK(rec->find("/size/100?http10")->method == "GET");
}

TEST_CASE("HTTP/1.0 client without a Host field is served (Host is required of HTTP/1.1 only)") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  Client c;
  REQUIRE(c.connect(p.port()));
  auto r = round_trip(c, "GET /ok?no-host HTTP/1.0\r\n\r\n");
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "ok\n");
}

TEST_CASE("HTTP/1.0 client with Connection: keep-alive keeps its connection across requests") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  Client c;
  REQUIRE(c.connect(p.port()));
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    std::string target = "/size/" + std::to_string(10 + i) + "?ka10";
    auto r = round_trip(c, "GET " + target + " HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == rig::pattern_string(10 + i));
    // An HTTP/1.0 client keeps the connection only when told so, and needs a length.
    CHECK(r.response->header("Connection").find("keep-alive") != std::string::npos);
    CHECK(r.response->has_header("Content-Length"));
    CHECK(!r.closed);
  }
  if (p.is_agent()) CHECK(p.stat("accepted") == 1);
}

TEST_CASE("HTTP/1.0 clients get a chunked upstream response de-chunked") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  const std::string want = rig::pattern_string(70000);
  for (bool keep_alive : {false, true}) {
    CAPTURE(keep_alive);
    Client c;
    REQUIRE(c.connect(p.port()));
    std::string req = "GET /chunked/70000?ka=" + std::to_string(keep_alive) + " HTTP/1.0\r\nHost: t\r\n";
    if (keep_alive) req += "Connection: keep-alive\r\n";
    auto r = round_trip(c, req + "\r\n");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(!r.response->chunked);
    CHECK(!r.response->has_header("Transfer-Encoding"));
    CHECK_SAME_BYTES(r.response->body, want);
    // Without a length, the end of the body is the close.
    if (!r.response->has_header("Content-Length")) CHECK(c.wait_closed(kWait));
  }
  // A chunked response with trailers and an empty last chunk, scripted.
  Client c;
  REQUIRE(c.connect(p.port()));
  auto r = round_trip(c, "GET /script?chunked10 HTTP/1.0\r\nHost: t\r\nX-Script: " +
                           rig::hex("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n") +
                           "\r\n\r\n");
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(!r.response->chunked);
  CHECK(r.response->body == "hello world");
}

// ---------------------------------------------- responses without a body, 1xx

namespace {

struct NoBodyCase {
  const char* name;
  std::string answer;
  int status;
  std::string body;
  bool head = false;  // the request is a HEAD
};

std::vector<NoBodyCase> no_body_cases() {
  return {
      {"204 without Content-Length", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 204, ""},
      {"204 with Content-Length: 0", "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, ""},
      {"304 without Content-Length", "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", 304, ""},
      // The length of the representation a 200 would have had: no body follows.
      {"304 with Content-Length", "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
       304, ""},
      {"HEAD answered with the GET's Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", 200, "",
       true},
      {"100 Continue, then 200", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
       200, "final"},
      {"103 Early Hints, then a chunked 200",
       "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfinal\r\n0\r\n\r\n",
       200, "final"},
      // 1xx responses have no content whatever fields they carry.
      {"103 with a Content-Length, then 200",
       "HTTP/1.1 103 Early Hints\r\nContent-Length: 10\r\nLink: </a.js>; rel=preload\r\n\r\n"
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
       200, "final"},
      {"100, then 103, then 200",
       "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
       200, "final"},
      {"1xx, then a 204", "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204,
       ""},
  };
}

}  // namespace

TEST_CASE("204, 304, HEAD and 1xx from upstream: the final response exactly, and both connections go on") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, one_channel());
  int n = 0;
  for (const auto& k : no_body_cases()) {
    std::string name = k.name;
    CAPTURE(name);
    const std::string target = "/script?no-body=" + std::to_string(n);
    const std::string after = "/size/7?after=" + std::to_string(n);
    ++n;
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, scripted(k.head ? "HEAD" : "GET", target, k.answer), k.head);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == k.status);
    CHECK(r.response->body == k.body);
    if (k.head) CHECK(r.response->header("Content-Length") == "4096");
    CHECK(!r.closed);
    // The client connection is in step: the next response is the next request's.
    auto next = round_trip(c, rig::get_request(after));
    REQUIRE_MESSAGE(next, next.error);
    CHECK(next.response->status == 200);
    CHECK(next.response->body == rig::pattern_string(7));
    CHECK(next.response->interim.empty());
    // The upstream connection was in step too, so it served the next request.
    auto [first, second] = connections_of(b, target, after);
    CHECK(first != 0);
    CHECK(first == second);
  }
  if (p.is_agent()) CHECK(p.stat("upstream_bad_responses") == 0);
}

// RFC 9110 15.2: a proxy MUST forward 1xx responses unless it asked for them
// itself, and a server MUST NOT send one to an HTTP/1.0 client.
TEST_CASE("103 Early Hints from upstream reaches an HTTP/1.1 client before the final response, not an HTTP/1.0 one") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  const std::string answer =
      "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal";
  {
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, scripted("GET", "/script?hints11", answer));
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "final");
    CHECK(r.response->interim == std::vector<int>{103});
  }
  {
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, "GET /script?hints10 HTTP/1.0\r\nHost: t\r\nX-Script: " + rig::hex(answer) + "\r\n\r\n");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "final");
    CHECK(r.response->interim.empty());
  }
}

TEST_CASE("Expect: 100-continue: exactly one 100 Continue on the wire before the body, none for HTTP/1.0") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  {
    Client c;
    REQUIRE(c.connect(p.port()));
    REQUIRE(c.send_all(
        "POST /echo?expect HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"));
    // Raw bytes: the interim response alone, before any body was sent.
    const std::string want = "HTTP/1.1 100 Continue\r\n\r\n";
    int64_t deadline = rig::now_ms() + kWait;
    while (c.buffer().size() < want.size() && rig::now_ms() < deadline) {
      int n = c.recv_some(want.size() - c.buffer().size(), 100);
      if (n == 0 || n == -2) break;
    }
    CHECK(c.buffer() == want);
    c.buffer().clear();
    auto before = b.record();
    REQUIRE(before);
    CHECK(before->bytes_in() == 0);
    auto r = round_trip(c, "hello world");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "hello world");
    CHECK(r.response->interim.empty());  // the 100 was read above: no second one
    auto rec = b.record();
    REQUIRE(rec);
    const auto* q = rec->find("/echo?expect");
    REQUIRE(q);
    CHECK(q->body == "hello world");
    CHECK(q->raw.find("Expect") == std::string::npos);
  }
  {
    // RFC 9110 10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored.
    Client c;
    REQUIRE(c.connect(p.port()));
    REQUIRE(c.send_all(
        "POST /echo?expect10 HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
    rig::sleep_ms(200);  // room for a wrong 100 to arrive before the body is sent
    auto r = round_trip(c, "hello");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "hello");
    CHECK(r.response->interim.empty());
  }
}

// ------------------------------------------------------ upstream desync

namespace {

struct DesyncCase {
  const char* name;
  std::string answer;
  std::vector<int> statuses;  // what the client may get
  std::string body;           // the body if the status is 200
};

const std::string kSmuggled = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nsmuggled";

std::vector<DesyncCase> desync_cases() {
  return {
      {"bytes after a Content-Length body", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + kSmuggled, {200}, "ok"},
      {"bytes after a chunked body",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + kSmuggled, {200}, "ok"},
      // RFC 9112 6.3: Transfer-Encoding overrides Content-Length; forwarding
      // takes removing the Content-Length, and the connection is not reused.
      {"Content-Length with Transfer-Encoding",
       "HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + kSmuggled,
       {200, 502}, "hello"},
      {"differing Content-Length fields", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nok" + kSmuggled,
       {502}, ""},
      {"a status code with a letter", "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok" + kSmuggled, {502}, ""},
      {"a two-digit status code", "HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok" + kSmuggled, {502}, ""},
      {"not HTTP at all", "ICY 200 OK\r\nContent-Length: 2\r\n\r\nok" + kSmuggled, {502}, ""},
      {"a header line without a colon", "HTTP/1.1 200 OK\r\nBroken header\r\nContent-Length: 2\r\n\r\nok" + kSmuggled,
       {502}, ""},
  };
}

}  // namespace

TEST_CASE("upstream desync (bytes past the body, CL with TE, bad status lines): never reaches the next client, the connection is not reused") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, one_channel());
  int n = 0;
  for (const auto& k : desync_cases()) {
    std::string name = k.name;
    CAPTURE(name);
    const std::string target = "/script?desync=" + std::to_string(n);
    const std::string same_client = "/size/9?same-client=" + std::to_string(n);
    const std::string next_client = "/size/11?next-client=" + std::to_string(n);
    ++n;
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, scripted("GET", target, k.answer));
    REQUIRE_MESSAGE(r, r.error);
    CHECK(std::count(k.statuses.begin(), k.statuses.end(), r.response->status) == 1);
    CHECK(!r.response->has_header("X-Smuggled"));
    CHECK(r.response->body.find("smuggled") == std::string::npos);
    if (r.response->status == 200) {
      CHECK(r.response->body == k.body);
      CHECK(!(r.response->has_header("Content-Length") && r.response->has_header("Transfer-Encoding")));
    }
    if (r.response->status == 502) CHECK(r.response->closes());
    // The same client (if still connected) and a new one each get their own answer.
    if (!r.response->closes()) {
      auto again = round_trip(c, rig::get_request(same_client));
      REQUIRE_MESSAGE(again, again.error);
      CHECK(again.response->status == 200);
      CHECK(again.response->body == rig::pattern_string(9));
      CHECK(!again.response->has_header("X-Smuggled"));
    }
    auto other = rig::http_get(p.port(), next_client, kWait);
    REQUIRE_MESSAGE(other, other.error);
    CHECK(other.response->status == 200);
    CHECK(other.response->body == rig::pattern_string(11));
    CHECK(!other.response->has_header("X-Smuggled"));
    // Not over the connection that sent the bad answer, which the agent closed.
    auto [bad, next] = connections_of(b, target, next_client);
    CHECK(bad != 0);
    CHECK(next != 0);
    CHECK(bad != next);
    CHECK(cases::backend_closed_connection_of(b, target, kWait));
    auto rec = b.record();
    REQUIRE(rec);
    CHECK(rec->count(target) == 1);  // a bad answer is not a reason to send the request again
  }
}

// ------------------------------------------------------ Connection: close

TEST_CASE("Connection: close from the client: the response says so, the agent closes, the upstream connection serves on") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, one_channel());
  Client c;
  REQUIRE(c.connect(p.port()));
  auto r = round_trip(c, "GET /size/5?client-close HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == rig::pattern_string(5));
  CHECK(r.response->closes());
  CHECK(c.wait_closed(kWait));
  auto next = rig::http_get(p.port(), "/size/6?after-client-close", kWait);
  REQUIRE_MESSAGE(next, next.error);
  CHECK(next.response->body == rig::pattern_string(6));
  // The client's Connection is hop-by-hop: the channel to the backend is kept.
  auto [first, second] = connections_of(b, "/size/5?client-close", "/size/6?after-client-close");
  CHECK(first != 0);
  CHECK(first == second);
}

TEST_CASE("Connection: close from the server: the client is answered, the upstream connection is not reused") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, one_channel());
  Client c;
  REQUIRE(c.connect(p.port()));
  // The backend says close but keeps the connection open (and would serve on it).
  auto r = round_trip(c, scripted("GET", "/script?server-close",
                                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"));
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "ok");
  std::string after = "/size/8?after-server-close";
  rig::ReadResult next = r.response->closes() ? rig::http_get(p.port(), after, kWait)
                                              : round_trip(c, rig::get_request(after));
  REQUIRE_MESSAGE(next, next.error);
  CHECK(next.response->body == rig::pattern_string(8));
  auto [first, second] = connections_of(b, "/script?server-close", after);
  CHECK(first != 0);
  CHECK(second != 0);
  CHECK(first != second);
  CHECK(cases::backend_closed_connection_of(b, "/script?server-close", kWait));
}

TEST_CASE("a response delimited by the server's close reaches the client whole, and the connection is not reused") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, one_channel());
  struct Case {
    std::string request, target;
    std::string body;
  };
  const std::string small = "a body with no length, ended by the close\n";
  std::vector<Case> all = {
      {scripted("GET", "/script?until-close", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + small,
                /*close_after=*/true),
       "/script?until-close", small},
      {rig::get_request("/until-close/3000000"), "/until-close/3000000", rig::pattern_string(3000000)},
  };
  for (const auto& k : all) {
    CAPTURE(k.target);
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, k.request);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK_SAME_BYTES(r.response->body, k.body);
    // Framed for the client either by chunks or by the agent's own close.
    if (!r.response->chunked) {
      CHECK(r.response->closes());
      CHECK(c.wait_closed(kWait));
    }
    std::string after = "/size/3?after=" + k.target;
    auto next = rig::http_get(p.port(), after, kWait);
    REQUIRE_MESSAGE(next, next.error);
    CHECK(next.response->body == rig::pattern_string(3));
    auto [first, second] = connections_of(b, k.target, after);
    CHECK(first != 0);
    CHECK(first != second);
  }
}

// ------------------------------------------------------ bodies of length 0

TEST_CASE("POST and PUT with Content-Length: 0 are forwarded and answered") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  for (std::string method : {"POST", "PUT"}) {
    CAPTURE(method);
    std::string target = "/echo?empty-" + method;
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, method + " " + target + " HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body.empty());
    auto rec = b.record();
    REQUIRE(rec);
    const auto* q = rec->find(target);
    REQUIRE(q);
    CHECK(q->method == method);
    CHECK(q->complete);
    CHECK(q->body_bytes == 0);
    // The keep-alive connection goes on.
    auto next = round_trip(c, rig::get_request("/size/4?after-empty"));
    REQUIRE_MESSAGE(next, next.error);
    CHECK(next.response->body == rig::pattern_string(4));
  }
}

// ------------------------------------------------------ the header limit

namespace {

// A GET head of exactly `size` bytes (request line, fields, the empty line).
std::string head_of_size(size_t size, std::string_view tag) {
  std::string start = "GET /ok?" + std::string(tag) + " HTTP/1.1\r\nHost: t\r\nX-Pad: ";
  const std::string end = "\r\n\r\n";
  REQUIRE(size > start.size() + end.size());
  return start + std::string(size - start.size() - end.size(), 'p') + end;
}

}  // namespace

TEST_CASE("headers at the 16 KiB default limit pass, one byte over is 431") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  constexpr size_t kLimit = 16 * 1024;
  struct Size {
    size_t bytes;
    const char* tag;
    int status;
  };
  for (Size s : {Size{kLimit - 1, "under", 200}, Size{kLimit, "at", 200}, Size{kLimit + 1, "over", 431}}) {
    CAPTURE(s.bytes);
    std::string req = head_of_size(s.bytes, s.tag);
    REQUIRE(req.size() == s.bytes);
    Client c;
    REQUIRE(c.connect(p.port()));
    auto r = round_trip(c, req);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == s.status);
    if (s.status == 431) CHECK(r.response->closes());
  }
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->find("/ok?under") != nullptr);
  CHECK(rec->find("/ok?at") != nullptr);
  CHECK(rec->find("/ok?over") == nullptr);
}

// ------------------------------------------------------------------ IPv6

TEST_CASE("an IPv6 listener: served, with X-Forwarded-For ::1 and Forwarded: for=\"[::1]\"") {
  if (!rig::proxy_kind().empty() && rig::proxy_kind() != "agent") return;
  {
    // Is there an IPv6 loopback here at all?
    int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    bool usable = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (fd >= 0) ::close(fd);
    if (!usable) {
      MESSAGE("SKIP: no IPv6 loopback here");
      return;
    }
  }
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.listen = "[::1]:0";
  start_pair(b, p, 8, o);
  Client c;
  REQUIRE_MESSAGE(c.connect(p.port(), 3000, 0, /*ipv6=*/true), c.error());
  auto r = round_trip(c, rig::get_request("/ok?v6"));
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  auto chained = round_trip(c, rig::get_request("/ok?v6-chained",
                                              "X-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7\r\n"));
  REQUIRE_MESSAGE(chained, chained.error);
  auto rec = b.record();
  REQUIRE(rec);
  const auto* q = rec->find("/ok?v6");
  REQUIRE(q);
  INFO("forwarded head: " << q->raw);
  CHECK(q->raw.find("\r\nX-Forwarded-For: ::1\r\n") != std::string::npos);
  CHECK(q->raw.find("\r\nForwarded: for=\"[::1]\"\r\n") != std::string::npos);
  const auto* q2 = rec->find("/ok?v6-chained");
  REQUIRE(q2);
  INFO("forwarded head: " << q2->raw);
  CHECK(q2->raw.find("\r\nX-Forwarded-For: 203.0.113.7, ::1\r\n") != std::string::npos);
  CHECK(q2->raw.find("\r\nForwarded: for=203.0.113.7, for=\"[::1]\"\r\n") != std::string::npos);
}
