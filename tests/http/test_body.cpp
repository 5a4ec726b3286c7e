// Request bodies: Content-Length and chunked framing, extensions, trailers,
// body_bytes_max, and feeding the body in pieces of every size.
#include <doctest/doctest.h>

#include <string>

#include "helpers.h"

using namespace offload::http;
using namespace offload::http::testing;
using namespace std::string_literals;

namespace {

const std::string kChunkedHead = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

// The outcome of a chunked request whose body is `body`, checked at every cut.
Outcome chunked(const std::string& body, const Options& o = {}) {
  return checked(kReq, kChunkedHead + body, o);
}

struct BodyCase {
  const char* what;
  std::string body;  // after kChunkedHead
  Error error;
  const char* decoded;  // when error == kNone
};

}  // namespace

TEST_CASE("chunked bodies that are fine") {
  const BodyCase cases[] = {
      {"one chunk", "5\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", Error::kNone, "hello world"},
      {"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", Error::kNone, "0123456789"},
      {"lower-case hex", "a\r\n0123456789\r\n0\r\n\r\n", Error::kNone, "0123456789"},
      {"leading zeros", "0005\r\nhello\r\n000\r\n\r\n", Error::kNone, "hello"},
      {"sixteen digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"data holding CRLF", "4\r\n\r\n\r\n\r\n0\r\n\r\n", Error::kNone, "\r\n\r\n"},
      {"data holding NUL", "3\r\na\0b\r\n0\r\n\r\n"s, Error::kNone, nullptr},
      {"empty body", "0\r\n\r\n", Error::kNone, ""},
      {"extension without value", "5;foo\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"extension with token", "5;foo=bar\r\nhello\r\n0;last=1\r\n\r\n", Error::kNone, "hello"},
      {"extension with quoted string", "5;foo=\"a b;c=\\\"d\\\"\"\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"several extensions", "5;a;b=c;d=\"e\"\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"BWS around extension parts", "5 ; a = b ;\tc\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"BWS after a quoted value", "5;a=\"b\" ;c\r\nhello\r\n0\r\n\r\n", Error::kNone, "hello"},
      {"one trailer", "5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", Error::kNone, "hello"},
      {"trailers with OWS and empty value", "0\r\nA:  v \r\nB:\r\nC: x\ty\r\n\r\n", Error::kNone, ""},
  };
  for (const BodyCase& c : cases) {
    INFO(std::string(c.what));
    const Outcome out = chunked(c.body);
    CHECK(out.error == c.error);
    CHECK(out.done);
    CHECK(out.used == kChunkedHead.size() + c.body.size());
    if (c.decoded != nullptr) CHECK(out.body == c.decoded);
  }
  CHECK(chunked("3\r\na\0b\r\n0\r\n\r\n"s).body == "a\0b"s);
}

TEST_CASE("chunked bodies that are rejected") {
  const BodyCase cases[] = {
      {"empty size", "\r\nhello\r\n0\r\n\r\n", Error::kBadChunkSize, nullptr},
      {"non-hex size", "g\r\n", Error::kBadChunkSize, nullptr},
      {"negative size", "-1\r\n", Error::kBadChunkSize, nullptr},
      {"0x prefix", "0x5\r\nhello\r\n", Error::kBadChunkSize, nullptr},
      {"plus sign", "+5\r\nhello\r\n", Error::kBadChunkSize, nullptr},
      {"seventeen digits", "00000000000000005\r\nhello\r\n0\r\n\r\n", Error::kBadChunkSize, nullptr},
      {"overflowing size", "ffffffffffffffffff\r\n", Error::kBadChunkSize, nullptr},
      {"space before size", " 5\r\nhello\r\n", Error::kBadChunkSize, nullptr},
      {"whitespace after size without extension", "5 \r\nhello\r\n0\r\n\r\n", Error::kBadChunkSize, nullptr},
      {"bare LF after size", "5\nhello\r\n0\r\n\r\n", Error::kBareLF, nullptr},
      {"bare CR after size", "5\rhello\r\n", Error::kBareCR, nullptr},
      {"data longer than the size", "5\r\nhelloX\r\n0\r\n\r\n", Error::kBadChunkTerminator, nullptr},
      {"data shorter than the size", "5\r\nhell\r\n0\r\n\r\n", Error::kBadChunkTerminator, nullptr},
      {"data ended by LF only", "5\r\nhello\n0\r\n\r\n", Error::kBadChunkTerminator, nullptr},
      {"data ended by CR only", "5\r\nhello\r0\r\n\r\n", Error::kBadChunkTerminator, nullptr},
      {"empty extension", "5;\r\nhello\r\n0\r\n\r\n", Error::kBadChunkExtension, nullptr},
      {"extension without name", "5;=a\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"extension with empty value", "5;a=\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"extension name with separator", "5;a/b\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"two words as a name", "5;a b\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"unterminated quoted string", "5;a=\"b\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"control in quoted string", "5;a=\"\x01\"\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"junk after quoted string", "5;a=\"b\"c\r\nhello\r\n", Error::kBadChunkExtension, nullptr},
      {"NUL in an extension", "5;a\0\r\nhello\r\n"s, Error::kNul, nullptr},
      {"bare LF in an extension", "5;a\nhello\r\n", Error::kBareLF, nullptr},
      {"trailer with space before colon", "0\r\nX : v\r\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer without colon", "0\r\nX\r\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer with empty name", "0\r\n: v\r\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer obs-fold", "0\r\nX: v\r\n w\r\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer control", "0\r\nX: a\x01\r\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer NUL", "0\r\nX: a\0\r\n\r\n"s, Error::kBadTrailer, nullptr},
      {"trailer bare LF", "0\r\nX: a\n\r\n", Error::kBadTrailer, nullptr},
      {"trailer bare CR", "0\r\nX: a\rb\r\n\r\n", Error::kBadTrailer, nullptr},
      {"final line bare CR", "0\r\n\rX", Error::kBadTrailer, nullptr},
      {"final line bare LF", "0\r\n\n", Error::kBadTrailer, nullptr},
  };
  Options unlimited;  // the syntax alone decides, not body_bytes_max
  unlimited.limits.body_bytes_max = 0;
  for (const BodyCase& c : cases) {
    INFO(std::string(c.what));
    const Outcome out = chunked(c.body, unlimited);
    CHECK(out.error == c.error);
    CHECK_FALSE(out.done);
    CHECK(status_for(out.error) == 400);
    CHECK(out.used < kChunkedHead.size() + c.body.size());
  }
}

TEST_CASE("chunked: the size may be as large as 16 hex digits when unlimited") {
  Options o;
  o.limits.body_bytes_max = 0;
  const Outcome out = chunked("ffffffffffffffff\r\nsome data", o);
  CHECK(out.error == Error::kNone);
  CHECK_FALSE(out.done);
  CHECK(out.body == "some data");
}

TEST_CASE("chunk extensions are bounded in total by header_bytes_max") {
  Options o;
  o.limits.header_bytes_max = 128;
  const std::string ext = ";" + std::string(60, 'e');  // 61 bytes a line
  CHECK(chunked("1" + ext + "\r\na\r\n1" + ext + "\r\nb\r\n0\r\n\r\n", o).error == Error::kNone);
  CHECK(chunked("1" + ext + "\r\na\r\n1" + ext + "\r\nb\r\n1" + ext + "\r\nc\r\n0\r\n\r\n", o).error ==
        Error::kBadChunkExtension);
  CHECK(chunked("1" + std::string(200, ' ') + ";a\r\nx\r\n0\r\n\r\n", o).error == Error::kBadChunkExtension);
}

TEST_CASE("trailers are bounded in total by header_bytes_max") {
  Options o;
  o.limits.header_bytes_max = 64;
  REQUIRE(kChunkedHead.size() <= 64);
  const std::string fits = "A: " + std::string(57, 'v') + "\r\n\r\n";  // 64 trailer bytes
  CHECK(chunked("0\r\n" + fits, o).error == Error::kNone);
  CHECK(chunked("0\r\nA: v" + fits.substr(3), o).error == Error::kHeaderTooLarge);
  CHECK(status_for(Error::kHeaderTooLarge) == 431);
}

TEST_CASE("body_bytes_max: refused as soon as a length announces too much") {
  Options o;
  o.limits.body_bytes_max = 10;
  SUBCASE("Content-Length") {
    CHECK(request_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789", o) ==
          Error::kNone);
    // Refused at the head, before any body byte arrives.
    CHECK(request_error("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", o) ==
          Error::kBodyTooLarge);
  }
  SUBCASE("one chunk size, before its data") {
    const Outcome out = chunked("b\r\n", o);
    CHECK(out.error == Error::kBodyTooLarge);
    CHECK(out.body.empty());
  }
  SUBCASE("a size digit that makes the announced total too large") {
    CHECK(chunked("a", o).error == Error::kNone);
    CHECK(chunked("10", o).error == Error::kBodyTooLarge);
  }
  SUBCASE("the sum of chunks") {
    CHECK(chunked("5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n", o).error == Error::kNone);
    const Outcome out = chunked("5\r\n01234\r\n6\r\n", o);
    CHECK(out.error == Error::kBodyTooLarge);
    CHECK(out.body == "01234");
  }
  SUBCASE("the announced size is refused even from a valid chunk line") {
    CHECK(chunked("ffffffffffffffffff\r\n", o).error == Error::kBodyTooLarge);
  }
  SUBCASE("status") { CHECK(status_for(Error::kBodyTooLarge) == 413); }
}

TEST_CASE("Content-Length bodies and what follows them") {
  const std::string head = "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
  const Outcome out = checked(kReq, head + "hello world" + "GET / HTTP/1.1\r\n");
  CHECK(out.done);
  CHECK(out.body == "hello world");
  CHECK(out.used == head.size() + 11);
  const Outcome partial = checked(kReq, head + "hello");
  CHECK_FALSE(partial.done);
  CHECK(partial.body == "hello");
}

TEST_CASE("parse_body: counts, repeats, and a request that ends early") {
  Parser p(kReq, {});
  const std::string msg = kChunkedHead + "3\r\nabc\r\n0\r\n\r\nNEXT";
  REQUIRE(p.parse_head(msg) == Result::kComplete);
  std::string body;
  BodyProgress bp = p.parse_body(std::string_view(msg).substr(p.head().head_bytes), append_sink, &body);
  CHECK(bp.done);
  CHECK(bp.consumed == msg.size() - p.head().head_bytes - 4);
  CHECK(p.body_bytes() == 3);
  CHECK(p.body_done());
  // Once done, nothing more is taken.
  bp = p.parse_body("more", append_sink, &body);
  CHECK(bp.done);
  CHECK(bp.consumed == 0);
  CHECK(body == "abc");
  // A null sink is allowed when only the framing matters.
  Parser q(kReq, {});
  REQUIRE(q.parse_head(msg) == Result::kComplete);
  bp = q.parse_body(std::string_view(msg).substr(q.head().head_bytes), nullptr, nullptr);
  CHECK(bp.done);
  CHECK(q.body_bytes() == 3);
  // An error sticks.
  Parser r(kReq, {});
  REQUIRE(r.parse_head(kChunkedHead) == Result::kComplete);
  bp = r.parse_body("3\r\nabcX", nullptr, nullptr);
  CHECK(bp.error == Error::kBadChunkTerminator);
  CHECK(bp.consumed == 6);
  bp = r.parse_body("\r\n0\r\n\r\n", nullptr, nullptr);
  CHECK(bp.error == Error::kBadChunkTerminator);
  CHECK(bp.consumed == 0);
  CHECK_FALSE(r.body_done());
  // The client closing mid-body cuts the request short.
  Parser s(kReq, {});
  REQUIRE(s.parse_head(kChunkedHead) == Result::kComplete);
  s.parse_body("3\r\nab", nullptr, nullptr);
  CHECK_FALSE(s.finish_at_eof());
  CHECK(s.error() == Error::kUnexpectedEof);
}

TEST_CASE("a large chunked body fed in uneven pieces") {
  std::string body, raw;
  for (int i = 1; i <= 300; ++i) {
    const std::string data(size_t(i * 7 % 97 + 1), char('a' + i % 26));
    char size[20];
    std::snprintf(size, sizeof size, "%zx", data.size());
    raw += std::string(size) + (i % 3 ? "" : ";n=v") + "\r\n" + data + "\r\n";
    body += data;
  }
  raw += "0\r\nT: 1\r\n\r\n";
  const std::string msg = kChunkedHead + raw;
  const Outcome whole = drive_new(kReq, msg, {});
  REQUIRE(whole.done);
  CHECK(whole.body == body);
  std::vector<size_t> cuts;
  for (size_t c = 1, step = 1; c < msg.size(); c += step, step = step % 13 + 1) cuts.push_back(c);
  CHECK(drive_new(kReq, msg, cuts) == whole);
  CHECK(drive_new(kReq, msg, every_byte(msg.size())) == whole);
}
