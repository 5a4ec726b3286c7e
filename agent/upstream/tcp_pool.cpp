#include "upstream/tcp_pool.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>


namespace offload {

TcpPool::TcpPool(Loop& loop, Counters& counters, ServerCounters& stats, Host& host, UpstreamGroup& group,
                 uint32_t index, Settings settings, const http::Limits& response_limits)
    : loop_(loop),
      counters_(counters),
      stats_(stats),
      host_(host),
      group_(group),
      index_(index),
      settings_(std::move(settings)),
      limit_(ConcurrencyLimit::Settings{settings_.initial_limit, 1, settings_.max_connections}) {
  for (uint32_t i = 0; i < settings_.max_connections; ++i) {
    conns_.push_back(std::make_unique<UpstreamConn>(i, response_limits));
    UpstreamConn* u = conns_.back().get();
    u->pool = this;
    bind<&TcpPool::on_connect>(u->connected, this, u);
    bind<&TcpPool::on_connect_timeout>(u->connect_timed_out, this, u);
  }
  connect_timeout_.tv_sec = settings_.connect_timeout_ms / 1000;
  connect_timeout_.tv_nsec = (settings_.connect_timeout_ms % 1000) * 1000000ll;
  bind<&TcpPool::on_reconnect_timer>(reconnect_timer_, this);
  loop_.add_timers(reconnect_list_);
  limit_changed();
}

void TcpPool::limit_changed() {
  const uint32_t now = limit_.limit();
  if (now >= reported_limit_) bump(counters_.upstream_limit, now - reported_limit_);
  else drop(counters_.upstream_limit, reported_limit_ - now);
  reported_limit_ = now;
}

// The server's gauges outlive the pool (a reload's next generation counts on
// in them): what this pool still holds comes off them.
TcpPool::~TcpPool() {
  for (auto& u : conns_)
    if (u->fd >= 0) {
      ::close(u->fd);
      sub(stats_.connections);
    }
  if (counted_down) sub(stats_.down);
}

UpstreamConn* TcpPool::take_idle() { return idle_.empty() ? nullptr : idle_.pop_front(); }

// An idle connection keeps its multishot receive: a server closing it shows
// up as an end of file there, so no poll is needed to notice.
void TcpPool::make_idle(UpstreamConn* u) {
  OFFLOAD_ASSERT(u->pool == this && !u->idle_node.linked());
  u->state = UpstreamState::kIdle;
  u->client = nullptr;
  disarm(u->timer);
  idle_.push_front(u);  // LIFO: the warmest connection serves next, surplus ones age out
}

// One connection is kept open ahead of demand (with persistent > 0), so a
// request always finds one even when clients have taken every descriptor;
// the rest open on demand. Many opened ahead of any request would be taken
// by the workers of a blocking server, each then waiting for its first
// request (for ever, for some servers), while requests sent on the others
// sat unread in its accept queue; one is the first to be used.
void TcpPool::refill() {
  if (settings_.persistent > 0 && open_ == 0 && !backing_off()) open();
}

// A failed open or connect: no new connection is tried until the reconnect
// timer fires, its delay doubling from 50 ms up to 1 s while failures go on.
// Waiting requests wait meanwhile, each bounded by its queue timer.
void TcpPool::back_off(int status) {
  unreachable_status_ = status;
  if (backing_off()) return;
  reconnect_delay_ms_ = reconnect_delay_ms_ == 0 ? kReconnectFirstMs : std::min(reconnect_delay_ms_ * 2, kReconnectMaxMs);
  OFFLOAD_ASSERT(reconnect_list_.size() == 0);
  reconnect_list_.set_duration(reconnect_delay_ms_);
  loop_.arm(reconnect_timer_, reconnect_list_);
}

void TcpPool::on_reconnect_timer() { host_.on_retry(*this); }

void TcpPool::log_error(const char* what, int err) {
  // A down backend is loud enough at one line per 5 s.
  log_limited(log_limiter_, loop_.now_ms(), LogLevel::kWarning, "upstream {}: {}: {}", settings_.target.text, what,
              std::strerror(err));
}

bool TcpPool::open() {
  UpstreamConn* u = nullptr;
  for (auto& candidate : conns_)
    if (candidate->state == UpstreamState::kFree) {
      u = candidate.get();
      break;
    }
  if (u == nullptr) return false;
  const SocketAddress& addr = settings_.target.address;
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {  // EMFILE, ENFILE, ENOMEM: like a refused connect
    bump(counters_.upstream_connect_errors);
    log_error("socket", errno);
    back_off(502);
    host_.on_connect_failed(*this, 502);
    return false;
  }
  if (addr.family() != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  u->fd = fd;
  u->opened_ms = loop_.now_ms();
  u->state = UpstreamState::kConnecting;
  u->used = false;
  u->proven = false;
  u->stall_noted = false;
  u->reusable = true;
  u->client = nullptr;
  ++u->generation;
  ++open_;
  ++connecting_;
  bump(counters_.upstream_connects);
  bump(counters_.upstream_active);
  add(stats_.connects);
  add(stats_.connections);
  io_uring_sqe* s = loop_.sqe(u->connected);
  io_uring_prep_connect(s, fd, reinterpret_cast<const sockaddr*>(&addr.storage), addr.length);
  s->flags |= IOSQE_IO_LINK;
  io_uring_prep_link_timeout(loop_.sqe(u->connect_timed_out), &connect_timeout_, 0);
  u->inflight += 2;
  return true;
}

void TcpPool::on_connect_timeout(UpstreamConn* u, const io_uring_cqe& cqe) {
  --u->inflight;
  if (cqe.res == -ETIME) bump(counters_.timeouts_connect);
  maybe_free(u);
}

void TcpPool::on_connect(UpstreamConn* u, const io_uring_cqe& cqe) {
  const int res = cqe.res;
  --u->inflight;
  --connecting_;
  if (u->state == UpstreamState::kClosing) {
    maybe_free(u);
    return;
  }
  if (res < 0) {
    bump(counters_.upstream_connect_errors);
    log_error("connect", res == -ECANCELED ? ETIMEDOUT : -res);
    u->reusable = false;
    close(u);
    // The waiting requests stay queued: a backend that restarts costs them
    // latency, not errors. Their queue timers bound the wait.
    const int status = res == -ECANCELED ? 504 : 502;
    back_off(status);
    host_.on_connect_failed(*this, status);
    return;
  }
  reconnect_delay_ms_ = 0;
  host_.on_connected(*this, u);
}

void TcpPool::close(UpstreamConn* u) {
  if (u->state == UpstreamState::kClosing || u->state == UpstreamState::kFree) return;
  if (u->state == UpstreamState::kIdle) idle_.remove(u);
  disarm(u->timer);
  u->state = UpstreamState::kClosing;
  ::shutdown(u->fd, SHUT_RDWR);
  maybe_free(u);
}

void TcpPool::maybe_free(UpstreamConn* u) {
  if (u->state != UpstreamState::kClosing || u->inflight > 0) return;
  ::close(u->fd);
  u->fd = -1;
  u->state = UpstreamState::kFree;
  --open_;
  drop(counters_.upstream_active);
  sub(stats_.connections);
  OFFLOAD_ASSERT(!u->in.armed && !u->out.busy);
  host_.on_freed(*this, u);
}

}  // namespace offload
