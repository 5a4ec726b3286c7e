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
// Choices where RFC 9112 leaves room (each is tested):
//  - A lone LF never ends a line (kBareLF); only CRLF does.
//  - The version must be exactly HTTP/1.0 or HTTP/1.1. Another well-formed
//    HTTP/d.d (HTTP/1.2, HTTP/2.0) is kUnsupportedVersion (505), not treated
//    as 1.1; anything else is kBadVersion (400).
//  - Transfer-Encoding in an HTTP/1.0 message is rejected (kBadTransferEncoding):
//    a 1.0 peer cannot mean it, and a 1.0 hop in front of us may ignore it.
//  - A status line may lack the SP before an empty reason ("HTTP/1.1 200\r\n"):
//    common in the wild, and it cannot change the framing.
//  - Only the leading empty lines of a request are skipped; a response must
//    start with its status line.
//  - The request-target is visible ASCII; non-CONNECT targets are origin-form,
//    "*" (OPTIONS only) or absolute-form with "scheme://"; CONNECT needs
//    host:port. A Host value and the authority of an absolute-form or
//    CONNECT target follow one rule: uri-host [":" port] (RFC 3986), no
//    userinfo; an absolute-form authority must name a host.
//  - Empty list elements are ignored in Connection but rejected in
//    Content-Length and Transfer-Encoding, where they can only be a trick.
//  - At most 32 Connection options beyond close/keep-alive/upgrade (400
//    beyond), which bounds the work of marking the fields they name.
//  - Chunk sizes have at most 16 hex digits; all chunk-extension bytes of one
//    body together are bounded by header_bytes_max (kBadChunkExtension), so
//    extensions cannot carry unbounded data past body_bytes_max. Trailer
//    fields are validated (kBadTrailer), bounded by header_bytes_max in total
//    (kHeaderTooLarge) and discarded.
//
// Thread rules: a parser object belongs to one connection on one thread.
// No allocation after construction: header slots are reserved up front.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace offload::http {

// ASCII case-insensitive equality, as field names compare (RFC 9110 5.1).
bool iequals(std::string_view a, std::string_view b);

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
  kBadVersion,         // 400: malformed HTTP-version ("HTTP/1.10", "http/1.1")
  kUnsupportedVersion, // 505: well-formed HTTP/d.d but not 1.0 or 1.1
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

// The status a request parse error maps to (400, 413, 414, 431, 501, 505);
// kBadStatusLine gives 502, kNone gives 0.
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
  bool hop_by_hop = false;  // Connection, Keep-Alive, Proxy-Connection, TE,
                       // Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate,
                       // Proxy-Authorization, and every field named in a
                       // Connection header
};

struct Head {
  // Request only.
  Method method = Method::kOther;
  Span method_text;
  Span target;
  Span authority;              // absolute-form target: its authority, which
                               // replaces Host (RFC 9112 3.2.2); else empty
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

  // Ready for a new message; keeps the reserved header slots and the request
  // method set by set_request_method (a response parser reset after a 1xx
  // still answers the same request).
  void reset();
  // New limits for the next message (a listener's own); takes effect at once.
  void set_limits(const Limits& limits) { limits_ = limits; }

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
  // finish_at_eof() when the peer closes. On an error, `consumed` counts the
  // bytes accepted before the offending one and every later call repeats
  // the error.
  BodyProgress parse_body(std::string_view in, BodySink sink, void* ctx);

  // The peer closed. Returns true if that ends the message cleanly
  // (until-close body, or the message was already complete); false if the
  // message was cut short (error() becomes kUnexpectedEof unless an error
  // was already set). A close before any byte is the caller's to tell apart.
  bool finish_at_eof();

  const Head& head() const { return head_; }
  Error error() const { return error_; }
  uint64_t body_bytes() const { return body_bytes_; }  // decoded so far
  bool body_done() const;

 private:
  uint32_t step_head(const char* s, uint32_t p, uint32_t limit);
  uint32_t step_request_line(const char* s, uint32_t p, uint32_t limit);
  uint32_t step_status_line(const char* s, uint32_t p, uint32_t limit);
  uint32_t step_field(const char* s, uint32_t p, uint32_t limit);
  uint32_t end_line(const char* s, uint32_t p);
  uint32_t fail_head(Error e, uint32_t p);
  uint32_t expect_lf(uint8_t line_end, uint32_t p);
  uint32_t expect_lf_invalid(Error e, uint32_t p);
  bool end_request_line(const char* s, uint32_t p);
  bool end_field(const char* s);
  bool on_content_length(std::string_view value);
  bool on_transfer_encoding(std::string_view value);
  bool on_connection(std::string_view value);
  bool finish_head(const char* s);
  BodyKind body_kind() const;
  void mark_connection_options(const char* s);
  size_t step_body(const char* in, size_t p, size_t n, BodySink sink, void* ctx);
  size_t step_chunk_line(char c, size_t p);
  size_t step_trailer(char c, size_t p);
  size_t fail_body(Error e, size_t p);

  Kind kind_;
  Limits limits_;
  Head head_;
  Error error_ = Error::kNone;
  Error eol_error_ = Error::kNone;  // what a CR ends in if its LF comes
  Method request_method_ = Method::kGet;
  uint8_t head_state_ = 0;
  uint8_t line_end_ = 0;       // what the CR being confirmed ends
  uint8_t body_state_ = 0;
  uint8_t size_digits_ = 0;    // chunked: hex digits of the current size
  uint8_t host_count_ = 0;
  uint8_t connection_options_ = 0;  // Connection tokens naming other fields
  uint32_t flags_ = 0;         // framing facts gathered from the fields
  uint32_t scan_pos_ = 0;      // head: where scanning resumes
  uint32_t mark_ = 0;          // head: start of the element being scanned
  uint32_t name_len_ = 0;      // head: length of the current field name
  uint32_t value_start_ = 0;   // head: current field value, OWS excluded
  uint32_t value_end_ = 0;
  uint32_t ext_bytes_ = 0;     // chunked: extension bytes in this body
  uint32_t trailer_bytes_ = 0; // chunked: bytes of the trailer section
  uint64_t chunk_left_ = 0;    // bytes left of a Content-Length body or of a chunk
  uint64_t body_bytes_ = 0;
};

}  // namespace offload::http
