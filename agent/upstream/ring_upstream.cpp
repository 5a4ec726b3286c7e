// Ring channels: the upstream pool over the shared-memory bus (shm:NAME).
//
// Each ring channel is an UpstreamConn without a socket. Unlike an HTTP/1.1
// connection, a channel carries up to ring_depth requests at once (the
// records queue in the ring and the server answers them in order), so a
// server worker takes a batch of requests per wake-up instead of one: that
// is where the bus saves the server its per-request sleep and wake. The
// requests wait in the ring group's queue; the listener's timeouts and the
// ResponseSink are the same as for TCP. The agent end of the bus
// (offload::ring::RingAgent) is driven from this loop: polls on its
// listening socket, the attached server's socket and one doorbell eventfd
// per channel, plus a 250 ms tick for heartbeats.
#include <poll.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "http/http_rewrite.h"
#include "shard.h"

namespace offload {
namespace {

using ring::RingAgent;

// Requests still waiting behind the front of a channel.
bool held_behind(const UpstreamConn* u) {
  for (uint32_t i = 1; i < u->fifo_count; ++i)
    if (u->fifo[(u->fifo_head + i) % kRingDepthMax] != nullptr) return true;
  return false;
}

}  // namespace

void Shard::ring_create() {
  ring::RingAgentOptions opts;
  opts.name = ring_target_.shm_name;
  opts.channels_max = ring_channels_;
  // A request travels as one record: the ring must hold the largest one.
  opts.ring_bytes = uint32_t(config_.ring_bytes);
  std::string error;
  ring_ = RingAgent::create(opts, &error);
  if (!ring_) throw ConfigError(fmt::format("upstream: cannot open the bus '{}': {}", ring_target_.text, error));
  for (auto& u : upstreams_) {
    u->ring = true;
    u->channel = u->slot;
  }
  ring_fields_.reserve(config_.header_count_max + 8);
  ring_depth_ = std::min<uint32_t>(config_.ring_depth, kRingDepthMax);
  ring_views_.reserve(256);
}

void Shard::ring_start() {
  post_ring_listen();
  for (auto& u : upstreams_) post_doorbell(u.get());
  arm_timer(ring_tick_, kTimerRingTick);
}

void Shard::post_ring_listen() {
  io_uring_prep_poll_multishot(loop_.sqe(ring_listen_), ring_->listen_fd(), POLLIN);
}

void Shard::post_doorbell(UpstreamConn* u) {
  io_uring_prep_poll_multishot(loop_.sqe(u->doorbell), ring_->doorbell_fd(u->channel), POLLIN);
}

void Shard::on_ring_listen(const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) post_ring_listen();
  ring_event(ring_->on_listen_ready(loop_.now_ms()));
}

void Shard::on_ring_peer(PeerPoll* p, const io_uring_cqe&) {
  p->in_flight = false;
  if (p != peer_poll_ || p->generation != peer_poll_gen_) return;  // a poll for an earlier peer
  peer_poll_ = nullptr;
  peer_poll_fd_ = -1;
  ring_event(ring_->on_peer_ready(loop_.now_ms()));
}

void Shard::on_ring_doorbell(UpstreamConn* u, const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) post_doorbell(u);
  ring_->on_doorbell(u->channel);
  if (u->send_pending && u->state == UpstreamState::kIdle) ring_send_back(u);
  ring_drain(u);
  ring_dispatch();
}

void Shard::ring_tick() {
  ring_event(ring_->tick(loop_.now_ms()));
  arm_timer(ring_tick_, kTimerRingTick);
}

// After every call into the ring agent: act on attach/detach and keep one
// poll on the current peer socket (the fd changes from peer to peer).
void Shard::ring_event(RingAgent::Event e) {
  if (e == RingAgent::Event::kAttached) {
    fmt::print(stderr, "offload-agent: bus {}: server pid {} attached with {} channels\n", ring_target_.text,
               ring_->server_pid(), ring_->channel_count());
    attached_channels_ = ring_->channel_count();
    for (auto& u : upstreams_) {
      ring_reset_channel(u.get());
      if (u->channel < ring_->channel_count()) {
        bump(counters_.upstream_connects);
        bump(counters_.upstream_active);
        u->state = UpstreamState::kIdle;
      }
    }
    ring_dispatch();
  } else if (e == RingAgent::Event::kDetached) {
    fmt::print(stderr, "offload-agent: bus {}: server detached: {}\n", ring_target_.text, ring_->last_error());
    for (auto& u : upstreams_) {
      if (u->channel < attached_channels_) drop(counters_.upstream_active);
      ring_fail_all(u.get(), 502);
      ring_reset_channel(u.get());
    }
    attached_channels_ = 0;
  }
  const int fd = ring_->peer_fd();
  if (fd == peer_poll_fd_) return;
  if (peer_poll_ != nullptr)  // io_uring holds the old socket until its poll ends
    loop_.cancel(peer_poll_->done, nullptr);
  peer_poll_ = nullptr;
  peer_poll_fd_ = fd;
  ++peer_poll_gen_;
  if (fd < 0) return;
  // A record whose poll has completed is reused; peers change rarely, so
  // there are only ever a few.
  PeerPoll* p = nullptr;
  for (auto& candidate : peer_polls_)
    if (!candidate->in_flight) p = candidate.get();
  if (p == nullptr) {
    peer_polls_.push_back(std::make_unique<PeerPoll>());
    p = peer_polls_.back().get();
    bind<&Shard::on_ring_peer>(p->done, this, p);
  }
  p->generation = peer_poll_gen_;
  p->in_flight = true;
  peer_poll_ = p;
  io_uring_prep_poll_add(loop_.sqe(p->done), fd, POLLIN | POLLRDHUP);
}

void Shard::ring_reset_channel(UpstreamConn* u) {
  u->state = UpstreamState::kFree;
  u->client = nullptr;
  u->send_pending = false;
  u->ring_failed = false;
  u->ring_draining = false;
  u->ring_slow_front = false;
  u->read_paused = false;
  u->fifo_head = u->fifo_count = 0;
  disarm(u->timer);
}

// The channel that takes the next request: the least loaded one with room
// (spreading keeps workers busy in parallel; a loaded channel still batches).
UpstreamConn* Shard::ring_pick() {
  UpstreamConn* best = nullptr;
  for (auto& u : upstreams_) {
    if (u->state != UpstreamState::kIdle || u->ring_failed || u->ring_draining || u->send_pending) continue;
    // Nothing behind a response whose client has been too slow for the
    // buffers moves until that client reads: do not add to the wait.
    if (u->ring_slow_front) continue;
    if (u->fifo_count >= ring_depth_) continue;
    if (best == nullptr || u->fifo_count < best->fifo_count) best = u.get();
  }
  return best;
}

// Hands waiting requests to channels with room. A channel that took one is
// polled afterwards (a poll that finds nothing arms its doorbell), which may
// free room again: iterate until nothing moves.
void Shard::ring_dispatch() {
  bool moved = true;
  while (moved && !ring_group_->ready.empty()) {
    moved = false;
    uint64_t touched = 0;
    while (!ring_group_->ready.empty()) {
      UpstreamConn* u = ring_pick();
      if (u == nullptr) break;
      ring_assign(u, take_from(ring_group_->ready));
      touched |= uint64_t(1) << (u->channel % 64);
      moved = true;
    }
    for (auto& u : upstreams_)
      if (touched & (uint64_t(1) << (u->channel % 64))) ring_drain(u.get());
  }
}

void Shard::ring_assign(UpstreamConn* u, ClientConn* c) {
  disarm(c->timer);
  c->ex->up = u;
  u->fifo[(u->fifo_head + u->fifo_count) % kRingDepthMax] = c;
  ++u->fifo_count;
  if (u->fifo_count == 1) arm_timer(u->timer, kTimerResponse);
  ring_send_back(u);
}

// Sends the newest request of the channel; a full ring keeps it pending
// (the channel takes nothing else) until the server's doorbell says room.
void Shard::ring_send_back(UpstreamConn* u) {
  ClientConn* c = u->fifo[(u->fifo_head + u->fifo_count - 1) % kRingDepthMax];
  if (c == nullptr) {  // its client left while it waited for room
    --u->fifo_count;
    u->send_pending = false;
    return;
  }
  Exchange* ex = c->ex;
  std::string_view head(ex->forward->data(), ex->forward_bytes);
  // The server reads the index instead of parsing: it is made from the head
  // exactly as forwarded (hop-by-hop fields already gone).
  ring_head_parser_.reset();
  if (ring_head_parser_.parse_head(head) != http::Result::kComplete) {
    --u->fifo_count;
    if (u->fifo_count == 0) disarm(u->timer);
    c->ex->up = nullptr;
    respond_error(c, 502);
    return;
  }
  const http::Head& h = ring_head_parser_.head();
  ring_fields_.clear();
  for (const auto& f : h.headers) ring_fields_.push_back({{f.name.off, f.name.len}, {f.value.off, f.value.len}});
  std::string_view body;
  if (ex->body.front() != nullptr && ex->body.front()->next == nullptr) {
    body = std::string_view(ex->body.front()->data() + ex->body.front()->head, ex->body.bytes());
  } else if (!ex->body.empty()) {
    ring_body_.clear();  // a record is contiguous: gather a multi-block body
    for (Block* b = ex->body.front(); b != nullptr; b = b->next) ring_body_.append(b->data() + b->head, b->readable());
    body = ring_body_;
  }
  ring::RequestOut req;
  req.id = ++ring_request_ids_;
  req.head = head;
  req.body = body;
  req.method = uint8_t(ex->method);
  req.version_minor = 1;
  req.flags = ex->close_after ? 0 : OFFLOAD_REQ_F_KEEP_ALIVE;
  req.method_text = {h.method_text.off, h.method_text.len};
  req.target = {h.target.off, h.target.len};
  req.fields = ring_fields_;
  switch (ring_->try_send_request(u->channel, req)) {
    case RingAgent::Send::kOk:
      u->send_pending = false;
      if (u->fifo_count > 1) bump(counters_.upstream_reuses);  // pipelined behind another
      return;
    case RingAgent::Send::kFull: u->send_pending = true; return;
    case RingAgent::Send::kTooLarge:
      --u->fifo_count;
      u->send_pending = false;
      if (u->fifo_count == 0) disarm(u->timer);
      c->ex->up = nullptr;
      respond_error(c, 413);
      return;
    default: ring_fail_all(u, 502); return;
  }
}

// Every request on the channel gets `status` (or a close, when its response
// had begun); their late answers are dropped. A channel that timed out takes
// no new request until those have gone by.
void Shard::ring_fail_all(UpstreamConn* u, int status) {
  for (uint32_t i = 0; i < u->fifo_count; ++i) {
    ClientConn*& slot = u->fifo[(u->fifo_head + i) % kRingDepthMax];
    if (slot == nullptr) continue;
    ClientConn* c = slot;
    slot = nullptr;
    c->ex->up = nullptr;
    fail_exchange(c, status);
  }
  if (u->send_pending) {  // the newest one never went out: nothing will answer it
    --u->fifo_count;
    u->send_pending = false;
  }
  if (u->fifo_count > 0) u->ring_draining = true;
  u->read_paused = false;
  u->ring_slow_front = false;
  disarm(u->timer);
}

// A client leaves while its request is on the channel: its slot stays, so
// the answer, when it comes, is recognised and dropped.
void Shard::ring_abandon(UpstreamConn* u, ClientConn* c) {
  for (uint32_t i = 0; i < u->fifo_count; ++i) {
    ClientConn*& slot = u->fifo[(u->fifo_head + i) % kRingDepthMax];
    if (slot == c) slot = nullptr;
  }
  c->ex->up = nullptr;
  if (u->read_paused && u->fifo_count > 0 && u->fifo[u->fifo_head] == nullptr) {
    u->read_paused = false;
    ring_drain(u);
    ring_dispatch();
  }
}

void Shard::ring_pop_front(UpstreamConn* u) {
  u->ring_slow_front = false;  // a new front: not known to be slow
  u->fifo_head = (u->fifo_head + 1) % kRingDepthMax;
  --u->fifo_count;
  if (u->fifo_count == 0) {
    u->ring_draining = false;
    disarm(u->timer);
  } else if (!u->ring_draining) {
    arm_timer(u->timer, kTimerResponse);
  }
}

// The front client's buffers are full: nothing more is read from this
// channel until that client drains them, however long it takes. The
// requests behind it must not wait on another client: those that may be
// sent again (not in the ring yet, or a GET/HEAD not moved before) go back
// to the front of the ready queue, with its timeout, for another channel
// (their answers here will be dropped); the others keep the response
// timeout, which then fails them, not the paused front (ring_timed_out).
void Shard::ring_paused(UpstreamConn* u) {
  u->read_paused = true;
  // Sticky until the front response ends: the pause comes and goes as that
  // client's socket drains, and a request put behind it in between would
  // wait on it again.
  u->ring_slow_front = true;
  bool held = false;
  for (uint32_t i = u->fifo_count; i-- > 1;) {  // newest first: push_front keeps the order
    ClientConn*& slot = u->fifo[(u->fifo_head + i) % kRingDepthMax];
    ClientConn* c = slot;
    if (c == nullptr) continue;
    const bool unsent = u->send_pending && i == u->fifo_count - 1;
    const bool resendable = c->ex->may_retry();
    if (!unsent && !resendable) {
      held = true;
      continue;
    }
    slot = nullptr;
    if (unsent) {
      --u->fifo_count;
      u->send_pending = false;
    } else {
      c->ex->retried = true;
      bump(counters_.upstream_retries);
    }
    c->ex->up = nullptr;
    enqueue(c, true);  // its queue timer runs; another channel may take it at once
  }
  if (!held) disarm(u->timer);
  else if (!u->timer.armed()) arm_timer(u->timer, kTimerResponse);
}

// The response timeout of a channel. Behind a slow front only the held
// requests time out (counted from the front's last progress before it
// paused: a client trickling its reads must not stretch their wait); the
// front itself waits for its own client, whose send timeout covers it.
void Shard::ring_timed_out(UpstreamConn* u) {
  const bool front_live = u->fifo_count > 0 && u->fifo[u->fifo_head] != nullptr;
  if (u->ring_slow_front && front_live && held_behind(u)) {
    for (uint32_t i = 1; i < u->fifo_count; ++i) {
      ClientConn*& slot = u->fifo[(u->fifo_head + i) % kRingDepthMax];
      if (slot == nullptr) continue;
      ClientConn* c = slot;
      slot = nullptr;
      c->ex->up = nullptr;
      fail_exchange(c, 504);
    }
    if (u->send_pending) {  // never went out: nothing will answer it
      --u->fifo_count;
      u->send_pending = false;
    }
    if (!u->read_paused) arm_timer(u->timer, kTimerResponse);  // the flowing front's own inactivity bound
    return;
  }
  if (u->read_paused && front_live) return;  // the front waits for its client, bounded by its send timer
  ring_fail_all(u, 504);
  ring_dispatch();
}

bool Shard::ring_read_allowed(UpstreamConn* u) const {
  const ClientConn* c = u->fifo_count > 0 ? u->fifo[u->fifo_head] : nullptr;
  return c == nullptr || sink_.read_allowed(c->ex);
}

// Takes response pieces off a channel until it is empty (which arms its
// doorbell) or the front client's buffers are full (resumed by its next
// send). Each response goes to the oldest request still on the channel.
// Room it frees is filled by the caller's ring_dispatch().
void Shard::ring_drain(UpstreamConn* u) {
  if (u->ring_failed || u->state == UpstreamState::kFree) return;
  for (;;) {
    if (!ring_read_allowed(u)) {
      if (!u->read_paused) ring_paused(u);
      wait_if_unwoken(u->fifo[u->fifo_head]);  // a pause for the shared budget has no send to end it
      return;
    }
    u->read_paused = false;
    ring::ResponsePiece piece;
    int r = ring_->poll_response(u->channel, &piece);
    if (r == 0 || r == -EPIPE) break;
    if (r < 0) {
      fmt::print(stderr, "offload-agent: bus channel {}: {}\n", u->channel, ring_->channel_error(u->channel));
      bump(counters_.upstream_bad_responses);
      ring_fail_all(u, 502);
      u->ring_failed = true;  // said once; unusable until the server attaches again
      return;
    }
    const bool last = piece.end || piece.kind == ring::ResponsePiece::Kind::kAbort;
    ClientConn* c = u->fifo_count > 0 ? u->fifo[u->fifo_head] : nullptr;
    bool ok = true;
    if (c != nullptr) {
      ok = piece.kind != ring::ResponsePiece::Kind::kAbort && ring_piece(u, c, piece);
      if (!ok) u->fifo[u->fifo_head] = nullptr;
    }
    ring_->release_response(u->channel);
    if (c != nullptr && !ok) {
      c->ex->up = nullptr;
      fail_exchange(c, 502);
    }
    if (!last) {
      if (c != nullptr && ok) post_client_send(c);
      continue;
    }
    if (u->fifo_count > 0) ring_pop_front(u);
    if (c != nullptr && ok) {
      c->ex->response_done = true;
      c->ex->up = nullptr;
      if (c->state == ClientState::kClosing) maybe_free_client(c);
      else send_or_finish(c);
    }
  }
}

// An interim response (1xx, e.g. 103 Early Hints) goes to an HTTP/1.1
// client ahead of the final one (RFC 9110 15.2: never to HTTP/1.0). 100 is
// the agent's own business (the request is complete before it is sent) and
// is dropped. A 1xx that claims to end the response, or 101, fails it.
bool Shard::ring_interim(ClientConn* c, const ring::ResponsePiece& piece) {
  Exchange* ex = c->ex;
  if (piece.end || piece.status == 101) {
    bump(counters_.upstream_bad_responses);
    return false;
  }
  if (piece.status == 100 || ex->client_http10 || ex->response_head_done) return true;
  std::string_view reason = piece.status == 103 ? "Early Hints"
                            : piece.status == 102 ? "Processing"
                                                  : reason_phrase(piece.status);
  auto r = fmt::format_to_n(scratch_.get(), kScratchBytes, "HTTP/1.1 {} {}\r\n", piece.status, reason);
  size_t n = r.size;
  for (const auto& f : piece.fields) {
    if (n >= kScratchBytes) break;
    n += fmt::format_to_n(scratch_.get() + n, kScratchBytes - n, "{}: {}\r\n", f.name, f.value).size;
  }
  if (n + 2 > kScratchBytes) return true;  // too large to forward: hints are optional, dropped
  std::memcpy(scratch_.get() + n, "\r\n", 2);
  n += 2;
  bump(counters_.responses_1xx);
  ex->interim.append(scratch_.get(), n);
  post_client_send(c);  // ahead of the final response, while the server works
  return true;
}

// Copies one piece into the client's output; false to fail the exchange.
bool Shard::ring_piece(UpstreamConn* u, ClientConn* c, const ring::ResponsePiece& piece) {
  Exchange* ex = c->ex;
  // Progress of a slow front does not extend the wait of those held behind it.
  if (!u->ring_draining && !(u->ring_slow_front && held_behind(u))) arm_timer(u->timer, kTimerResponse);
  ex->response_bytes += piece.body.size() + 1;
  const bool head_request = ex->method == http::Method::kHead;
  if (piece.kind == ring::ResponsePiece::Kind::kHead) {
    if (piece.status < 200) return ring_interim(c, piece);
    sink_.count(piece.status);
    const bool bodiless = head_request || piece.status == 204 || piece.status == 304;
    const bool length_known = piece.content_length != OFFLOAD_LENGTH_UNKNOWN;
    u->chunked_out = !length_known && !bodiless && !ex->client_http10;
    if (!length_known && !bodiless && ex->client_http10) ex->close_after = true;
    ring_views_.clear();
    for (const auto& f : piece.fields) ring_views_.push_back({f.name, f.value});
    size_t n = write_ring_response_head(piece.status, ring_views_.data(), ring_views_.size(),
                                        length_known && piece.status != 204 && piece.status != 304,
                                        piece.content_length, u->chunked_out, ex->close_after, ex->client_http10,
                                        scratch_.get(), kScratchBytes);
    if (n == 0 || !sink_.append(c->ex, scratch_.get(), n)) return false;
    ex->response_head_done = true;
    if (bodiless) return true;
  }
  if (!head_request && !piece.body.empty()) {
    if (u->chunked_out) {
      char line[24];
      auto r = fmt::format_to_n(line, sizeof line, "{:x}\r\n", piece.body.size());
      if (!sink_.append(c->ex, line, r.size)) return false;
    }
    if (!sink_.append(c->ex, piece.body.data(), piece.body.size())) return false;
    if (u->chunked_out && !sink_.append(c->ex, "\r\n", 2)) return false;
  }
  if (piece.end && u->chunked_out && !sink_.append(c->ex, "0\r\n\r\n", 5)) return false;
  return true;
}

// Response bytes go to memory up to response_buffer, then to the spill file.
}  // namespace offload
