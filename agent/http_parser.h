// Strict, incremental HTTP/1.1 parser (RFC 9112) for requests from clients
// and responses from upstream servers.
//
// A message is parsed in two phases:
//  1. The head (start line + header fields). The caller keeps every byte of
//     the head contiguous, starting at the message's first byte, and calls
//     parse_head() again with the grown buffer each time more bytes arrive.
//     The parser resumes where it stopped: it never re-scans what it already
//     accepted.
//  2. The body, fed as raw bytes in pieces of any size (they need not be
//     contiguous with the head or with each other). parse_body() tracks the
//     framing (Content-Length, chunked with extensions and trailers, or
//     until-close for responses) and hands decoded body bytes to a sink.
//
// Anything ambiguous is rejected rather than guessed: Transfer-Encoding with
// Content-Length, differing duplicate Content-Length, obs-fold, bare CR, NUL,
// invalid token characters, invalid or overflowing chunk sizes.
//
// Thread rules: a parser object belongs to one connection on one thread.
// No allocation after construction: header slots are reserved up front.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace offload::http {

struct Limits {
  uint32_t header_bytes_max = 16 * 1024;  // start line + fields + final CRLF
  uint32_t header_count_max = 100;
  uint32_t target_bytes_max = 8 * 1024;   // request-target length (414 beyond)
  uint64_t body_bytes_max = 16 * 1024 * 1024;  // decoded body; 0 = unlimited
};

enum class Error : uint8_t {
  kNone = 0,
  kBadRequestLine,     // 400
  kBadStatusLine,      // (response) -> 502 by the proxy
  kBadVersion,         // 505 for requests (HTTP/2.0, HTTP/1.2 ...), 400 if malformed
  kUnsupportedVersion, // 505: well-formed but not HTTP/1.x
  kTargetTooLong,      // 414
  kBadHeaderName,      // 400: invalid token char, empty name, space before colon
  kBadHeaderValue,     // 400: control char / NUL in value
  kObsFold,            // 400: line folding
  kBareCR,             // 400: CR not followed by LF
  kBareLF,             // 400: lone LF used as line terminator (strict mode)
  kNul,                // 400
  kHeaderTooLarge,     // 431
  kTooManyHeaders,     // 431
  kBadContentLength,   // 400: not digits, overflow, differing duplicates
  kLengthAndChunked,   // 400: Transfer-Encoding together with Content-Length
  kBadTransferEncoding,// 400: chunked not last, repeated chunked, malformed list
  kUnsupportedTransferEncoding, // 501: a coding other than chunked
  kMissingHost,        // 400: HTTP/1.1 request without exactly one Host
  kBadChunkSize,       // 400: not hex, overflow, missing
  kBadChunkExtension,  // 400
  kBadChunkTerminator, // 400: data not followed by CRLF
  kBadTrailer,         // 400
  kBodyTooLarge,       // 413
  kUnexpectedEof,      // message cut short (response only; request: caller closes)
};

// The status a request parse error maps to (400, 413, 414, 431, 501, 505).
int status_for(Error e);
// A short, stable, human-readable name ("bad chunk size") for logs and counters.
std::string_view describe(Error e);

enum class Method : uint8_t {
  kGet, kHead, kPost, kPut, kDelete, kOptions, kPatch, kTrace, kConnect, kOther
};

enum class BodyKind : uint8_t {
  kNone,        // no body (GET without length, HEAD response, 1xx/204/304 ...)
  kLength,      // Content-Length bytes
  kChunked,     // chunked transfer coding
  kUntilClose,  // response without length: body ends when the server closes
};

// Offsets are relative to the first byte of the message (the buffer passed to
// parse_head), so the head can be moved or copied and the spans stay valid.
struct Span {
  uint32_t off = 0;
  uint32_t len = 0;
  std::string_view in(std::string_view msg) const { return msg.substr(off, len); }
};

struct HeaderField {
  Span name;
  Span value;          // leading and trailing whitespace excluded
  bool hop_by_hop;     // Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
                       // Transfer-Encoding, Upgrade, Proxy-Authorization... and
                       // every field named in a Connection header
};

struct Head {
  // Request only.
  Method method = Method::kOther;
  Span method_text;
  Span target;
  // Response only.
  uint16_t status = 0;
  Span reason;
  // Both.
  uint8_t version_minor = 1;   // HTTP/1.<minor>, 0 or 1
  uint32_t head_bytes = 0;     // length of the head including the final CRLF
  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0; // valid when body == kLength
  bool keep_alive = true;      // after this message (version + Connection tokens)
  bool upgrade = false;        // Connection: upgrade and an Upgrade field
  bool expect_continue = false;// Expect: 100-continue (request)
  Span host;                   // request: the Host value, if any
  std::vector<HeaderField> headers;  // capacity header_count_max, reserved once
};

enum class Result : uint8_t { kIncomplete, kComplete, kError };

struct BodyProgress {
  size_t consumed = 0;  // raw bytes of `in` used by this message's body
  bool done = false;    // the message ended; bytes after `consumed` belong to
                        // the next message
  Error error = Error::kNone;
};

// Receives decoded body bytes (chunk data only, for chunked bodies).
// May be null when the caller only needs the framing.
using BodySink = void (*)(void* ctx, const char* data, size_t len);

class Parser {
 public:
  enum class Kind : uint8_t { kRequest, kResponse };

  Parser(Kind kind, const Limits& limits);

  // Ready for a new message; keeps the reserved header slots.
  void reset();

  // Response parsers only: the method of the request this response answers
  // (a response to HEAD has no body) and whether it answers a CONNECT.
  void set_request_method(Method m) { request_method_ = m; }

  // Phase 1. `msg` is every byte received for this message so far, from its
  // first byte. Returns kComplete once the head is in (head() is then
  // valid), kIncomplete if more bytes are needed, kError with error() set.
  // Leading empty lines before a request line are skipped (RFC 9112 2.2) and
  // counted in head().head_bytes.
  Result parse_head(std::string_view msg);

  // Phase 2, after parse_head returned kComplete. Feeds raw bytes that follow
  // the head. With body == kNone it returns {0, true}. For kUntilClose call
  // finish_at_eof() when the peer closes.
  BodyProgress parse_body(std::string_view in, BodySink sink, void* ctx);

  // The peer closed. Returns true if that ends the message cleanly
  // (until-close body); false if the message was cut short.
  bool finish_at_eof();

  const Head& head() const { return head_; }
  Error error() const { return error_; }
  uint64_t body_bytes() const { return body_bytes_; }  // decoded so far
  bool body_done() const;

 private:
  // Internal state: the implementation defines these.
  Kind kind_;
  Limits limits_;
  Head head_;
  Error error_ = Error::kNone;
  Method request_method_ = Method::kGet;
  uint64_t body_bytes_ = 0;
  uint32_t scan_pos_ = 0;     // head: where scanning resumes
  uint8_t head_state_ = 0;
  uint8_t body_state_ = 0;
  uint64_t chunk_left_ = 0;   // chunked: data bytes left in the current chunk
  uint32_t line_bytes_ = 0;   // chunked: bytes of the current size/trailer line
  uint32_t trailer_bytes_ = 0;
  uint32_t flags_ = 0;        // scratch the implementation may use
};

}  // namespace offload::http
