#include "upstream/health_checker.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "loop/check.h"

namespace offload {

namespace {

enum : uint8_t { kTimerInterval, kTimerProbe };

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// What may stand in a request-target or a header value here: visible ASCII
// (no spaces in the path, spaces and tabs inside a Host value are useless).
bool visible(std::string_view s) {
  for (char c : s)
    if (uint8_t(c) <= 0x20 || uint8_t(c) >= 0x7f) return false;
  return true;
}

}  // namespace

const char* probe_outcome_name(ProbeOutcome outcome) {
  switch (outcome) {
    case ProbeOutcome::kNone: return "none";
    case ProbeOutcome::kOk: return "ok";
    case ProbeOutcome::kSocket: return "socket";
    case ProbeOutcome::kConnect: return "connect";
    case ProbeOutcome::kSend: return "send";
    case ProbeOutcome::kReceive: return "receive";
    case ProbeOutcome::kEof: return "eof";
    case ProbeOutcome::kStatus: return "status";
    case ProbeOutcome::kGarbage: return "garbage";
    case ProbeOutcome::kTimeout: return "timeout";
  }
  return "?";
}

const char* health_path_problem(std::string_view path) {
  if (path.empty() || path.front() != '/' || !visible(path) || path.size() > 1024)
    return "a path starting with '/', without spaces or control characters, at most 1024 bytes";
  return nullptr;
}

const char* health_host_problem(std::string_view host) {
  if (host.empty() || !visible(host) || host.size() > 255)
    return "a host of 1 to 255 visible characters, without spaces";
  return nullptr;
}

// "HTTP/1.x SSS reason\r\n", checked byte by byte as it arrives so that
// garbage is refused at its first wrong byte instead of at the timeout.
// The reason phrase may be empty ("HTTP/1.1 200 \r\n", and, leniently, with
// its space left out too); it may hold tabs, spaces and visible bytes.
int parse_status_line(std::string_view b) {
  static constexpr std::string_view kVersion = "HTTP/1.";
  const size_t n = b.size();
  for (size_t i = 0; i < kVersion.size(); ++i) {
    if (i >= n) return kStatusLineIncomplete;
    if (b[i] != kVersion[i]) return kStatusLineInvalid;
  }
  // "HTTP/1." then a digit, a space and three digits: positions 7 to 11.
  for (size_t i = 7; i <= 11; ++i) {
    if (i >= n) return kStatusLineIncomplete;
    const bool ok = i == 8 ? b[i] == ' ' : is_digit(b[i]);
    if (!ok) return kStatusLineInvalid;
  }
  const int status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
  if (status < 100) return kStatusLineInvalid;
  size_t i = 12;
  if (i >= n) return kStatusLineIncomplete;
  if (b[i] == ' ') {
    for (++i; i < n && b[i] != '\r'; ++i)
      if (b[i] != '\t' && (uint8_t(b[i]) < 0x20 || b[i] == 0x7f)) return kStatusLineInvalid;
  }
  if (i >= n) return kStatusLineIncomplete;
  if (b[i] != '\r') return kStatusLineInvalid;
  if (i + 1 >= n) return kStatusLineIncomplete;
  return b[i + 1] == '\n' ? status : kStatusLineInvalid;
}

// One server's probe slot. Its Completions and Timer are bound once, to this
// slot, and each carries at most one operation at a time.
struct HealthChecker::Probe {
  enum class State : uint8_t {
    kIdle,     // no socket
    kRunning,  // a probe whose result is not known yet
    kClosing,  // result given (or stopped): waiting for its completions
  };
  size_t index = 0;
  State state = State::kIdle;
  int fd = -1;
  uint32_t inflight = 0;  // operations submitted and not yet completed
  bool connecting = false, sending = false, receiving = false;
  SocketAddress address;
  std::string request;
  size_t sent = 0;      // bytes of `request` sent
  size_t received = 0;  // bytes in `line`
  char line[kStatusLineMax];
  Completion connected, sent_done, received_done, cancelled;
  Timer timeout;
  ProbeCounters counters;
};

HealthChecker::HealthChecker(Loop& loop, std::vector<ProbeTarget> targets, HealthCheckSettings settings,
                             Report report)
    : loop_(loop),
      settings_(std::move(settings)),
      report_(std::move(report)),
      intervals_(settings_.interval_ms, kTimerInterval),
      timeouts_(settings_.timeout_ms, kTimerProbe) {
  OFFLOAD_ASSERT(settings_.interval_ms > 0 && settings_.timeout_ms > 0);
  OFFLOAD_ASSERT(health_path_problem(settings_.path) == nullptr);
  probes_.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    OFFLOAD_ASSERT(health_host_problem(targets[i].host) == nullptr);
    const int family = targets[i].address.family();
    OFFLOAD_ASSERT(family == AF_INET || family == AF_INET6 || family == AF_UNIX);
    auto p = std::make_unique<Probe>();
    p->index = i;
    p->address = std::move(targets[i].address);
    p->request = "GET " + settings_.path + " HTTP/1.1\r\nHost: " + targets[i].host +
                 "\r\nConnection: close\r\nUser-Agent: offload-health\r\n\r\n";
    bind<&HealthChecker::on_connect>(p->connected, this, p.get());
    bind<&HealthChecker::on_sent>(p->sent_done, this, p.get());
    bind<&HealthChecker::on_received>(p->received_done, this, p.get());
    bind<&HealthChecker::on_cancelled>(p->cancelled, this, p.get());
    bind<&HealthChecker::on_timeout>(p->timeout, this, p.get());
    probes_.push_back(std::move(p));
  }
  bind<&HealthChecker::on_interval>(interval_timer_, this);
  loop_.add_timers(intervals_);
  loop_.add_timers(timeouts_);
}

// See the header: the loop does not turn again, so no completion will be
// dispatched; shutdown() first makes a pending receive end empty rather than
// copy bytes into the slot being freed.
HealthChecker::~HealthChecker() {
  offload::disarm(interval_timer_);
  for (auto& p : probes_) {
    offload::disarm(p->timeout);
    if (p->fd < 0) continue;
    ::shutdown(p->fd, SHUT_RDWR);
    ::close(p->fd);
  }
}

void HealthChecker::start() {
  started_ = true;
  on_interval();
}

void HealthChecker::stop() {
  started_ = false;
  offload::disarm(interval_timer_);
  for (auto& p : probes_) {
    if (p->state != Probe::State::kRunning) continue;
    offload::disarm(p->timeout);
    p->state = Probe::State::kClosing;
    abort_operations(*p);
    maybe_close(*p);
  }
}

bool HealthChecker::idle() const {
  for (const auto& p : probes_)
    if (p->state != Probe::State::kIdle) return false;
  return true;
}

const ProbeCounters& HealthChecker::counters(size_t server) const {
  OFFLOAD_ASSERT(server < probes_.size());
  return probes_[server]->counters;
}

const std::string& HealthChecker::request(size_t server) const {
  OFFLOAD_ASSERT(server < probes_.size());
  return probes_[server]->request;
}

// One round: the next is armed first, so a round is interval_ms after the
// previous one whatever the probes do.
void HealthChecker::on_interval() {
  loop_.arm(interval_timer_, intervals_);
  for (auto& p : probes_) {
    if (!started_) return;  // a report (of a failed socket()) called stop()
    if (p->state != Probe::State::kIdle) {
      ++p->counters.skipped;
      continue;
    }
    begin(*p);
  }
}

void HealthChecker::begin(Probe& p) {
  OFFLOAD_ASSERT(p.state == Probe::State::kIdle && p.inflight == 0 && p.fd < 0);
  ++p.counters.sent;
  p.state = Probe::State::kRunning;
  p.sent = 0;
  p.received = 0;
  // Non-blocking: io_uring then waits for the connect by polling, never by
  // parking a worker thread on it.
  p.fd = ::socket(p.address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p.fd < 0) {
    finish(p, ProbeOutcome::kSocket, errno);
    return;
  }
  loop_.arm(p.timeout, timeouts_);
  io_uring_prep_connect(loop_.sqe(p.connected), p.fd, reinterpret_cast<const sockaddr*>(&p.address.storage),
                        p.address.length);
  p.connecting = true;
  ++p.inflight;
}

void HealthChecker::post_send(Probe& p) {
  OFFLOAD_ASSERT(!p.sending && p.sent < p.request.size());
  io_uring_prep_send(loop_.sqe(p.sent_done), p.fd, p.request.data() + p.sent, p.request.size() - p.sent,
                     MSG_NOSIGNAL);
  p.sending = true;
  ++p.inflight;
}

void HealthChecker::post_recv(Probe& p) {
  OFFLOAD_ASSERT(!p.receiving && p.received < kStatusLineMax);  // one receive per socket
  io_uring_prep_recv(loop_.sqe(p.received_done), p.fd, p.line + p.received, kStatusLineMax - p.received, 0);
  p.receiving = true;
  ++p.inflight;
}

void HealthChecker::on_connect(Probe* p, const io_uring_cqe& cqe) {
  OFFLOAD_ASSERT(p->connecting && p->inflight > 0);
  p->connecting = false;
  --p->inflight;
  if (p->state != Probe::State::kRunning) return maybe_close(*p);
  if (cqe.res < 0) return finish(*p, ProbeOutcome::kConnect, -cqe.res);
  post_send(*p);
}

void HealthChecker::on_sent(Probe* p, const io_uring_cqe& cqe) {
  OFFLOAD_ASSERT(p->sending && p->inflight > 0);
  p->sending = false;
  --p->inflight;
  if (p->state != Probe::State::kRunning) return maybe_close(*p);
  if (cqe.res < 0) return finish(*p, ProbeOutcome::kSend, -cqe.res);
  p->sent += size_t(cqe.res);
  if (p->sent < p->request.size()) return post_send(*p);  // a short send: the rest
  post_recv(*p);
}

void HealthChecker::on_received(Probe* p, const io_uring_cqe& cqe) {
  OFFLOAD_ASSERT(p->receiving && p->inflight > 0);
  p->receiving = false;
  --p->inflight;
  if (p->state != Probe::State::kRunning) return maybe_close(*p);
  if (cqe.res < 0) return finish(*p, ProbeOutcome::kReceive, -cqe.res);
  if (cqe.res == 0) return finish(*p, ProbeOutcome::kEof);
  p->received += size_t(cqe.res);
  OFFLOAD_ASSERT(p->received <= kStatusLineMax);
  const int status = parse_status_line(std::string_view(p->line, p->received));
  if (status == kStatusLineInvalid) return finish(*p, ProbeOutcome::kGarbage);
  if (status == kStatusLineIncomplete) {
    if (p->received == kStatusLineMax) return finish(*p, ProbeOutcome::kGarbage);  // too long
    return post_recv(*p);
  }
  p->counters.last_status = status;
  finish(*p, status >= 200 && status < 400 ? ProbeOutcome::kOk : ProbeOutcome::kStatus);
}

void HealthChecker::on_cancelled(Probe* p, const io_uring_cqe&) {
  OFFLOAD_ASSERT(p->inflight > 0);
  --p->inflight;
  maybe_close(*p);
}

void HealthChecker::on_timeout(Probe* p, Timer&) {
  OFFLOAD_ASSERT(p->state == Probe::State::kRunning);
  finish(*p, ProbeOutcome::kTimeout);
}

// The one end of a running probe: counted, its socket on the way to closing,
// then reported (last, since the callback may call stop()).
void HealthChecker::finish(Probe& p, ProbeOutcome outcome, int err) {
  OFFLOAD_ASSERT(p.state == Probe::State::kRunning);
  offload::disarm(p.timeout);
  ProbeCounters& c = p.counters;
  c.last = outcome;
  if (err != 0) c.last_errno = err;
  if (outcome == ProbeOutcome::kOk) ++c.ok;
  else if (outcome == ProbeOutcome::kTimeout) ++c.timed_out;
  else ++c.failed;
  if (outcome != ProbeOutcome::kOk && outcome != ProbeOutcome::kStatus) c.last_status = 0;
  p.state = Probe::State::kClosing;
  abort_operations(p);
  maybe_close(p);
  report_(p.index, outcome == ProbeOutcome::kOk);
}

// Cancels whatever the probe still has in the kernel; each cancel is itself
// an operation on the probe (its CQE names the slot), so it is counted too.
// shutdown() as well, so that an operation the cancel misses (already
// running) still ends at once instead of waiting on the network.
void HealthChecker::abort_operations(Probe& p) {
  if (p.fd < 0) return;
  for (auto [pending, target] : {std::pair{p.connecting, &p.connected}, std::pair{p.sending, &p.sent_done},
                                 std::pair{p.receiving, &p.received_done}}) {
    if (!pending) continue;
    loop_.cancel(*target, &p.cancelled);
    ++p.inflight;
  }
  ::shutdown(p.fd, SHUT_RDWR);
}

void HealthChecker::maybe_close(Probe& p) {
  if (p.state != Probe::State::kClosing || p.inflight > 0) return;
  if (p.fd >= 0) ::close(p.fd);
  p.fd = -1;
  p.state = Probe::State::kIdle;
}

}  // namespace offload
