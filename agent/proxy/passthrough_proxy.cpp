// The pass-through proxy, in user space and with the kernel splice (see
// passthrough_proxy.h).
#include "proxy/passthrough_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "http/http_rewrite.h"
#include "loop/check.h"
#include "ops/topology_stats.h"
#include "proxy/http_proxy.h"
#include "security/decision_log.h"
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

// The socket has failed (a reset, an error) or is closed: a backlog to it
// will never drain.
bool socket_failed(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return true;
  tcp_info info{};
  len = sizeof info;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || info.tcpi_state == TCP_CLOSE;
}

// A sockhash refuses a socket in any other state.
bool established(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_state == TCP_ESTABLISHED;
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
                 bind<&PassthroughProxy::on_up_polled>(t->up.polled, this, t);
                 bind<&PassthroughProxy::on_down_polled>(t->down.polled, this, t);
                 bind<&PassthroughProxy::on_up_retry>(t->up.retried, this, t);
                 bind<&PassthroughProxy::on_down_retry>(t->down.retried, this, t);
                 return t;
               },
               kTunnelsKeptFree),
      splicer_(splice::installed()),
      access_log_(loop, config, counters) {
  // An upgrade's answer head is held whole while it is parsed, like a
  // response head over a pool connection (half a data block).
  answer_limits_.header_bytes_max = data_pool_.block_bytes() / 2;
  answer_limits_.header_count_max = 1000;
  answer_limits_.body_bytes_max = 0;  // a refusal's body streams through
}

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
    remove_from_kernel(t);
    if (!t->ending) t->why = Termination::kDrainDeadline;
    log_tunnel(t);
    if (t->client_fd >= 0) ::close(std::exchange(t->client_fd, -1));
    if (t->server_fd >= 0) ::close(std::exchange(t->server_fd, -1));
    if (t->up.buf != nullptr) data_pool_.put(std::exchange(t->up.buf, nullptr));
    if (t->down.buf != nullptr) data_pool_.put(std::exchange(t->down.buf, nullptr));
  }
  live_.clear();  // the shard's teardown calls this, then the destructor: each tunnel once
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
  t->started_ms = loop_.now_ms();
  t->live_index = uint32_t(live_.size());
  live_.push_back(t);
  ++active_;
  ++l->active;
  add(l->stats->active);
  bump(counters_.tunnels_active);
  return t;
}

void PassthroughProxy::accept(Listener* l, int fd) {
  if (draining_ && !l->serve_late) {
    ::close(fd);
    return;
  }
  Tunnel* t = open_slot(l, fd);
  if (t == nullptr) return;
  add(l->stats->accepted);
  bump(counters_.accepted);
  bump(counters_.tunnels_accepted);
  if (screen_out(t)) {
    end(t, false, Termination::kRefusedScreen);
    return;
  }
  if (!connect(t)) {
    bump(counters_.tunnel_connect_failures);
    end(t, false, Termination::kUpstreamConnectError);
  }
}

// A tunnel for a client the HTTP proxy hands over, screened there already;
// null (its place in the screen given back) when there is no room.
Tunnel* PassthroughProxy::open_handed(Listener* l, int fd, const IpAddress& source, bool screened) {
  Tunnel* t = open_slot(l, fd);
  if (t == nullptr) {
    if (screened) screen_.release(source);
    return nullptr;
  }
  t->source = source;
  t->screened = screened;
  return t;
}

void PassthroughProxy::adopt(Listener* l, int fd, const IpAddress& source, bool screened, std::string first,
                             std::string held, bool keep_alive) {
  Tunnel* t = open_handed(l, fd, source, screened);
  if (t == nullptr) return;
  t->upgrade = true;
  t->first = std::move(first);
  t->answer = std::make_unique<UpgradeAnswer>(answer_limits_);
  t->answer->held = std::move(held);
  t->answer->keep_alive = keep_alive;
  if (!connect(t)) {
    bump(counters_.tunnel_connect_failures);
    give_back(t, t->server == nullptr ? 503 : 502, true);
  }
}

void PassthroughProxy::connect_to(Listener* l, int fd, const IpAddress& source, bool screened,
                                  const SocketAddress& target, std::string held) {
  Tunnel* t = open_handed(l, fd, source, screened);
  if (t == nullptr) return;
  t->connect_request = true;
  t->first = std::move(held);
  t->dial = target;
  if (!dial(t)) {
    bump(counters_.tunnel_connect_failures);
    bump(counters_.connect_failed);
    give_back(t, 502, true);
  }
}

// The same screen as the HTTP proxy's (one per shard, their source table the agent's): the deny and allow
// lists, and the connections per source, counted until the tunnel ends.
bool PassthroughProxy::screen_out(Tunnel* t) {
  const bool known = peer_address(t->client_fd, t->source);
  if (!screen_.active() || !known) return false;
  const Verdict v = screen_.admit(t->source, loop_.now_ms(), t->listener->index);
  bump(counters_.source_evictions, screen_.take_evictions());
  if (v == Verdict::kAccept) {
    t->screened = true;
    return false;
  }
  count_refusal(v, counters_);
  return true;
}

// After a change to the rule set: tunnels from a source it now refuses end.
void PassthroughProxy::rescreen() {
  const std::vector<Tunnel*> open = live_;  // end() may take a tunnel out of live_
  for (Tunnel* t : open) {
    if (t->ending || t->client_fd < 0) continue;
    IpAddress source;
    if (!peer_address(t->client_fd, source) || screen_.recheck(source, t->listener->index) == RuleVerdict::kAccept)
      continue;
    bump(counters_.closed_by_rules);
    screen_.note(source, "denied, open tunnel closed", t->listener->index, loop_.now_ms());
    end(t, true, Termination::kRefusedScreen);
  }
}

// A connection of its own to the server the group's balancer picks.
bool PassthroughProxy::connect(Tunnel* t) {
  OFFLOAD_ASSERT(t->listener->group != nullptr);
  t->server = upstream_.pick_tunnel_server(*t->listener->group, fnv1a(t->source.bytes, sizeof t->source.bytes));
  if (t->server == nullptr) return false;
  // Kept in the tunnel: the kernel reads it when the connect runs.
  t->dial = t->server->target().address;
  if (t->listener->upstream_port_same) set_port(t->dial, local_port(t->client_fd));
  return dial(t);
}

// The connect to t->dial, bounded by connect_timeout_ms.
bool PassthroughProxy::dial(Tunnel* t) {
  const SocketAddress& addr = t->dial;
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
  // An HTTP request (an upgrade, a CONNECT) whose server cannot be had is
  // answered by the HTTP proxy: the gateway's errors.
  const bool http = t->upgrade || t->connect_request;
  if (cqe.res < 0) {
    const bool timed_out = cqe.res == -ECANCELED;
    if (timed_out) bump(counters_.timeouts_connect);
    if (t->server != nullptr) upstream_.tunnel_connected(*t->server, false);
    bump(counters_.tunnel_connect_failures);
    if (t->connect_request) bump(timed_out ? counters_.connect_timed_out : counters_.connect_failed);
    if (http) give_back(t, timed_out ? 504 : 502, true);
    else end(t, false, timed_out ? Termination::kTimeoutConnect : Termination::kUpstreamConnectError);
    return;
  }
  if (t->server != nullptr) upstream_.tunnel_connected(*t->server, true);
  t->connect_ms = int64_t(loop_.now_ms() - t->started_ms);
  t->up.buf = data_pool_.get();
  t->down.buf = data_pool_.get();
  if (t->up.buf == nullptr || t->down.buf == nullptr) {
    bump(counters_.buffer_exhausted);
    if (http) give_back(t, 503, true);
    else end(t, false, Termination::kNoBuffer);
    return;
  }
  t->open = true;
  if (!http && start_kernel(t)) {
    arm_idle(t);
    return;
  }
  bump(counters_.tunnels_user);
  add(t->listener->stats->tunnels_user);
  if (t->connect_request) {
    bump(counters_.connect_established);
    send_established(t);
    start_up(t);  // what the client sent after its CONNECT goes first
    arm_idle(t);
    return;
  }
  if (t->upgrade) {
    // The request out, its answer read as HTTP; the client waits.
    if (!send_first(t)) return;
    post_recv(t, t->down);
    arm_answer_timer(t);
    return;
  }
  // Whatever either side sent already waits in its socket: the first
  // receives take it, whoever speaks first (an SSH or SMTP server does).
  post_recv(t, t->up);
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
  if (t->answer != nullptr && !t->answer->switched) {  // the server, or the client, took too long over the answer
    bump(counters_.timeouts_response);
    answer_failed(t, 504);
    return;
  }
  bump(counters_.timeouts_tunnel);
  end(t, false, Termination::kTimeoutTunnel);
}

void PassthroughProxy::post_recv(Tunnel* t, Tunnel::Flow& f, int flags) {
  OFFLOAD_ASSERT(!f.recv_busy && !f.send_busy && !f.eof);
  f.buf->head = f.buf->tail = 0;
  f.sent_off = 0;
  io_uring_prep_recv(loop_.sqe(f.received), from_fd(t, f), f.buf->data(), f.buf->capacity, flags);
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
    end(t, false, Termination::kNoBuffer);
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

// The client's side starts: what waits to go to the server first (the
// bytes it sent after its request), then its own receives. Called again by
// the send's completion when one is in flight.
void PassthroughProxy::start_up(Tunnel* t) {
  if (t->up.send_busy || t->up.recv_busy) return;
  if (!t->first.empty()) {
    t->up.bytes += t->first.size();  // the client's bytes, moved like any others
    count_bytes(t, true, t->first.size(), false);
    send_first(t);
    return;
  }
  post_recv(t, t->up);
}

void PassthroughProxy::send_established(Tunnel* t) {
  static constexpr std::string_view k200 = "HTTP/1.1 200 Connection Established\r\n\r\n";
  std::memcpy(t->down.buf->data(), k200.data(), k200.size());
  t->down.buf->head = 0;
  t->down.buf->tail = uint32_t(k200.size());
  t->down.sent_off = 0;
  post_send(t, t->down);
}

// ------------------------------------------------- an upgrade's answer

void PassthroughProxy::arm_answer_timer(Tunnel* t) { loop_.arm(t->timer, t->listener->timers[kTimerResponse]); }

// Bytes of the answer: heads parsed whole, a refusal's body framed; what the
// client gets collects in `out`.
void PassthroughProxy::on_answer_bytes(Tunnel* t, const char* data, size_t len) {
  UpgradeAnswer& a = *t->answer;
  arm_answer_timer(t);
  while (len > 0 && !a.done && !a.switched) {
    if (!a.in_body) {
      if (!take_answer_head(t, data, len)) return;
      continue;
    }
    const http::BodyProgress p = a.parser.parse_body(std::string_view(data, len), nullptr, nullptr);
    if (p.error != http::Error::kNone) {
      bump(counters_.upstream_bad_responses);
      answer_failed(t, 502);
      return;
    }
    a.out.append(data, p.consumed);
    a.done = p.done;
    len = 0;  // anything past the answer's end is dropped with its connection
  }
  flush_answer(t);
}

// Takes head bytes from data[0, len) (advancing past those it used); false
// when the answer failed (the tunnel is ending).
bool PassthroughProxy::take_answer_head(Tunnel* t, const char*& data, size_t& len) {
  UpgradeAnswer& a = *t->answer;
  const size_t take = std::min(len, answer_limits_.header_bytes_max - a.head.size());
  a.head.append(data, take);
  const http::Result r = a.parser.parse_head(a.head);
  if (r == http::Result::kIncomplete && a.head.size() < answer_limits_.header_bytes_max) {
    data += take;
    len -= take;
    return true;
  }
  if (r != http::Result::kComplete) {  // malformed, or a head larger than the limit
    bump(counters_.upstream_bad_responses);
    answer_failed(t, 502);
    return false;
  }
  const http::Head& h = a.parser.head();
  const size_t used = take - (a.head.size() - h.head_bytes);
  data += used;
  len -= used;
  const std::string_view msg(a.head.data(), h.head_bytes);
  if (h.status == 101) {
    // As it came (its Upgrade and Connection fields are the switch), and
    // the new protocol's first bytes behind it.
    bump(counters_.upgrades_switched);
    a.switched = true;
    a.out.append(msg);
    a.out.append(data, len);
    len = 0;
    t->first = std::move(a.held);
    start_up(t);
    return true;
  }
  std::string scratch(h.head_bytes + 1024, '\0');  // room for the fields the rewrite adds
  if (h.status < 200) {
    // Passed on (RFC 9110 15.2), but not a 100: the HTTP proxy answered
    // the client's Expect itself.
    if (h.status != 100) a.out.append(scratch.data(), write_interim_head(h, msg, scratch.data(), scratch.size()));
    a.head.clear();
    a.parser.reset();
    return true;
  }
  bump(counters_.upgrades_refused);
  a.close_after = !a.keep_alive || !h.keep_alive || h.body == http::BodyKind::kUntilClose;
  const size_t n = write_client_response_head(h, msg, a.close_after, false, false, scratch.data(), scratch.size());
  if (n == 0) {
    bump(counters_.upstream_bad_responses);
    answer_failed(t, 502);
    return false;
  }
  a.out.append(scratch.data(), n);
  a.in_body = true;
  a.done = a.parser.body_done();
  a.head.clear();
  a.head.shrink_to_fit();
  return true;
}

// The server closed during its answer: the end of a body that runs to the
// close, else a failure.
void PassthroughProxy::on_answer_eof(Tunnel* t) {
  UpgradeAnswer& a = *t->answer;
  if (a.in_body && !a.done && a.parser.finish_at_eof()) {
    a.done = true;
    a.close_after = true;  // its head said so
    flush_answer(t);
    return;
  }
  answer_failed(t, 502);
}

// What is ready goes to the client; else the answer's next bytes are read,
// or it is over: on a 101 the bytes move as they are from now on, after a
// refusal the client goes back to the HTTP proxy.
void PassthroughProxy::flush_answer(Tunnel* t) {
  UpgradeAnswer& a = *t->answer;
  Tunnel::Flow& f = t->down;
  if (f.send_busy || f.recv_busy) return;
  if (a.out_sent < a.out.size()) {
    io_uring_prep_send(loop_.sqe(f.sent), t->client_fd, a.out.data() + a.out_sent, a.out.size() - a.out_sent,
                       MSG_NOSIGNAL);
    f.send_busy = true;
    ++t->inflight;
    return;
  }
  a.out.clear();
  a.out_sent = 0;
  if (a.switched) {
    t->answer.reset();
    post_recv(t, f);
    arm_idle(t);
    return;
  }
  if (a.done) {
    give_back(t, 0, a.close_after);
    return;
  }
  post_recv(t, f);
}

void PassthroughProxy::on_answer_sent(Tunnel* t, int res) {
  if (res <= 0) {  // the client is gone
    end(t, true, Termination::kTunnelClientReset);
    return;
  }
  UpgradeAnswer& a = *t->answer;
  a.out_sent += size_t(res);
  a.sent_any = true;
  arm_answer_timer(t);
  flush_answer(t);
}

// Nothing of an answer reached the client: the HTTP proxy answers it with
// `status`. Else the only honest end is a close.
void PassthroughProxy::answer_failed(Tunnel* t, int status) {
  if (t->answer->sent_any || t->down.send_busy) {
    end(t, false, status == 504 ? Termination::kTimeoutResponse : Termination::kUpstreamError);
    return;
  }
  give_back(t, status, true);
}

void PassthroughProxy::give_back(Tunnel* t, int status, bool close) {
  t->give_back = http_ != nullptr;
  t->back_status = status;
  t->back_close = close;
  // Its line says why; the HTTP proxy's says what the client got after.
  Termination why = Termination::kUpgradeRefused;
  if (status == 503) why = Termination::kNoBuffer;
  else if (status == 504) why = t->open ? Termination::kTimeoutResponse : Termination::kTimeoutConnect;
  else if (status != 0) why = t->open ? Termination::kUpstreamError : Termination::kUpstreamConnectError;
  end(t, false, why);
}

void PassthroughProxy::on_recv(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe) {
  op_done(t);
  f.recv_busy = false;
  if (t->ending) {
    maybe_free(t);
    return;
  }
  if (t->answer != nullptr && &f == &t->down) {
    if (cqe.res <= 0) {
      if (cqe.res == 0) on_answer_eof(t);
      else answer_failed(t, 502);
      return;
    }
    f.bytes += uint64_t(cqe.res);
    bump(counters_.tunnel_bytes_down, uint64_t(cqe.res));
    on_answer_bytes(t, f.buf->data(), size_t(cqe.res));
    return;
  }
  if (t->kernel && cqe.res == -EAGAIN) {  // nothing passed waits: watch it
    post_poll(t, f);
    return;
  }
  if (cqe.res == 0) {
    if (t->kernel) on_kernel_eof(t, f);
    else on_eof(t, f);
    return;
  }
  if (cqe.res < 0) {  // a reset (or another error) on one side is a reset on both
    end(t, true, source_failed(t, f));
    return;
  }
  f.buf->tail = uint32_t(cqe.res);
  f.bytes += uint64_t(cqe.res);
  count_bytes(t, &f == &t->up, uint64_t(cqe.res), false);
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
  if (t->answer != nullptr && &f == &t->down) {
    on_answer_sent(t, cqe.res);
    return;
  }
  if (cqe.res <= 0) {  // the receiving side is gone: tell the sending side by a reset
    end(t, true, destination_failed(t, f));
    return;
  }
  f.sent_off += uint32_t(cqe.res);
  f.user_sent += uint64_t(cqe.res);
  if (f.sent_off < f.buf->tail) {
    post_send(t, f);
    return;
  }
  if (!t->kernel) {
    if (&f == &t->up) {
      // The client is read only once an upgrade is switched; what it sent
      // after its request goes first.
      if (t->answer == nullptr || t->answer->switched) start_up(t);
      return;
    }
    post_recv(t, f);
    return;
  }
  // What this direction forwarded, for the verdict to redirect from the
  // first skb that nothing waiting in user space precedes.
  if (!splicer_->forwarded(f.cookie, f.user_sent)) {
    end(t, true, Termination::kSpliceError);
    return;
  }
  post_recv(t, f, MSG_DONTWAIT);
}

// The source of `f` ended its writes: every byte it sent has gone out (the
// receive is posted only once the last send is complete), so the FIN goes on
// to the peer while the other direction still flows.
void PassthroughProxy::on_eof(Tunnel* t, Tunnel::Flow& f) {
  f.eof = true;
  if (t->kernel) {  // drained (read_when_drained): its kernel bytes are final, counted before the FIN goes on
    ss_flow now{};
    if (splicer_->flow(f.cookie, now)) count_kernel(t, f, now);
  }
  bump(counters_.tunnel_half_closes);  // counted before the peer can see it
  add(t->listener->stats->tunnel_half_closes);
  ::shutdown(to_fd(t, f), SHUT_WR);
  Tunnel::Flow& other = &f == &t->up ? t->down : t->up;
  if (other.eof) {
    end(t, false, Termination::kTunnelDone);  // both sides done: a clean close
    return;
  }
  arm_idle(t);
}

// The one place a tunnel ends. Operations still in flight are cancelled; the
// sockets close once every one of them is back (maybe_free), with a reset
// when `reset` (SO_LINGER 0), else with a FIN.
void PassthroughProxy::end(Tunnel* t, bool reset, Termination why) {
  if (t->ending) return;
  t->ending = true;
  t->why = why;
  t->reset = reset;
  disarm(t->timer);
  if (reset) {
    bump(counters_.tunnel_resets);
    add(t->listener->stats->tunnel_resets);
    set_reset_on_close(t->client_fd);
    set_reset_on_close(t->server_fd);
  }
  const Completion* busy[] = {t->up.recv_busy ? &t->up.received : nullptr, t->up.send_busy ? &t->up.sent : nullptr,
                              t->down.recv_busy ? &t->down.received : nullptr,
                              t->down.send_busy ? &t->down.sent : nullptr,
                              t->inflight > 0 && !t->open ? &t->connected : nullptr,
                              t->up.poll_busy ? &t->up.polled : nullptr, t->up.retry_busy ? &t->up.retried : nullptr,
                              t->down.poll_busy ? &t->down.polled : nullptr,
                              t->down.retry_busy ? &t->down.retried : nullptr};
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
  remove_from_kernel(t);  // its last kernel bytes counted before its line
  log_tunnel(t);
  // A client given back keeps its socket and its place in the screen: the
  // HTTP proxy goes on with both.
  const int client = std::exchange(t->client_fd, -1);
  const bool back = t->give_back && client >= 0;
  if (client >= 0 && !back) ::close(client);
  if (t->server_fd >= 0) ::close(std::exchange(t->server_fd, -1));
  if (t->up.buf != nullptr) data_pool_.put(std::exchange(t->up.buf, nullptr));
  if (t->down.buf != nullptr) data_pool_.put(std::exchange(t->down.buf, nullptr));
  if (t->screened && !back) screen_.release(t->source);
  const IpAddress source = t->source;
  const bool screened = t->screened;
  const int status = t->back_status;
  const bool close = t->back_close;
  std::string held = t->answer != nullptr ? std::move(t->answer->held) : std::string();
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
  if (back) http_->take_back(l, client, source, screened, status, close, std::move(held));
}

// A tunnel's access-log line, in the HTTP lines' format: "TCP" (or
// "UPGRADED" after an HTTP upgrade, whose request has a line of its own) for
// the request, a status as nginx's stream module gives one (200 once
// connected; 403 screened, 502/504 no connection, 503 no buffer), bytes up as
// received and down as sent, and who ended it.
void PassthroughProxy::log_tunnel(Tunnel* t) {
  if (!access_log_.on()) return;
  const std::string remote = address_text(t->source);
  const std::string target = t->connect_request ? sockaddr_text(t->dial.storage) : std::string();
  AccessEntry e;
  e.remote = remote;
  if (t->connect_request) {
    e.method = "CONNECT";
    e.target = target;
  } else {
    e.method = t->upgrade ? "UPGRADED" : "TCP";
    e.target = t->listener->name;
  }
  if (t->server != nullptr && t->connect_ms >= 0) e.upstream = t->server->target().text;
  e.listener = t->listener->name;
  switch (t->why) {
    case Termination::kRefusedScreen: e.status = 403; break;
    case Termination::kUpstreamConnectError: e.status = 502; break;
    case Termination::kTimeoutConnect: e.status = 504; break;
    case Termination::kNoBuffer: e.status = t->connect_ms >= 0 ? 200 : 503; break;
    case Termination::kUpgradeRefused: e.status = t->answer ? t->answer->parser.head().status : 0; break;
    default: e.status = t->connect_ms >= 0 ? 200 : 502; break;
  }
  e.received = t->up.bytes;
  e.sent = e.body_bytes = t->down.bytes;
  e.total_ms = int64_t(loop_.now_ms() - t->started_ms);
  e.connect_ms = t->connect_ms;
  e.end = t->why == Termination::kUnset ? Termination::kTunnelDone : t->why;
  access_log_.log(e);
}

// ------------------------------------------------------------ kernel mode

// Both sockets into the maps; false (the tunnel goes on in user space) when
// there is no Splicer, the server is not TCP, or the insertion fails.
bool PassthroughProxy::start_kernel(Tunnel* t) {
  if (splicer_ == nullptr) return false;
  const int family = t->server->target().address.family();
  if (family != AF_INET && family != AF_INET6) return false;
  // A sockhash takes established sockets only: a client that has already
  // ended its writes goes on in user space (not a failure), whether its FIN
  // came before the check or during the insertion.
  if (!established(t->client_fd)) return false;
  if (!splicer_->add_pair(t->client_fd, t->server_fd, t->pair)) {
    if (established(t->client_fd) && established(t->server_fd)) {
      bump(counters_.splice_setup_failures);
      add(t->listener->stats->splice_setup_failures);
    }
    return false;
  }
  t->kernel = true;
  t->up.cookie = t->pair.a;
  t->down.cookie = t->pair.b;
  bump(counters_.tunnels_kernel);
  add(t->listener->stats->tunnels_kernel);
  // Each direction is passed to its own socket until the agent has forwarded
  // what is there: the bytes that came before the insertion go first.
  post_recv(t, t->up, MSG_DONTWAIT);
  post_recv(t, t->down, MSG_DONTWAIT);
  return true;
}

// A receive said the source ended. The bytes the verdict passed wait in a
// queue behind those redirected to this socket before they are readable, so
// the end counts only once every byte the source received (its FIN as one)
// is forwarded or redirected, and every redirected one has left the peer's
// backlog for its send queue: a redirect is sent by a kernel worker later,
// and one that finds the peer's writes shut fails (the bytes are lost and
// the peer gets EPIPE). Until then, look again.
void PassthroughProxy::on_kernel_eof(Tunnel* t, Tunnel::Flow& f) {
  ss_flow now{};
  uint64_t received = 0;
  if (!splicer_->flow(f.cookie, now) || !splice::Splicer::received_total(from_fd(t, f), received)) {
    end(t, true, Termination::kSpliceError);
    return;
  }
  if (f.user_sent + now.bytes + 1 >= received && peer_drained(t, f, now)) {
    on_eof(t, f);
    return;
  }
  if (socket_failed(to_fd(t, f))) {  // its backlog will never go out
    end(t, true, destination_failed(t, f));
    return;
  }
  retry_later(t, f);
}

// Every byte of `f` (forwarded from user space, or redirected up to `now`)
// is in the send queue of its destination: none waits in the kernel's backlog.
bool PassthroughProxy::peer_drained(Tunnel* t, const Tunnel::Flow& f, const ss_flow& now) {
  const uint64_t base = &f == &t->up ? t->pair.base_b : t->pair.base_a;
  return splice::Splicer::drained(to_fd(t, f), base, f.user_sent + now.bytes);
}

void PassthroughProxy::retry_later(Tunnel* t, Tunnel::Flow& f) {
  io_uring_prep_timeout(loop_.sqe(f.retried), &f.retry_after, 0, 0);
  f.retry_busy = true;
  ++t->inflight;
}

void PassthroughProxy::post_poll(Tunnel* t, Tunnel::Flow& f) {
  io_uring_prep_poll_add(loop_.sqe(f.polled), from_fd(t, f), POLLIN | POLLRDHUP);
  f.poll_busy = true;
  ++t->inflight;
}

// The source has passed bytes (a paused direction), a FIN or an error.
void PassthroughProxy::on_polled(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe) {
  op_done(t);
  f.poll_busy = false;
  if (t->ending) {
    maybe_free(t);
    return;
  }
  if (cqe.res < 0 || (cqe.res & POLLERR) != 0) {
    end(t, true, source_failed(t, f));
    return;
  }
  read_when_drained(t, f);
}

void PassthroughProxy::on_retry(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe&) {
  op_done(t);
  f.retry_busy = false;
  if (t->ending) {
    maybe_free(t);
    return;
  }
  read_when_drained(t, f);
}

// Bytes from user space (passed bytes, or the FIN) go to the peer only after
// every redirected byte before them: the backlog must be in its send queue.
void PassthroughProxy::read_when_drained(Tunnel* t, Tunnel::Flow& f) {
  ss_flow now{};
  if (!splicer_->flow(f.cookie, now)) {
    end(t, true, Termination::kSpliceError);
    return;
  }
  count_kernel(t, f, now);
  if (peer_drained(t, f, now)) {
    post_recv(t, f, MSG_DONTWAIT);
    return;
  }
  if (socket_failed(to_fd(t, f))) {  // its backlog will never go out
    end(t, true, destination_failed(t, f));
    return;
  }
  retry_later(t, f);
}

// The kernel's bytes of `f` up to `now` into the counters; any is activity.
void PassthroughProxy::count_kernel(Tunnel* t, Tunnel::Flow& f, const ss_flow& now) {
  if (now.bytes <= f.kernel_counted) return;
  const uint64_t n = now.bytes - f.kernel_counted;
  f.kernel_counted = now.bytes;
  f.bytes += n;
  const bool up = &f == &t->up;
  count_bytes(t, up, n, true);
  if (!t->ending) arm_idle(t);
}

// Bytes a tunnel moved, `up` client → server, by the kernel or from user
// space: the agent's counters and its listener's.
void PassthroughProxy::count_bytes(Tunnel* t, bool up, uint64_t n, bool kernel) {
  ListenerCounters& l = *t->listener->stats;
  bump(up ? counters_.tunnel_bytes_up : counters_.tunnel_bytes_down, n);
  if (kernel) {
    bump(up ? counters_.spliced_bytes_up : counters_.spliced_bytes_down, n);
    add(up ? l.kernel_bytes_up : l.kernel_bytes_down, n);
  } else {
    add(up ? l.user_bytes_up : l.user_bytes_down, n);
  }
}

// Out of the maps before the sockets close: the peers first, then the rest,
// the last bytes counted.
void PassthroughProxy::remove_from_kernel(Tunnel* t) {
  if (!t->kernel) return;
  t->kernel = false;
  ss_flow up{}, down{};
  splicer_->remove_pair(t->pair, up, down);
  count_kernel(t, t->up, up);
  count_kernel(t, t->down, down);
  bump(counters_.splice_pauses, up.pauses + down.pauses);
}

uint64_t PassthroughProxy::release_idle() {
  if (splicer_ == nullptr) return 0;
  ss_flow now{};
  for (Tunnel* t : live_) {
    if (!t->kernel || t->ending) continue;
    if (splicer_->flow(t->up.cookie, now)) count_kernel(t, t->up, now);
    if (splicer_->flow(t->down.cookie, now)) count_kernel(t, t->down, now);
  }
  return 0;
}

}  // namespace offload
