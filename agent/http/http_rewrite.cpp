#include "http/http_rewrite.h"

#include <array>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace offload {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if ((a[i] | 0x20) != (b[i] | 0x20)) return false;
  return true;
}

// Appends to a fixed buffer; remembers overflow instead of checking each call.
class HeadWriter {
 public:
  HeadWriter(char* out, size_t cap) : out_(out), cap_(cap) {}
  HeadWriter& operator<<(std::string_view s) {
    if (len_ + s.size() > cap_) {
      overflow_ = true;
    } else if (!s.empty()) {  // an empty view may have a null data(): not for memcpy
      std::memcpy(out_ + len_, s.data(), s.size());
      len_ += s.size();
    }
    return *this;
  }
  HeadWriter& operator<<(uint64_t n) {
    char digits[24];
    auto r = fmt::format_to_n(digits, sizeof digits, "{}", n);
    return *this << std::string_view(digits, r.size);
  }
  size_t finish() const { return overflow_ ? 0 : len_; }

 private:
  char* out_;
  size_t cap_;
  size_t len_ = 0;
  bool overflow_ = false;
};

}  // namespace

size_t write_upstream_request_head(const http::Head& head, std::string_view msg,
                                   const ForwardInfo& info, char* out, size_t cap) {
  HeadWriter w(out, cap);
  // An absolute-form target ("http://host/path") goes upstream in origin
  // form, its authority replacing Host (RFC 9112 3.2.2), so the server and
  // the agent agree on which host was asked for. The parser validated the
  // authority by the rule for a Host value.
  std::string_view target = head.target.in(msg);
  const std::string_view authority = head.authority.in(msg);
  std::string_view slash;
  if (!authority.empty()) {
    const uint32_t path = head.authority.off + head.authority.len;
    target = msg.substr(path, head.target.off + head.target.len - path);
    // An empty path is "/", or "*" for OPTIONS (RFC 9112 3.2.1, 3.2.4).
    if (target.empty() && head.method == http::Method::kOptions) target = "*";
    else if (target.empty() || target.front() == '?') slash = "/";
  }
  w << head.method_text.in(msg) << " " << slash << target << " HTTP/1.1\r\n";
  std::string_view xff, forwarded;
  bool have_host = false;
  if (!authority.empty()) {
    w << "Host: " << authority << "\r\n";
    have_host = true;
  }
  for (const auto& f : head.headers) {
    std::string_view name = f.name.in(msg);
    const bool is_host = iequals(name, "host");
    // Host is end-to-end whatever a Connection header says about it.
    // An upgrade is asked of the next hop: the one hop-by-hop field that goes on.
    const bool upgrade_field = info.upgrade && iequals(name, "upgrade");
    if ((f.hop_by_hop && !is_host && !upgrade_field) || (is_host && !authority.empty())) continue;
    if (iequals(name, "content-length") || iequals(name, "expect")) continue;
    if (iequals(name, "x-forwarded-for")) {
      xff = f.value.in(msg);  // the last one wins; ours is appended below
      continue;
    }
    if (iequals(name, "forwarded")) {
      forwarded = f.value.in(msg);
      continue;
    }
    have_host = have_host || is_host;
    w << name << ": " << f.value.in(msg) << "\r\n";
  }
  if (!have_host && !info.default_host.empty()) w << "Host: " << info.default_host << "\r\n";
  if (info.upgrade) w << "Connection: upgrade\r\n";
  w << "X-Forwarded-For: ";
  if (!xff.empty()) w << xff << ", ";
  w << info.client_ip << "\r\n";
  const bool v6 = info.client_ip.find(':') != std::string_view::npos;
  w << "Forwarded: ";
  if (!forwarded.empty()) w << forwarded << ", ";
  w << (v6 ? "for=\"[" : "for=") << info.client_ip << (v6 ? "]\"" : "") << "\r\n";
  // RFC 9110 7.6.3: a proxy adds Via, with the version it received.
  w << "Via: 1." << uint64_t(head.version_minor) << " offload\r\n";
  return w.finish();
}

size_t finish_upstream_request_head(char* out, size_t len, size_t cap, bool has_body,
                                    uint64_t body_bytes) {
  HeadWriter w(out + len, cap - len);
  if (has_body) w << "Content-Length: " << body_bytes << "\r\n";
  w << "\r\n";
  size_t n = w.finish();
  return n == 0 ? 0 : len + n;
}

// The framing of the body the agent sends is the agent's to state: the
// upstream's Content-Length and Transfer-Encoding fields are never copied,
// so no Connection option (a hop-by-hop mark) can take them away, and the
// fields written here always match the bytes that follow.
size_t write_interim_head(const http::Head& head, std::string_view msg, char* out, size_t cap) {
  HeadWriter w(out, cap);
  w << "HTTP/1.1 " << uint64_t(head.status) << " " << head.reason.in(msg) << "\r\n";
  for (const auto& f : head.headers)
    if (!f.hop_by_hop && !iequals(f.name.in(msg), "content-length") && !iequals(f.name.in(msg), "transfer-encoding"))
      w << f.name.in(msg) << ": " << f.value.in(msg) << "\r\n";
  w << "\r\n";
  return w.finish();
}

size_t write_client_response_head(const http::Head& head, std::string_view msg, bool close,
                                  bool client_http10, bool dechunked, char* out, size_t cap) {
  HeadWriter w(out, cap);
  w << "HTTP/1.1 " << uint64_t(head.status) << " " << head.reason.in(msg) << "\r\n";
  bool had_length = false;
  for (const auto& f : head.headers) {
    std::string_view name = f.name.in(msg);
    if (iequals(name, "content-length")) {
      had_length = true;
      continue;
    }
    if (f.hop_by_hop || iequals(name, "transfer-encoding")) continue;
    w << name << ": " << f.value.in(msg) << "\r\n";
  }
  w << "Via: 1." << uint64_t(head.version_minor) << " offload\r\n";
  // A body that ends with the connection is only framed by the close.
  close = close || dechunked || head.body == http::BodyKind::kUntilClose;
  switch (head.body) {
    case http::BodyKind::kLength:
      if (!dechunked) w << "Content-Length: " << head.content_length << "\r\n";
      break;
    case http::BodyKind::kChunked:
      if (!dechunked) w << "Transfer-Encoding: chunked\r\n";
      break;
    case http::BodyKind::kNone:
      // No body follows; a HEAD or 304 response's length is metadata about
      // the representation (RFC 9110 8.6) and goes on as it came.
      if (had_length && head.status != 204 && head.status >= 200)
        w << "Content-Length: " << head.content_length << "\r\n";
      break;
    case http::BodyKind::kUntilClose: break;
  }
  if (close) {
    w << "Connection: close\r\n";
  } else if (client_http10) {
    w << "Connection: keep-alive\r\n";
  }
  w << "\r\n";
  return w.finish();
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

size_t write_ring_response_head(int status, const FieldView* fields, size_t field_count,
                                bool length_known, uint64_t content_length, bool chunked,
                                bool close, bool client_http10, char* out, size_t cap) {
  HeadWriter w(out, cap);
  w << "HTTP/1.1 " << uint64_t(status) << " " << reason_phrase(status) << "\r\n";
  for (size_t i = 0; i < field_count; ++i) w << fields[i].name << ": " << fields[i].value << "\r\n";
  w << "Via: 1.1 offload\r\n";
  if (length_known) w << "Content-Length: " << content_length << "\r\n";
  else if (chunked) w << "Transfer-Encoding: chunked\r\n";
  if (close) w << "Connection: close\r\n";
  else if (client_http10) w << "Connection: keep-alive\r\n";
  w << "\r\n";
  return w.finish();
}

std::string_view error_response(int status, bool close) {
  struct Entry {
    int status;
    const char* reason;
  };
  static constexpr Entry kEntries[] = {
      {400, "Bad Request"},        {401, "Unauthorized"},
      {403, "Forbidden"},          {405, "Method Not Allowed"},
      {408, "Request Timeout"},
      {413, "Content Too Large"},  {414, "URI Too Long"},
      {429, "Too Many Requests"},  {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"}, {501, "Not Implemented"},
      {502, "Bad Gateway"},        {503, "Service Unavailable"},
      {504, "Gateway Timeout"},    {505, "HTTP Version Not Supported"},
  };
  // Built once: two variants (keep-alive, close) per status.
  static const auto kTable = [] {
    std::array<std::array<std::string, 2>, std::size(kEntries)> t;
    for (size_t i = 0; i < std::size(kEntries); ++i) {
      std::string body = fmt::format("{} {}\n", kEntries[i].status, kEntries[i].reason);
      for (int c = 0; c < 2; ++c)
        t[i][c] = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
                              kEntries[i].status, kEntries[i].reason, body.size(),
                              c ? "Connection: close\r\n" : "", body);
    }
    return t;
  }();
  for (size_t i = 0; i < std::size(kEntries); ++i)
    if (kEntries[i].status == status) return kTable[i][close ? 1 : 0];
  return error_response(500, true);
}

std::string error_response_with(int status, std::string_view fields, bool close) {
  std::string body = fmt::format("{} {}\n", status, reason_phrase(status));
  return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}{}\r\n{}", status,
                     reason_phrase(status), body.size(), fields, close ? "Connection: close\r\n" : "", body);
}

}  // namespace offload
