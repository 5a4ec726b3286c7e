// The pass-through proxy in user space (see passthrough_proxy.h).
#include "proxy/passthrough_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "loop/check.h"
#include "ops/topology_stats.h"
#include "upstream/hash.h"
#include "upstream/tcp_upstream.h"

namespace offload {
namespace {

// Tunnels kept made for the next connections (each is small: no buffers
// while it is free).
constexpr uint32_t kTunnelsKeptFree = 32;

// The client's address, for the screen and for source-hash balancing.
bool peer_address(int fd, IpAddress& out) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  if (ss.ss_family == AF_INET) {
    out = IpAddress::from_v4(reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in*>(&ss)->sin_addr));
    return true;
  }
  if (ss.ss_family == AF_INET6) {
    out = IpAddress::from_v6(reinterpret_cast<const uint8_t*>(&reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr));
    return true;
  }
  return false;
}

// Closing with SO_LINGER 0 sends a reset instead of a FIN.
void set_reset_on_close(int fd) {
  if (fd < 0) return;
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

}  // namespace

PassthroughProxy::PassthroughProxy(Loop& loop, const Config& config, Counters& counters, BlockPool& data_pool,
                                   Screen& screen, TcpUpstream& upstream)
    : loop_(loop),
      config_(config),
      counters_(counters),
      data_pool_(data_pool),
      screen_(screen),
      upstream_(upstream),
      acceptor_(loop, counters, this, &PassthroughProxy::on_accepted),
      tunnels_(config.max_clients,
               [this](void* at) {
                 auto* t = new (at) Tunnel;
                 bind<&PassthroughProxy::on_connected>(t->connected, this, t);
                 bind<&PassthroughProxy::on_connect_timeout>(t->connect_timed_out, this, t);
                 bind<&PassthroughProxy::on_cancelled>(t->cancelled, this, t);
                 bind<&PassthroughProxy::on_up_recv>(t->up.received, this, t);
                 bind<&PassthroughProxy::on_down_recv>(t->down.received, this, t);
                 bind<&PassthroughProxy::on_up_send>(t->up.sent, this, t);
                 bind<&PassthroughProxy::on_down_send>(t->down.sent, this, t);
                 bind<&PassthroughProxy::on_timer>(t->timer, this, t);
                 return t;
               },
               kTunnelsKeptFree) {}

PassthroughProxy::~PassthroughProxy() { release_all(); }

void PassthroughProxy::serve(Listener* l) {
  l->proxy = this;
  acceptor_.serve(l);
}

void PassthroughProxy::drain() {
  // Tunnels have no request boundary to stop at: they go on until they end
  // or the drain deadline passes.
  draining_ = true;
  acceptor_.stop();
}

void PassthroughProxy::release_all() {
  for (Tunnel* t : live_) {
    if (t->client_fd >= 0) ::close(std::exchange(t->client_fd, -1));
    if (t->server_fd >= 0) ::close(std::exchange(t->server_fd, -1));
  }
}

void PassthroughProxy::on_accepted(void* self, Listener* l, int fd) {
  static_cast<PassthroughProxy*>(self)->accept(l, fd);
}

// A tunnel for client `fd` on `l`, counted as open; null (fd closed, the
// refusal counted) when the listener or the proxy is full.
Tunnel* PassthroughProxy::open_slot(Listener* l, int fd) {
  Tunnel* t = l->active >= l->max_clients ? nullptr : tunnels_.get();
  if (t == nullptr) {
    // Counted before the close: the client may ask the stats as soon as it sees it.
    bump(counters_.rejected_over_limit);
    add(l->stats->rejected);
    ::close(fd);
    return nullptr;
  }
  t->client_fd = fd;
  t->listener = l;
  t->live_index = uint32_t(live_.size());
  live_.push_back(t);
  ++active_;
  ++l->active;
  add(l->stats->active);
  bump(counters_.tunnels_active);
  return t;
}

void PassthroughProxy::accept(Listener* l, int fd) {
  if (draining_) {
    ::close(fd);
    return;
  }
  Tunnel* t = open_slot(l, fd);
  if (t == nullptr) return;
  add(l->stats->accepted);
  bump(counters_.accepted);
  bump(counters_.tunnels_accepted);
  if (screen_out(t)) {
    end(t, false);
    return;
  }
  if (!connect(t)) {
    bump(counters_.tunnel_connect_failures);
    end(t, false);
  }
}

void PassthroughProxy::adopt(Listener* l, int fd, const IpAddress& source, bool screened, std::string first) {
  Tunnel* t = open_slot(l, fd);
  if (t == nullptr) {
    if (screened) screen_.release(source);
    return;
  }
  t->source = source;
  t->screened = screened;
  t->upgrade = true;
  t->first = std::move(first);
  if (!connect(t)) {
    bump(counters_.tunnel_connect_failures);
    end(t, false);
  }
}

// The same screen as the HTTP proxy's (one per shard): the deny and allow
// lists, and the connections per source, counted until the tunnel ends.
bool PassthroughProxy::screen_out(Tunnel* t) {
  const bool known = peer_address(t->client_fd, t->source);
  if (!screen_.active() || !known) return false;
  const uint64_t evictions = screen_.evictions();
  const Verdict v = screen_.admit(t->source, loop_.now_ms());
  bump(counters_.source_evictions, screen_.evictions() - evictions);
  if (v == Verdict::kAccept) {
    t->screened = true;
    return false;
  }
  count_refusal(v, counters_);
  return true;
}

// A connection of its own to the server the group's balancer picks.
bool PassthroughProxy::connect(Tunnel* t) {
  OFFLOAD_ASSERT(t->listener->group != nullptr);
  t->server = upstream_.pick_tunnel_server(*t->listener->group, fnv1a(t->source.bytes, sizeof t->source.bytes));
  if (t->server == nullptr) return false;
  const SocketAddress& addr = t->server->target().address;
  t->server_fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (t->server_fd < 0) return false;
  int one = 1;
  if (addr.family() != AF_UNIX) ::setsockopt(t->server_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(t->client_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  t->connect_timeout.tv_sec = config_.connect_timeout_ms / 1000;
  t->connect_timeout.tv_nsec = (config_.connect_timeout_ms % 1000) * 1000000ll;
  io_uring_sqe* s = loop_.sqe(t->connected);
  io_uring_prep_connect(s, t->server_fd, reinterpret_cast<const sockaddr*>(&addr.storage), addr.length);
  s->flags |= IOSQE_IO_LINK;
  io_uring_prep_link_timeout(loop_.sqe(t->connect_timed_out), &t->connect_timeout, 0);
  t->inflight += 2;
  return true;
}

void PassthroughProxy::on_connect_timeout(Tunnel* t, const io_uring_cqe&) {
  op_done(t);
  maybe_free(t);
}

void PassthroughProxy::on_connected(Tunnel* t, const io_uring_cqe& cqe) {
  op_done(t);
  if (t->ending) {
    maybe_free(t);
    return;
  }
  if (cqe.res < 0) {
    if (cqe.res == -ECANCELED) bump(counters_.timeouts_connect);
    upstream_.tunnel_connected(*t->server, false);
    bump(counters_.tunnel_connect_failures);
    end(t, false);
    return;
  }
  upstream_.tunnel_connected(*t->server, true);
  t->up.buf = data_pool_.get();
  t->down.buf = data_pool_.get();
  if (t->up.buf == nullptr || t->down.buf == nullptr) {
    bump(counters_.buffer_exhausted);
    end(t, false);
    return;
  }
  t->open = true;
  // Whatever either side sent already waits in its socket: the first
  // receives take it, whoever speaks first (an SSH or SMTP server does).
  // An upgrade's request goes out before anything else of the client's.
  if (t->upgrade && !send_first(t)) return;
  if (!t->upgrade) post_recv(t, t->up);
  post_recv(t, t->down);
  arm_idle(t);
}

// Nothing moving: the tunnel's own bound, or the shorter half-close one
// once either side has ended.
void PassthroughProxy::arm_idle(Tunnel* t) {
  Listener* l = t->listener;
  loop_.arm(t->timer, t->up.eof || t->down.eof ? l->tunnel_half_close : l->tunnel_idle);
}

void PassthroughProxy::on_timer(Tunnel* t, Timer&) {
  bump(counters_.timeouts_tunnel);
  end(t, false);
}

void PassthroughProxy::post_recv(Tunnel* t, Tunnel::Flow& f) {
  OFFLOAD_ASSERT(!f.recv_busy && !f.send_busy && !f.eof);
  f.buf->head = f.buf->tail = 0;
  f.sent_off = 0;
  io_uring_prep_recv(loop_.sqe(f.received), from_fd(t, f), f.buf->data(), f.buf->capacity, 0);
  f.recv_busy = true;
  ++t->inflight;
}

void PassthroughProxy::post_send(Tunnel* t, Tunnel::Flow& f) {
  OFFLOAD_ASSERT(!f.send_busy && f.sent_off < f.buf->tail);
  io_uring_prep_send(loop_.sqe(f.sent), to_fd(t, f), f.buf->data() + f.sent_off, f.buf->tail - f.sent_off,
                     MSG_NOSIGNAL);
  f.send_busy = true;
  ++t->inflight;
}

bool PassthroughProxy::send_first(Tunnel* t) {
  if (t->first.size() > t->up.buf->capacity) {  // larger than any head the HTTP proxy takes
    end(t, false);
    return false;
  }
  std::memcpy(t->up.buf->data(), t->first.data(), t->first.size());
  t->up.buf->head = 0;
  t->up.buf->tail = uint32_t(t->first.size());
  t->up.sent_off = 0;
  t->first.clear();
  t->first.shrink_to_fit();
  post_send(t, t->up);
  return true;
}

void PassthroughProxy::on_recv(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe) {
  op_done(t);
  f.recv_busy = false;
  if (t->ending) {
    maybe_free(t);
    return;
  }
  if (cqe.res == 0) {
    on_eof(t, f);
    return;
  }
  if (cqe.res < 0) {  // a reset (or another error) on one side is a reset on both
    end(t, true);
    return;
  }
  f.buf->tail = uint32_t(cqe.res);
  if (t->upgrade && &f == &t->down && f.bytes == 0) {
    static constexpr std::string_view k101 = "HTTP/1.1 101";
    if (std::string_view(f.buf->data(), std::min<size_t>(f.buf->tail, k101.size())) == k101)
      bump(counters_.upgrades_switched);
  }
  f.bytes += uint64_t(cqe.res);
  bump(&f == &t->up ? counters_.tunnel_bytes_up : counters_.tunnel_bytes_down, uint64_t(cqe.res));
  arm_idle(t);
  post_send(t, f);
}

void PassthroughProxy::on_send(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe) {
  op_done(t);
  f.send_busy = false;
  if (t->ending) {
    maybe_free(t);
    return;
  }
  if (cqe.res <= 0) {  // the receiving side is gone: tell the sending side by a reset
    end(t, true);
    return;
  }
  f.sent_off += uint32_t(cqe.res);
  if (f.sent_off < f.buf->tail) {
    post_send(t, f);
    return;
  }
  post_recv(t, f);
}

// The source of `f` ended its writes: every byte it sent has gone out (the
// receive is posted only once the last send is complete), so the FIN goes on
// to the peer while the other direction still flows.
void PassthroughProxy::on_eof(Tunnel* t, Tunnel::Flow& f) {
  f.eof = true;
  bump(counters_.tunnel_half_closes);  // counted before the peer can see it
  ::shutdown(to_fd(t, f), SHUT_WR);
  Tunnel::Flow& other = &f == &t->up ? t->down : t->up;
  if (other.eof) {
    end(t, false);  // both sides done: a clean close
    return;
  }
  arm_idle(t);
}

// The one place a tunnel ends. Operations still in flight are cancelled; the
// sockets close once every one of them is back (maybe_free), with a reset
// when `reset` (SO_LINGER 0), else with a FIN.
void PassthroughProxy::end(Tunnel* t, bool reset) {
  if (t->ending) return;
  t->ending = true;
  t->reset = reset;
  disarm(t->timer);
  if (reset) {
    bump(counters_.tunnel_resets);
    set_reset_on_close(t->client_fd);
    set_reset_on_close(t->server_fd);
  }
  const Completion* busy[] = {t->up.recv_busy ? &t->up.received : nullptr, t->up.send_busy ? &t->up.sent : nullptr,
                              t->down.recv_busy ? &t->down.received : nullptr,
                              t->down.send_busy ? &t->down.sent : nullptr, t->inflight > 0 && !t->open ? &t->connected : nullptr};
  for (const Completion* c : busy) {
    if (c == nullptr) continue;
    loop_.cancel(*c, &t->cancelled);
    ++t->inflight;
  }
  maybe_free(t);
}

void PassthroughProxy::on_cancelled(Tunnel* t, const io_uring_cqe&) {
  op_done(t);
  maybe_free(t);
}

void PassthroughProxy::maybe_free(Tunnel* t) {
  if (!t->ending || t->inflight > 0) return;
  if (t->client_fd >= 0) ::close(std::exchange(t->client_fd, -1));
  if (t->server_fd >= 0) ::close(std::exchange(t->server_fd, -1));
  if (t->up.buf != nullptr) data_pool_.put(std::exchange(t->up.buf, nullptr));
  if (t->down.buf != nullptr) data_pool_.put(std::exchange(t->down.buf, nullptr));
  if (t->screened) screen_.release(t->source);
  Listener* l = t->listener;
  --l->active;
  sub(l->stats->active);
  --active_;
  drop(counters_.tunnels_active);
  // Out of the live list: the last one takes its place.
  OFFLOAD_ASSERT(t->live_index < live_.size() && live_[t->live_index] == t);
  live_[t->live_index] = live_.back();
  live_[t->live_index]->live_index = t->live_index;
  live_.pop_back();
  t->clear();
  tunnels_.put(t);
}

}  // namespace offload
