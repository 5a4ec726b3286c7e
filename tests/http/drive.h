// Drives a Parser over a message that arrives in pieces, the way a connection
// sees it, and reduces everything observable to one comparable Outcome. The
// unit tests and the fuzzer both use it to check that where the input is cut
// never changes the result.
#pragma once

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_parser.h"

namespace offload::http::testing {

struct Outcome {
  Result head_result = Result::kIncomplete;
  Error error = Error::kNone;
  std::string head;         // every Head member, printed
  std::string body;         // decoded body bytes
  size_t used = 0;          // head bytes + body bytes consumed
  bool done = false;        // the body (so the message) is complete
  bool eof_clean = false;   // finish_at_eof() result, when asked for
  bool invariant_broken = false;
  std::string why;          // what broke, for the report

  bool operator==(const Outcome&) const = default;
};

inline std::string describe_head(const Head& h, std::string_view msg) {
  std::string s;
  char num[160];
  std::snprintf(num, sizeof num, "m=%d st=%u v=%u hb=%u body=%d cl=%llu ka=%d up=%d ex=%d",
                int(h.method), unsigned(h.status), unsigned(h.version_minor), unsigned(h.head_bytes),
                int(h.body), static_cast<unsigned long long>(h.content_length), int(h.keep_alive),
                int(h.upgrade), int(h.expect_continue));
  s += num;
  s += " method=" + std::string(h.method_text.in(msg));
  s += " target=" + std::string(h.target.in(msg));
  s += " reason=" + std::string(h.reason.in(msg));
  s += " host=" + std::string(h.host.in(msg));
  s += " authority=" + std::string(h.authority.in(msg));
  for (const HeaderField& f : h.headers) {
    s += "\n";
    s += f.name.in(msg);
    s += f.hop_by_hop ? " [hop]: " : ": ";
    s += f.value.in(msg);
  }
  return s;
}

inline void append_sink(void* ctx, const char* data, size_t len) {
  static_cast<std::string*>(ctx)->append(data, len);
}

// Feeds `msg` as if it arrived in pieces ending at each of `cuts` (ascending,
// inside (0, size)) and then at msg.size(). The head sees the grown prefix,
// the body sees only the new bytes. With `eof`, the peer closes at the end.
inline Outcome drive(Parser& p, std::string_view msg, const std::vector<size_t>& cuts, bool eof) {
  Outcome o;
  std::vector<size_t> ends;
  for (size_t c : cuts)
    if (c > 0 && c < msg.size() && (ends.empty() || c > ends.back())) ends.push_back(c);
  ends.push_back(msg.size());

  auto broken = [&](const char* why) {
    o.invariant_broken = true;
    o.why = why;
  };
  // Each call gets its bytes in a fresh buffer of exactly that size, so a
  // read past them is caught by ASan and a pointer kept across calls is
  // caught by the results changing.
  auto exact = [](std::string_view s) {
    std::unique_ptr<char[]> copy(new char[s.size() + (s.empty() ? 1 : 0)]);
    if (!s.empty()) std::memcpy(copy.get(), s.data(), s.size());
    return copy;
  };
  size_t i = 0;
  for (; i < ends.size(); ++i) {
    const auto head_bytes = exact(msg.substr(0, ends[i]));
    o.head_result = p.parse_head({head_bytes.get(), ends[i]});
    if (o.head_result != Result::kIncomplete) break;
  }
  if (o.head_result == Result::kError) {
    o.error = p.error();
    if (o.error == Error::kNone) broken("head error without an error code");
    return o;
  }
  if (o.head_result == Result::kIncomplete) {
    if (p.error() != Error::kNone) broken("incomplete head with an error code");
    if (eof) o.eof_clean = p.finish_at_eof();
    if (eof && (o.eof_clean || p.error() != Error::kUnexpectedEof)) broken("eof in head");
    return o;
  }
  const Head& h = p.head();
  if (h.head_bytes == 0 || h.head_bytes > ends[i]) {
    broken("head_bytes outside what was given");
    return o;
  }
  if (h.headers.size() > h.headers.capacity()) broken("headers beyond capacity");
  o.head = describe_head(h, msg.substr(0, h.head_bytes));
  o.used = h.head_bytes;
  for (; i < ends.size() && !o.done; ++i) {
    if (ends[i] <= o.used) continue;
    const auto piece_bytes = exact(msg.substr(o.used, ends[i] - o.used));
    const std::string_view piece(piece_bytes.get(), ends[i] - o.used);
    BodyProgress bp = p.parse_body(piece, append_sink, &o.body);
    if (bp.consumed > piece.size()) broken("consumed more than given");
    o.used += bp.consumed;
    o.done = bp.done;
    if (bp.error != Error::kNone) {
      o.error = bp.error;
      if (bp.done) broken("done and failed");
      return o;
    }
    if (!bp.done && bp.consumed != piece.size()) broken("stopped early without finishing");
  }
  if (!o.done) {
    // An empty feed changes nothing, but a body that needs no bytes (none,
    // Content-Length: 0) reports done even when nothing followed the head.
    BodyProgress bp = p.parse_body({}, append_sink, &o.body);
    if (bp.consumed != 0 || bp.error != Error::kNone) broken("an empty feed did something");
    o.done = bp.done;
  }
  if (h.body == BodyKind::kNone && !o.done) broken("no body but not done");
  if (o.done != p.body_done()) broken("body_done() disagrees");
  if (p.body_bytes() != o.body.size()) broken("body_bytes() disagrees with the sink");
  if (eof) {
    o.eof_clean = p.finish_at_eof();
    if (!o.eof_clean) o.error = p.error();
  }
  return o;
}

inline Outcome drive_new(Parser::Kind kind, std::string_view msg, const std::vector<size_t>& cuts,
                         bool eof = false, const Limits& limits = {},
                         Method request_method = Method::kGet) {
  Parser p(kind, limits);
  p.set_request_method(request_method);
  return drive(p, msg, cuts, eof);
}

inline std::vector<size_t> every_byte(size_t n) {
  std::vector<size_t> v;
  for (size_t i = 1; i < n; ++i) v.push_back(i);
  return v;
}

}  // namespace offload::http::testing
