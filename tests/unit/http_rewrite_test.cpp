#include <doctest/doctest.h>

#include <string>

#include "http/http_parser.h"
#include "http/http_rewrite.h"

namespace http = offload::http;

namespace {
std::string forward(const std::string& request, uint64_t body_bytes, bool has_body) {
  http::Parser p(http::Parser::Kind::kRequest, http::Limits{});
  REQUIRE(p.parse_head(request) == http::Result::kComplete);
  offload::ForwardInfo info;
  info.client_ip = "192.0.2.7";
  info.default_host = "127.0.0.1:8000";
  char out[4096];
  size_t n = offload::write_upstream_request_head(p.head(), request, info, out, sizeof out);
  REQUIRE(n > 0);
  n = offload::finish_upstream_request_head(out, n, sizeof out, has_body, body_bytes);
  REQUIRE(n > 0);
  return std::string(out, n);
}

std::string respond(const std::string& response, bool close, bool http10) {
  http::Parser p(http::Parser::Kind::kResponse, http::Limits{});
  REQUIRE(p.parse_head(response) == http::Result::kComplete);
  char out[4096];
  size_t n = offload::write_client_response_head(p.head(), response, close, http10, http10 && p.head().body == http::BodyKind::kChunked, out, sizeof out);
  REQUIRE(n > 0);
  return std::string(out, n);
}
}  // namespace

TEST_CASE("forwarded request: hop-by-hop fields go, X-Forwarded-For and Forwarded are appended") {
  std::string out = forward(
      "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Secret\r\n"
      "X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 198.51.100.1\r\n"
      "Accept: */*\r\n\r\n",
      0, false);
  CHECK(out.rfind("GET /a?b=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(out.find("Host: example.test\r\n") != std::string::npos);
  CHECK(out.find("Accept: */*\r\n") != std::string::npos);
  CHECK(out.find("Connection") == std::string::npos);
  CHECK(out.find("X-Secret") == std::string::npos);
  CHECK(out.find("Keep-Alive") == std::string::npos);
  CHECK(out.find("TE:") == std::string::npos);
  CHECK(out.find("X-Forwarded-For: 198.51.100.1, 192.0.2.7\r\n") != std::string::npos);
  CHECK(out.find("Forwarded: for=192.0.2.7\r\n") != std::string::npos);
  CHECK(out.find("Via: 1.1 offload\r\n") != std::string::npos);
  CHECK(out.find("Content-Length") == std::string::npos);
  CHECK(out.substr(out.size() - 4) == "\r\n\r\n");
}

TEST_CASE("forwarded request: a chunked body is announced by its decoded length") {
  std::string out = forward(
      "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n", 11, true);
  CHECK(out.find("Transfer-Encoding") == std::string::npos);
  CHECK(out.find("Expect") == std::string::npos);
  CHECK(out.find("Content-Length: 11\r\n\r\n") != std::string::npos);
}

TEST_CASE("forwarded request: HTTP/1.0 without Host gets the upstream's") {
  std::string out = forward("GET / HTTP/1.0\r\n\r\n", 0, false);
  CHECK(out.rfind("GET / HTTP/1.1\r\n", 0) == 0);
  CHECK(out.find("Host: 127.0.0.1:8000\r\n") != std::string::npos);
  CHECK(out.find("Via: 1.0 offload\r\n") != std::string::npos);  // the version received
}

TEST_CASE("client response head: keeps end-to-end fields and chunking, sets Connection") {
  std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
                     "Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string out = respond(resp, false, false);
  CHECK(out == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.1 offload\r\nTransfer-Encoding: chunked\r\n\r\n");
  CHECK(respond(resp, true, false).find("Connection: close\r\n") != std::string::npos);
  CHECK(respond(resp, true, true).find("Transfer-Encoding") == std::string::npos);  // decoded for 1.0
  std::string resp10 = "HTTP/1.1 204 No Content\r\n\r\n";
  CHECK(respond(resp10, false, true).find("Connection: keep-alive\r\n") != std::string::npos);
}

TEST_CASE("error responses are complete HTTP messages") {
  for (int status : {400, 401, 403, 405, 408, 413, 414, 429, 431, 501, 502, 503, 504, 505}) {
    std::string r(offload::error_response(status, true));
    http::Parser p(http::Parser::Kind::kResponse, http::Limits{});
    REQUIRE(p.parse_head(r) == http::Result::kComplete);
    CHECK(p.head().status == status);
    CHECK_FALSE(p.head().keep_alive);
    std::string body = r.substr(p.head().head_bytes);
    CHECK(body.size() == p.head().content_length);
    CHECK(body.find(std::to_string(status)) == 0);
  }
  std::string keep(offload::error_response(502, false));
  CHECK(keep.find("Connection") == std::string::npos);
  CHECK(std::string(offload::error_response(999, false)).rfind("HTTP/1.1 500 ", 0) == 0);
}

TEST_CASE("error responses with fields of their own: Retry-After, Allow") {
  std::string r = offload::error_response_with(429, "Retry-After: 3\r\n", true);
  http::Parser p(http::Parser::Kind::kResponse, http::Limits{});
  REQUIRE(p.parse_head(r) == http::Result::kComplete);
  CHECK(p.head().status == 429);
  CHECK_FALSE(p.head().keep_alive);
  CHECK(r.find("\r\nRetry-After: 3\r\n") != std::string::npos);
  CHECK(r.substr(p.head().head_bytes) == "429 Too Many Requests\n");
  CHECK(r.substr(p.head().head_bytes).size() == p.head().content_length);
}

TEST_CASE("forwarded request: an absolute-form target goes upstream in origin form with its Host") {
  std::string out = forward("GET http://app.test:8080/p/q?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n", 0, false);
  CHECK(out.rfind("GET /p/q?x=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(out.find("Host: app.test:8080\r\n") != std::string::npos);
  CHECK(out.find("other.test") == std::string::npos);
  out = forward("GET http://app.test HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, false);
  CHECK(out.rfind("GET / HTTP/1.1\r\n", 0) == 0);
  out = forward("GET http://app.test?a=b HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, false);
  CHECK(out.rfind("GET /?a=b HTTP/1.1\r\n", 0) == 0);
}

TEST_CASE("forwarded request: Connection cannot strip Host") {
  std::string out = forward("GET / HTTP/1.1\r\nHost: keep.test\r\nConnection: host\r\n\r\n", 0, false);
  CHECK(out.find("Host: keep.test\r\n") != std::string::npos);
  CHECK(out.find("Host: 127.0.0.1") == std::string::npos);
}

// ------------------------------------------------ framing the agent owns

namespace {

struct Framed {
  std::string head;   // what the client gets
  bool body_done = false;
  bool keep_alive = false;
  std::string body;   // decoded by a client-side parser
};

void append_to(void* ctx, const char* d, size_t n) { static_cast<std::string*>(ctx)->append(d, n); }

// Writes the client head for `response` (head and raw body) the way the
// agent sends it, then parses head + body as the client would and reports
// where that client finds the body's end.
Framed as_client_sees(const std::string& response, bool close, bool http10,
                      http::Method method = http::Method::kGet) {
  http::Parser up(http::Parser::Kind::kResponse, http::Limits{});
  up.set_request_method(method);
  REQUIRE(up.parse_head(response) == http::Result::kComplete);
  const bool dechunk = http10 && up.head().body == http::BodyKind::kChunked;
  char out[4096];
  size_t n = offload::write_client_response_head(up.head(), response, close, http10, dechunk, out, sizeof out);
  REQUIRE(n > 0);
  std::string raw_body = response.substr(up.head().head_bytes);
  std::string sent_body = raw_body;
  if (dechunk) {
    sent_body.clear();
    http::BodyProgress bp = up.parse_body(raw_body, append_to, &sent_body);
    REQUIRE(bp.done);
  }
  Framed f;
  f.head.assign(out, n);
  http::Parser client(http::Parser::Kind::kResponse, http::Limits{});
  client.set_request_method(method);
  const std::string wire = f.head + sent_body;
  REQUIRE(client.parse_head(wire) == http::Result::kComplete);
  REQUIRE(client.head().head_bytes == n);
  http::BodyProgress bp = client.parse_body(std::string_view(wire).substr(n), append_to, &f.body);
  REQUIRE(bp.error == http::Error::kNone);
  f.body_done = bp.done || client.finish_at_eof();  // a close-delimited body ends at the close
  f.keep_alive = client.head().keep_alive && bp.done;
  return f;
}

size_t count(const std::string& s, std::string_view what) {
  size_t k = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++k;
  return k;
}

}  // namespace

TEST_CASE("client response head: Connection naming Content-Length cannot strip the framing") {
  Framed f = as_client_sees("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
                            false, false);
  CHECK(f.head.find("Content-Length: 5\r\n") != std::string::npos);
  CHECK(f.keep_alive);  // a keep-alive client knows where the body ends
  CHECK(f.body == "hello");
}

TEST_CASE("client response head: whatever Connection lists, the head frames the body the agent sends") {
  const std::string bodies[][2] = {
      {"Content-Length: 5\r\n", "hello"},
      {"Content-Length: 5, 5\r\n", "hello"},
      {"Content-Length: 5\r\nContent-Length: 5\r\n", "hello"},
      {"Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"},
      {"", "hello"},  // until close
  };
  const char* options[] = {"content-length", "transfer-encoding", "Content-Length, Transfer-Encoding",
                           "connection, via, keep-alive", "close", "keep-alive, content-length"};
  for (const auto& b : bodies) {
    for (const char* option : options) {
      for (int mode = 0; mode < 3; ++mode) {
        const bool close = mode == 1, http10 = mode == 2;
        const std::string response =
            "HTTP/1.1 200 OK\r\nConnection: " + std::string(option) + "\r\n" + b[0] + "\r\n" + b[1];
        CAPTURE(response);
        CAPTURE(mode);
        Framed f = as_client_sees(response, close, http10);
        CHECK(f.body_done);
        CHECK(f.body == "hello");
        // At most one framing statement, never both (RFC 9112 6.1).
        const size_t lengths = count(f.head, "Content-Length:"), chunked = count(f.head, "Transfer-Encoding:");
        CHECK(lengths + chunked <= 1);
        // Without a length or chunks the close ends the body, and the head says so.
        if (lengths + chunked == 0) CHECK(f.head.find("Connection: close\r\n") != std::string::npos);
        CHECK(count(f.head, "Via:") == 1);  // Connection: via names the upstream's, not ours
      }
    }
  }
}

TEST_CASE("client response head: a length with no body follows is metadata, kept as it came") {
  Framed head_resp = as_client_sees("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", false, false,
                                    http::Method::kHead);
  CHECK(head_resp.head.find("Content-Length: 42\r\n") != std::string::npos);
  CHECK(head_resp.keep_alive);
  Framed not_modified = as_client_sees("HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n", false, false);
  CHECK(not_modified.head.find("Content-Length: 42\r\n") != std::string::npos);
  Framed no_content = as_client_sees("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false, false);
  CHECK(no_content.head.find("Content-Length") == std::string::npos);  // never in a 204 (RFC 9110 8.6)
  Framed plain_head = as_client_sees("HTTP/1.1 200 OK\r\n\r\n", false, false, http::Method::kHead);
  CHECK(plain_head.head.find("Content-Length") == std::string::npos);
  CHECK(plain_head.keep_alive);
}

TEST_CASE("forwarded request: Connection naming Content-Length, Host and Transfer-Encoding keeps the framing and Host") {
  std::string chunked = forward(
      "POST /up HTTP/1.1\r\nHost: keep.test\r\nConnection: content-length, host, transfer-encoding\r\n"
      "Transfer-Encoding: chunked\r\n\r\n",
      5, true);
  CHECK(chunked.find("Host: keep.test\r\n") != std::string::npos);
  CHECK(chunked.find("Content-Length: 5\r\n\r\n") != std::string::npos);
  CHECK(chunked.find("Transfer-Encoding") == std::string::npos);
  std::string length = forward(
      "POST /up HTTP/1.1\r\nConnection: Content-Length, Host, X-Forwarded-For, Via, Forwarded\r\nHost: keep.test\r\n"
      "Content-Length: 5\r\n\r\n",
      5, true);
  CHECK(length.find("Host: keep.test\r\n") != std::string::npos);
  CHECK(count(length, "Content-Length:") == 1);
  CHECK(length.find("Content-Length: 5\r\n\r\n") != std::string::npos);
  // The fields the agent writes itself are still written, once.
  CHECK(count(length, "X-Forwarded-For:") == 1);
  CHECK(count(length, "\r\nForwarded:") == 1);
  CHECK(count(length, "Via:") == 1);
  // The head the agent forwards parses to the same framing upstream.
  http::Parser up(http::Parser::Kind::kRequest, http::Limits{});
  REQUIRE(up.parse_head(length) == http::Result::kComplete);
  CHECK(up.head().body == http::BodyKind::kLength);
  CHECK(up.head().content_length == 5);
  CHECK(up.head().host.in(length) == "keep.test");
}

TEST_CASE("forwarded request: an absolute-form authority replaces a differing Host") {
  std::string out = forward("GET http://[::1]:8080?x HTTP/1.1\r\nHost: other.test\r\n\r\n", 0, false);
  CHECK(out.rfind("GET /?x HTTP/1.1\r\n", 0) == 0);
  CHECK(out.find("Host: [::1]:8080\r\n") != std::string::npos);
  CHECK(count(out, "Host:") == 1);
  out = forward("OPTIONS http://app.test HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, false);
  CHECK(out.rfind("OPTIONS * HTTP/1.1\r\n", 0) == 0);  // RFC 9112 3.2.4
  // A target authority the parser refuses never reaches the rewriter.
  http::Parser p(http::Parser::Kind::kRequest, http::Limits{});
  CHECK(p.parse_head("GET http://a@b\"<x>/ HTTP/1.1\r\nHost: a\r\n\r\n") == http::Result::kError);
}
