// Request heads: what is accepted, what each rule rejects, and the Head the
// proxy builds on. Every message here is also parsed cut at every byte.
#include <doctest/doctest.h>

#include <string>

#include "helpers.h"

using namespace offload::http;
using namespace offload::http::testing;
using namespace std::string_literals;

namespace {

struct Case {
  const char* what;
  std::string msg;
  Error error;
};

void run_table(const Case* begin, const Case* end, const Options& o = {}) {
  for (const Case* c = begin; c != end; ++c) {
    INFO(std::string(c->what));
    const Outcome out = checked(kReq, c->msg, o);
    CHECK(out.error == c->error);
    if (c->error == Error::kNone) CHECK(out.head_result == Result::kComplete);
    else CHECK(out.head_result != Result::kIncomplete);
  }
}

std::string get(std::string_view fields) {
  return "GET / HTTP/1.1\r\nHost: example.com\r\n" + std::string(fields) + "\r\n";
}

}  // namespace

TEST_CASE("a simple GET: every Head member") {
  Parsed p(kReq, "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n");
  const Head& h = p.head();
  CHECK(h.method == Method::kGet);
  CHECK(p.text(h.method_text) == "GET");
  CHECK(p.text(h.target) == "/index.html?q=1");
  CHECK(h.version_minor == 1);
  CHECK(h.head_bytes == p.msg.size());
  CHECK(h.body == BodyKind::kNone);
  CHECK(h.keep_alive);
  CHECK_FALSE(h.upgrade);
  CHECK_FALSE(h.expect_continue);
  CHECK(p.text(h.host) == "example.com");
  REQUIRE(h.headers.size() == 2);
  CHECK(p.text(h.headers[1].name) == "User-Agent");
  CHECK(p.text(h.headers[1].value) == "t");
  CHECK(p.out.done);
  CHECK(p.out.error == Error::kNone);
}

TEST_CASE("an incomplete head asks for more") {
  for (std::string_view part : {"", "G", "GET / HTTP/1.1", "GET / HTTP/1.1\r", "GET / HTTP/1.1\r\nHost: a\r\n",
                                "GET / HTTP/1.1\r\nHost: a\r\n\r", "\r\n"}) {
    Parser p(kReq, {});
    CHECK(p.parse_head(part) == Result::kIncomplete);
    CHECK(p.error() == Error::kNone);
  }
}

TEST_CASE("leading empty lines are skipped and counted") {
  Parsed p(kReq, "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(p.head().head_bytes == p.msg.size());
  CHECK(p.head().method_text.off == 4);
  CHECK(p.text(p.head().target) == "/");
  SUBCASE("they count toward header_bytes_max") {
    Options o;
    o.limits.header_bytes_max = uint32_t(p.msg.size() - 1);
    CHECK(request_error(p.msg, o) == Error::kHeaderTooLarge);
    o.limits.header_bytes_max = uint32_t(p.msg.size());
    CHECK(request_error(p.msg, o) == Error::kNone);
  }
  SUBCASE("a leading lone LF is still a bare LF") {
    CHECK(request_error("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") == Error::kBareLF);
  }
}

TEST_CASE("methods: case-sensitive tokens mapped to the enum") {
  struct M {
    const char* text;
    Method method;
  };
  const M methods[] = {
      {"GET", Method::kGet},         {"HEAD", Method::kHead},     {"POST", Method::kPost},
      {"PUT", Method::kPut},         {"DELETE", Method::kDelete}, {"PATCH", Method::kPatch},
      {"TRACE", Method::kTrace},     {"PURGE", Method::kOther},   {"get", Method::kOther},
      {"M-SEARCH", Method::kOther},  {"GETS", Method::kOther},
  };
  for (const M& m : methods) {
    Parsed p(kReq, std::string(m.text) + " / HTTP/1.1\r\nHost: a\r\n\r\n");
    INFO(std::string(m.text));
    CHECK(p.head().method == m.method);
    CHECK(p.text(p.head().method_text) == m.text);
  }
  Parsed o(kReq, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(o.head().method == Method::kOptions);
  Parsed c(kReq, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
  CHECK(c.head().method == Method::kConnect);
}

TEST_CASE("request line rules") {
  const Case cases[] = {
      {"origin-form", "GET /a/b?c=d&e HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"absolute-form", "GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n", Error::kNone},
      {"absolute-form https", "GET https://e.com:8443 HTTP/1.1\r\nHost: e.com\r\n\r\n", Error::kNone},
      {"asterisk-form with OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"asterisk-form with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"authority-form with CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"CONNECT to an IPv6 literal", "CONNECT [::1]:443 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"authority-form with GET", "GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"CONNECT with origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"CONNECT without port", "CONNECT a.example HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"CONNECT with userinfo", "CONNECT u@a.example:1 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"CONNECT with a letter port", "CONNECT a:8x HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"CONNECT with a URL", "CONNECT http://a:1 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"absolute-form without authority", "GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"scheme starting with a digit", "GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"relative path", "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"two spaces before target", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"two spaces before version", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"trailing space", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"space inside target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"tab as separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"tab inside target", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"DEL inside target", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"obs-text inside target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"control inside target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"method with a separator", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"HTTP/0.9 style", "GET /\r\n\r\n", Error::kBadRequestLine},
      {"method only", "GET\r\n\r\n", Error::kBadRequestLine},
      {"HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", Error::kNone},
      {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion},
      {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion},
      {"HTTP/0.9 as version", "GET / HTTP/0.9\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion},
      {"HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion},
      {"lower-case http", "GET / http/1.1\r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"two-digit minor", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"no minor", "GET / HTTP/1\r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"letter major", "GET / HTTP/x.1\r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"empty version", "GET / \r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"very long junk version", "GET / HTTP/1.1.1.1.1\r\nHost: a\r\n\r\n", Error::kBadVersion},
      {"NUL in method", "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n"s, Error::kNul},
      {"NUL in target", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"s, Error::kNul},
      {"NUL in version", "GET / HTTP/1.1\0\r\nHost: a\r\n\r\n"s, Error::kNul},
      {"bare CR in method", "GE\rT / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBareCR},
      {"bare CR in target", "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBareCR},
      {"bare CR ends the line", "GET / HTTP/1.1\rHost: a\r\n\r\n", Error::kBareCR},
      {"bare LF ends the line", "GET / HTTP/1.1\nHost: a\r\n\r\n", Error::kBareLF},
  };
  run_table(std::begin(cases), std::end(cases));
}

TEST_CASE("target_bytes_max gives 414, as soon as the target passes it") {
  Options o;
  o.limits.target_bytes_max = 16;
  const std::string t16 = "/" + std::string(15, 'a');
  CHECK(request_error("GET " + t16 + " HTTP/1.1\r\nHost: a\r\n\r\n", o) == Error::kNone);
  CHECK(request_error("GET " + t16 + "b HTTP/1.1\r\nHost: a\r\n\r\n", o) == Error::kTargetTooLong);
  // Without waiting for the end of the target or of the line.
  Parser p(kReq, o.limits);
  CHECK(p.parse_head("GET " + t16) == Result::kIncomplete);
  CHECK(p.parse_head("GET " + t16 + "b") == Result::kError);
  CHECK(p.error() == Error::kTargetTooLong);
  CHECK(status_for(p.error()) == 414);
}

TEST_CASE("header_bytes_max gives 431, as soon as the head passes it") {
  const std::string msg = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + std::string(40, 'p') + "\r\n\r\n";
  Options o;
  o.limits.header_bytes_max = uint32_t(msg.size());
  CHECK(request_error(msg, o) == Error::kNone);
  o.limits.header_bytes_max = uint32_t(msg.size() - 1);
  CHECK(request_error(msg, o) == Error::kHeaderTooLarge);
  SUBCASE("no need to wait for the final CRLF") {
    Parser p(kReq, o.limits);
    const std::string partial = msg.substr(0, o.limits.header_bytes_max - 1);
    CHECK(p.parse_head(partial) == Result::kIncomplete);
    CHECK(p.parse_head(msg.substr(0, o.limits.header_bytes_max)) == Result::kError);
    CHECK(p.error() == Error::kHeaderTooLarge);
  }
  SUBCASE("body bytes after a head that fits are not counted") {
    o.limits.header_bytes_max = uint32_t(msg.size());
    Parser p(kReq, o.limits);
    CHECK(p.parse_head(msg + std::string(100, 'x')) == Result::kComplete);
  }
  SUBCASE("a target longer than the whole head limit is 431 first") {
    Options small;
    small.limits.header_bytes_max = 32;
    CHECK(request_error("GET /" + std::string(100, 'a') + " HTTP/1.1\r\n\r\n", small) ==
          Error::kHeaderTooLarge);
  }
}

TEST_CASE("header_count_max gives 431") {
  Options o;
  o.limits.header_count_max = 3;
  CHECK(request_error(get("A: 1\r\nB: 2\r\n"), o) == Error::kNone);
  CHECK(request_error(get("A: 1\r\nB: 2\r\nC: 3\r\n"), o) == Error::kTooManyHeaders);
  CHECK(status_for(Error::kTooManyHeaders) == 431);
}

TEST_CASE("field syntax") {
  const Case cases[] = {
      {"plain", get("X-A: b\r\n"), Error::kNone},
      {"no space after colon", get("X-A:b\r\n"), Error::kNone},
      {"empty value", get("X-A:\r\n"), Error::kNone},
      {"all tchar in the name", get("!#$%&'*+-.^_`|~09azAZ: v\r\n"), Error::kNone},
      {"obs-text in the value", get("X-A: caf\xc3\xa9\r\n"), Error::kNone},
      {"HTAB inside the value", get("X-A: a\tb\r\n"), Error::kNone},
      {"quotes and commas", get("X-A: \"a, b\"; c=d\r\n"), Error::kNone},
      {"space before colon", get("X-A : b\r\n"), Error::kBadHeaderName},
      {"tab before colon", get("X-A\t: b\r\n"), Error::kBadHeaderName},
      {"space inside the name", get("X A: b\r\n"), Error::kBadHeaderName},
      {"separator in the name", get("X(A): b\r\n"), Error::kBadHeaderName},
      {"slash in the name", get("X/A: b\r\n"), Error::kBadHeaderName},
      {"empty name", get(": b\r\n"), Error::kBadHeaderName},
      {"no colon", get("X-A b\r\n"), Error::kBadHeaderName},
      {"no colon at all", get("X-A\r\n"), Error::kBadHeaderName},
      {"obs-text in the name", get("X\xc3\xa9: b\r\n"), Error::kBadHeaderName},
      {"obs-fold with SP", get("X-A: b\r\n c\r\n"), Error::kObsFold},
      {"obs-fold with HTAB", get("X-A: b\r\n\tc\r\n"), Error::kObsFold},
      {"whitespace before the first field", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", Error::kObsFold},
      {"control in the value", get("X-A: a\x01z\r\n"), Error::kBadHeaderValue},
      {"ESC in the value", get("X-A: a\x1bz\r\n"), Error::kBadHeaderValue},
      {"DEL in the value", get("X-A: a\x7fz\r\n"), Error::kBadHeaderValue},
      {"DEL after many plain bytes", get("X-A: " + std::string(37, 'v') + "\x7f\r\n"),
       Error::kBadHeaderValue},
      {"NUL in the value", get("X-A: a\0z\r\n"s), Error::kNul},
      {"NUL in the name", get("X\0A: z\r\n"s), Error::kNul},
      {"NUL at a line start", get("\0X: z\r\n"s), Error::kNul},
      {"bare CR in the value", get("X-A: a\rz\r\n"), Error::kBareCR},
      {"bare CR in the name", get("X\rA: z\r\n"), Error::kBareCR},
      {"bare CR at the end of the head", "GET / HTTP/1.1\r\nHost: a\r\n\rX", Error::kBareCR},
      {"CR CR LF", get("X-A: a\r\r\n"), Error::kBareCR},
      {"bare LF after a value", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", Error::kBareLF},
      {"bare LF ends the head", "GET / HTTP/1.1\r\nHost: a\r\n\n", Error::kBareLF},
      {"bare LF inside a long value", get("X-A: " + std::string(20, 'v') + "\n" + "\r\n"), Error::kBareLF},
  };
  run_table(std::begin(cases), std::end(cases));
}

TEST_CASE("field values: OWS trimmed, spans relative to the message") {
  Parsed p(kReq, get("X-A:  \t a b \t \r\nX-Empty:\r\nX-Blank:   \r\nX-Tab:\tv\r\n"));
  CHECK(p.value("X-A") == "a b");
  CHECK(p.value("X-Empty") == "");
  CHECK(p.value("X-Blank") == "");
  CHECK(p.value("X-Tab") == "v");
  CHECK(p.text(p.field("X-A")->name) == "X-A");
}

TEST_CASE("Host: exactly one in HTTP/1.1, with URI host characters") {
  CHECK(request_error("GET / HTTP/1.1\r\n\r\n") == Error::kMissingHost);
  CHECK(request_error("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n") == Error::kMissingHost);
  CHECK(request_error("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == Error::kMissingHost);
  CHECK(request_error("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n") == Error::kMissingHost);
  CHECK(request_error("GET / HTTP/1.0\r\n\r\n") == Error::kNone);
  CHECK(request_error("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") == Error::kMissingHost);
  CHECK(request_error("GET / HTTP/1.1\r\nHost:\r\n\r\n") == Error::kNone);  // empty is allowed
  CHECK(request_error("GET / HTTP/1.1\r\nHOST: [::1]:8080\r\n\r\n") == Error::kNone);
  CHECK(request_error("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == Error::kBadHeaderValue);
  CHECK(request_error("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == Error::kBadHeaderValue);
  CHECK(request_error("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n") == Error::kBadHeaderValue);
  Parsed p(kReq, "GET / HTTP/1.1\r\nhOsT: Example.COM:80\r\n\r\n");
  CHECK(p.text(p.head().host) == "Example.COM:80");
}

// The authority of an absolute-form target becomes the forwarded Host, so
// it is held to the Host field's rule: what a Host field may not carry, a
// target may not either (RFC 9110 4.2.4, 7.2; RFC 3986 3.2).
TEST_CASE("absolute-form authority: validated like Host, no userinfo") {
  const Case cases[] = {
      {"userinfo and quote", "GET http://a@b\"<x>/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"userinfo", "GET http://user@host/ HTTP/1.1\r\nHost: host\r\n\r\n", Error::kBadRequestLine},
      {"userinfo with password", "GET http://u:p@host/ HTTP/1.1\r\nHost: host\r\n\r\n",
       Error::kBadRequestLine},
      {"empty userinfo", "GET https://@host/ HTTP/1.1\r\nHost: host\r\n\r\n", Error::kBadRequestLine},
      {"quote in host", "GET http://a\"b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"angle bracket in host", "GET http://a<b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"backslash in host", "GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"fragment mark in host", "GET http://a#b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"empty host", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"empty host before a query", "GET http://?x HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"empty host with a port", "GET http://:80/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"letter in port", "GET http://a:8o/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"two colons", "GET http://a:1:2/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"bad percent-encoding", "GET http://a%zz/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"cut percent-encoding", "GET http://a%4/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"unclosed IP literal", "GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"empty IP literal", "GET http://[]/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"junk after IP literal", "GET http://[::1]x/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"bracket inside a name", "GET http://a[b]/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadRequestLine},
      {"name and port", "GET http://a.example:8080/p HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"empty port", "GET http://a.example:/p HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"IPv6 literal and port", "GET http://[::1]:8080/p HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"IPv4 and port", "GET http://192.0.2.1:80 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"percent-encoded name", "GET http://a%41b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"sub-delims in a name", "GET http://a!$&'()*+,;=b/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"query right after the host", "GET http://a?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
      {"an @ in the path is not userinfo", "GET http://a/u@b HTTP/1.1\r\nHost: a\r\n\r\n", Error::kNone},
  };
  run_table(std::begin(cases), std::end(cases));
}

TEST_CASE("absolute-form: the parser hands out the target's authority") {
  Parsed p(kReq, "GET http://App.test:8080/p?q HTTP/1.1\r\nHost: other.test\r\n\r\n");
  CHECK(p.text(p.head().authority) == "App.test:8080");
  CHECK(p.text(p.head().host) == "other.test");  // the field as sent; the rewriter replaces it
  Parsed q(kReq, "GET http://[::1]?x HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(q.text(q.head().authority) == "[::1]");
  Parsed o(kReq, "GET /http://a/ HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(o.head().authority.len == 0);  // origin-form has none
  Parsed c(kReq, "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
  CHECK(c.head().authority.len == 0);  // authority-form: the target itself
}

TEST_CASE("Host values follow uri-host [\":\" port]") {
  for (const char* ok : {"a", "a:", "a:80", "[::1]", "[::1]:80", "192.0.2.1:8000", "a%20b", "x-y.z_~"}) {
    CAPTURE(ok);
    CHECK(request_error("GET / HTTP/1.1\r\nHost: " + std::string(ok) + "\r\n\r\n") == Error::kNone);
  }
  for (const char* bad : {":80", "a:b", "a:1:2", "[::1", "[::1]x", "[]", "a%zz", "a%4", "a]b", "u@a", "a\"b"}) {
    CAPTURE(bad);
    CHECK(request_error("GET / HTTP/1.1\r\nHost: " + std::string(bad) + "\r\n\r\n") ==
          Error::kBadHeaderValue);
  }
}

TEST_CASE("Content-Length") {
  const Case cases[] = {
      {"plain", get("Content-Length: 5\r\n") + "hello", Error::kNone},
      {"zero", get("Content-Length: 0\r\n"), Error::kNone},
      {"leading zeros", get("Content-Length: 005\r\n") + "hello", Error::kNone},
      {"same duplicate", get("Content-Length: 5\r\nContent-Length: 5\r\n") + "hello", Error::kNone},
      {"same list", get("Content-Length: 5, 5,5\r\n") + "hello", Error::kNone},
      {"differing duplicate", get("Content-Length: 5\r\nContent-Length: 6\r\n"), Error::kBadContentLength},
      {"differing list", get("Content-Length: 1, 2\r\n"), Error::kBadContentLength},
      {"differing list after a field", get("Content-Length: 1\r\nContent-Length: 1, 2\r\n"),
       Error::kBadContentLength},
      {"plus sign", get("Content-Length: +5\r\n"), Error::kBadContentLength},
      {"minus sign", get("Content-Length: -5\r\n"), Error::kBadContentLength},
      {"hex", get("Content-Length: 0x10\r\n"), Error::kBadContentLength},
      {"decimal point", get("Content-Length: 5.0\r\n"), Error::kBadContentLength},
      {"two numbers", get("Content-Length: 5 5\r\n"), Error::kBadContentLength},
      {"empty", get("Content-Length:\r\n"), Error::kBadContentLength},
      {"empty element", get("Content-Length: 5,\r\n"), Error::kBadContentLength},
      {"letters", get("Content-Length: five\r\n"), Error::kBadContentLength},
      {"overflow", get("Content-Length: 18446744073709551616\r\n"), Error::kBadContentLength},
      {"huge overflow", get("Content-Length: 99999999999999999999999\r\n"), Error::kBadContentLength},
      {"largest uint64, over the body limit", get("Content-Length: 18446744073709551615\r\n"),
       Error::kBodyTooLarge},
      {"space before colon", get("Content-Length : 5\r\n"), Error::kBadHeaderName},
  };
  run_table(std::begin(cases), std::end(cases));
  Parsed p(kReq, get("content-LENGTH: 5\r\n") + "hello");
  CHECK(p.head().body == BodyKind::kLength);
  CHECK(p.head().content_length == 5);
  CHECK(p.out.body == "hello");
  CHECK_FALSE(p.hop("content-LENGTH"));
  Parsed z(kReq, get("Content-Length: 0\r\n"));
  CHECK(z.head().body == BodyKind::kLength);  // kept: a POST forwards its zero length
  CHECK(z.head().content_length == 0);
  CHECK(z.out.done);
}

TEST_CASE("Transfer-Encoding in requests (and the smuggling classics)") {
  const Case cases[] = {
      {"chunked", get("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n", Error::kNone},
      {"mixed case", get("transfer-ENCODING: ChUnKeD\r\n") + "0\r\n\r\n", Error::kNone},
      {"OWS around", get("Transfer-Encoding:\t chunked \t\r\n") + "0\r\n\r\n", Error::kNone},
      {"CL then TE", get("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), Error::kLengthAndChunked},
      {"TE then CL", get("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), Error::kLengthAndChunked},
      {"TE then CL 0", get("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"), Error::kLengthAndChunked},
      {"xchunked", get("Transfer-Encoding: xchunked\r\n"), Error::kBadTransferEncoding},
      {"chunkedx", get("Transfer-Encoding: chunkedx\r\n"), Error::kBadTransferEncoding},
      {"chunked, identity", get("Transfer-Encoding: chunked, identity\r\n"), Error::kBadTransferEncoding},
      {"identity alone", get("Transfer-Encoding: identity\r\n"), Error::kBadTransferEncoding},
      {"gzip alone", get("Transfer-Encoding: gzip\r\n"), Error::kBadTransferEncoding},
      {"chunked, gzip", get("Transfer-Encoding: chunked, gzip\r\n"), Error::kBadTransferEncoding},
      {"gzip, chunked", get("Transfer-Encoding: gzip, chunked\r\n"), Error::kUnsupportedTransferEncoding},
      {"gzip then chunked in two fields", get("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
       Error::kUnsupportedTransferEncoding},
      {"chunked then gzip in two fields", get("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
       Error::kBadTransferEncoding},
      {"chunked, chunked", get("Transfer-Encoding: chunked, chunked\r\n"), Error::kBadTransferEncoding},
      {"chunked twice in two fields", get("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
       Error::kBadTransferEncoding},
      {"chunked with a parameter", get("Transfer-Encoding: chunked;q=1\r\n"), Error::kBadTransferEncoding},
      {"quoted chunked", get("Transfer-Encoding: \"chunked\"\r\n"), Error::kBadTransferEncoding},
      {"empty element first", get("Transfer-Encoding: ,chunked\r\n"), Error::kBadTransferEncoding},
      {"empty element last", get("Transfer-Encoding: chunked,\r\n"), Error::kBadTransferEncoding},
      {"empty value", get("Transfer-Encoding:\r\n"), Error::kBadTransferEncoding},
      {"space inside the coding", get("Transfer-Encoding: chun ked\r\n"), Error::kBadTransferEncoding},
      {"vertical tab", get("Transfer-Encoding: \x0b" "chunked\r\n"), Error::kBadHeaderValue},
      {"space before colon", get("Transfer-Encoding : chunked\r\n"), Error::kBadHeaderName},
      {"a fold hiding a second coding", get("Transfer-Encoding: chunked\r\n , identity\r\n"), Error::kObsFold},
      {"HTTP/1.0 with TE", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       Error::kBadTransferEncoding},
  };
  run_table(std::begin(cases), std::end(cases));
  CHECK(status_for(Error::kUnsupportedTransferEncoding) == 501);
  CHECK(status_for(Error::kBadTransferEncoding) == 400);
  CHECK(status_for(Error::kLengthAndChunked) == 400);
}

TEST_CASE("keep-alive follows the version and the Connection tokens") {
  struct K {
    std::string msg;
    bool keep_alive;
  };
  const K cases[] = {
      {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
  };
  for (const K& k : cases) {
    INFO(k.msg);
    Parsed p(kReq, k.msg);
    CHECK(p.out.error == Error::kNone);
    CHECK(p.head().keep_alive == k.keep_alive);
  }
}

TEST_CASE("Connection tokens are validated and bounded") {
  CHECK(request_error(get("Connection: close, ,\r\n")) == Error::kNone);
  CHECK(request_error(get("Connection: a b\r\n")) == Error::kBadHeaderValue);
  CHECK(request_error(get("Connection: \"close\"\r\n")) == Error::kBadHeaderValue);
  std::string options;
  for (int i = 0; i < 32; ++i) options += "x" + std::to_string(i) + ",";
  CHECK(request_error(get("Connection: " + options + "close\r\n")) == Error::kNone);
  CHECK(request_error(get("Connection: " + options + "x32\r\n")) == Error::kBadHeaderValue);
}

TEST_CASE("hop-by-hop fields are marked, including those Connection names") {
  Parsed p(kReq,
           "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Named\r\nKeep-Alive: 5\r\n"
           "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
           "Proxy-Authorization: Basic x\r\nx-named: 1\r\nX-Other: 2\r\nConnection: x-later\r\n"
           "X-LATER: 3\r\nX-Named-Not: 4\r\n\r\n");
  REQUIRE(p.out.error == Error::kNone);
  for (const char* hop : {"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
                          "Proxy-Authorization", "x-named", "X-LATER"}) {
    INFO(std::string(hop));
    CHECK(p.hop(hop));
  }
  for (const char* e2e : {"Host", "X-Other", "X-Named-Not"}) {
    INFO(std::string(e2e));
    CHECK_FALSE(p.hop(e2e));
  }
  Parsed te(kReq, get("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n");
  CHECK(te.hop("Transfer-Encoding"));
  CHECK_FALSE(te.hop("Host"));
}

TEST_CASE("upgrade needs both Connection: upgrade and an Upgrade field") {
  CHECK(Parsed(kReq, get("Connection: Upgrade\r\nUpgrade: websocket\r\n")).head().upgrade);
  CHECK(Parsed(kReq, get("Upgrade: websocket\r\nConnection: keep-alive, upgrade\r\n")).head().upgrade);
  CHECK_FALSE(Parsed(kReq, get("Upgrade: websocket\r\n")).head().upgrade);
  CHECK_FALSE(Parsed(kReq, get("Connection: upgrade\r\n")).head().upgrade);
}

TEST_CASE("Expect: 100-continue") {
  CHECK(Parsed(kReq, get("Expect: 100-continue\r\nContent-Length: 1\r\n") + "x").head().expect_continue);
  CHECK(Parsed(kReq, get("expect: 100-CONTINUE\r\nContent-Length: 1\r\n") + "x").head().expect_continue);
  CHECK_FALSE(Parsed(kReq, get("Expect: 100-continued\r\n")).head().expect_continue);
  CHECK_FALSE(Parsed(kReq, get("X-Expect: 100-continue\r\n")).head().expect_continue);
  // RFC 9110 10.1.1: an HTTP/1.0 request's expectation is ignored.
  CHECK_FALSE(Parsed(kReq, "POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").head().expect_continue);
}

TEST_CASE("body kinds of requests") {
  CHECK(Parsed(kReq, get("")).head().body == BodyKind::kNone);
  CHECK(Parsed(kReq, "POST / HTTP/1.1\r\nHost: a\r\n\r\n").head().body == BodyKind::kNone);
  CHECK(Parsed(kReq, get("Content-Length: 2\r\n") + "ab").head().body == BodyKind::kLength);
  CHECK(Parsed(kReq, get("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n").head().body == BodyKind::kChunked);
}

TEST_CASE("pipelined requests: each message ends where it should") {
  const std::string one = "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
  const std::string two = "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
  const std::string three = "POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n";
  const std::string all = one + two + three + "\r\nGET /4";
  Parser p(kReq, {});
  std::string_view rest = all;
  std::vector<std::string> targets, bodies;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(p.parse_head(rest) == Result::kComplete);
    targets.emplace_back(p.head().target.in(rest));
    std::string body;
    BodyProgress bp = p.parse_body(rest.substr(p.head().head_bytes), append_sink, &body);
    REQUIRE(bp.done);
    REQUIRE(bp.error == Error::kNone);
    bodies.push_back(body);
    rest.remove_prefix(p.head().head_bytes + bp.consumed);
    p.reset();
  }
  CHECK(targets == std::vector<std::string>{"/1", "/2", "/3"});
  CHECK(bodies == std::vector<std::string>{"abc", "", "xyz"});
  CHECK(rest == "\r\nGET /4");
  CHECK(p.parse_head(rest) == Result::kIncomplete);  // the empty line is skipped, the rest waits
  // And the same streams cut anywhere end at the same place.
  CHECK(checked(kReq, one + two).used == one.size());
  CHECK(checked(kReq, three + one).used == three.size());
}

TEST_CASE("no allocation after construction") {
  Limits l;
  l.header_count_max = 8;
  Parser p(kReq, l);
  const HeaderField* slots = p.head().headers.data();
  const size_t capacity = p.head().headers.capacity();
  CHECK(capacity >= 8);
  std::string msg = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 7; ++i) msg += "X-" + std::to_string(i) + ": v\r\n";
  msg += "\r\n";
  for (int round = 0; round < 3; ++round) {
    REQUIRE(p.parse_head(msg) == Result::kComplete);
    CHECK(p.head().headers.size() == 8);
    CHECK(p.head().headers.data() == slots);
    p.reset();
    CHECK(p.head().headers.capacity() == capacity);
  }
}

TEST_CASE("parse_head after the end repeats its verdict") {
  Parser p(kReq, {});
  CHECK(p.parse_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == Result::kComplete);
  CHECK(p.parse_head("GET / HTTP/1.1\r\nHost: a\r\n\r\nmore") == Result::kComplete);
  Parser q(kReq, {});
  CHECK(q.parse_head("GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n") == Result::kError);
  CHECK(q.parse_head("GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n") == Result::kError);
  CHECK(q.error() == Error::kBadHeaderName);
  q.reset();
  CHECK(q.error() == Error::kNone);
  CHECK(q.parse_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == Result::kComplete);
}
