// The parser is two resumable state machines, one for the head and one for
// the body. Each state scans as far as it can in a tight loop (a lookup table
// per byte, eight bytes at a time for long values) and records where it
// stopped, so a head that trickles in byte by byte still costs one pass.
#include "http/http_parser.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "loop/check.h"

namespace offload::http {
namespace {

// Character classes by byte value, one bit each.
enum : uint8_t {
  kTchar = 1,       // token (RFC 9110 5.6.2)
  kVchar = 2,       // visible ASCII: a request-target byte
  kFieldChar = 4,   // field value: VCHAR, obs-text, SP, HTAB
  kHostChar = 8,    // Host value: unreserved, pct-encoded, sub-delims, ":[]"
  kQdtext = 16,     // quoted-string content other than a quoted-pair
  kSchemeChar = 32, // ALPHA DIGIT "+" "-" "."
};

constexpr bool is_in(int c, std::string_view set) {
  return c != 0 && set.find(char(c)) != std::string_view::npos;
}

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    const bool digit = c >= '0' && c <= '9';
    const bool vchar = c >= 0x21 && c <= 0x7e;
    uint8_t v = 0;
    if (alpha || digit || is_in(c, "!#$%&'*+-.^_`|~")) v |= kTchar;
    if (vchar) v |= kVchar;
    if (vchar || c >= 0x80 || c == ' ' || c == '\t') v |= kFieldChar;
    if (alpha || digit || is_in(c, "-._~%!$&'()*+,;=:[]")) v |= kHostChar;
    if (c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
        (c >= 0x5d && c <= 0x7e) || c >= 0x80)
      v |= kQdtext;
    if (alpha || digit || is_in(c, "+-.")) v |= kSchemeChar;
    t[size_t(c)] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kClass = make_classes();

constexpr std::array<int8_t, 256> make_hex() {
  std::array<int8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    t[size_t(c)] = c >= '0' && c <= '9'   ? int8_t(c - '0')
                   : c >= 'a' && c <= 'f' ? int8_t(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? int8_t(c - 'A' + 10)
                                          : int8_t(-1);
  }
  return t;
}
constexpr std::array<int8_t, 256> kHex = make_hex();

inline uint8_t cls(char c) { return kClass[uint8_t(c)]; }
inline bool is_ws(char c) { return c == ' ' || c == '\t'; }
inline char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c + 32) : c; }

// Against a literal of lower-case letters, digits and "-" only, and a name
// or value already checked to hold no control bytes, OR-ing 0x20 folds case
// exactly: the only other bytes it could match are controls.
bool is_literal(std::string_view a, std::string_view lit) {
  if (a.size() != lit.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (char(a[i] | 0x20) != lit[i]) return false;
  return true;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(cls(c) & kTchar)) return false;
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
  return s;
}

// Calls fn on each comma-separated element, OWS trimmed, empty ones included;
// stops early when fn returns false.
template <class Fn>
bool for_each_element(std::string_view v, Fn&& fn) {
  for (;;) {
    const size_t comma = v.find(',');
    if (!fn(trim_ows(v.substr(0, comma)))) return false;
    if (comma == std::string_view::npos) return true;
    v.remove_prefix(comma + 1);
  }
}

uint64_t load8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

constexpr uint64_t kOnes = 0x0101010101010101ull;
constexpr uint64_t kHighs = 0x8080808080808080ull;

// Nonzero when some byte of w is below n (n <= 128); exact as a yes/no test.
inline uint64_t has_less(uint64_t w, uint64_t n) { return (w - kOnes * n) & ~w & kHighs; }
inline uint64_t has_byte(uint64_t w, uint64_t b) { return has_less(w ^ (kOnes * b), 1); }

// The first position in [p, end) that is not a field-value byte. Eight bytes
// at a time while none is a control or DEL; a word with an HTAB (allowed but
// a control) is stepped through byte by byte.
uint32_t skip_field_chars(const char* s, uint32_t p, uint32_t end) {
  for (;;) {
    while (end - p >= 8) {
      const uint64_t w = load8(s + p);
      if (has_less(w, 0x20) | has_byte(w, 0x7f)) break;
      p += 8;
    }
    const uint32_t stop = std::min(end, p + 8);
    while (p < stop && (cls(s[p]) & kFieldChar)) ++p;
    if (p < stop || p == end) return p;
  }
}

// The first position in [p, end) that is not visible ASCII.
uint32_t skip_vchars(const char* s, uint32_t p, uint32_t end) {
  while (end - p >= 8) {
    const uint64_t w = load8(s + p);
    if (has_less(w, 0x21) | has_byte(w, 0x7f) | (w & kHighs)) break;
    p += 8;
  }
  while (p < end && (cls(s[p]) & kVchar)) ++p;
  return p;
}

// A byte that ends an element where no CR is possible: name the worst of it.
Error bad_byte(char c, Error otherwise) {
  if (c == '\0') return Error::kNul;
  if (c == '\n') return Error::kBareLF;
  return otherwise;
}

// 0 for HTTP/1.0, 1 for HTTP/1.1, -1 for another HTTP/d.d, -2 for junk.
int version_minor(std::string_view v) {
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || v[6] != '.') return -2;
  const char major = v[5], minor = v[7];
  if (major < '0' || major > '9' || minor < '0' || minor > '9') return -2;
  if (major != '1' || minor > '1') return -1;
  return minor - '0';
}

Method method_of(std::string_view m) {
  struct Entry {
    std::string_view text;
    Method method;
  };
  static constexpr Entry kMethods[] = {
      {"GET", Method::kGet},         {"HEAD", Method::kHead},   {"POST", Method::kPost},
      {"PUT", Method::kPut},         {"DELETE", Method::kDelete}, {"OPTIONS", Method::kOptions},
      {"PATCH", Method::kPatch},     {"TRACE", Method::kTrace}, {"CONNECT", Method::kConnect},
  };
  for (const auto& e : kMethods)
    if (e.text == m) return e.method;  // methods are case-sensitive
  return Method::kOther;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// reg-name or IPv4address (RFC 3986 3.2.2): unreserved, sub-delims and
// pct-encoded, where "%" is followed by two hex digits.
bool is_reg_name(std::string_view h) {
  for (size_t i = 0; i < h.size(); ++i) {
    const char c = h[i];
    if (c == ':' || c == '[' || c == ']' || !(cls(c) & kHostChar)) return false;
    if (c == '%') {
      if (h.size() - i < 3 || kHex[uint8_t(h[i + 1])] < 0 || kHex[uint8_t(h[i + 2])] < 0) return false;
      i += 2;
    }
  }
  return true;
}

// The inside of an IP-literal: IPv6address or IPvFuture, held to their
// characters (hex digits, ":", ".", "v", unreserved, sub-delims); no zone.
bool is_ip_literal(std::string_view h) {
  if (h.empty()) return false;
  for (char c : h)
    if (c == '[' || c == ']' || c == '%' || !(cls(c) & kHostChar)) return false;
  return true;
}

// uri-host [":" port] (RFC 9110 7.2, RFC 3986 3.2.2-3.2.3): the one rule for
// a Host value and for the authority of an absolute-form or CONNECT target,
// so a target cannot carry what the Host field may not. There is no
// userinfo ("@" is no host character; RFC 9110 4.2.4 forbids it in http(s)).
// An empty value (Host for a target without authority) is allowed unless
// `host_required`; an empty host before a port never is.
bool is_host_port(std::string_view v, bool host_required, bool port_required) {
  std::string_view host = v, port;
  bool has_port = false;
  if (!v.empty() && v.front() == '[') {
    const size_t close = v.find(']');
    if (close == std::string_view::npos || !is_ip_literal(v.substr(1, close - 1))) return false;
    host = v.substr(0, close + 1);
    const std::string_view rest = v.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      has_port = true;
      port = rest.substr(1);
    }
  } else {
    const size_t colon = v.find(':');
    if (colon != std::string_view::npos) {
      host = v.substr(0, colon);
      port = v.substr(colon + 1);
      has_port = true;
    }
    if (!is_reg_name(host)) return false;
  }
  if (host.empty() && (host_required || has_port)) return false;
  if (port_required && port.empty()) return false;
  return port.empty() || all_digits(port);
}

// authority-form (RFC 9112 3.2.3): uri-host ":" port, both present.
bool is_authority_form(std::string_view t) { return is_host_port(t, true, true); }

// absolute-form, held to "scheme://authority" with a valid, non-empty
// authority (RFC 9110 4.2.1: an http URI with an empty host is invalid).
// Sets `authority` (offsets within t) when it is.
bool is_absolute_form(std::string_view t, Span& authority) {
  const size_t sep = t.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  if (!((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z'))) return false;
  for (size_t i = 1; i < sep; ++i)
    if (!(cls(t[i]) & kSchemeChar)) return false;
  const std::string_view rest = t.substr(sep + 3);
  const std::string_view auth = rest.substr(0, rest.find_first_of("/?"));
  if (!is_host_port(auth, true, false)) return false;
  authority = {uint32_t(sep + 3), uint32_t(auth.size())};
  return true;
}

bool valid_target(std::string_view method, std::string_view t, Span& authority) {
  if (method == "CONNECT") return is_authority_form(t);
  if (t == "*") return method == "OPTIONS";
  if (t[0] == '/') return true;
  return is_absolute_form(t, authority);
}

// 1*DIGIT into n, refusing overflow.
bool parse_decimal(std::string_view s, uint64_t& n) {
  if (!all_digits(s)) return false;
  n = 0;
  for (char c : s) {
    const uint64_t d = uint64_t(c - '0');
    if (n > (UINT64_MAX - d) / 10) return false;
    n = n * 10 + d;
  }
  return true;
}

enum HeadState : uint8_t {
  kHsRequestStart,  // before the request line: empty lines allowed
  kHsMethod,
  kHsTarget,
  kHsVersion,
  kHsStatusVersion,
  kHsStatusCode,
  kHsStatusEnd,     // after the three digits: SP or CR
  kHsReason,
  kHsLineStart,     // a field line or the final CRLF
  kHsName,
  kHsValueStart,    // OWS before the value
  kHsValue,
  kHsLF,            // a CR was seen; its LF must follow
  kHsDone,
  kHsFailed,
};

// What the CR that led to kHsLF ends, once its LF has come.
enum LineEnd : uint8_t {
  kEndEmptyLead,
  kEndRequestLine,
  kEndStatusLine,
  kEndField,
  kEndHead,
  kEndInvalid,  // the line is wrong (eol_error_), the CR itself was fine
};

enum BodyState : uint8_t {
  kBsIdle,          // head not complete yet
  kBsLength,
  kBsUntilClose,
  kBsSize,          // chunk-size hex digits
  kBsSizeWs,        // BWS after the size: only a ";" may follow
  kBsExtPreName,    // after ";"
  kBsExtName,
  kBsExtPostName,
  kBsExtPreValue,   // after "="
  kBsExtToken,
  kBsExtQuoted,
  kBsExtQuotedPair,
  kBsExtPostValue,
  kBsSizeLF,
  kBsData,
  kBsDataCR,
  kBsDataLF,
  kBsTrLineStart,
  kBsTrName,
  kBsTrValue,
  kBsTrLF,
  kBsTrFinalLF,
  kBsDone,
  kBsFailed,
};

// Facts about the fields, in Parser::flags_.
enum : uint32_t {
  kSeenLength = 1u << 0,
  kSeenTE = 1u << 1,
  kTEChunked = 1u << 2,
  kTEChunkedLast = 1u << 3,
  kTEOther = 1u << 4,
  kConnClose = 1u << 5,
  kConnKeepAlive = 1u << 6,
  kConnUpgrade = 1u << 7,
  kSeenUpgrade = 1u << 8,
  kExpectContinue = 1u << 9,
};

constexpr uint8_t kConnectionOptionsMax = 32;

enum class FieldId : uint8_t {
  kOther, kHost, kContentLength, kTransferEncoding, kConnection, kUpgrade, kExpect, kHopByHop
};

FieldId classify(std::string_view n) {
  // Most names are none of these: the length and the first letter say so.
  switch (n.size()) {
    case 2: return is_literal(n, "te") ? FieldId::kHopByHop : FieldId::kOther;
    case 4: return is_literal(n, "host") ? FieldId::kHost : FieldId::kOther;
    case 6: return is_literal(n, "expect") ? FieldId::kExpect : FieldId::kOther;
    case 7:
      if (is_literal(n, "upgrade")) return FieldId::kUpgrade;
      return is_literal(n, "trailer") ? FieldId::kHopByHop : FieldId::kOther;
    case 10:
      if ((n[0] | 0x20) == 'c') return is_literal(n, "connection") ? FieldId::kConnection : FieldId::kOther;
      return is_literal(n, "keep-alive") ? FieldId::kHopByHop : FieldId::kOther;
    case 14: return is_literal(n, "content-length") ? FieldId::kContentLength : FieldId::kOther;
    case 16: return is_literal(n, "proxy-connection") ? FieldId::kHopByHop : FieldId::kOther;
    case 17: return is_literal(n, "transfer-encoding") ? FieldId::kTransferEncoding : FieldId::kOther;
    case 18: return is_literal(n, "proxy-authenticate") ? FieldId::kHopByHop : FieldId::kOther;
    case 19: return is_literal(n, "proxy-authorization") ? FieldId::kHopByHop : FieldId::kOther;
    default: return FieldId::kOther;
  }
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

int status_for(Error e) {
  switch (e) {
    case Error::kNone: return 0;
    case Error::kBadStatusLine: return 502;
    case Error::kUnsupportedVersion: return 505;
    case Error::kTargetTooLong: return 414;
    case Error::kHeaderTooLarge:
    case Error::kTooManyHeaders: return 431;
    case Error::kUnsupportedTransferEncoding: return 501;
    case Error::kBodyTooLarge: return 413;
    default: return 400;
  }
}

std::string_view describe(Error e) {
  switch (e) {
    case Error::kNone: return "no error";
    case Error::kBadRequestLine: return "bad request line";
    case Error::kBadStatusLine: return "bad status line";
    case Error::kBadVersion: return "bad version";
    case Error::kUnsupportedVersion: return "unsupported version";
    case Error::kTargetTooLong: return "target too long";
    case Error::kBadHeaderName: return "bad header name";
    case Error::kBadHeaderValue: return "bad header value";
    case Error::kObsFold: return "obsolete line folding";
    case Error::kBareCR: return "bare CR";
    case Error::kBareLF: return "bare LF";
    case Error::kNul: return "NUL byte";
    case Error::kHeaderTooLarge: return "header too large";
    case Error::kTooManyHeaders: return "too many headers";
    case Error::kBadContentLength: return "bad content-length";
    case Error::kLengthAndChunked: return "content-length with transfer-encoding";
    case Error::kBadTransferEncoding: return "bad transfer-encoding";
    case Error::kUnsupportedTransferEncoding: return "unsupported transfer-encoding";
    case Error::kMissingHost: return "missing or repeated host";
    case Error::kBadChunkSize: return "bad chunk size";
    case Error::kBadChunkExtension: return "bad chunk extension";
    case Error::kBadChunkTerminator: return "bad chunk terminator";
    case Error::kBadTrailer: return "bad trailer";
    case Error::kBodyTooLarge: return "body too large";
    case Error::kUnexpectedEof: return "unexpected end of message";
  }
  return "unknown error";
}

Parser::Parser(Kind kind, const Limits& limits) : kind_(kind), limits_(limits) {
  head_.headers.reserve(limits_.header_count_max);
  reset();
}

void Parser::reset() {
  head_.method = Method::kOther;
  head_.method_text = {};
  head_.target = {};
  head_.status = 0;
  head_.reason = {};
  head_.version_minor = 1;
  head_.head_bytes = 0;
  head_.body = BodyKind::kNone;
  head_.content_length = 0;
  head_.keep_alive = true;
  head_.upgrade = false;
  head_.expect_continue = false;
  head_.host = {};
  head_.authority = {};
  head_.headers.clear();  // keeps the capacity: no allocation per message
  error_ = eol_error_ = Error::kNone;
  head_state_ = kind_ == Kind::kRequest ? kHsRequestStart : kHsStatusVersion;
  line_end_ = 0;
  body_state_ = kBsIdle;
  size_digits_ = host_count_ = connection_options_ = 0;
  flags_ = scan_pos_ = mark_ = name_len_ = value_start_ = value_end_ = 0;
  ext_bytes_ = trailer_bytes_ = 0;
  chunk_left_ = body_bytes_ = 0;
}

bool Parser::body_done() const { return head_state_ == kHsDone && body_state_ == kBsDone; }

// ---------------------------------------------------------------- the head

Result Parser::parse_head(std::string_view msg) {
  if (head_state_ == kHsDone) return Result::kComplete;
  if (head_state_ == kHsFailed) return Result::kError;
  OFFLOAD_ASSERT(msg.size() >= scan_pos_);
  // Nothing past header_bytes_max is ever looked at: reaching it unfinished
  // is the error, whatever the rest of the buffer holds.
  const uint32_t limit = uint32_t(std::min<size_t>(msg.size(), limits_.header_bytes_max));
  uint32_t p = scan_pos_;
  while (p < limit && head_state_ < kHsDone) p = step_head(msg.data(), p, limit);
  scan_pos_ = p;
  if (head_state_ == kHsDone) return Result::kComplete;
  if (head_state_ == kHsFailed) return Result::kError;
  if (p == limits_.header_bytes_max) {
    fail_head(Error::kHeaderTooLarge, p);
    return Result::kError;
  }
  return Result::kIncomplete;
}

uint32_t Parser::fail_head(Error e, uint32_t p) {
  error_ = e;
  head_state_ = kHsFailed;
  return p;
}

uint32_t Parser::expect_lf(uint8_t line_end, uint32_t p) {
  line_end_ = line_end;
  head_state_ = kHsLF;
  return p;
}

uint32_t Parser::expect_lf_invalid(Error e, uint32_t p) {
  eol_error_ = e;
  return expect_lf(kEndInvalid, p);
}

uint32_t Parser::step_head(const char* s, uint32_t p, uint32_t limit) {
  switch (head_state_) {
    case kHsRequestStart:
    case kHsMethod:
    case kHsTarget:
    case kHsVersion: return step_request_line(s, p, limit);
    case kHsStatusVersion:
    case kHsStatusCode:
    case kHsStatusEnd:
    case kHsReason: return step_status_line(s, p, limit);
    case kHsLineStart:
    case kHsName:
    case kHsValueStart:
    case kHsValue: return step_field(s, p, limit);
    case kHsLF:
      if (s[p] != '\n') return fail_head(Error::kBareCR, p);
      return end_line(s, p + 1);
    default: OFFLOAD_ASSERT(false);
  }
  return p;
}

uint32_t Parser::step_request_line(const char* s, uint32_t p, uint32_t limit) {
  switch (head_state_) {
    case kHsRequestStart:
      if (s[p] == '\r') return expect_lf(kEndEmptyLead, p + 1);
      if (!(cls(s[p]) & kTchar)) return fail_head(bad_byte(s[p], Error::kBadRequestLine), p);
      head_.method_text.off = p;
      head_state_ = kHsMethod;
      return p + 1;
    case kHsMethod:
      while (p < limit && (cls(s[p]) & kTchar)) ++p;
      if (p == limit) return p;
      if (s[p] == ' ') {
        head_.method_text.len = p - head_.method_text.off;
        head_.target.off = p + 1;
        head_state_ = kHsTarget;
        return p + 1;
      }
      if (s[p] == '\r') return expect_lf_invalid(Error::kBadRequestLine, p + 1);
      return fail_head(bad_byte(s[p], Error::kBadRequestLine), p);
    case kHsTarget: {
      p = skip_vchars(s, p, limit);
      const uint32_t len = p - head_.target.off;
      if (len > limits_.target_bytes_max) return fail_head(Error::kTargetTooLong, p);
      if (p == limit) return p;
      if (s[p] == '\r') return expect_lf_invalid(Error::kBadRequestLine, p + 1);
      if (s[p] != ' ') return fail_head(bad_byte(s[p], Error::kBadRequestLine), p);
      head_.target.len = len;
      Span authority;
      if (len == 0 || !valid_target(head_.method_text.in({s, p}), head_.target.in({s, p}), authority))
        return fail_head(Error::kBadRequestLine, p);
      if (authority.len != 0) head_.authority = {head_.target.off + authority.off, authority.len};
      mark_ = p + 1;
      head_state_ = kHsVersion;
      return p + 1;
    }
    case kHsVersion:
      while (p < limit && (cls(s[p]) & kVchar)) ++p;
      if (p - mark_ > 8) return fail_head(Error::kBadVersion, p);
      if (p == limit) return p;
      if (s[p] == '\r') return expect_lf(kEndRequestLine, p + 1);
      if (s[p] == ' ') return fail_head(Error::kBadRequestLine, p);  // a fourth element
      return fail_head(bad_byte(s[p], Error::kBadVersion), p);
    default: OFFLOAD_ASSERT(false);
  }
  return p;
}

uint32_t Parser::step_status_line(const char* s, uint32_t p, uint32_t limit) {
  switch (head_state_) {
    case kHsStatusVersion: {
      while (p < limit && (cls(s[p]) & kVchar)) ++p;
      if (p > 8) return fail_head(Error::kBadStatusLine, p);
      if (p == limit) return p;
      if (s[p] == '\r') return expect_lf_invalid(Error::kBadStatusLine, p + 1);
      if (s[p] != ' ') return fail_head(bad_byte(s[p], Error::kBadStatusLine), p);
      const int minor = version_minor({s, p});
      if (minor == -1) return fail_head(Error::kUnsupportedVersion, p);
      if (minor < 0) return fail_head(Error::kBadStatusLine, p);
      head_.version_minor = uint8_t(minor);
      mark_ = p + 1;
      head_state_ = kHsStatusCode;
      return p + 1;
    }
    case kHsStatusCode:
      while (p < limit && p - mark_ < 3 && s[p] >= '0' && s[p] <= '9') ++p;
      if (p - mark_ == 3) {
        head_.status = uint16_t((s[mark_] - '0') * 100 + (s[mark_ + 1] - '0') * 10 + (s[mark_ + 2] - '0'));
        if (head_.status < 100 || head_.status > 599) return fail_head(Error::kBadStatusLine, p);
        head_state_ = kHsStatusEnd;
        return p;
      }
      if (p == limit) return p;
      if (s[p] == '\r') return expect_lf_invalid(Error::kBadStatusLine, p + 1);
      return fail_head(bad_byte(s[p], Error::kBadStatusLine), p);
    case kHsStatusEnd:
      if (s[p] == ' ') {
        head_.reason.off = p + 1;
        head_state_ = kHsReason;
        return p + 1;
      }
      if (s[p] == '\r') {  // no SP before an empty reason: accepted, see the header
        head_.reason = {p, 0};
        return expect_lf(kEndStatusLine, p + 1);
      }
      return fail_head(bad_byte(s[p], Error::kBadStatusLine), p);
    case kHsReason:
      p = skip_field_chars(s, p, limit);
      if (p == limit) return p;
      if (s[p] != '\r') return fail_head(bad_byte(s[p], Error::kBadStatusLine), p);
      head_.reason.len = p - head_.reason.off;
      return expect_lf(kEndStatusLine, p + 1);
    default: OFFLOAD_ASSERT(false);
  }
  return p;
}

// One call usually takes a field line from its first byte to its LF, and
// goes on with the next: the states fall through into each other and are
// only recorded when the input runs out.
uint32_t Parser::step_field(const char* s, uint32_t p, uint32_t limit) {
  for (;;) {
    switch (head_state_) {
      case kHsLineStart:
        if (s[p] == '\r') return expect_lf(kEndHead, p + 1);
        if (!(cls(s[p]) & kTchar)) {
          // Whitespace before the first field is obs-fold's twin (RFC 9112 2.2).
          if (is_ws(s[p])) return fail_head(Error::kObsFold, p);
          return fail_head(bad_byte(s[p], Error::kBadHeaderName), p);
        }
        if (head_.headers.size() >= limits_.header_count_max)
          return fail_head(Error::kTooManyHeaders, p);
        mark_ = p++;
        head_state_ = kHsName;
        [[fallthrough]];
      case kHsName:
        while (p < limit && (cls(s[p]) & kTchar)) ++p;
        if (p == limit) return p;
        if (s[p] != ':') {
          if (s[p] == '\r') return expect_lf_invalid(Error::kBadHeaderName, p + 1);
          return fail_head(bad_byte(s[p], Error::kBadHeaderName), p);  // SP before ':' too
        }
        name_len_ = p++ - mark_;
        head_state_ = kHsValueStart;
        [[fallthrough]];
      case kHsValueStart:
        while (p < limit && is_ws(s[p])) ++p;
        if (p == limit) return p;
        value_start_ = p;
        head_state_ = kHsValue;
        [[fallthrough]];
      case kHsValue: {
        p = skip_field_chars(s, p, limit);
        if (p == limit) return p;
        if (s[p] != '\r') return fail_head(bad_byte(s[p], Error::kBadHeaderValue), p);
        uint32_t e = p;
        while (e > value_start_ && is_ws(s[e - 1])) --e;
        value_end_ = e;
        if (p + 1 == limit || s[p + 1] != '\n') return expect_lf(kEndField, p + 1);
        p += 2;  // the LF came with the CR: finish the line here
        if (!end_field(s)) return p;
        head_state_ = kHsLineStart;
        if (p == limit) return p;
        break;
      }
      default: OFFLOAD_ASSERT(false); return p;
    }
  }
}

// p is just past the LF.
uint32_t Parser::end_line(const char* s, uint32_t p) {
  switch (line_end_) {
    case kEndEmptyLead: head_state_ = kHsRequestStart; return p;
    case kEndRequestLine:
      if (!end_request_line(s, p)) return p;
      head_state_ = kHsLineStart;
      return p;
    case kEndStatusLine: head_state_ = kHsLineStart; return p;
    case kEndField:
      if (!end_field(s)) return p;
      head_state_ = kHsLineStart;
      return p;
    case kEndHead:
      head_.head_bytes = p;
      if (!finish_head(s)) return p;
      head_state_ = kHsDone;
      return p;
    default: return fail_head(eol_error_, p);
  }
}

bool Parser::end_request_line(const char* s, uint32_t p) {
  const int minor = version_minor({s + mark_, p - 2 - mark_});
  if (minor < 0) {
    fail_head(minor == -1 ? Error::kUnsupportedVersion : Error::kBadVersion, p);
    return false;
  }
  head_.version_minor = uint8_t(minor);
  head_.method = method_of(head_.method_text.in({s, p}));
  return true;
}

bool Parser::end_field(const char* s) {
  HeaderField f;
  f.name = {mark_, name_len_};
  f.value = {value_start_, value_end_ - value_start_};
  const std::string_view value{s + f.value.off, f.value.len};
  bool ok = true;
  switch (classify({s + f.name.off, f.name.len})) {
    case FieldId::kOther: break;
    case FieldId::kHopByHop: f.hop_by_hop = true; break;
    case FieldId::kHost:
      if (kind_ != Kind::kRequest) break;
      if (host_count_++ == 0) head_.host = f.value;
      host_count_ = std::min<uint8_t>(host_count_, 2);
      if (!is_host_port(value, false, false)) {
        fail_head(Error::kBadHeaderValue, 0);
        ok = false;
      }
      break;
    case FieldId::kContentLength: ok = on_content_length(value); break;
    case FieldId::kTransferEncoding:
      f.hop_by_hop = true;
      ok = on_transfer_encoding(value);
      break;
    case FieldId::kConnection:
      f.hop_by_hop = true;
      ok = on_connection(value);
      break;
    case FieldId::kUpgrade:
      f.hop_by_hop = true;
      flags_ |= kSeenUpgrade;
      break;
    case FieldId::kExpect:
      if (is_literal(value, "100-continue")) flags_ |= kExpectContinue;
      break;
  }
  if (!ok) return false;
  head_.headers.push_back(f);  // within the reserved capacity: counted at the line start
  return true;
}

// Duplicates and lists are fine while every element is the same number.
bool Parser::on_content_length(std::string_view value) {
  const bool seen = flags_ & kSeenLength;
  uint64_t first = head_.content_length;
  bool have = seen;
  const bool ok = for_each_element(value, [&](std::string_view el) {
    uint64_t n;
    if (!parse_decimal(el, n) || (have && n != first)) return false;
    first = n;
    have = true;
    return true;
  });
  if (!ok) {
    fail_head(Error::kBadContentLength, 0);
    return false;
  }
  head_.content_length = first;
  flags_ |= kSeenLength;
  return true;
}

// Fields add up to one list; only its shape is checked here, the verdict on
// the whole list comes in finish_head.
bool Parser::on_transfer_encoding(std::string_view value) {
  flags_ |= kSeenTE;
  const bool ok = for_each_element(value, [&](std::string_view el) {
    const size_t semi = el.find(';');
    const std::string_view coding = trim_ows(el.substr(0, semi));
    if (!is_token(coding)) return false;
    flags_ &= ~kTEChunkedLast;
    if (!is_literal(coding, "chunked")) {
      flags_ |= kTEOther;
      return true;
    }
    if ((flags_ & kTEChunked) || semi != std::string_view::npos) return false;
    flags_ |= kTEChunked | kTEChunkedLast;
    return true;
  });
  if (!ok) fail_head(Error::kBadTransferEncoding, 0);
  return ok;
}

bool Parser::on_connection(std::string_view value) {
  const bool ok = for_each_element(value, [&](std::string_view el) {
    if (el.empty()) return true;
    if (!is_token(el)) return false;
    if (is_literal(el, "close")) {
      flags_ |= kConnClose;
    } else if (is_literal(el, "keep-alive")) {
      flags_ |= kConnKeepAlive;
    } else if (is_literal(el, "upgrade")) {
      flags_ |= kConnUpgrade;
    } else if (++connection_options_ > kConnectionOptionsMax) {
      return false;
    }
    return true;
  });
  if (!ok) fail_head(Error::kBadHeaderValue, 0);
  return ok;
}

bool Parser::finish_head(const char* s) {
  const bool request = kind_ == Kind::kRequest;
  Error e = Error::kNone;
  if (request && (host_count_ > 1 || (head_.version_minor == 1 && host_count_ == 0))) {
    e = Error::kMissingHost;
  } else if (flags_ & kSeenTE) {
    const bool chunked_not_last = (flags_ & kTEChunked) && !(flags_ & kTEChunkedLast);
    if (flags_ & kSeenLength) {
      e = Error::kLengthAndChunked;
    } else if (head_.version_minor == 0) {
      e = Error::kBadTransferEncoding;
    } else if (chunked_not_last || (request && !(flags_ & kTEChunkedLast))) {
      e = Error::kBadTransferEncoding;  // the length cannot be known (RFC 9112 6.3)
    } else if (flags_ & kTEOther) {
      e = Error::kUnsupportedTransferEncoding;
    }
  }
  head_.body = body_kind();
  if (e == Error::kNone && head_.body == BodyKind::kLength && limits_.body_bytes_max != 0 &&
      head_.content_length > limits_.body_bytes_max)
    e = Error::kBodyTooLarge;
  if (e != Error::kNone) {
    fail_head(e, 0);
    return false;
  }
  const bool close = flags_ & kConnClose;
  head_.keep_alive = head_.version_minor == 1 ? !close : (flags_ & kConnKeepAlive) && !close;
  if (head_.body == BodyKind::kUntilClose) head_.keep_alive = false;
  head_.upgrade = (flags_ & kConnUpgrade) && (flags_ & kSeenUpgrade);
  head_.expect_continue = request && head_.version_minor == 1 && (flags_ & kExpectContinue);
  if (connection_options_ != 0) mark_connection_options(s);
  switch (head_.body) {
    case BodyKind::kNone: body_state_ = kBsDone; break;
    case BodyKind::kLength:
      chunk_left_ = head_.content_length;
      body_state_ = chunk_left_ == 0 ? kBsDone : kBsLength;
      break;
    case BodyKind::kChunked: body_state_ = kBsSize; break;
    case BodyKind::kUntilClose: body_state_ = kBsUntilClose; break;
  }
  return true;
}

BodyKind Parser::body_kind() const {
  const bool framed_te = flags_ & kTEChunkedLast;
  if (kind_ == Kind::kRequest) {
    if (framed_te) return BodyKind::kChunked;
    return (flags_ & kSeenLength) ? BodyKind::kLength : BodyKind::kNone;
  }
  const uint16_t st = head_.status;
  if (st < 200 || st == 204 || st == 304 || request_method_ == Method::kHead) return BodyKind::kNone;
  if (request_method_ == Method::kConnect && st < 300) return BodyKind::kNone;  // a tunnel
  if (framed_te) return BodyKind::kChunked;
  return (flags_ & kSeenLength) ? BodyKind::kLength : BodyKind::kUntilClose;
}

// Every field named by a Connection option is hop-by-hop. At most
// kConnectionOptionsMax options, so this is bounded by that times the fields.
void Parser::mark_connection_options(const char* s) {
  auto& fields = head_.headers;
  for (const HeaderField& c : fields) {
    if (!is_literal({s + c.name.off, c.name.len}, "connection")) continue;
    for_each_element({s + c.value.off, c.value.len}, [&](std::string_view option) {
      for (HeaderField& f : fields)
        if (f.name.len == option.size() && iequals({s + f.name.off, f.name.len}, option))
          f.hop_by_hop = true;
      return true;
    });
  }
}

// ---------------------------------------------------------------- the body

BodyProgress Parser::parse_body(std::string_view in, BodySink sink, void* ctx) {
  OFFLOAD_ASSERT(head_state_ == kHsDone);
  size_t p = 0;
  while (p < in.size() && body_state_ < kBsDone) p = step_body(in.data(), p, in.size(), sink, ctx);
  BodyProgress r;
  r.consumed = p;
  r.done = body_state_ == kBsDone;
  if (body_state_ == kBsFailed) r.error = error_;
  return r;
}

bool Parser::finish_at_eof() {
  if (body_done()) return true;
  if (head_state_ == kHsDone && body_state_ == kBsUntilClose) {
    body_state_ = kBsDone;
    return true;
  }
  if (error_ == Error::kNone) error_ = Error::kUnexpectedEof;
  if (head_state_ != kHsDone) head_state_ = kHsFailed;
  else body_state_ = kBsFailed;
  return false;
}

size_t Parser::fail_body(Error e, size_t p) {
  error_ = e;
  body_state_ = kBsFailed;
  return p;
}

size_t Parser::step_body(const char* in, size_t p, size_t n, BodySink sink, void* ctx) {
  switch (body_state_) {
    case kBsLength:
    case kBsData: {
      const size_t take = size_t(std::min<uint64_t>(chunk_left_, n - p));
      if (sink != nullptr) sink(ctx, in + p, take);
      body_bytes_ += take;
      chunk_left_ -= take;
      if (chunk_left_ == 0) body_state_ = body_state_ == kBsLength ? kBsDone : kBsDataCR;
      return p + take;
    }
    case kBsUntilClose: {
      // Up to the limit the bytes are body, wherever the input was cut; the
      // first byte past it is the error.
      size_t take = n - p;
      const bool over = limits_.body_bytes_max != 0 && take > limits_.body_bytes_max - body_bytes_;
      if (over) take = size_t(limits_.body_bytes_max - body_bytes_);
      if (sink != nullptr && take != 0) sink(ctx, in + p, take);
      body_bytes_ += take;
      return over ? fail_body(Error::kBodyTooLarge, p + take) : n;
    }
    case kBsDataCR:
      if (in[p] != '\r') return fail_body(Error::kBadChunkTerminator, p);
      body_state_ = kBsDataLF;
      return p + 1;
    case kBsDataLF:
      if (in[p] != '\n') return fail_body(Error::kBadChunkTerminator, p);
      body_state_ = kBsSize;
      size_digits_ = 0;
      return p + 1;
    case kBsTrLineStart:
    case kBsTrName:
    case kBsTrValue:
    case kBsTrLF:
    case kBsTrFinalLF: return step_trailer(in[p], p);
    default: return step_chunk_line(in[p], p);
  }
}

// The chunk-size line: size [ BWS ";" ext ]* CRLF, one byte at a time.
size_t Parser::step_chunk_line(char c, size_t p) {
  if (body_state_ == kBsSize) {
    const int h = kHex[uint8_t(c)];
    if (h >= 0) {
      if (size_digits_ == 16) return fail_body(Error::kBadChunkSize, p);
      chunk_left_ = chunk_left_ << 4 | uint64_t(h);
      ++size_digits_;
      if (limits_.body_bytes_max != 0 && chunk_left_ > limits_.body_bytes_max - body_bytes_)
        return fail_body(Error::kBodyTooLarge, p);
      return p + 1;
    }
    if (size_digits_ == 0) return fail_body(Error::kBadChunkSize, p);
    if (c == '\r') {
      body_state_ = kBsSizeLF;
      return p + 1;
    }
    if (c == '\n') return fail_body(Error::kBareLF, p);
    if (c != ';' && !is_ws(c)) return fail_body(Error::kBadChunkSize, p);
    body_state_ = c == ';' ? kBsExtPreName : kBsSizeWs;
    ++ext_bytes_;
    return p + 1;
  }
  if (body_state_ == kBsSizeLF) {
    if (c != '\n') return fail_body(Error::kBareCR, p);
    body_state_ = chunk_left_ == 0 ? kBsTrLineStart : kBsData;
    return p + 1;
  }
  // An extension byte. They are validated, counted and dropped.
  if (++ext_bytes_ > limits_.header_bytes_max) return fail_body(Error::kBadChunkExtension, p);
  const uint8_t k = cls(c);
  uint8_t next = kBsFailed;
  switch (body_state_) {
    case kBsSizeWs:
      next = is_ws(c) ? kBsSizeWs : c == ';' ? kBsExtPreName : kBsFailed;
      if (next == kBsFailed) return fail_body(Error::kBadChunkSize, p);
      break;
    case kBsExtPreName: next = is_ws(c) ? kBsExtPreName : (k & kTchar) ? kBsExtName : kBsFailed; break;
    case kBsExtName:
    case kBsExtPostName:
      next = (k & kTchar) && body_state_ == kBsExtName ? kBsExtName
             : is_ws(c)                                ? kBsExtPostName
             : c == '='                                ? kBsExtPreValue
             : c == ';'                                ? kBsExtPreName
             : c == '\r'                               ? kBsSizeLF
                                                       : kBsFailed;
      break;
    case kBsExtPreValue:
      next = is_ws(c) ? kBsExtPreValue : c == '"' ? kBsExtQuoted : (k & kTchar) ? kBsExtToken : kBsFailed;
      break;
    case kBsExtToken:
    case kBsExtPostValue:
      next = (k & kTchar) && body_state_ == kBsExtToken ? kBsExtToken
             : is_ws(c)                                 ? kBsExtPostValue
             : c == ';'                                 ? kBsExtPreName
             : c == '\r'                                ? kBsSizeLF
                                                        : kBsFailed;
      break;
    case kBsExtQuoted:
      next = (k & kQdtext) ? kBsExtQuoted : c == '\\' ? kBsExtQuotedPair : c == '"' ? kBsExtPostValue : kBsFailed;
      break;
    case kBsExtQuotedPair: next = (k & kFieldChar) ? kBsExtQuoted : kBsFailed; break;
    default: OFFLOAD_ASSERT(false);
  }
  if (next == kBsFailed) return fail_body(bad_byte(c, Error::kBadChunkExtension), p);
  body_state_ = next;
  return p + 1;
}

// Trailer fields: checked like header fields, then dropped.
size_t Parser::step_trailer(char c, size_t p) {
  if (++trailer_bytes_ > limits_.header_bytes_max) return fail_body(Error::kHeaderTooLarge, p);
  const uint8_t k = cls(c);
  uint8_t next = kBsFailed;
  switch (body_state_) {
    case kBsTrLineStart: next = c == '\r' ? kBsTrFinalLF : (k & kTchar) ? kBsTrName : kBsFailed; break;
    case kBsTrName: next = (k & kTchar) ? kBsTrName : c == ':' ? kBsTrValue : kBsFailed; break;
    case kBsTrValue: next = (k & kFieldChar) ? kBsTrValue : c == '\r' ? kBsTrLF : kBsFailed; break;
    case kBsTrLF: next = c == '\n' ? kBsTrLineStart : kBsFailed; break;
    case kBsTrFinalLF: next = c == '\n' ? kBsDone : kBsFailed; break;
    default: OFFLOAD_ASSERT(false);
  }
  if (next == kBsFailed) return fail_body(Error::kBadTrailer, p);
  body_state_ = next;
  return p + 1;
}

}  // namespace offload::http
