// Record codec: request and response round trips, and payloads whose counts,
// offsets or characters are wrong are rejected with a reason.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "offload/ring_codec.h"

using namespace offload::ring;

namespace {

struct Encoded {
  std::vector<uint8_t> bytes;
  Record rec(uint16_t type, uint16_t flags = 0) const {
    return Record{type, flags, bytes.data(), static_cast<uint32_t>(bytes.size())};
  }
};

Encoded sample_request() {
  static const std::string head = "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z z\r\n\r\n";
  static const offload_field fields[] = {{{22, 4}, {28, 1}}, {{31, 3}, {36, 3}}};
  RequestOut r;
  r.id = 42;
  r.head = head;
  r.body = "hello";
  r.method = OFFLOAD_METHOD_POST;
  r.method_text = {0, 4};
  r.target = {5, 6};
  r.fields = fields;
  Encoded e;
  e.bytes.resize(request_payload_bytes(r));
  REQUIRE(encode_request(r, e.bytes.data()));
  return e;
}

}  // namespace

TEST_CASE("a request survives the round trip with its index") {
  Encoded e = sample_request();
  RequestIn in;
  std::vector<Field> fields;
  REQUIRE(decode_request(e.rec(OFFLOAD_REC_REQUEST), &in, &fields) == nullptr);
  CHECK(in.id == 42);
  CHECK(in.method == OFFLOAD_METHOD_POST);
  CHECK(in.method_text == "POST");
  CHECK(in.target == "/a?b=1");
  CHECK(in.body == "hello");
  REQUIRE(fields.size() == 2);
  CHECK(fields[0].name == "Host");
  CHECK(fields[0].value == "x");
  CHECK(fields[1].name == "X-Y");
  CHECK(fields[1].value == "z z");
}

TEST_CASE("an encoder refuses spans outside the head") {
  RequestOut r;
  r.head = "GET / HTTP/1.1\r\n\r\n";
  r.target = {4, 100};
  std::vector<uint8_t> buf(request_payload_bytes(r));
  CHECK_FALSE(encode_request(r, buf.data()));
}

TEST_CASE("corrupt request records are rejected") {
  Encoded e = sample_request();
  RequestIn in;
  std::vector<Field> fields;
  auto patch32 = [&](size_t off, uint32_t v) { std::memcpy(e.bytes.data() + off, &v, 4); };
  SUBCASE("text length") { patch32(offsetof(offload_req, text_len), 1000); }
  SUBCASE("field count") {
    uint16_t v = 900;
    std::memcpy(e.bytes.data() + offsetof(offload_req, field_count), &v, 2);
  }
  SUBCASE("target span") { patch32(offsetof(offload_req, target) + 4, 0xffffffffu); }
  SUBCASE("body span") { patch32(offsetof(offload_req, body_len), 1000); }
  SUBCASE("field span") { patch32(sizeof(offload_req) + 4, 0x7fffffffu); }
  SUBCASE("short record") { e.bytes.resize(10); }
  CHECK(decode_request(e.rec(OFFLOAD_REC_REQUEST), &in, &fields) != nullptr);
}

namespace {

Encoded response(std::string_view text, std::vector<offload_field> f, std::string_view body,
                 uint16_t status = 200, uint64_t length = OFFLOAD_LENGTH_UNKNOWN) {
  ResponseHeadOut r;
  r.id = 7;
  r.status = status;
  r.content_length = length;
  r.text = text;
  r.fields = f;
  r.body = body;
  Encoded e;
  e.bytes.resize(response_head_payload_bytes(r));
  encode_response_head(r, e.bytes.data());
  return e;
}

}  // namespace

TEST_CASE("response pieces decode, and unsafe response heads are rejected") {
  ResponsePiece p;
  std::vector<Field> fields;
  std::string text;
  Encoded ok = response("Content-Typetext/plain", {{{0, 12}, {12, 10}}}, "hi", 201, 2);
  REQUIRE(decode_response(ok.rec(OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END), &p, &fields, &text) == nullptr);
  CHECK(p.kind == ResponsePiece::Kind::kHead);
  CHECK(p.status == 201);
  CHECK(p.end);
  CHECK(p.body == "hi");
  REQUIRE(p.fields.size() == 1);
  CHECK(p.fields[0].value == "text/plain");

  Encoded crlf = response("X-Ab\r\nInjected: 1", {{{0, 1}, {1, 17}}}, "");
  CHECK(decode_response(crlf.rec(OFFLOAD_REC_RESPONSE_HEAD), &p, &fields, &text) != nullptr);
  Encoded name = response("Bad Nameok", {{{0, 8}, {8, 2}}}, "");
  CHECK(decode_response(name.rec(OFFLOAD_REC_RESPONSE_HEAD), &p, &fields, &text) != nullptr);
  Encoded framing = response("content-length5", {{{0, 14}, {14, 1}}}, "");
  CHECK(decode_response(framing.rec(OFFLOAD_REC_RESPONSE_HEAD), &p, &fields, &text) != nullptr);
  Encoded status = response("", {}, "", 42);
  CHECK(decode_response(status.rec(OFFLOAD_REC_RESPONSE_HEAD), &p, &fields, &text) != nullptr);
  Encoded longer = response("", {}, "abcdef", 200, 3);
  CHECK(decode_response(longer.rec(OFFLOAD_REC_RESPONSE_HEAD), &p, &fields, &text) != nullptr);

  Encoded body;
  body.bytes.resize(8 + 3);
  std::memcpy(body.bytes.data() + 8, "xyz", 3);
  REQUIRE(decode_response(body.rec(OFFLOAD_REC_RESPONSE_BODY), &p, &fields, &text) == nullptr);
  CHECK(p.kind == ResponsePiece::Kind::kBody);
  CHECK(p.body == "xyz");
  CHECK(decode_response(body.rec(OFFLOAD_REC_RESPONSE_ABORT), &p, &fields, &text) != nullptr);
  CHECK(decode_response(body.rec(OFFLOAD_REC_REQUEST), &p, &fields, &text) != nullptr);
}

// Issue item 15: a server racing the agent from another core could turn a
// checked field value into CR LF between the check and the copy to the
// client. The decoder copies the names and values first and checks the copy:
// whatever the ring holds afterwards, the decoded head stays what was checked.
TEST_CASE("a decoded response head is a private copy: later writes to the ring do not change it") {
  ResponsePiece p;
  std::vector<Field> fields;
  std::string text;
  Encoded shared = response("X-Okfine-value", {{{0, 4}, {4, 10}}}, "body", 200, 4);
  REQUIRE(decode_response(shared.rec(OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END), &p, &fields, &text) == nullptr);
  REQUIRE(p.fields.size() == 1);
  // The peer rewrites the text area after the check: "X-Ok" / "\r\nSet-Cook".
  const size_t text_at = sizeof(offload_resp) + sizeof(offload_field);
  std::memcpy(shared.bytes.data() + text_at, "X\r\nS\r\nSet-C", 11);
  CHECK(p.fields[0].name == "X-Ok");
  CHECK(p.fields[0].value == "fine-value");
  CHECK(is_token(p.fields[0].name));
  CHECK(is_field_value(p.fields[0].value));
  for (const Field& f : p.fields) {  // no view points into the ring's bytes
    const auto* lo = reinterpret_cast<const char*>(shared.bytes.data());
    CHECK((f.name.data() < lo || f.name.data() >= lo + shared.bytes.size()));
    CHECK((f.value.data() < lo || f.value.data() >= lo + shared.bytes.size()));
  }
}
