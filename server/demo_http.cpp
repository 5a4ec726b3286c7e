#include "demo_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "demo_content.h"

namespace offload::demo {

namespace {

bool is_tchar(char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool valid_value(std::string_view v) {
  for (unsigned char c : v)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

// Request line: method SP target SP HTTP/1.x. Sets keep_alive from the version.
bool parse_request_line(std::string_view line, HeadInfo* h) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return false;
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return false;
  h->method = line.substr(0, sp1);
  h->target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!is_token(h->method) || h->target.empty()) return false;
  for (unsigned char c : h->target)
    if (c <= 0x20 || c == 0x7f) return false;
  if (version == "HTTP/1.1") {
    h->keep_alive = true;
  } else if (version == "HTTP/1.0") {
    h->keep_alive = false;
  } else {
    bool shaped = version.size() == 8 && version.starts_with("HTTP/") && version[6] == '.';
    h->error_status = shaped ? 505 : 400;
  }
  return true;
}

void apply_connection_tokens(std::string_view value, HeadInfo* h) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view tok = trim_ows(value.substr(0, comma));
    if (iequals(tok, "close")) h->keep_alive = false;
    if (iequals(tok, "keep-alive")) h->keep_alive = true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

// One header field line; returns the error status (0 when fine).
int apply_field(std::string_view line, bool* have_length, HeadInfo* h) {
  if (line.front() == ' ' || line.front() == '\t') return 400;  // obs-fold
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return 400;
  std::string_view name = line.substr(0, colon);
  std::string_view value = trim_ows(line.substr(colon + 1));
  if (!is_token(name) || !valid_value(value)) return 400;
  if (iequals(name, "transfer-encoding")) return 501;
  if (iequals(name, "connection")) apply_connection_tokens(value, h);
  if (iequals(name, "content-length")) {
    if (value.empty() || value.size() > 19) return 400;
    uint64_t n = 0;
    for (char c : value) {
      if (c < '0' || c > '9') return 400;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    if (*have_length && n != h->content_length) return 400;
    *have_length = true;
    h->content_length = n;
    if (n > kBodyBytesMax) return 413;
  }
  return 0;
}

bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Writes the status line, the fields and the body; false when the peer is gone.
bool send_reply(int fd, const Reply& r, bool keep_alive) {
  static thread_local std::vector<char> buf(64 * 1024);
  int n = std::snprintf(buf.data(), buf.size(),
                        "HTTP/1.1 %d %.*s\r\nContent-Type: %.*s\r\nContent-Length: %llu\r\n%s\r\n",
                        r.status, static_cast<int>(reason(r.status).size()), reason(r.status).data(),
                        static_cast<int>(r.content_type.size()), r.content_type.data(),
                        static_cast<unsigned long long>(r.length),
                        keep_alive ? "" : "Connection: close\r\n");
  size_t used = static_cast<size_t>(n);
  uint64_t off = 0;
  uint64_t total = r.head_only ? 0 : r.length;
  for (;;) {
    while (off < total && used < buf.size()) {
      long got = r.fill(off, buf.data() + used, buf.size() - used);
      if (got <= 0) return false;  // file error: the length is already promised
      used += static_cast<size_t>(got);
      off += static_cast<uint64_t>(got);
    }
    if (!send_all(fd, buf.data(), used)) return false;
    used = 0;
    if (off >= total) return true;
  }
}

void send_error(int fd, int status) {
  Reply r;
  r.status = status;
  r.text = std::string(reason(status)) + "\n";
  r.length = r.text.size();
  send_reply(fd, r, false);
}

// Reads until `buf` holds at least `want` bytes. False on EOF or error.
bool read_at_least(int fd, std::string& buf, size_t want) {
  char tmp[16 * 1024];
  while (buf.size() < want) {
    ssize_t r = ::recv(fd, tmp, sizeof tmp, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf.append(tmp, static_cast<size_t>(r));
  }
  return true;
}

// Waits for a complete head at the start of `buf`; returns its length
// (through the blank line) or 0 on EOF/error, or SIZE_MAX when too large.
size_t read_head(int fd, std::string& buf) {
  size_t scanned = 0;
  for (;;) {
    size_t end = buf.find("\r\n\r\n", scanned > 3 ? scanned - 3 : 0);
    if (end != std::string::npos) return end + 4 <= kHeadBytesMax ? end + 4 : SIZE_MAX;
    if (buf.size() >= kHeadBytesMax) return SIZE_MAX;
    scanned = buf.size();
    if (!read_at_least(fd, buf, buf.size() + 1)) return 0;
  }
}

}  // namespace

HeadInfo parse_head(std::string_view head) {
  HeadInfo h;
  bool have_length = false;
  bool first = true;
  while (!head.empty()) {
    size_t eol = head.find("\r\n");
    if (eol == std::string_view::npos) return HeadInfo{400};
    std::string_view line = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    if (line.find_first_of("\r\n") != std::string_view::npos) return HeadInfo{400};
    if (line.empty()) break;  // the blank line ends the head
    if (first) {
      if (!parse_request_line(line, &h)) return HeadInfo{400};
      if (h.error_status != 0) return h;
      first = false;
      continue;
    }
    int status = apply_field(line, &have_length, &h);
    if (status != 0) {
      h.error_status = status;
      return h;
    }
  }
  if (first) return HeadInfo{400};
  return h;
}

void serve_connection(int fd, int root_fd, Counters& counters) {
  std::string buf;
  for (;;) {
    size_t head_len = read_head(fd, buf);
    if (head_len == 0) return;
    if (head_len == SIZE_MAX) return send_error(fd, 431);
    HeadInfo h = parse_head(std::string_view(buf).substr(0, head_len));
    if (h.error_status != 0) {
      counters.requests.fetch_add(1, std::memory_order_relaxed);
      return send_error(fd, h.error_status);
    }
    size_t total = head_len + static_cast<size_t>(h.content_length);
    if (!read_at_least(fd, buf, total)) return;
    Reply r = route(h.method, h.target, root_fd);
    counters.requests.fetch_add(1, std::memory_order_relaxed);
    if (!send_reply(fd, r, h.keep_alive) || !h.keep_alive) return;
    buf.erase(0, total);  // keep pipelined bytes
  }
}

int listen_on(const std::string& addr_port, int backlog, std::string* bound) {
  size_t colon = addr_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == addr_port.size())
    throw std::runtime_error("--listen " + addr_port + ": expected ADDR:PORT");
  std::string host = addr_port.substr(0, colon);
  std::string port_text = addr_port.substr(colon + 1);
  unsigned long port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9' || port > 65535) throw std::runtime_error("--listen " + addr_port + ": bad port");
    port = port * 10 + static_cast<unsigned long>(c - '0');
  }
  if (port > 65535) throw std::runtime_error("--listen " + addr_port + ": bad port");
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool v6 = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a->sin6_addr) != 1)
      throw std::runtime_error("--listen " + addr_port + ": bad IPv6 address");
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1)
      throw std::runtime_error("--listen " + addr_port + ": bad IPv4 address");
    len = sizeof *a;
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, backlog) != 0) {
    int e = errno;
    ::close(fd);
    throw std::runtime_error("--listen " + addr_port + ": " + std::strerror(e));
  }
  len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  uint16_t bound_port = v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  *bound = host + ":" + std::to_string(bound_port);
  return fd;
}

}  // namespace offload::demo
