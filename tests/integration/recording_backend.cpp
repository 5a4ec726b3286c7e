// recording-backend: a small multi-threaded HTTP/1.1 server for the
// integration tests. It behaves like a classic application server (N blocking
// worker threads, each serving one connection at a time until it closes) and
// records what it received on every connection, so that a test can prove what
// the proxy in front of it did: how many connections it opened, whether each
// request arrived complete and in one piece, and when the response had been
// written.
//
//   recording-backend --listen 127.0.0.1:0 [--control 127.0.0.1:0] [--workers N]
//                     [--record-max N]
//
// Once ready it prints to stderr:
//   recording-backend: listening on 127.0.0.1:PORT
//   recording-backend: control on 127.0.0.1:PORT
//
// Endpoints (any method): /size/N, /sleep/MS, /silent, /close, /echo,
// /chunked/N, /until-close/N (N bytes with no length, then a close), / and /ok; /flaky/KEY closes without an answer the first time
// a KEY is asked for and answers 200 "ok" after that. Any request carrying
// "X-Script: HEX" gets exactly the bytes HEX encodes as its answer (whatever
// they are: 1xx, 204, bodies delimited by the close, bytes past the length,
// bad status lines), then "X-Script-Then: close" closes the connection and
// anything else reads the next request on it. /__record and /__reset are served on both ports, but
// tests use the control port so that fetching the record adds no connection
// to the counts. Times are CLOCK_MONOTONIC microseconds, comparable with the
// test process's own clock.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"

namespace {

constexpr size_t kHeadBytesMax = 64 * 1024;
constexpr size_t kBodyBytesMax = 64ull << 20;
constexpr size_t kRawKeptMax = 256 * 1024;   // raw bytes kept per request in the record
constexpr size_t kBodyKeptMax = 256 * 1024;  // decoded body bytes kept per request
constexpr uint64_t kSizeMax = 1ull << 30;    // /size/N and /chunked/N
constexpr size_t kWriteChunk = 64 * 1024;

int64_t now_us() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// ---------------------------------------------------------------- the record

struct RequestRecord {
  int index = 0;
  std::string method, target, version;
  bool complete = false;
  std::string error;            // why the request could not be parsed, if so
  uint64_t bytes = 0;           // raw bytes of this request (head + body as sent)
  std::string raw;              // first kRawKeptMax of them
  std::string body;             // decoded body (whole while handling; kBodyKeptMax in the record)
  uint64_t body_bytes = 0;
  int reads = 0;                // read() calls that delivered bytes of this request
  int64_t first_byte_us = 0;
  int64_t last_byte_us = 0;
  int status = 0;
  int64_t response_start_us = 0;
  int64_t response_done_us = 0;
};

struct ConnectionRecord {
  uint64_t id = 0;
  int peer_port = 0;
  int64_t opened_us = 0;
  int64_t served_us = 0;        // a worker took it
  int64_t closed_us = 0;        // 0 while open
  uint64_t bytes_in = 0;
  int read_calls = 0;
  std::vector<RequestRecord> requests;
};

struct Recorder {
  std::mutex mutex;
  std::deque<std::shared_ptr<ConnectionRecord>> connections;
  uint64_t next_id = 1;
  int current = 0;
  int max_seen = 0;
  uint64_t accepted = 0;
  uint64_t requests = 0;
  uint64_t record_max = 100000;  // requests kept; beyond that only counted
  uint64_t kept = 0;
};

Recorder g_rec;

// /flaky/KEY: the keys asked for once already (cleared by /__reset).
std::mutex g_flaky_mutex;
std::set<std::string> g_flaky_seen;

std::shared_ptr<ConnectionRecord> record_open(int peer_port) {
  auto c = std::make_shared<ConnectionRecord>();
  c->peer_port = peer_port;
  c->opened_us = now_us();
  std::lock_guard lock(g_rec.mutex);
  c->id = g_rec.next_id++;
  ++g_rec.accepted;
  ++g_rec.current;
  g_rec.max_seen = std::max(g_rec.max_seen, g_rec.current);
  g_rec.connections.push_back(c);
  return c;
}

void record_close(ConnectionRecord& c) {
  std::lock_guard lock(g_rec.mutex);
  c.closed_us = now_us();
  --g_rec.current;
}

// Adds a finished (or abandoned) request to its connection's record.
void record_request(ConnectionRecord& c, RequestRecord&& r) {
  std::lock_guard lock(g_rec.mutex);
  ++g_rec.requests;
  if (g_rec.kept >= g_rec.record_max) return;
  ++g_rec.kept;
  if (r.body.size() > kBodyKeptMax) r.body.resize(kBodyKeptMax);
  c.requests.push_back(std::move(r));
}

void record_response(ConnectionRecord& c, int index, int status, int64_t start, int64_t done) {
  std::lock_guard lock(g_rec.mutex);
  for (auto& r : c.requests) {
    if (r.index != index) continue;
    r.status = status;
    r.response_start_us = start;
    r.response_done_us = done;
  }
}

void record_reset() {
  std::lock_guard lock(g_rec.mutex);
  // Keep open connections (their ids stay valid) but forget what they did.
  std::deque<std::shared_ptr<ConnectionRecord>> open;
  for (auto& c : g_rec.connections) {
    if (c->closed_us != 0) continue;
    c->requests.clear();
    c->bytes_in = 0;
    c->read_calls = 0;
    open.push_back(c);
  }
  g_rec.connections = std::move(open);
  g_rec.max_seen = g_rec.current;
  g_rec.accepted = 0;
  g_rec.requests = 0;
  g_rec.kept = 0;
  std::lock_guard flaky(g_flaky_mutex);
  g_flaky_seen.clear();
}

void json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20 || ch >= 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);  // one byte, as a code point
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  out += '"';
}

void json_field(std::string& out, const char* key, int64_t v, bool comma = true) {
  out += '"';
  out += key;
  out += "\":";
  out += std::to_string(v);
  if (comma) out += ',';
}

void json_request(std::string& out, const RequestRecord& r) {
  out += '{';
  json_field(out, "index", r.index);
  out += "\"method\":"; json_string(out, r.method); out += ',';
  out += "\"target\":"; json_string(out, r.target); out += ',';
  out += "\"version\":"; json_string(out, r.version); out += ',';
  out += "\"complete\":"; out += r.complete ? "true," : "false,";
  out += "\"error\":"; json_string(out, r.error); out += ',';
  json_field(out, "bytes", static_cast<int64_t>(r.bytes));
  out += "\"raw\":"; json_string(out, r.raw); out += ',';
  out += "\"raw_truncated\":"; out += r.raw.size() < r.bytes ? "true," : "false,";
  out += "\"body\":"; json_string(out, r.body); out += ',';
  json_field(out, "body_bytes", static_cast<int64_t>(r.body_bytes));
  json_field(out, "reads", r.reads);
  json_field(out, "first_byte_us", r.first_byte_us);
  json_field(out, "last_byte_us", r.last_byte_us);
  json_field(out, "status", r.status);
  json_field(out, "response_start_us", r.response_start_us);
  json_field(out, "response_done_us", r.response_done_us, false);
  out += '}';
}

std::string record_json() {
  std::lock_guard lock(g_rec.mutex);
  std::string out = "{";
  json_field(out, "now_us", now_us());
  json_field(out, "current_connections", g_rec.current);
  json_field(out, "max_connections", g_rec.max_seen);
  json_field(out, "accepted", static_cast<int64_t>(g_rec.accepted));
  json_field(out, "requests", static_cast<int64_t>(g_rec.requests));
  out += "\"connections\":[";
  bool first = true;
  for (const auto& c : g_rec.connections) {
    if (!first) out += ',';
    first = false;
    out += '{';
    json_field(out, "id", static_cast<int64_t>(c->id));
    json_field(out, "peer_port", c->peer_port);
    json_field(out, "opened_us", c->opened_us);
    json_field(out, "served_us", c->served_us);
    json_field(out, "closed_us", c->closed_us);
    json_field(out, "bytes_in", static_cast<int64_t>(c->bytes_in));
    json_field(out, "read_calls", c->read_calls);
    out += "\"requests\":[";
    for (size_t i = 0; i < c->requests.size(); ++i) {
      if (i) out += ',';
      json_request(out, c->requests[i]);
    }
    out += "]}";
  }
  out += "]}\n";
  return out;
}

// ------------------------------------------------------------ socket helpers

bool write_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool write_all(int fd, std::string_view s) { return write_all(fd, s.data(), s.size()); }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

bool icontains(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    if (iequals(hay.substr(i, needle.size()), needle)) return true;
  }
  return false;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Decimal digits only, no sign, bounded. nullopt on anything else.
std::optional<uint64_t> parse_decimal(std::string_view s, uint64_t max) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(ch - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

// ----------------------------------------------------------- request reading

// A request head as the reader understood it.
struct Head {
  std::string method, target, version;
  std::optional<uint64_t> content_length;
  bool chunked = false;
  bool close = false;
  std::string error;
};

Head parse_head(std::string_view head) {
  Head h;
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    h.error = "bad request line";
    return h;
  }
  h.method = line.substr(0, sp1);
  h.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  h.version = line.substr(sp2 + 1);
  if (h.version != "HTTP/1.1" && h.version != "HTTP/1.0") {
    h.error = "bad version";
    return h;
  }
  h.close = h.version == "HTTP/1.0";
  size_t pos = eol + 2;
  while (pos < head.size()) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string_view::npos) end = head.size();
    std::string_view field = head.substr(pos, end - pos);
    pos = end + 2;
    if (field.empty()) break;
    size_t colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      h.error = "bad header line";
      return h;
    }
    std::string_view name = field.substr(0, colon);
    std::string_view value = trim(field.substr(colon + 1));
    if (iequals(name, "content-length")) {
      auto v = parse_decimal(value, kBodyBytesMax);
      if (!v || (h.content_length && *h.content_length != *v)) {
        h.error = "bad content-length";
        return h;
      }
      h.content_length = v;
    } else if (iequals(name, "transfer-encoding")) {
      if (!icontains(value, "chunked")) {
        h.error = "unsupported transfer-encoding";
        return h;
      }
      h.chunked = true;
    } else if (iequals(name, "connection")) {
      if (icontains(value, "close")) h.close = true;
      if (icontains(value, "keep-alive")) h.close = false;
    }
  }
  return h;
}

// Decodes a chunked body that starts at `in[0]`. Returns the bytes it spans
// once the last chunk and the trailers are there, 0 when more bytes are
// needed, and sets `error` if the framing is bad.
size_t decode_chunked(std::string_view in, std::string& body, uint64_t& body_bytes, std::string& error) {
  size_t pos = 0;
  body.clear();
  body_bytes = 0;
  for (int guard = 0; guard < 10'000'000; ++guard) {
    size_t eol = in.find("\r\n", pos);
    if (eol == std::string_view::npos) {
      if (in.size() - pos > 4096) error = "chunk size line too long";
      return 0;
    }
    std::string_view size_line = in.substr(pos, eol - pos);
    size_t semi = size_line.find(';');
    std::string_view digits = trim(size_line.substr(0, semi));
    if (digits.empty() || digits.size() > 15) {
      error = "bad chunk size";
      return 0;
    }
    uint64_t n = 0;
    for (char ch : digits) {
      int v = std::isxdigit(static_cast<unsigned char>(ch))
                  ? (std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0' : (std::tolower(ch) - 'a' + 10))
                  : -1;
      if (v < 0) {
        error = "bad chunk size";
        return 0;
      }
      n = n * 16 + static_cast<uint64_t>(v);
    }
    pos = eol + 2;
    if (n == 0) {
      // Trailers, then an empty line.
      for (;;) {
        size_t t_end = in.find("\r\n", pos);
        if (t_end == std::string_view::npos) return 0;
        bool empty = t_end == pos;
        pos = t_end + 2;
        if (empty) return pos;
      }
    }
    if (body_bytes + n > kBodyBytesMax) {
      error = "chunked body too large";
      return 0;
    }
    if (in.size() < pos + n + 2) return 0;
    if (in.substr(pos + n, 2) != "\r\n") {
      error = "chunk not followed by CRLF";
      return 0;
    }
    body.append(in.substr(pos, n));
    body_bytes += n;
    pos += n + 2;
  }
  error = "too many chunks";
  return 0;
}

// One read() call: where its bytes end in the connection's stream, and when.
struct ReadEvent {
  uint64_t stream_end;
  int64_t at_us;
};

// Reads requests from one connection. Owns the input buffer and the list of
// reads, and tells for each request how many reads brought its bytes.
class RequestReader {
 public:
  RequestReader(int fd, ConnectionRecord& conn) : fd_(fd), conn_(conn) {}

  enum class Result { kRequest, kClosed, kError };

  // Blocks until a whole request is in, the peer closed, or the bytes are bad.
  Result next(RequestRecord& out, Head& head) {
    for (;;) {
      size_t spanned = 0;
      if (try_parse(out, head, spanned)) {
        finish(out, spanned);
        return head.error.empty() ? Result::kRequest : Result::kError;
      }
      if (!read_more()) {
        if (in_.size() == consumed_) return Result::kClosed;
        abandon(out, head);
        return Result::kError;
      }
    }
  }

  // Reads and throws away whatever comes until the peer closes (or stop).
  void drain_until_closed() {
    char buf[4096];
    for (;;) {
      ssize_t r = ::recv(fd_, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return;
    }
  }

 private:
  bool read_more() {
    char buf[64 * 1024];
    for (;;) {
      ssize_t r = ::recv(fd_, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      int64_t t = now_us();
      in_.append(buf, static_cast<size_t>(r));
      stream_end_ += static_cast<uint64_t>(r);
      reads_.push_back({stream_end_, t});
      std::lock_guard lock(g_rec.mutex);
      conn_.bytes_in += static_cast<uint64_t>(r);
      ++conn_.read_calls;
      return true;
    }
  }

  // Parses from in_[consumed_]; true when a request (or an error) is ready,
  // with `spanned` the bytes it covers.
  bool try_parse(RequestRecord& out, Head& head, size_t& spanned) {
    std::string_view rest(in_.data() + consumed_, in_.size() - consumed_);
    size_t head_end = rest.find("\r\n\r\n");
    if (head_end == std::string_view::npos) {
      if (rest.size() > kHeadBytesMax) {
        head = Head{};
        head.error = "head too large";
        spanned = rest.size();
        return true;
      }
      return false;
    }
    head = parse_head(rest.substr(0, head_end + 2));
    out.method = head.method;
    out.target = head.target;
    out.version = head.version;
    size_t body_start = head_end + 4;
    if (!head.error.empty()) {
      spanned = rest.size();
      return true;
    }
    if (head.chunked) {
      std::string err;
      size_t n = decode_chunked(rest.substr(body_start), out.body, out.body_bytes, err);
      if (!err.empty()) {
        head.error = err;
        spanned = rest.size();
        return true;
      }
      if (n == 0) return false;
      spanned = body_start + n;
      return true;
    }
    uint64_t len = head.content_length.value_or(0);
    if (rest.size() < body_start + len) return false;
    out.body.assign(rest.substr(body_start, len));
    out.body_bytes = len;
    spanned = body_start + len;
    return true;
  }

  // Fills in the raw bytes and the read accounting for in_[consumed_, +spanned).
  void finish(RequestRecord& out, size_t spanned) {
    out.complete = true;
    account(out, spanned);
    consumed_ += spanned;
    if (consumed_ > (1u << 20) || consumed_ == in_.size()) {
      in_.erase(0, consumed_);
      consumed_ = 0;
    }
  }

  void abandon(RequestRecord& out, Head& head) {
    out.complete = false;
    if (head.error.empty()) head.error = "connection closed before the request was complete";
    out.error = head.error;
    account(out, in_.size() - consumed_);
    consumed_ = in_.size();
  }

  void account(RequestRecord& out, size_t spanned) {
    uint64_t start = stream_end_ - (in_.size() - consumed_);
    uint64_t end = start + spanned;
    out.bytes = spanned;
    out.raw.assign(in_.data() + consumed_, std::min(spanned, kRawKeptMax));
    out.reads = 0;
    uint64_t prev_end = reads_base_;
    for (const auto& ev : reads_) {
      bool overlaps = ev.stream_end > start && prev_end < end;
      if (overlaps) {
        if (out.reads == 0) out.first_byte_us = ev.at_us;
        out.last_byte_us = ev.at_us;
        ++out.reads;
      }
      prev_end = ev.stream_end;
    }
    // Forget the reads that end at or before this request's end.
    while (!reads_.empty() && reads_.front().stream_end <= end) {
      reads_base_ = reads_.front().stream_end;
      reads_.pop_front();
    }
  }

  int fd_;
  ConnectionRecord& conn_;
  std::string in_;
  size_t consumed_ = 0;
  uint64_t stream_end_ = 0;
  uint64_t reads_base_ = 0;  // stream offset where reads_.front() begins
  std::deque<ReadEvent> reads_;
};

// ------------------------------------------------------------------ handlers

struct Reply {
  int status = 200;
  std::string body;
  uint64_t size = 0;       // /size and /chunked: generated body length
  bool generated = false;  // body is pattern bytes of `size`
  bool chunked = false;
  bool until_close = false;  // no length: the body ends with the connection
  bool close = false;
};

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    default: return "Status";
  }
}

bool send_reply(int fd, const Reply& r, bool head_only, uint64_t conn_id, int index) {
  std::string h = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  h += "Content-Type: text/plain\r\n";
  h += "X-Conn-Id: " + std::to_string(conn_id) + "\r\n";
  h += "X-Request-Index: " + std::to_string(index) + "\r\n";
  uint64_t length = r.generated ? r.size : r.body.size();
  if (r.chunked) {
    h += "Transfer-Encoding: chunked\r\n";
  } else if (r.until_close) {
  } else {
    h += "Content-Length: " + std::to_string(length) + "\r\n";
  }
  if (r.close && !r.until_close) h += "Connection: close\r\n";
  h += "\r\n";
  if (!r.generated || head_only) {
    if (!head_only && !r.chunked) h += r.body;
    return write_all(fd, h);
  }
  if (!write_all(fd, h)) return false;
  std::vector<char> block(kWriteChunk + 32);
  for (uint64_t off = 0; off < length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(r.chunked ? 4096 : kWriteChunk, length - off));
    size_t prefix = 0;
    if (r.chunked) prefix = static_cast<size_t>(std::snprintf(block.data(), 32, "%zx\r\n", n));
    rig::pattern_fill(block.data() + prefix, off, n);
    size_t total = prefix + n;
    if (r.chunked) {
      block[total++] = '\r';
      block[total++] = '\n';
    }
    if (!write_all(fd, block.data(), total)) return false;
    off += n;
  }
  if (r.chunked) return write_all(fd, "0\r\n\r\n");
  return true;
}

std::optional<uint64_t> number_after(std::string_view target, std::string_view prefix) {
  if (target.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view rest = target.substr(prefix.size());
  size_t q = rest.find('?');
  return parse_decimal(rest.substr(0, q), kSizeMax);
}

std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

// What a connection does next after a request.
enum class Next { kContinue, kClose, kSilent, kAbort };

struct Outcome {
  Next next = Next::kContinue;
  int status = 0;  // 0: no response was sent
};

Reply route(const RequestRecord& req, const Head& head) {
  std::string_view target = req.target;
  std::string_view path = path_of(target);
  Reply r;
  r.close = head.close;
  if (path == "/__record") {
    r.body = record_json();
  } else if (path == "/__reset") {
    record_reset();
    r.body = "reset\n";
  } else if (path == "/echo") {
    r.body = req.body;
  } else if (auto n = number_after(target, "/size/")) {
    r.generated = true;
    r.size = *n;
  } else if (auto c = number_after(target, "/chunked/")) {
    r.generated = true;
    r.chunked = true;
    r.size = *c;
  } else if (auto u = number_after(target, "/until-close/")) {
    r.generated = true;
    r.until_close = true;
    r.close = true;
    r.size = *u;
  } else if (auto ms = number_after(target, "/sleep/")) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<uint64_t>(*ms, 600000)));
    r.body = "slept " + std::to_string(*ms) + "\n";
  } else if (path == "/" || path == "/ok" || path.substr(0, 7) == "/flaky/") {
    r.body = "ok\n";
  } else {
    r.status = 404;
    r.body = "not found\n";
  }
  return r;
}

// The value of the first header field `name` in a raw request head; nullopt if absent.
std::optional<std::string_view> field_value(std::string_view raw, std::string_view name) {
  size_t head_end = raw.find("\r\n\r\n");
  std::string_view head = raw.substr(0, head_end);
  for (size_t pos = head.find("\r\n"); pos != std::string_view::npos;) {
    size_t start = pos + 2;
    size_t end = head.find("\r\n", start);
    std::string_view field = head.substr(start, end == std::string_view::npos ? end : end - start);
    size_t colon = field.find(':');
    if (colon != std::string_view::npos && iequals(field.substr(0, colon), name)) return trim(field.substr(colon + 1));
    pos = end;
  }
  return std::nullopt;
}

std::optional<std::string> unhex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out;
  out.reserve(hex.size() / 2);
  auto nibble = [](char ch) -> int {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

// The status of the first response line in `bytes` (0 if there is none).
int script_status(std::string_view bytes) {
  if (bytes.size() < 12 || bytes.substr(0, 5) != "HTTP/") return 0;
  auto v = parse_decimal(bytes.substr(9, 3), 999);
  return v ? static_cast<int>(*v) : 0;
}

// "X-Script: HEX": the answer is exactly those bytes, in one write.
std::optional<Outcome> handle_script(int fd, const RequestRecord& req) {
  auto hex = field_value(req.raw, "x-script");
  if (!hex) return std::nullopt;
  auto bytes = unhex(*hex);
  if (!bytes) {
    Reply bad;
    bad.status = 400;
    bad.body = "bad X-Script\n";
    bad.close = true;
    send_reply(fd, bad, false, 0, req.index);
    return Outcome{Next::kClose, 400};
  }
  bool ok = write_all(fd, *bytes);
  auto then = field_value(req.raw, "x-script-then");
  bool close = then && iequals(*then, "close");
  return Outcome{!ok ? Next::kAbort : close ? Next::kClose : Next::kContinue, script_status(*bytes)};
}

Outcome handle(int fd, const RequestRecord& req, const Head& head, uint64_t conn_id) {
  std::string_view path = path_of(req.target);
  if (auto scripted = handle_script(fd, req)) return *scripted;
  if (path == "/close") return {Next::kAbort, 0};
  if (path.substr(0, 7) == "/flaky/") {
    std::lock_guard lock(g_flaky_mutex);
    if (g_flaky_seen.insert(std::string(path.substr(7))).second) return {Next::kAbort, 0};
  }
  if (path == "/silent") return {Next::kSilent, 0};
  Reply r = route(req, head);
  bool ok = send_reply(fd, r, req.method == "HEAD", conn_id, req.index);
  if (!ok) return {Next::kAbort, r.status};
  return {r.close ? Next::kClose : Next::kContinue, r.status};
}

bool is_control(std::string_view target) { return target.substr(0, 3) == "/__"; }

void serve_connection(int fd, ConnectionRecord& conn, bool recorded) {
  RequestReader reader(fd, conn);
  for (int index = 0;; ++index) {
    RequestRecord req;
    req.index = index;
    Head head;
    auto result = reader.next(req, head);
    if (result == RequestReader::Result::kClosed) return;
    if (result == RequestReader::Result::kError) {
      req.error = head.error;
      bool complete = req.complete;
      if (recorded) record_request(conn, std::move(req));
      if (!complete) return;  // the peer closed mid-request: nobody to answer
      Reply bad;
      bad.status = 400;
      bad.body = "bad request: " + head.error + "\n";
      bad.close = true;
      int64_t start = now_us();
      send_reply(fd, bad, false, conn.id, index);
      if (recorded) record_response(conn, index, 400, start, now_us());
      return;
    }
    bool keep = recorded && !is_control(req.target);
    if (keep) record_request(conn, RequestRecord(req));
    int64_t start = now_us();
    Outcome out = handle(fd, req, head, conn.id);
    if (keep && out.status != 0) record_response(conn, index, out.status, start, now_us());
    if (out.next == Next::kSilent) {
      reader.drain_until_closed();
      return;
    }
    if (out.next != Next::kContinue) return;
  }
}

// ---------------------------------------------------------- accept and serve

struct Pending {
  int fd;
  std::shared_ptr<ConnectionRecord> conn;
};

std::mutex g_queue_mutex;
std::condition_variable g_queue_cv;
std::deque<Pending> g_queue;

void worker_loop() {
  for (;;) {
    Pending p;
    {
      std::unique_lock lock(g_queue_mutex);
      g_queue_cv.wait(lock, [] { return !g_queue.empty(); });
      p = std::move(g_queue.front());
      g_queue.pop_front();
    }
    {
      std::lock_guard lock(g_rec.mutex);
      p.conn->served_us = now_us();
    }
    serve_connection(p.fd, *p.conn, true);
    record_close(*p.conn);
    ::close(p.fd);
  }
}

int peer_port(const sockaddr_in& a) { return ntohs(a.sin_port); }

void accept_loop(int listener) {
  for (;;) {
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    int fd = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      std::fprintf(stderr, "recording-backend: accept: %s\n", std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto conn = record_open(peer_port(peer));
    {
      std::lock_guard lock(g_queue_mutex);
      g_queue.push_back({fd, std::move(conn)});
    }
    g_queue_cv.notify_one();
  }
}

// The control port: one connection at a time, not recorded, not counted.
void control_loop(int listener) {
  for (;;) {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    ConnectionRecord scratch;
    serve_connection(fd, scratch, false);
    ::close(fd);
  }
}

struct Address {
  sockaddr_in sin{};
  std::string host;
};

std::optional<Address> parse_address(const std::string& s) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  Address a;
  a.host = s.substr(0, colon);
  auto port = parse_decimal(std::string_view(s).substr(colon + 1), 65535);
  if (!port) return std::nullopt;
  a.sin.sin_family = AF_INET;
  a.sin.sin_port = htons(static_cast<uint16_t>(*port));
  if (::inet_pton(AF_INET, a.host.c_str(), &a.sin.sin_addr) != 1) return std::nullopt;
  return a;
}

int listen_on(const Address& a, int* port_out) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a.sin), sizeof a.sin) != 0 || ::listen(fd, 4096) != 0) {
    ::close(fd);
    return -1;
  }
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  *port_out = ntohs(bound.sin_port);
  return fd;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "recording-backend: %s\n", why.c_str());
  std::fprintf(stderr,
               "usage: recording-backend --listen 127.0.0.1:0 [--control 127.0.0.1:0] [--workers N] "
               "[--record-max N]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  std::string control = "127.0.0.1:0";
  uint64_t workers = 64;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--listen") {
      listen = value();
    } else if (arg == "--control") {
      control = value();
    } else if (arg == "--workers") {
      auto v = parse_decimal(value(), 10000);
      if (!v || *v == 0) usage("--workers expects a number from 1 to 10000");
      workers = *v;
    } else if (arg == "--record-max") {
      auto v = parse_decimal(value(), 100'000'000);
      if (!v) usage("--record-max expects a number");
      g_rec.record_max = *v;
    } else {
      usage("unknown argument " + arg);
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  auto listen_addr = parse_address(listen);
  auto control_addr = parse_address(control);
  if (!listen_addr) usage("--listen expects IPv4:PORT, got " + listen);
  if (!control_addr) usage("--control expects IPv4:PORT, got " + control);
  int port = 0, control_port = 0;
  int listener = listen_on(*listen_addr, &port);
  if (listener < 0) usage("cannot listen on " + listen + ": " + std::strerror(errno));
  int control_listener = listen_on(*control_addr, &control_port);
  if (control_listener < 0) usage("cannot listen on " + control + ": " + std::strerror(errno));

  for (uint64_t w = 0; w < workers; ++w) std::thread(worker_loop).detach();
  std::thread(control_loop, control_listener).detach();
  std::fprintf(stderr, "recording-backend: listening on %s:%d\n", listen_addr->host.c_str(), port);
  std::fprintf(stderr, "recording-backend: control on %s:%d\n", control_addr->host.c_str(), control_port);
  std::fflush(stderr);
  accept_loop(listener);
}
