// Test helpers: parse a whole message, and parse it again cut at every byte
// boundary (once per boundary, and one byte at a time) to prove the cuts
// change nothing. Every table-driven case goes through `checked`, so every
// acceptance and rejection rule is also a split-equivalence test.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "drive.h"
#include "http/http_parser.h"

namespace offload::http::testing {

constexpr Parser::Kind kReq = Parser::Kind::kRequest;
constexpr Parser::Kind kResp = Parser::Kind::kResponse;

struct Options {
  Limits limits{};
  Method request_method = Method::kGet;  // responses: what they answer
  bool eof = false;                      // the peer closes after the bytes
};

// The whole-message outcome, after checking that every split agrees with it.
inline Outcome checked(Parser::Kind kind, std::string_view msg, const Options& o = {}) {
  const Outcome whole = drive_new(kind, msg, {}, o.eof, o.limits, o.request_method);
  INFO("message: ", std::string(msg));
  CHECK_MESSAGE(!whole.invariant_broken, whole.why);
  size_t first_bad = 0;
  for (size_t k = 1; k < msg.size() && first_bad == 0; ++k) {
    const Outcome split = drive_new(kind, msg, {k}, o.eof, o.limits, o.request_method);
    if (!(split == whole)) first_bad = k;
  }
  CHECK_MESSAGE(first_bad == 0, "a single cut at byte ", first_bad, " changes the outcome");
  const Outcome bytewise =
      drive_new(kind, msg, every_byte(msg.size()), o.eof, o.limits, o.request_method);
  CHECK_MESSAGE(bytewise == whole, "byte-by-byte feeding changes the outcome");
  return whole;
}

inline Error request_error(std::string_view msg, const Options& o = {}) {
  return checked(kReq, msg, o).error;
}
inline Error response_error(std::string_view msg, const Options& o = {}) {
  return checked(kResp, msg, o).error;
}

// A parsed message kept together with its bytes, for looking at the Head.
struct Parsed {
  std::string msg;
  Parser parser;
  Outcome out;

  Parsed(Parser::Kind kind, std::string m, const Options& o = {})
      : msg(std::move(m)), parser(kind, o.limits) {
    out = checked(kind, msg, o);
    parser.set_request_method(o.request_method);
    const Outcome again = drive(parser, msg, {}, o.eof);
    CHECK(again == out);
  }
  const Head& head() const { return parser.head(); }
  std::string_view text(Span s) const { return s.in(msg); }
  // The first field with this exact name (tests spell names as sent).
  const HeaderField* field(std::string_view name) const {
    for (const HeaderField& f : head().headers)
      if (f.name.in(msg) == name) return &f;
    return nullptr;
  }
  std::string_view value(std::string_view name) const {
    const HeaderField* f = field(name);
    return f ? f->value.in(msg) : std::string_view("<absent>");
  }
  bool hop(std::string_view name) const {
    const HeaderField* f = field(name);
    REQUIRE_MESSAGE(f != nullptr, "no field ", std::string(name));
    return f->hop_by_hop;
  }
};

}  // namespace offload::http::testing

namespace doctest {
template <>
struct StringMaker<offload::http::Error> {
  static String convert(offload::http::Error e) {
    const std::string_view d = offload::http::describe(e);
    return String(d.data(), static_cast<String::size_type>(d.size()));
  }
};
}  // namespace doctest
