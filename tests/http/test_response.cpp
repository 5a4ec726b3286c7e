// Responses from upstream: status lines, which responses have no body, the
// three framings, until-close bodies and end of file.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "helpers.h"

using namespace offload::http;
using namespace offload::http::testing;

TEST_CASE("a simple response: every Head member") {
  Parsed p(kResp, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello");
  const Head& h = p.head();
  CHECK(h.status == 200);
  CHECK(p.text(h.reason) == "OK");
  CHECK(h.version_minor == 1);
  CHECK(h.body == BodyKind::kLength);
  CHECK(h.content_length == 5);
  CHECK(h.keep_alive);
  CHECK(h.head_bytes == p.msg.size() - 5);
  CHECK(h.headers.size() == 2);
  CHECK(p.out.body == "hello");
  CHECK(p.out.done);
}

TEST_CASE("status line rules") {
  struct S {
    const char* what;
    const char* msg;
    Error error;
  };
  const S cases[] = {
      {"reason with spaces", "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"reason with obs-text and tab", "HTTP/1.1 200 \xc3\x89t\tat\r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"empty reason after SP", "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"no SP before an empty reason (lenient)", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"lowest status", "HTTP/1.1 100 Continue\r\n\r\n", Error::kNone},
      {"highest status", "HTTP/1.1 599 x\r\nContent-Length: 0\r\n\r\n", Error::kNone},
      {"status below 100", "HTTP/1.1 099 x\r\n\r\n", Error::kBadStatusLine},
      {"status above 599", "HTTP/1.1 600 x\r\n\r\n", Error::kBadStatusLine},
      {"two digits", "HTTP/1.1 20 OK\r\n\r\n", Error::kBadStatusLine},
      {"four digits", "HTTP/1.1 2000 OK\r\n\r\n", Error::kBadStatusLine},
      {"letter in status", "HTTP/1.1 2x0 OK\r\n\r\n", Error::kBadStatusLine},
      {"status ends the line early", "HTTP/1.1 20\r\n\r\n", Error::kBadStatusLine},
      {"two spaces", "HTTP/1.1  200 OK\r\n\r\n", Error::kBadStatusLine},
      {"no status", "HTTP/1.1\r\n\r\n", Error::kBadStatusLine},
      {"control in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", Error::kBadStatusLine},
      {"DEL in reason", "HTTP/1.1 200 O\x7fK\r\n\r\n", Error::kBadStatusLine},
      {"bare CR in reason", "HTTP/1.1 200 O\rK\r\n\r\n", Error::kBareCR},
      {"bare LF ends the status line", "HTTP/1.1 200 OK\n\r\n", Error::kBareLF},
      {"leading empty line", "\r\nHTTP/1.1 200 OK\r\n\r\n", Error::kBadStatusLine},
      {"HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", Error::kUnsupportedVersion},
      {"HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", Error::kUnsupportedVersion},
      {"lower-case version", "http/1.1 200 OK\r\n\r\n", Error::kBadStatusLine},
      {"long junk version", "HTTP/1.1.1 200 OK\r\n\r\n", Error::kBadStatusLine},
      {"ICY", "ICY 200 OK\r\n\r\n", Error::kBadStatusLine},
      {"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", Error::kBadHeaderName},
      {"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", Error::kObsFold},
      {"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
       Error::kLengthAndChunked},
      {"differing CL", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
       Error::kBadContentLength},
      {"gzip coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Error::kUnsupportedTransferEncoding},
      {"gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
       Error::kUnsupportedTransferEncoding},
      {"chunked, gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
       Error::kBadTransferEncoding},
      {"TE in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       Error::kBadTransferEncoding},
      {"no Host needed", "HTTP/1.1 204 No Content\r\n\r\n", Error::kNone},
  };
  for (const S& c : cases) {
    INFO(std::string(c.what));
    CHECK(response_error(c.msg) == c.error);
  }
  CHECK(status_for(Error::kBadStatusLine) == 502);
  Parsed lenient(kResp, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
  CHECK(lenient.head().status == 200);
  CHECK(lenient.text(lenient.head().reason).empty());
}

TEST_CASE("responses without a body") {
  struct N {
    const char* what;
    std::string msg;
    Method request;
  };
  const N cases[] = {
      {"204 with CL", "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", Method::kGet},
      {"304 with CL", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", Method::kGet},
      {"304 with TE", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", Method::kGet},
      {"HEAD with CL", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", Method::kHead},
      {"HEAD with TE", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::kHead},
      {"HEAD without length", "HTTP/1.1 200 OK\r\n\r\n", Method::kHead},
      {"100 Continue", "HTTP/1.1 100 Continue\r\n\r\n", Method::kPost},
      {"103 Early Hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", Method::kGet},
      {"2xx to CONNECT", "HTTP/1.1 200 Connection established\r\nContent-Length: 10\r\n\r\n",
       Method::kConnect},
  };
  for (const N& c : cases) {
    INFO(std::string(c.what));
    Options o;
    o.request_method = c.request;
    // The bytes after the head belong to what follows, not to this message.
    Parsed p(kResp, c.msg + "HTTP/1.1 200 OK\r\n", o);
    CHECK(p.out.error == Error::kNone);
    CHECK(p.head().body == BodyKind::kNone);
    CHECK(p.out.done);
    CHECK(p.out.used == c.msg.size());
    CHECK(p.head().keep_alive);
  }
  Options connect;
  connect.request_method = Method::kConnect;
  Parsed refused(kResp, "HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\nno", connect);
  CHECK(refused.head().body == BodyKind::kLength);
  CHECK(refused.out.body == "no");
}

TEST_CASE("1xx: the caller parses the final response with the same parser") {
  const std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
  const std::string final_head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
  Parser p(kResp, {});
  p.set_request_method(Method::kHead);
  REQUIRE(p.parse_head(interim + final_head) == Result::kComplete);
  CHECK(p.head().status == 100);
  CHECK(p.head().body == BodyKind::kNone);
  const std::string rest = final_head;
  p.reset();  // keeps the request method: this still answers a HEAD
  REQUIRE(p.parse_head(rest) == Result::kComplete);
  CHECK(p.head().status == 200);
  CHECK(p.head().body == BodyKind::kNone);
  CHECK(p.body_done());  // nothing to wait for
  CHECK(p.parse_body({}, nullptr, nullptr).done);
}

TEST_CASE("101 Switching Protocols sets upgrade") {
  Parsed p(kResp, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
  CHECK(p.head().upgrade);
  CHECK(p.head().body == BodyKind::kNone);
  CHECK(p.hop("Upgrade"));
  CHECK(p.hop("Connection"));
}

TEST_CASE("chunked responses, with extensions and trailers") {
  const std::string msg =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
      "4;ext=\"v\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Sum: 1\r\n\r\n";
  Parsed p(kResp, msg + "HTTP/1.1 200 OK\r\n");
  CHECK(p.head().body == BodyKind::kChunked);
  CHECK(p.out.done);
  CHECK(p.out.body == "Wikipedia in\r\n\r\nchunks.");
  CHECK(p.out.used == msg.size());
  CHECK(p.hop("Transfer-Encoding"));
  CHECK(p.hop("Trailer"));
}

TEST_CASE("until-close responses end with finish_at_eof") {
  Options eof;
  eof.eof = true;
  Parsed p(kResp, "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nall of this\r\n\r\nis body", eof);
  CHECK(p.head().body == BodyKind::kUntilClose);
  CHECK_FALSE(p.head().keep_alive);  // only the close ends it
  CHECK(p.out.body == "all of this\r\n\r\nis body");
  CHECK(p.out.eof_clean);
  CHECK(p.out.done == false);  // before the close the body is never done
  CHECK(p.parser.body_done());
  Parsed old(kResp, "HTTP/1.0 200 OK\r\n\r\nx", eof);
  CHECK(old.head().body == BodyKind::kUntilClose);
  CHECK(old.out.eof_clean);
  SUBCASE("body_bytes_max applies to them too") {
    Options small = eof;
    small.limits.body_bytes_max = 4;
    CHECK(response_error("HTTP/1.1 200 OK\r\n\r\n1234", small) == Error::kNone);
    const Outcome over = checked(kResp, "HTTP/1.1 200 OK\r\n\r\n12345", small);
    CHECK(over.error == Error::kBodyTooLarge);
    CHECK(over.body == "1234");
  }
}

TEST_CASE("end of file in the middle of a response") {
  Options eof;
  eof.eof = true;
  CHECK(response_error("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", eof) == Error::kUnexpectedEof);
  CHECK(response_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", eof) ==
        Error::kUnexpectedEof);
  CHECK(response_error("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", eof) == Error::kNone);
  Parser p(kResp, {});
  CHECK(p.parse_head("HTTP/1.1 200 OK\r\nCont") == Result::kIncomplete);
  CHECK_FALSE(p.finish_at_eof());
  CHECK(p.error() == Error::kUnexpectedEof);
  CHECK(p.parse_head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == Result::kError);
}

TEST_CASE("response keep-alive") {
  CHECK(Parsed(kResp, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").head().keep_alive);
  CHECK_FALSE(Parsed(kResp, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").head().keep_alive);
  CHECK_FALSE(Parsed(kResp, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").head().keep_alive);
  CHECK(Parsed(kResp, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").head().keep_alive);
}

TEST_CASE("status_for and describe cover every error") {
  struct E {
    Error error;
    int status;
  };
  const E table[] = {
      {Error::kNone, 0},
      {Error::kBadRequestLine, 400},
      {Error::kBadStatusLine, 502},
      {Error::kBadVersion, 400},
      {Error::kUnsupportedVersion, 505},
      {Error::kTargetTooLong, 414},
      {Error::kBadHeaderName, 400},
      {Error::kBadHeaderValue, 400},
      {Error::kObsFold, 400},
      {Error::kBareCR, 400},
      {Error::kBareLF, 400},
      {Error::kNul, 400},
      {Error::kHeaderTooLarge, 431},
      {Error::kTooManyHeaders, 431},
      {Error::kBadContentLength, 400},
      {Error::kLengthAndChunked, 400},
      {Error::kBadTransferEncoding, 400},
      {Error::kUnsupportedTransferEncoding, 501},
      {Error::kMissingHost, 400},
      {Error::kBadChunkSize, 400},
      {Error::kBadChunkExtension, 400},
      {Error::kBadChunkTerminator, 400},
      {Error::kBadTrailer, 400},
      {Error::kBodyTooLarge, 413},
      {Error::kUnexpectedEof, 400},
  };
  std::vector<std::string_view> names;
  for (const E& e : table) {
    INFO(int(e.error));
    CHECK(status_for(e.error) == e.status);
    CHECK_FALSE(describe(e.error).empty());
    CHECK(describe(e.error) != "unknown error");
    names.push_back(describe(e.error));
  }
  CHECK(int(table[std::size(table) - 1].error) + 1 == int(std::size(table)));  // none left out
  std::sort(names.begin(), names.end());
  CHECK(std::adjacent_find(names.begin(), names.end()) == names.end());  // all distinct
  CHECK(describe(Error::kBadChunkSize) == "bad chunk size");
}
