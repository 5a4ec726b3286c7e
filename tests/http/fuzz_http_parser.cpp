// libFuzzer target for the HTTP parser. Built by run_fuzz.sh with ASan and
// UBSan, which catch any read outside the input or undefined arithmetic.
//
// Input layout: byte 0 picks the setup (request or response, limits, the
// request method a response answers, whether the peer closes at the end),
// byte 1 seeds the cuts, the rest is the byte stream. The stream is parsed
// as a sequence of pipelined messages, each whole and again cut into pieces
// (at random places, and one byte at a time for short streams), and the
// outcomes must agree; consumed bytes never exceed what was given; a parser
// reused after reset() must behave like a fresh one.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "drive.h"
#include "http/http_parser.h"

using namespace offload::http;
using namespace offload::http::testing;

namespace {

Limits limits_for(uint8_t pick) {
  Limits l;
  switch (pick & 3) {
    case 0: break;  // the defaults
    case 1: l = {256, 8, 64, 1024}; break;
    case 2: l = {64, 4, 16, 16}; break;
    case 3: l.body_bytes_max = 0; break;  // unlimited body: 16-digit chunk sizes
  }
  return l;
}

Method method_for(uint8_t pick) {
  static constexpr Method kMethods[] = {Method::kGet, Method::kHead, Method::kConnect, Method::kPost};
  return kMethods[pick & 3];
}

// Ascending cut positions inside (0, n), drawn from a small xorshift PRNG.
std::vector<size_t> random_cuts(uint32_t seed, size_t n) {
  std::vector<size_t> cuts;
  uint32_t x = seed * 2654435761u + 1;
  for (size_t at = 0;;) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    at += 1 + x % 23;
    if (at >= n) return cuts;
    cuts.push_back(at);
  }
}

[[noreturn]] void report(const char* what, std::string_view msg, const Outcome& a, const Outcome& b) {
  std::fprintf(stderr, "fuzz_http_parser: %s\nmessage (%zu bytes)\nA: error=%d used=%zu done=%d why=%s\n"
               "B: error=%d used=%zu done=%d why=%s\n",
               what, msg.size(), int(a.error), a.used, int(a.done), a.why.c_str(), int(b.error), b.used,
               int(b.done), b.why.c_str());
  std::abort();
}

void check_same(const char* what, std::string_view msg, const Outcome& whole, const Outcome& other) {
  if (other.invariant_broken) report("invariant broken", msg, whole, other);
  if (!(other == whole)) report(what, msg, whole, other);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t setup = data[0];
  const uint8_t seed = data[1];
  std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
  const Parser::Kind kind = (setup & 4) ? Parser::Kind::kResponse : Parser::Kind::kRequest;
  const Limits limits = limits_for(setup);
  const Method method = method_for(uint8_t(setup >> 3));
  const bool eof = setup & 32;

  Parser reused(kind, limits);
  reused.set_request_method(method);
  for (int message = 0; message < 4 && !stream.empty(); ++message) {
    const Outcome whole = drive_new(kind, stream, {}, eof, limits, method);
    if (whole.invariant_broken) report("invariant broken", stream, whole, whole);
    if (whole.used > stream.size()) report("used more than given", stream, whole, whole);
    check_same("random cuts differ", stream,
               whole, drive_new(kind, stream, random_cuts(seed + uint32_t(message), stream.size()), eof,
                                limits, method));
    if (stream.size() <= 512)
      check_same("byte-by-byte differs", stream, whole,
                 drive_new(kind, stream, every_byte(stream.size()), eof, limits, method));
    reused.reset();
    check_same("a reset parser differs", stream, whole, drive(reused, stream, {}, eof));
    if (!whole.done || whole.used == 0) break;
    stream.remove_prefix(whole.used);  // the next pipelined message
  }
  return 0;
}
