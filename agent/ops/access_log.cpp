#include "ops/access_log.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "loop/loop.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "ops/log.h"
#include "proxy/connection.h"
#include "proxy/listener.h"

namespace offload {
namespace {

std::atomic<AccessLogWriter*> g_writer{nullptr};

uint64_t mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// The length of the valid UTF-8 sequence at the front of `s` (0: invalid).
// Overlong forms, surrogates and code points past U+10FFFF are invalid, as
// a JSON reader requires.
size_t utf8_sequence(std::string_view s) {
  const auto b = [&](size_t i) { return uint8_t(s[i]); };
  const uint8_t c = b(0);
  size_t n;
  uint8_t lo = 0x80, hi = 0xbf;  // the second byte's range
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c == 0xe0) n = 3, lo = 0xa0;
  else if (c == 0xed) n = 3, hi = 0x9f;
  else if (c >= 0xe1 && c <= 0xef) n = 3;
  else if (c == 0xf0) n = 4, lo = 0x90;
  else if (c >= 0xf1 && c <= 0xf3) n = 4;
  else if (c == 0xf4) n = 4, hi = 0x8f;
  else return 0;
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i)
    if (b(i) < 0x80 || b(i) > 0xbf) return 0;
  return n;
}

// Numbers through std::to_chars: fmt's back_inserter into a string goes a
// character at a time, which cost more than the rest of a line together.
void append_number(std::string& out, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, size_t(r.ptr - buf));
}

// "0.003": milliseconds as seconds; "-" (combined) or null (JSON) for none.
void append_seconds(std::string& out, int64_t ms, std::string_view none) {
  if (ms < 0) {
    out += none;
    return;
  }
  append_number(out, uint64_t(ms) / 1000);
  const unsigned frac = unsigned(ms % 1000);
  const char f[4] = {'.', char('0' + frac / 100), char('0' + frac / 10 % 10), char('0' + frac % 10)};
  out.append(f, 4);
}

void append_json_string(std::string& out, std::string_view key, std::string_view value) {
  out += ",\"";
  out += key;
  out += "\":\"";
  escape_json(value, out);
  out += '"';
}

void append_json_number(std::string& out, std::string_view key, uint64_t value) {
  out += ",\"";
  out += key;
  out += "\":";
  append_number(out, value);
}

void append_json_seconds(std::string& out, std::string_view key, int64_t ms) {
  out += ",\"";
  out += key;
  out += "\":";
  append_seconds(out, ms, "null");
}

void format_combined(const AccessEntry& e, std::string_view time, std::string& out) {
  const auto field = [&](std::string_view v) {
    if (v.empty()) out += '-';
    else escape_combined(v, out);
  };
  field(e.remote);
  out += " - ";
  out += time;
  out += " \"";
  if (e.method.empty() && e.target.empty()) {
    out += '-';
  } else {
    escape_combined(e.method, out);
    out += ' ';
    escape_combined(e.target, out);
    if (!e.protocol.empty()) {
      out += ' ';
      escape_combined(e.protocol, out);
    }
  }
  out += "\" ";
  append_number(out, uint64_t(e.status));
  out += ' ';
  append_number(out, e.body_bytes);
  out += " \"";
  field(e.referer);
  out += "\" \"";
  field(e.user_agent);
  out += "\" rt=";
  append_seconds(out, e.total_ms, "-");
  out += " qt=";
  append_seconds(out, e.queue_ms, "-");
  out += " uct=";
  append_seconds(out, e.connect_ms, "-");
  out += " urt=";
  append_seconds(out, e.upstream_ms, "-");
  out += " ups=";
  field(e.upstream);
  out += " rx=";
  append_number(out, e.received);
  out += " tx=";
  append_number(out, e.sent);
  out += " lst=\"";
  escape_combined(e.listener, out);
  out += "\" end=";
  out += termination_name(e.end);
  out += '\n';
}

void format_json(const AccessEntry& e, std::string_view time, std::string& out) {
  out += "{\"time\":\"";
  out += time;
  out += '"';
  append_json_string(out, "remote_addr", e.remote);
  append_json_string(out, "method", e.method);
  append_json_string(out, "target", e.target);
  append_json_string(out, "protocol", e.protocol);
  append_json_number(out, "status", uint64_t(e.status));
  append_json_number(out, "body_bytes_sent", e.body_bytes);
  append_json_string(out, "referer", e.referer);
  append_json_string(out, "user_agent", e.user_agent);
  append_json_seconds(out, "request_time", e.total_ms);
  append_json_seconds(out, "queue_time", e.queue_ms);
  append_json_seconds(out, "upstream_connect_time", e.connect_ms);
  append_json_seconds(out, "upstream_response_time", e.upstream_ms);
  if (e.upstream.empty()) out += ",\"upstream\":null";
  else append_json_string(out, "upstream", e.upstream);
  append_json_number(out, "bytes_received", e.received);
  append_json_number(out, "bytes_sent", e.sent);
  append_json_string(out, "listener", e.listener);
  append_json_string(out, "termination", termination_name(e.end));
  out += "}\n";
}

}  // namespace

std::string_view termination_name(Termination t) {
  switch (t) {
    case Termination::kUnset:
    case Termination::kDone: return "done";
    case Termination::kClientAbortRequest: return "client_abort_request";
    case Termination::kClientAbortWaiting: return "client_abort_waiting";
    case Termination::kClientAbortResponse: return "client_abort_response";
    case Termination::kTimeoutHeader: return "timeout_header";
    case Termination::kTimeoutBody: return "timeout_body";
    case Termination::kTimeoutQueue: return "timeout_queue";
    case Termination::kTimeoutConnect: return "timeout_connect";
    case Termination::kTimeoutResponse: return "timeout_response";
    case Termination::kTimeoutSend: return "timeout_send";
    case Termination::kUpstreamConnectError: return "upstream_connect_error";
    case Termination::kUpstreamError: return "upstream_error";
    case Termination::kUpstreamReset: return "upstream_reset";
    case Termination::kRefusedScreen: return "refused_screen";
    case Termination::kRefusedPolicy: return "refused_policy";
    case Termination::kParseError: return "parse_error";
    case Termination::kNoBuffer: return "no_buffer";
    case Termination::kUpgraded: return "upgraded";
    case Termination::kTunnelDone: return "tunnel_done";
    case Termination::kTunnelClientReset: return "tunnel_client_reset";
    case Termination::kTunnelServerReset: return "tunnel_server_reset";
    case Termination::kTimeoutTunnel: return "timeout_tunnel";
    case Termination::kDrainDeadline: return "drain_deadline";
    case Termination::kSpliceError: return "splice_error";
    case Termination::kUpgradeRefused: return "upgrade_refused";
  }
  return "?";
}

void copy_bounded(std::string& to, std::string_view from, size_t max) {
  if (from.size() <= max) {
    to.assign(from);
    return;
  }
  to.assign(from.substr(0, max));
  to += "...";
}

void AccessRecord::capture(const http::Head& h, std::string_view msg) {
  copy_bounded(method, h.method_text.in(msg), kAccessMethodMax);
  copy_bounded(target, h.target.in(msg), kAccessTargetMax);
  protocol.assign(h.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1");
  referer.clear();
  user_agent.clear();
  for (const http::HeaderField& f : h.headers) {
    const std::string_view name = f.name.in(msg);
    if (http::iequals(name, "referer")) copy_bounded(referer, f.value.in(msg), kAccessFieldMax);
    else if (http::iequals(name, "user-agent")) copy_bounded(user_agent, f.value.in(msg), kAccessFieldMax);
  }
}

// "GET /x HTTP/1.1" as far as it came: method, target and protocol are
// what lies between the spaces of its first line.
void AccessRecord::capture_raw(std::string_view input) {
  std::string_view line = input.substr(0, input.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t sp1 = line.find(' ');
  copy_bounded(method, line.substr(0, sp1), kAccessMethodMax);
  if (sp1 == std::string_view::npos) return;
  std::string_view rest = line.substr(sp1 + 1);
  const size_t sp2 = rest.rfind(' ');
  copy_bounded(target, rest.substr(0, sp2), kAccessTargetMax);
  if (sp2 != std::string_view::npos) copy_bounded(protocol, rest.substr(sp2 + 1), kAccessMethodMax);
}

void AccessRecord::reset() {
  method.clear();
  target.clear();
  protocol.clear();
  referer.clear();
  user_agent.clear();
  upstream = nullptr;
  assigned_ms = upstream_done_ms = 0;
  connect_ms = -1;
  received = sent = 0;
  head_sent = 0;
  status = 0;
  end = Termination::kUnset;
  logged = false;
}

namespace {
constexpr char kHex[] = "0123456789ABCDEF";
constexpr bool plain(uint8_t c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; }
}  // namespace

// Runs of plain bytes are appended whole: most values have nothing to escape.
void escape_combined(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    size_t j = i;
    while (j < in.size() && plain(uint8_t(in[j]))) ++j;
    out.append(in.data() + i, j - i);
    if (j == in.size()) return;
    const uint8_t c = uint8_t(in[j]);
    const char esc[4] = {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    out.append(esc, 4);
    i = j + 1;
  }
}

void escape_json(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    size_t j = i;
    while (j < in.size() && plain(uint8_t(in[j]))) ++j;
    out.append(in.data() + i, j - i);
    if (j == in.size()) return;
    i = j;
    const uint8_t c = uint8_t(in[i]);
    if (c >= 0x80) {
      const size_t n = utf8_sequence(in.substr(i));
      if (n == 0) {
        out += "\\ufffd";  // one replacement per invalid byte
        ++i;
      } else {
        out.append(in.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) fmt::format_to(std::back_inserter(out), "\\u{:04x}", unsigned(c));
        else out += char(c);
    }
    ++i;
  }
}

std::string time_text(AccessFormat format, time_t wall) {
  tm local{};
  localtime_r(&wall, &local);
  char buf[64];
  const size_t n = format == AccessFormat::kJson ? std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &local)
                                                 : std::strftime(buf, sizeof buf, "[%d/%b/%Y:%H:%M:%S %z]", &local);
  std::string out(buf, n);
  // ISO 8601 wants the offset as +00:00.
  if (format == AccessFormat::kJson && out.size() >= 5) out.insert(out.size() - 2, ":");
  return out;
}

void format_access_line(AccessFormat format, const AccessEntry& e, std::string_view time, std::string& out) {
  if (format == AccessFormat::kJson) format_json(e, time, out);
  else format_combined(e, time, out);
}

// ------------------------------------------------------------------ writer

AccessLogWriter::AccessLogWriter(std::string path, size_t queued_bytes_max)
    : path_(std::move(path)), queued_bytes_max_(queued_bytes_max) {
  open_path(true);
  thread_ = std::thread([this] { run(); });
}

AccessLogWriter::~AccessLogWriter() {
  AccessLogWriter* self = this;
  g_writer.compare_exchange_strong(self, nullptr, std::memory_order_acq_rel);
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
  if (own_fd_ && fd_ >= 0) ::close(fd_);
}

AccessLogWriter* AccessLogWriter::current() { return g_writer.load(std::memory_order_acquire); }
void AccessLogWriter::install(AccessLogWriter* w) { g_writer.store(w, std::memory_order_release); }

void AccessLogWriter::reopen() {
  {
    std::lock_guard lock(mutex_);
    reopen_ = true;
  }
  wake_.notify_one();
}

bool AccessLogWriter::submit(std::string& buf, uint32_t lines, std::atomic<uint64_t>* dropped) {
  bool wake;
  {
    std::lock_guard lock(mutex_);
    if (queued_bytes_ + buf.size() > queued_bytes_max_) return false;
    queued_bytes_ += buf.size();
    wake = queue_.empty();
    queue_.push_back(Batch{std::move(buf), lines, dropped});
    if (!spare_.empty()) {
      buf = std::move(spare_.back());
      spare_.pop_back();
    } else {
      buf = std::string();
    }
  }
  buf.clear();
  if (wake) wake_.notify_one();  // only the first of a run: the writer is busy with the rest
  return true;
}

// Non-blocking: a FIFO's open does not wait for a reader, and its writes
// never hold the writer past a stop or a reopen. (A regular file ignores
// the flag: a slow disk holds this thread, never a shard's.)
void AccessLogWriter::open_path(bool at_start) {
  if (path_ == "stderr") {
    fd_ = STDERR_FILENO;
    own_fd_ = false;
    return;
  }
  if (own_fd_ && fd_ >= 0) ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  own_fd_ = fd_ >= 0;
  if (fd_ >= 0) {
    last_error_ = 0;
    return;
  }
  const int err = errno;
  next_open_ms_ = mono_ms() + 1000;
  if (at_start && err != ENXIO)  // ENXIO: a FIFO nobody reads yet
    throw std::runtime_error(fmt::format("access_log: cannot open '{}': {}", path_, std::strerror(err)));
  complain("open", err);
}

void AccessLogWriter::complain(const char* what, int err) {
  if (err == last_error_) return;  // once until things change: a full disk is loud enough
  last_error_ = err;
  offload::log(LogLevel::kWarning, "access_log {} '{}': {} (lines are dropped and counted)", what, path_,
               std::strerror(err));
}

void AccessLogWriter::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || reopen_ || !queue_.empty(); });
    if (reopen_) {
      reopen_ = false;
      lock.unlock();
      open_path(false);
      lock.lock();
      continue;
    }
    if (queue_.empty()) return;  // stop_, with everything written
    Batch b = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    write_batch(b);
    lock.lock();
    queued_bytes_ -= b.text.size();
    if (spare_.size() < 64) spare_.push_back(std::move(b.text));
  }
}

void AccessLogWriter::write_batch(Batch& b) {
  if (fd_ < 0 && mono_ms() >= next_open_ms_) open_path(false);
  if (fd_ < 0 || gave_up_) {
    drop(b, 0);
    return;
  }
  size_t off = 0;
  uint64_t give_up_ms = 0;  // while stopping: a reader that never reads gets a second
  while (off < b.text.size()) {
    const ssize_t n = ::write(fd_, b.text.data() + off, b.text.size() - off);
    if (n > 0) {
      off += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      bool stopping, reopening;
      {
        std::lock_guard lock(mutex_);
        stopping = stop_;
        reopening = reopen_;
      }
      if (reopening) {  // the rest goes to the path's new file
        {
          std::lock_guard lock(mutex_);
          reopen_ = false;
        }
        open_path(false);
        if (fd_ < 0) break;
        continue;
      }
      if (stopping) {
        if (give_up_ms == 0) give_up_ms = mono_ms() + 1000;
        else if (mono_ms() >= give_up_ms) {
          gave_up_ = true;  // and the rest of the queue with it
          break;
        }
      }
      pollfd p{fd_, POLLOUT, 0};
      (void)::poll(&p, 1, 100);
      continue;
    }
    // A full disk, a reader gone (EPIPE: SIGPIPE is ignored), an I/O error.
    complain("write", n < 0 ? errno : EIO);
    if (n < 0 && errno == EPIPE && own_fd_) {  // a FIFO's reader left: wait for the next
      ::close(fd_);
      fd_ = -1;
      own_fd_ = false;
      next_open_ms_ = mono_ms() + 1000;
    }
    break;
  }
  if (off < b.text.size()) {
    drop(b, off);
    return;
  }
  written_.fetch_add(b.lines, std::memory_order_relaxed);
  last_error_ = 0;
}

// The lines of `b` from byte `from` on (a line cut in the middle counts as
// dropped: its start went out, its end did not).
void AccessLogWriter::drop(Batch& b, size_t from) {
  uint64_t lines = 0;
  for (size_t i = from; i < b.text.size(); ++i) lines += b.text[i] == '\n';
  written_.fetch_add(b.lines - lines, std::memory_order_relaxed);
  if (b.dropped != nullptr) b.dropped->fetch_add(lines, std::memory_order_relaxed);
}

// ------------------------------------------------------------------- shard

AccessLog::AccessLog(Loop& loop, const Config& config, Counters& counters) : loop_(loop), counters_(counters) {
  if (config.access_log == "off") return;
  writer_ = AccessLogWriter::current();
  if (writer_ == nullptr) return;
  format_ = config.access_log_format == "json" ? AccessFormat::kJson : AccessFormat::kCombined;
  buf_.reserve(kHandOverBytes * 2);
  bind<&AccessLog::on_timer>(flush_timer_, this);
  loop_.add_timers(flush_list_);
}

AccessLog::~AccessLog() {
  if (writer_ != nullptr) hand_over();  // its generation keeps the writer until its shards have ended
}

std::string_view AccessLog::wall_text(time_t now) {
  if (now != cached_wall_) {
    cached_wall_ = now;
    cached_text_ = time_text(format_, now);
  }
  return cached_text_;
}

void AccessLog::log(ClientConn& c, Termination end) {
  Exchange* ex = c.ex;
  AccessRecord& r = ex->log;
  if (r.logged) return;
  r.logged = true;
  // A head never parsed (an error, a timeout, a close): what did come.
  if (r.method.empty() && ex->in != nullptr && ex->in->readable() > 0) {
    const std::string_view input(ex->in->data() + ex->in->head, ex->in->readable());
    r.capture_raw(input);
    if (r.received == 0) r.received = input.size();
  }
  AccessEntry e;
  char ip[INET6_ADDRSTRLEN] = "";
  if (c.peer_family != 0 && inet_ntop(c.peer_family, c.peer_addr, ip, sizeof ip) != nullptr) e.remote = ip;
  e.method = r.method;
  e.target = r.target;
  e.protocol = r.protocol;
  e.referer = r.referer;
  e.user_agent = r.user_agent;
  if (r.upstream != nullptr) e.upstream = *r.upstream;
  e.listener = c.listener->name;
  e.status = r.status;
  e.sent = r.sent;
  e.body_bytes = r.sent > r.head_sent ? r.sent - r.head_sent : 0;
  e.received = r.received;
  const uint64_t now = loop_.now_ms();
  e.total_ms = int64_t(now - ex->started_ms);
  if (r.assigned_ms != 0) {
    e.queue_ms = int64_t(r.assigned_ms - ex->queued_ms);
    e.connect_ms = r.connect_ms;
    e.upstream_ms = int64_t((r.upstream_done_ms != 0 ? r.upstream_done_ms : now) - r.assigned_ms);
  }
  e.end = r.end != Termination::kUnset ? r.end : end;
  log(e);
}

void AccessLog::log(AccessEntry& e) {
  timespec wall;
  clock_gettime(CLOCK_REALTIME_COARSE, &wall);
  e.wall = wall.tv_sec;
  const bool was_empty = buf_.empty();
  format_access_line(format_, e, wall_text(e.wall), buf_);
  ++lines_;
  if (was_empty) loop_.arm(flush_timer_, flush_list_);
}

void AccessLog::on_timer() { hand_over(); }

void AccessLog::hand_over() {
  disarm(flush_timer_);
  if (buf_.empty()) return;
  if (!writer_->submit(buf_, lines_, &counters_.access_log_dropped)) {
    counters_.access_log_dropped.fetch_add(lines_, std::memory_order_relaxed);
    buf_.clear();
  }
  lines_ = 0;
}

}  // namespace offload
