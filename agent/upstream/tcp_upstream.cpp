// The Upstream of TCP and Unix servers (see tcp_upstream.h for the walk of
// one request through it).
#include "upstream/tcp_upstream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "http/http_rewrite.h"
#include "upstream/hash.h"

namespace offload {
namespace {

// Room left before the first response bytes, so the rewritten response head
// can be written in place in front of the body (no copy of the body).
constexpr uint32_t kHeadroom = 1024;

}  // namespace

// ------------------------------------------------------- groups and servers

namespace {

BalancePolicy policy_of(Balance b) {
  switch (b) {
    case Balance::kRoundRobin: return BalancePolicy::kRoundRobin;
    case Balance::kSourceHash: return BalancePolicy::kSourceHash;
    case Balance::kLeastOutstanding: break;
  }
  return BalancePolicy::kLeastOutstanding;
}

}  // namespace

TcpUpstream::TcpUpstream(const Parts& parts)
    : loop_(parts.loop),
      uring_(parts.loop.uring()),
      config_(parts.config),
      counters_(parts.counters),
      topology_(parts.topology),
      data_pool_(parts.data_pool),
      sink_(parts.sink),
      proxy_(parts.proxy) {
  // The head is rewritten in place in the first block, in front of the body.
  response_limits_.header_bytes_max = uint32_t(data_pool_.block_bytes() / 2);
  response_limits_.header_count_max = 1000;
  response_limits_.body_bytes_max = 0;  // unlimited: responses stream through
  by_config_.assign(config_.groups.size(), nullptr);
  for (size_t i = 0; i < config_.groups.size(); ++i)
    if (!config_.groups[i].is_bus()) build_group(i);
  // Responses land in provided buffers, one group for every connection.
  if (!groups_.empty()) uring_.setup_buffers(kUpstreamGroup, kUpstreamBuffers, kUpstreamBufferBytes);
}

TcpUpstream::~TcpUpstream() = default;  // the pools close their connections

bool TcpUpstream::serves_http(size_t gi) const {
  for (const ListenerConfig& l : config_.listeners)
    if (l.group == gi && l.proxy == "http") return true;
  return false;
}

// A group of TCP or Unix servers, each a TcpPool.
void TcpUpstream::build_group(size_t gi) {
  const GroupConfig& gc = config_.groups[gi];
  std::vector<ServerSpec> specs;
  for (const ServerConfig& sc : gc.servers) {
    ServerSpec spec;
    spec.weight = sc.weight;
    spec.max_outstanding = sc.max_connections;  // one request per connection
    spec.hash_key = fnv1a(sc.target.text.data(), sc.target.text.size());  // reordering servers moves no source
    specs.push_back(spec);
  }
  HealthSpec health;
  // Like nginx: a group of one server never takes it out on failures
  // (there is nowhere else to send its requests); the back-off paces it.
  health.max_fails = gc.servers.size() > 1 ? gc.max_fails : 0;
  health.fail_timeout_ms = gc.fail_timeout_ms;
  health.active = gc.health.enabled;
  health.rise = gc.health.rise;
  health.fall = gc.health.fall;
  auto g = std::make_unique<UpstreamGroup>(gc.name, policy_of(gc.balance), health, specs);
  g->default_host = gc.servers.front().target.address.text;
  for (size_t si = 0; si < gc.servers.size(); ++si) {
    const ServerConfig& sc = gc.servers[si];
    TcpPool::Settings settings;
    settings.target = sc.target;
    settings.max_connections = sc.max_connections;
    // A group only pass-through listeners use keeps no connections ahead of
    // demand: an SSH or database server would see them as idle clients.
    settings.persistent = serves_http(gi) ? sc.persistent : 0;
    // A number the user gave is trusted until the server refuses or
    // stalls a connection; "auto" starts at persistent and grows.
    const bool given = !config_.max_upstream_auto ||
                       std::find(sc.explicit_keys.begin(), sc.explicit_keys.end(), "max_connections") !=
                           sc.explicit_keys.end();
    settings.initial_limit = given ? sc.max_connections : std::max<uint32_t>(sc.persistent, 1);
    settings.connect_timeout_ms = config_.connect_timeout_ms;
    g->servers.push_back(std::make_unique<TcpPool>(loop_, counters_, *topology_.server(gi, si), *this, *g,
                                                   uint32_t(si), settings, response_limits_));
    g->servers.back()->for_each([this](UpstreamConn* u) {
      bind<&TcpUpstream::on_up_send>(u->sent, this, u);
      bind<&TcpUpstream::on_up_recv>(u->received, this, u);
      bind<&TcpUpstream::on_up_cancelled>(u->cancelled, this, u);
      bind<&TcpUpstream::on_response_timeout>(u->timer, this, u);
    });
  }
  if (gc.health.enabled) {
    std::vector<ProbeTarget> targets;
    for (const ServerConfig& sc : gc.servers)
      targets.push_back({sc.target.address, sc.target.kind == UpstreamTarget::Kind::kUnix
                                                ? std::string("localhost")
                                                : sc.target.address.text});
    HealthCheckSettings hs;
    hs.path = gc.health.path;
    hs.interval_ms = gc.health.interval_ms;
    hs.timeout_ms = gc.health.timeout_ms;
    UpstreamGroup* group = g.get();
    if (config_.shard_index == 0) {
      g->checker = std::make_unique<HealthChecker>(loop_, std::move(targets), hs, [this, group](size_t i, bool ok) {
        TcpPool& p = *group->servers.at(i);
        p.stats().probes.publish(ok);
        on_probe(p, ok);
      });
    } else {
      g->follow_list.set_duration(std::clamp<uint64_t>(hs.interval_ms / 4, 50, 1000));
      bind<&TcpUpstream::on_follow>(g->follow, this, g.get());
      loop_.add_timers(g->follow_list);
    }
  }
  bind<&TcpUpstream::on_group_wake>(g->wake, this, g.get());
  loop_.add_timers(g->wake_list);
  by_config_[gi] = g.get();
  groups_.push_back(std::move(g));
}

TcpPool* TcpUpstream::pick_tunnel_server(UpstreamGroup& g, uint64_t source_hash) {
  // Tunnels are not counted as outstanding (they last as long as their
  // clients like); a server at its request cap still takes them.
  const int i = g.balancer.pick(loop_.now_ms(), source_hash);
  return i < 0 ? nullptr : g.servers[size_t(i)].get();
}

void TcpUpstream::start() {
  for (auto& g : groups_) {
    if (g->checker) g->checker->start();
    if (g->follow_list.duration_ms() == 0) continue;
    for (auto& p : g->servers) p->probes_seen = p->stats().probes.count();  // from now on
    loop_.arm(g->follow, g->follow_list);
  }
  refill_pools();
}

void TcpUpstream::drain() {
  draining_ = true;
  for (auto& g : groups_) {
    if (g->checker) g->checker->stop();
    disarm(g->follow);
  }
}

// Not shard 0: the probes shard 0 made since the last look, as if this
// shard had made them.
void TcpUpstream::on_follow(UpstreamGroup* g, Timer&) {
  for (auto& p : g->servers)
    p->stats().probes.replay(p->probes_seen, [this, &p](bool ok) { on_probe(*p, ok); });
  loop_.arm(g->follow, g->follow_list);
}

void TcpUpstream::after_batch() {
  if (!pool_changed_) return;
  pool_changed_ = false;
  refill_pools();
  dispatch_all();
}

// A complete request waits in its group's queue until the balancer gives it
// a server and that server a connection; most of the time both happen here.
void TcpUpstream::enqueue(ClientConn* c, bool front) {
  OFFLOAD_ASSERT(c->listener->group != nullptr && c->ex->server == nullptr);
  c->ex->queued_ms = loop_.now_ms();
  queue_on(c, c->listener->group->ready, front, counters_);
  dispatch(*c->listener->group);
  if (c->state == ClientState::kQueued) proxy_.wait_in_queue(c);
}

void TcpUpstream::on_response_timeout(UpstreamConn* u, Timer&) {
  bump(counters_.timeouts_response);
  u->client->ex->log.end_with(Termination::kTimeoutResponse);
  upstream_failed(u, 504, false);
}

void TcpUpstream::dispatch_all() {
  for (auto& g : groups_) dispatch(*g);
}

// Each waiting request, oldest first, goes to the server the balancer picks,
// and from there onto a connection as soon as that server has one. When no
// server can take one (all down or full) the rest wait: a server coming back
// or a request ending there dispatches again, and while every server is down
// the wake timer tries again when the first may be probed.
void TcpUpstream::dispatch(UpstreamGroup& g) {
  for (auto& p : g.servers) serve_pending(*p);
  while (ClientConn* c = g.ready.front()) {
    const int i = g.balancer.pick(loop_.now_ms(), source_hash(c));
    if (i < 0) {
      const uint64_t when = g.balancer.next_change_ms(loop_.now_ms());
      if (when != UINT64_MAX && !g.wake.armed()) {
        g.wake_list.set_duration(when > loop_.now_ms() ? when - loop_.now_ms() : 0);
        loop_.arm(g.wake, g.wake_list);
      }
      return;
    }
    TcpPool& p = *g.servers[size_t(i)];
    g.balancer.started(size_t(i));
    set_state(c, ClientState::kUpstream);  // out of the group's queue...
    c->ex->server = &p;
    queue_on(c, p.pending, false, counters_);  // ... into the server's, still kQueued
    serve_pending(p);
  }
}

// A server's pending requests take its idle connections (all proven, see
// on_connected; the most recently used first, so a surplus ages out at the
// cold end); for the rest, new connections as wants_new_upstream allows. A
// failed open ends the loop.
void TcpUpstream::serve_pending(TcpPool& p) {
  while (!p.pending.empty()) {
    UpstreamConn* u = p.take_idle();
    if (u == nullptr) break;
    assign(u, take_from(p.pending, counters_));
  }
  while (!draining_ && wants_new_upstream(p))
    if (!p.open()) break;
}

// A new connection is opened for a waiting request only when no channel
// will take it soon, within the pool's limit. A proven channel (the server
// has answered on it) that is busy frees up within about one response time;
// a new connection may sit unread in the accept queue of a server whose
// workers are all taken. So, once the server has answered at all:
//  - requests wait for proven busy channels as long as there are no more
//    waiting than those (the bounded wait; a channel busy for much longer
//    than responses take, a slow response, is not counted);
//  - once the server has refused or stalled a connection (the limit is
//    constrained), one new connection at a time: none while another is
//    still unanswered, so a server with no worker for it strands one
//    request, not many (and check_unanswered takes that one back).
bool TcpUpstream::wants_new_upstream(TcpPool& p) {
  const size_t waiting = p.pending.size();
  if (waiting <= p.connecting() || !p.may_open()) return false;
  const PoolCensus n = census(p);
  if (n.proven == 0) return true;  // nothing known yet, nothing to wait for
  if (n.unanswered > 0 && p.limit().constrained()) return false;
  return waiting > n.proven_busy_soon + p.connecting();
}

TcpUpstream::PoolCensus TcpUpstream::census(TcpPool& p) {
  const uint64_t now = loop_.now_ms();
  const uint64_t soon_ms = uint64_t(std::max<int64_t>(kSoonMinMs, 4 * p.response_ms_avg));
  PoolCensus n;
  p.for_each([&](const UpstreamConn* u) {
    if (u->state == UpstreamState::kConnecting || (u->state == UpstreamState::kBusy && !u->proven)) ++n.unanswered;
    if ((u->state != UpstreamState::kIdle && u->state != UpstreamState::kBusy) || !u->proven) return;
    ++n.proven;
    if (u->state == UpstreamState::kBusy && now - u->busy_since_ms <= soon_ms) ++n.proven_busy_soon;
  });
  return n;
}

// Once a second (housekeeping): a new connection whose first request has had
// no answer for a second (and for 20 typical responses), while the server
// kept answering on its other connections, sits where no worker serves it
// (the accept queue of a server whose workers keep their connections). Its
// request goes back to the queue when it may be sent again (a GET or HEAD
// with nothing received), the connection closes, and the pool's limit comes
// down to the connections the server does serve. Without this the request
// would wait for the whole response timeout. A server that answers nothing
// at all is left to the response timeout: it is slow, not full.
void TcpUpstream::check_unanswered() {
  const uint64_t now = loop_.now_ms();
  for (auto& g : groups_)
    for (auto& p : g->servers) {
      const uint64_t after_ms = std::max<uint64_t>(kUnansweredMs, uint64_t(20 * p->response_ms_avg));
      std::vector<UpstreamConn*> stranded;
      p->for_each([&](UpstreamConn* u) {
        if (u->state == UpstreamState::kBusy && !u->proven && !u->stall_noted && now - u->busy_since_ms >= after_ms &&
            p->responses - u->responses_before >= kAnsweredElsewhere)
          stranded.push_back(u);
      });
      for (UpstreamConn* u : stranded) {
        u->stall_noted = true;
        bump(counters_.upstream_stalls);
        p->limit().on_stall(census(*p).proven);
        Exchange* ex = u->client->ex;
        if (ex->response_bytes == 0 && ex->may_retry()) upstream_failed(u, 502, true);
      }
      fit_pool(*p);
      serve_pending(*p);
    }
}

// After the limit changed: idle channels beyond it close, coldest first.
void TcpUpstream::fit_pool(TcpPool& p) {
  while (p.open_count() > p.limit().limit())
    if (UpstreamConn* u = p.coldest_idle()) close_upstream(u);
    else break;
  p.limit_changed();
}

void TcpUpstream::on_group_wake(UpstreamGroup* g, Timer&) { dispatch(*g); }

// The server is down: what waits for it goes back to the front of the
// group's queue (oldest first), where another server may take it.
void TcpUpstream::give_back(TcpPool& p) {
  while (ClientConn* c = p.pending.back()) {
    set_state(c, ClientState::kUpstream);
    leave_server(c->ex);
    queue_on(c, p.group().ready, true, counters_);
  }
}

// The client is going while its exchange is on a connection: mid-exchange,
// the connection cannot be reused.
void TcpUpstream::abandon(ClientConn* c) {
  auto* u = static_cast<UpstreamConn*>(c->ex->up);
  u->reusable = false;
  close_upstream(u);
}

std::string_view TcpUpstream::default_host(const ClientConn* c) const { return c->listener->group->default_host; }

// The one place an exchange stops counting against its server.
void TcpUpstream::leave_server(Exchange* ex) {
  TcpPool* p = ex->server;
  if (p == nullptr) return;
  ex->server = nullptr;
  p->group().balancer.finished(p->index());
  pool_changed_ = true;  // room on that server: the group's queue may move
}

// Passive health: connects, resets and responses tell the balancer.
void TcpUpstream::report_health(TcpPool& p, bool ok) {
  Balancer& b = p.group().balancer;
  const bool back = ok ? b.report_success(p.index(), loop_.now_ms()) : b.report_failure(p.index(), loop_.now_ms());
  if (!ok) add(p.stats().failures);
  if (back) pool_changed_ = true;
  note_health(p);
}

// Active health: a probe's result. A server taken out gives its waiting
// requests back to the group; one brought back dispatches after the batch.
void TcpUpstream::on_probe(TcpPool& p, bool ok) {
  if (p.group().balancer.report_probe(p.index(), ok, loop_.now_ms())) pool_changed_ = true;
  note_health(p);
  if (p.counted_down) give_back(p);
}

// Keeps the server's "down" gauge (shards that have it out) in step.
void TcpUpstream::note_health(TcpPool& p) {
  const Balancer& b = p.group().balancer;
  const bool down = b.stats(p.index(), loop_.now_ms()).state != HealthState::kUp;
  if (down != p.counted_down) {
    p.counted_down = down;
    if (down) add(p.stats().down);
    else sub(p.stats().down);
  }
}

// A request that waited in vain: 503 when the servers were busy, the
// gateway's error (502, 504) when its server could not be reached.
int TcpUpstream::queue_timeout_status(const ClientConn* c) const {
  if (c->ex != nullptr && c->ex->server != nullptr)
    return c->ex->server->unreachable() ? c->ex->server->unreachable_status() : 503;
  if (c->listener->group == nullptr || c->listener->group->servers.empty()) return 503;
  for (const auto& p : c->listener->group->servers)
    if (!p->unreachable()) return 503;
  return c->listener->group->servers.front()->unreachable_status();
}

uint64_t TcpUpstream::source_hash(ClientConn* c) {
  if (c->listener->group->balancer.policy() != BalancePolicy::kSourceHash) return 0;
  if (c->peer_family == 0) proxy_.look_up_peer(c);
  return fnv1a(c->peer_addr, c->peer_family == AF_INET6 ? 16 : 4);
}

void TcpUpstream::on_connected(TcpPool& pool, UpstreamConn* u) {
  u->connected_ms = loop_.now_ms();
  report_health(pool, true);
  arm_up_recv(u);
  if (ClientConn* c = take_from(pool.pending, counters_)) {
    assign(u, c);
  } else if (pool.open_count() == 1) {
    pool.make_idle(u);  // the one kept ahead of demand: the next request's
    pool_changed_ = true;  // the group's queue may be waiting for any server
  } else {
    // Otherwise never idle before it is proven: a blocking server's worker
    // that took it would wait for its first request, unavailable to the
    // others.
    u->reusable = false;
    close_upstream(u);
  }
}

void TcpUpstream::on_connect_failed(TcpPool& pool, int) {
  report_health(pool, false);
  // Its requests stay while the server may come back (a restart costs them
  // latency, not errors); once it is taken out, they go to the others.
  if (pool.group().balancer.stats(pool.index(), loop_.now_ms()).state == HealthState::kDown) give_back(pool);
}

void TcpUpstream::on_freed(TcpPool&, UpstreamConn* u) {
  if (ClientConn* c = u->client) {
    u->client = nullptr;
    if (c->ex != nullptr) c->ex->up = nullptr;
    proxy_.maybe_free_client(c);
  }
  // The pool is refilled after this batch of completions, not here: the
  // handler that freed the slot may still be running for it.
  pool_changed_ = true;
}

void TcpUpstream::on_retry(TcpPool&) { pool_changed_ = true; }

void TcpUpstream::assign(UpstreamConn* u, ClientConn* c) {
  Exchange* ex = c->ex;
  disarm(c->timer);
  Block* first = ex->out.writable_tail(data_pool_, data_pool_.block_bytes());
  if (first == nullptr) {
    bump(counters_.buffer_exhausted);
    u->pool->make_idle(u);
    proxy_.respond_error(c, 503);
    return;
  }
  first->head = first->tail = kHeadroom;
  u->state = UpstreamState::kBusy;
  u->client = c;
  u->send_off = 0;
  u->in.paused = false;
  ex->up = u;
  u->busy_since_ms = loop_.now_ms();
  counters_.queue_wait.observe(u->busy_since_ms - ex->queued_ms);
  u->responses_before = u->pool->responses;
  ex->log.assigned_ms = u->busy_since_ms;
  ex->log.connect_ms = u->used ? 0 : int64_t(u->connected_ms - u->opened_ms);
  ex->log.upstream = &u->pool->target().text;
  if (u->used) bump(counters_.upstream_reuses);
  add(u->pool->stats().requests);
  u->used = true;
  u->parser.reset();
  u->parser.set_request_method(ex->method);
  post_up_send(u);
  arm_response_timer(u);
}

void TcpUpstream::refill_pools() {
  if (draining_) return;
  for (auto& g : groups_)
    for (auto& p : g->servers) p->refill();
}

void TcpUpstream::log_error(const char* what, int err) {
  // A failing disk is loud enough at one line per 5 s.
  log_limited(log_limiter_, loop_.now_ms(), LogLevel::kError, "{}: {}", what, std::strerror(err));
}

// ------------------------------------------------------ sending the request

void TcpUpstream::post_up_send(UpstreamConn* u) {
  Exchange* ex = u->client->ex;
  // The iovecs skip what was sent already; the request itself stays intact
  // until the exchange ends, so a retry can send it again.
  int n = 0;
  uint64_t skip = u->send_off;
  auto add = [&](char* p, uint64_t len) {
    if (n == 16) return;
    if (skip >= len) {
      skip -= len;
      return;
    }
    u->send_iov[n].iov_base = p + skip;
    u->send_iov[n].iov_len = len - skip;
    skip = 0;
    ++n;
  };
  add(ex->forward->data(), ex->forward_bytes);
  for (Block* b = ex->body.front(); b != nullptr && n < 16; b = b->next) add(b->data() + b->head, b->readable());
  if (n == 0) {  // the memory part is sent: the rest comes from the body's file
    if (!load_body_piece(u, skip)) return;
    skip = 0;  // the piece starts where the send stopped
    add(ex->bounce->data(), ex->bounce->tail);
  }
  OFFLOAD_ASSERT(n > 0);  // a send of nothing would come back as 0 and loop
  prep_send_iov(loop_.sqe(u->sent), u->fd, u->send_msg, u->send_iov, n);
  ++u->inflight;
  u->out.busy = true;
}

// Reads the next piece of a spilled request body, from `offset` in its file,
// into the exchange's bounce block (pread: a retry reads it again from 0).
bool TcpUpstream::load_body_piece(UpstreamConn* u, uint64_t offset) {
  Exchange* ex = u->client->ex;
  OFFLOAD_ASSERT(ex->body_spill.fd >= 0 && offset < ex->body_spill.write_off);
  if (ex->bounce == nullptr) ex->bounce = data_pool_.get();
  if (ex->bounce == nullptr) {
    bump(counters_.buffer_exhausted);
    upstream_failed(u, 503, false);
    return false;
  }
  const size_t want = size_t(std::min<uint64_t>(ex->bounce->capacity, ex->body_spill.write_off - offset));
  ssize_t got = ::pread(ex->body_spill.fd, ex->bounce->data(), want, off_t(offset));
  if (got <= 0) {
    log_error("reading a request body's spill file", got < 0 ? errno : EIO);
    upstream_failed(u, 500, false);
    return false;
  }
  ex->bounce->head = 0;
  ex->bounce->tail = uint32_t(got);
  return true;
}

void TcpUpstream::on_up_send(UpstreamConn* u, const io_uring_cqe& cqe) {
  const int res = cqe.res;
  --u->inflight;
  u->out.busy = false;
  if (u->state != UpstreamState::kBusy) {
    maybe_free_upstream(u);
    return;
  }
  Exchange* ex = u->client->ex;
  if (res < 0) {
    upstream_failed(u, 502, ex->response_bytes == 0);
    return;
  }
  u->send_off += uint64_t(res);
  if (u->send_off < ex->forward_bytes + ex->body_bytes()) post_up_send(u);
}

// ---------------------------------------------------- reading the response

// One multishot receive per upstream connection, armed when it connects and
// kept for its lifetime (like a socket registered once with epoll): no
// per-request poll arming. Bytes land in provided buffers and are copied
// into the client's output blocks.
void TcpUpstream::arm_up_recv(UpstreamConn* u) {
  OFFLOAD_ASSERT(!u->in.armed && u->fd >= 0);  // one receive per connection
  io_uring_sqe* s = loop_.sqe(u->received);
  io_uring_prep_recv_multishot(s, u->fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kUpstreamGroup;
  ++u->inflight;
  u->in.armed = true;
}

// A read paused for this exchange's buffers tries again (and pauses again if
// there is still no room).
void TcpUpstream::resume(Exchange* ex) {
  auto* u = static_cast<UpstreamConn*>(ex->up);
  if (u == nullptr || !u->in.paused) return;
  u->in.paused = false;
  post_up_recv(u);
}

void TcpUpstream::on_up_cancelled(UpstreamConn* u, const io_uring_cqe&) {
  --u->inflight;
  maybe_free_upstream(u);
}

// Back-pressure: the client's buffers (memory and spill file) are full.
void TcpUpstream::pause_up_read(UpstreamConn* u) {
  u->in.paused = true;
  disarm(u->timer);
  if (!u->in.armed) return;
  loop_.cancel(u->received, &u->cancelled);
  ++u->inflight;
}

// The client drained some of its response: read on if there is room.
void TcpUpstream::post_up_recv(UpstreamConn* u) {
  if (u->state != UpstreamState::kBusy || !sink_.read_allowed(u->client->ex)) {
    u->in.paused = true;
    if (u->state == UpstreamState::kBusy) proxy_.wait_if_unwoken(u->client);
    return;
  }
  arm_response_timer(u);
  if (!u->in.armed) arm_up_recv(u);
}

void TcpUpstream::on_up_recv(UpstreamConn* u, const io_uring_cqe& e) {
  const io_uring_cqe* cqe = &e;
  const uint32_t generation = u->generation;
  if (!(cqe->flags & IORING_CQE_F_MORE)) {
    u->in.armed = false;
    --u->inflight;
  }
  const int res = cqe->res;
  if (res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
    const uint16_t bid = uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    if (u->state == UpstreamState::kBusy) {
      take_response_bytes(u, uring_.buffer(kUpstreamGroup, bid), uint32_t(res));
    } else if (u->state == UpstreamState::kIdle) {
      u->reusable = false;  // bytes nobody asked for: the channel is suspect
      close_upstream(u);
    }
    uring_.recycle_buffer(kUpstreamGroup, bid);
  } else if (res != -ENOBUFS && res != -ECANCELED) {
    // End of file or an error: a busy channel fails its exchange, an idle one
    // (the server closed a kept-alive connection) is simply replaced.
    if (u->state == UpstreamState::kBusy) on_up_eof(u, res);
    else close_upstream(u);
  }
  if (u->state == UpstreamState::kClosing || u->state == UpstreamState::kFree) {
    maybe_free_upstream(u);
    return;
  }
  // The slot now holds another connection (opened while this one ended): this
  // completion has nothing more to do with it.
  if (u->generation != generation) return;
  // Out of provided buffers ends a multishot receive: arm it again.
  if (!u->in.armed && !u->in.paused) {
    uring_.publish_buffers();
    arm_up_recv(u);
  }
}

void TcpUpstream::on_up_eof(UpstreamConn* u, int res) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  if (res == 0 && ex->response_head_done && u->parser.finish_at_eof()) {
    u->reusable = false;  // an until-close body ends here
    on_response_complete(u, c);
    return;
  }
  ex->log.end_with(Termination::kUpstreamReset);
  upstream_failed(u, 502, ex->response_bytes == 0);
}

// Copies received bytes into the client's output (memory, then the spill
// file) and frames them. Ends the exchange when the response is complete.
void TcpUpstream::take_response_bytes(UpstreamConn* u, const char* data, uint32_t len) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  ex->response_bytes += len;
  arm_response_timer(u);
  while (len > 0 && !ex->response_done) {
    if (ex->spill.fd < 0 && ex->response_head_done && ex->out.bytes() >= config_.response_buffer) {
      // Memory for this response is full: go on in a temporary file, so the
      // channel is still released as soon as the server is done.
      (void)sink_.start_spill(ex);
    }
    uint32_t n = 0;
    if (ex->dechunk) {
      if (!dechunk_bytes(u, c, data, len, n)) return;
    } else if (sink_.spill_takes(ex)) {
      if (!spill_bytes(u, c, data, len, n)) return;
    } else {
      Block* b = ex->out.writable_tail(data_pool_);
      if (b == nullptr || (!ex->response_head_done && b != ex->out.front())) {
        // Out of buffer memory, or a response head larger than a block.
        bump(b == nullptr ? counters_.buffer_exhausted : counters_.upstream_bad_responses);
        upstream_failed(u, 502, false);
        return;
      }
      n = std::min(len, b->writable());
      std::memcpy(b->data() + b->tail, data, n);
      if (!on_response_bytes(u, c, n)) return;
    }
    if (n == 0) break;  // nothing taken: never spin
    data += n;
    len -= n;
  }
  if (ex->response_done) {
    if (len > 0) u->reusable = false;  // bytes past the response's end
    on_response_complete(u, c);
    return;
  }
  proxy_.post_client_send(c);
  if (!sink_.read_allowed(ex)) {
    pause_up_read(u);
    proxy_.wait_if_unwoken(c);
  }
}

// Takes n new bytes; false when the exchange ended in an error.
bool TcpUpstream::on_response_bytes(UpstreamConn* u, ClientConn* c, uint32_t n) {
  Exchange* ex = c->ex;
  ex->out.commit(n);
  Block* b = ex->out.back();
  if (!ex->response_head_done) return on_response_head(u, c, ex->out.front());
  http::BodyProgress p = u->parser.parse_body(std::string_view(b->data() + b->tail - n, n), nullptr, nullptr);
  if (p.error != http::Error::kNone) {
    bump(counters_.upstream_bad_responses);
    upstream_failed(u, 502, false);
    return false;
  }
  if (p.done) {
    if (p.consumed < n) {  // bytes past the response's end: the channel is suspect
      ex->out.trim_tail(uint32_t(n - p.consumed));
      u->reusable = false;
    }
    ex->response_done = true;
  }
  return true;
}

// A proxy forwards the 1xx responses it did not ask for (RFC 9110 15.2), to
// HTTP/1.1 clients only. A 100 is not forwarded: the agent answered the
// client's Expect itself and took it off the request.
void TcpUpstream::forward_interim(ClientConn* c, const http::Head& h, std::string_view msg) {
  Exchange* ex = c->ex;
  constexpr size_t kInterimMax = 16 * 1024;  // hints are optional: more is dropped
  if (h.status == 100 || ex->client_http10 || ex->interim.size() >= kInterimMax) return;
  size_t n = write_interim_head(h, msg, scratch_.get(), kInterimMax - ex->interim.size());
  if (n == 0) return;
  ex->interim.append(scratch_.get(), n);
  ex->log.head_sent += uint32_t(n);
  sink_.count(h.status);
  proxy_.post_client_send(c);
}

// The head is parsed in the first block, rewritten in place right in front
// of the body, and what body came with it is framed.
bool TcpUpstream::on_response_head(UpstreamConn* u, ClientConn* c, Block* b) {
  Exchange* ex = c->ex;
  for (;;) {
    std::string_view msg(b->data() + b->head, b->readable());
    http::Result r = u->parser.parse_head(msg);
    if (r == http::Result::kIncomplete) {
      if (b->writable() > 0) return true;
    }
    if (r != http::Result::kComplete) {
      bump(counters_.upstream_bad_responses);
      upstream_failed(u, 502, false);
      return false;
    }
    const http::Head& h = u->parser.head();
    if (h.status >= 100 && h.status < 200) {
      if (h.status == 101) {  // we never ask for an upgrade
        bump(counters_.upstream_bad_responses);
        upstream_failed(u, 502, false);
        return false;
      }
      forward_interim(c, h, msg);
      ex->out.move_front_head(b->head + h.head_bytes);
      u->parser.reset();
      u->parser.set_request_method(ex->method);
      continue;
    }
    sink_.count(h.status);
    add(u->pool->stats().responses);
    report_health(*u->pool, true);
    u->reusable = u->reusable && h.keep_alive && h.body != http::BodyKind::kUntilClose;
    // A body that ends at close cannot be framed for the client either; an
    // HTTP/1.0 client cannot take chunks, so it gets the body decoded and
    // ended by the close.
    ex->dechunk = h.body == http::BodyKind::kChunked && ex->client_http10;
    if (h.body == http::BodyKind::kUntilClose || ex->dechunk) ex->close_after = true;
    size_t len = write_client_response_head(h, msg, ex->close_after, ex->client_http10, ex->dechunk,
                                            scratch_.get(), kScratchBytes);
    const uint32_t body_start = b->head + h.head_bytes;
    if (len == 0 || len > body_start) {
      bump(counters_.upstream_bad_responses);
      upstream_failed(u, 502, false);
      return false;
    }
    std::memcpy(b->data() + body_start - len, scratch_.get(), len);
    ex->log.status = h.status;
    ex->log.head_sent += uint32_t(len);
    ex->out.move_front_head(body_start - uint32_t(len));
    ex->response_head_done = true;
    const uint32_t body_bytes = b->tail - body_start;
    if (ex->dechunk) {
      // The raw chunks that came with the head are taken out and decoded.
      std::memcpy(scratch_.get(), b->data() + body_start, body_bytes);
      ex->out.trim_tail(body_bytes);
      uint32_t taken = 0;
      if (!dechunk_bytes(u, c, scratch_.get(), body_bytes, taken)) return false;
      if (taken < body_bytes) u->reusable = false;
      return true;
    }
    http::BodyProgress p = u->parser.parse_body(std::string_view(b->data() + body_start, body_bytes), nullptr, nullptr);
    if (p.error != http::Error::kNone) {
      bump(counters_.upstream_bad_responses);
      upstream_failed(u, 502, false);
      return false;
    }
    if (p.done) {
      if (p.consumed < body_bytes) {
        ex->out.trim_tail(uint32_t(body_bytes - p.consumed));
        u->reusable = false;
      }
      ex->response_done = true;
    }
    return true;
  }
}

namespace {
struct DechunkSink {
  ResponseSink* sink;
  Exchange* ex;
  bool failed;
};
}  // namespace

// An HTTP/1.0 client's chunked response: the chunk data goes on decoded.
bool TcpUpstream::dechunk_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken) {
  DechunkSink sink{&sink_, c->ex, false};
  http::BodyProgress p = u->parser.parse_body(
      std::string_view(data, n),
      [](void* ctx, const char* d, size_t len) {
        auto* s = static_cast<DechunkSink*>(ctx);
        if (!s->failed && !s->sink->append(s->ex, d, len)) s->failed = true;
      },
      &sink);
  if (p.error != http::Error::kNone || sink.failed) {
    bump(p.error != http::Error::kNone ? counters_.upstream_bad_responses : counters_.buffer_exhausted);
    upstream_failed(u, 502, false);
    return false;
  }
  taken = uint32_t(p.consumed);
  if (p.done) c->ex->response_done = true;
  return true;
}

// Spilling: the bytes go on to the file as they are framed. `taken` is set
// to the bytes that belong to this response.
bool TcpUpstream::spill_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken) {
  Exchange* ex = c->ex;
  http::BodyProgress p = u->parser.parse_body(std::string_view(data, n), nullptr, nullptr);
  if (p.error != http::Error::kNone) {
    bump(counters_.upstream_bad_responses);
    upstream_failed(u, 502, false);
    return false;
  }
  if (!spill_write(ex->spill, data, p.consumed)) {
    fmt::print(stderr, "offload-agent: spill file write: {}\n", std::strerror(errno));
    upstream_failed(u, 502, false);
    return false;
  }
  taken = uint32_t(p.consumed);
  if (p.done) ex->response_done = true;
  return true;
}

void TcpUpstream::on_response_complete(UpstreamConn* u, ClientConn* c) {
  c->ex->up = nullptr;
  c->ex->log.upstream_done_ms = loop_.now_ms();
  leave_server(c->ex);
  release_upstream(u);
  proxy_.on_response_done(c);
}

// The response is read: the channel serves the next waiting request at once,
// while this client is still receiving its response.
void TcpUpstream::release_upstream(UpstreamConn* u) {
  TcpPool& p = *u->pool;
  u->client = nullptr;
  disarm(u->timer);
  u->in.paused = false;
  ++p.responses;
  if (!u->proven) p.limit().on_new_answered();
  u->proven = true;
  const int64_t took_ms = int64_t(loop_.now_ms() - u->busy_since_ms);
  counters_.upstream_response.observe(uint64_t(took_ms));
  p.response_ms_avg += (took_ms - p.response_ms_avg) / 8;  // smoothed over about 8 responses
  if (!u->reusable || draining_ || u->out.busy) {
    // The server ended a connection it had served. While a newer one waits
    // unanswered, it has no worker for that one and makes room (a yield).
    if (!u->parser.head().keep_alive) {
      const bool newer_waiting = census(p).unanswered > 0;
      if (newer_waiting) bump(counters_.upstream_rejections);
      p.limit().on_server_close(newer_waiting);
    }
    close_upstream(u);
    fit_pool(p);
    return;
  }
  p.limit().on_response(!p.pending.empty() && p.open_count() >= p.limit().limit());
  p.limit_changed();
  if (p.open_count() > p.limit().limit()) {  // a surplus after the limit shrank
    close_upstream(u);
    return;
  }
  // A receive that ran out of provided buffers (or was paused) serves on.
  if (!u->in.armed) arm_up_recv(u);
  if (ClientConn* next = take_from(u->pool->pending, counters_)) {
    assign(u, next);
  } else {
    u->pool->make_idle(u);
  }
}

void TcpUpstream::upstream_failed(UpstreamConn* u, int status, bool nothing_received) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  u->reusable = false;
  ex->up = nullptr;
  u->client = nullptr;
  ex->log.upstream_done_ms = loop_.now_ms();
  if (status == 502 || status == 504) report_health(*u->pool, false);  // a reset, a bad answer, a timeout
  leave_server(ex);
  close_upstream(u);
  if (status == 504) {  // the response timeout: the server holds the connection unserved
    u->pool->limit().on_stall(census(*u->pool).proven);
    fit_pool(*u->pool);
  }
  if (c->state == ClientState::kClosing) {
    proxy_.maybe_free_client(c);
    return;
  }
  if (nothing_received && status == 502 && ex->may_retry()) {
    // A kept-alive channel can die just as a request is sent: try once more.
    ex->retried = true;
    bump(counters_.upstream_retries);
    ex->out.clear(data_pool_);
    ex->response_head_done = ex->response_done = false;
    ex->response_bytes = 0;
    ex->log.end = Termination::kUnset;  // the retry's own outcome counts
    ex->log.head_sent = 0;
    enqueue(c, true);
    return;
  }
  ex->log.end_with(status == 504 ? Termination::kTimeoutResponse : Termination::kUpstreamError);
  proxy_.fail_exchange(c, status);
}

}  // namespace offload
