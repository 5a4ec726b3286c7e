#include <doctest/doctest.h>

#include <string>

#include "http_parser.h"
#include "http_rewrite.h"

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
  CHECK(out == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nVia: 1.1 offload\r\n\r\n");
  CHECK(respond(resp, true, false).find("Connection: close\r\n") != std::string::npos);
  CHECK(respond(resp, true, true).find("Transfer-Encoding") == std::string::npos);  // decoded for 1.0
  std::string resp10 = "HTTP/1.1 204 No Content\r\n\r\n";
  CHECK(respond(resp10, false, true).find("Connection: keep-alive\r\n") != std::string::npos);
}

TEST_CASE("error responses are complete HTTP messages") {
  for (int status : {400, 408, 413, 414, 431, 501, 502, 503, 504, 505}) {
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
