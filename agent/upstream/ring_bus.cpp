// The Upstream of the shared-memory bus (see ring_bus.h).
#include "upstream/ring_bus.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "loop/check.h"
#include "ops/log.h"
#include "upstream/ring_hub.h"

namespace offload {

using ring::RingAgent;

bool RingChannel::held_behind() const {
  for (uint32_t i = 1; i < fifo_count; ++i)
    if (fifo[(fifo_head + i) % kRingDepthMax] != nullptr) return true;
  return false;
}

RingBus::RingBus(const Parts& parts, const GroupConfig& group)
    : loop_(parts.loop),
      config_(parts.config),
      counters_(parts.counters),
      sink_(parts.sink),
      proxy_(parts.proxy),
      target_(group.servers.front().target),
      default_host_(target_.address.text),
      hub_(parts.hub),
      response_timers_(parts.config.response_timeout_ms) {
  uint32_t channels = 0;
  if (hub_ != nullptr) {
    channels = hub_->channels_max();
    agent_ = &hub_->agent();
    wake_fd_ = hub_->wake_fd(config_.shard_index);
  } else {
    channels = RingHub::channels_for(config_, group);
    ring::RingAgentOptions opts;
    opts.name = target_.shm_name;
    opts.channels_max = channels;
    // A request travels as one record: the ring must hold the largest one.
    opts.ring_bytes = uint32_t(config_.ring_bytes);
    std::string error;
    ring_ = RingAgent::create(opts, &error);
    if (!ring_) throw ConfigError(fmt::format("upstream: cannot open the bus '{}': {}", target_.text, error));
    agent_ = ring_.get();
  }
  const uint32_t shards = hub_ != nullptr ? hub_->shards() : 1;
  for (uint32_t i = 0; i < channels; ++i) {
    if (i % shards != config_.shard_index) continue;  // another shard's channel
    channels_.push_back(std::make_unique<RingChannel>(i));
    RingChannel* u = channels_.back().get();
    bind<&RingBus::on_doorbell>(u->doorbell, this, u);
    bind<&RingBus::on_response_timeout>(u->timer, this, u);
  }
  bind<&RingBus::on_tick>(tick_, this);
  bind<&RingBus::on_listen>(listen_, this);
  bind<&RingBus::on_wake>(wake_, this);
  loop_.add_timers(response_timers_);
  loop_.add_timers(tick_list_);
  fields_.reserve(config_.header_count_max + 8);
  depth_ = std::min<uint32_t>(config_.ring_depth, kRingDepthMax);
  views_.reserve(256);
}

RingBus::~RingBus() = default;

void RingBus::start() {
  for (auto& u : channels_) post_doorbell(u.get());
  if (hub_ != nullptr) {  // the hub's thread drives the control side
    post_wake();
    catch_up();  // a server may have attached already
    return;
  }
  post_listen();
  loop_.arm(tick_, tick_list_);
}

void RingBus::post_wake() {
  io_uring_prep_read(loop_.sqe(wake_), wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
}

// The hub says an attach or a detach happened (several may have, as one
// read): catch up with what is current now.
void RingBus::on_wake(const io_uring_cqe& cqe) {
  if (cqe.res == -ECANCELED) return;  // the loop is ending
  post_wake();
  catch_up();
}

void RingBus::catch_up() {
  std::shared_ptr<ring::RingAttach> now = hub_->view();
  if (attach_ != nullptr && attach_ != now) detach();
  if (now != nullptr && attach_ != now) attach(std::move(now));
}

// A complete request waits in the bus's queue until a channel has room.
void RingBus::enqueue(ClientConn* c, bool front) {
  queue_on(c, ready_, front, counters_);
  dispatch();
  if (c->state == ClientState::kQueued) proxy_.wait_in_queue(c);
}

void RingBus::abandon(ClientConn* c) {
  auto* u = static_cast<RingChannel*>(c->ex->up);
  for (uint32_t i = 0; i < u->fifo_count; ++i)
    if (u->at(i) == c) u->at(i) = nullptr;
  c->ex->up = nullptr;
  // Its slot stays, so the answer, when it comes, is recognised and dropped;
  // a pause for its buffers ends with it.
  if (u->read_paused && u->fifo_count > 0 && u->front() == nullptr) {
    u->read_paused = false;
    drain(u);
    dispatch();
  }
}

// The front client drained some of its response: read on.
void RingBus::resume(Exchange* ex) {
  auto* u = static_cast<RingChannel*>(ex->up);
  if (u == nullptr || !u->read_paused) return;
  u->read_paused = false;
  drain(u);
  dispatch();
}

void RingBus::post_listen() {
  io_uring_prep_poll_multishot(loop_.sqe(listen_), ring_->listen_fd(), POLLIN);
}

void RingBus::post_doorbell(RingChannel* u) {
  io_uring_prep_poll_multishot(loop_.sqe(u->doorbell), agent_->doorbell_fd(u->channel), POLLIN);
}

void RingBus::on_listen(const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) post_listen();
  on_event(ring_->on_listen_ready(loop_.now_ms()));
}

void RingBus::on_peer(PeerPoll* p, const io_uring_cqe&) {
  p->in_flight = false;
  if (p != peer_poll_ || p->generation != peer_poll_gen_) return;  // a poll for an earlier peer
  peer_poll_ = nullptr;
  peer_poll_fd_ = -1;
  on_event(ring_->on_peer_ready(loop_.now_ms()));
}

void RingBus::on_doorbell(RingChannel* u, const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) post_doorbell(u);
  agent_->clear_doorbell(u->channel);
  if (attach_ != nullptr) attach_->on_doorbell(u->channel);
  if (u->send_pending && u->state == UpstreamState::kIdle) send_back(u);
  drain(u);
  dispatch();
}

void RingBus::on_tick() {
  on_event(ring_->tick(loop_.now_ms()));
  loop_.arm(tick_, tick_list_);
}

// After every call into the ring agent: act on attach/detach and keep one
// poll on the current peer socket (the fd changes from peer to peer).
void RingBus::on_event(RingAgent::Event e) {
  if (e == RingAgent::Event::kAttached) {
    log(LogLevel::kInfo, "bus {}: server pid {} attached with {} channels", target_.text, ring_->server_pid(),
        ring_->channel_count());
    attach(ring_->attachment());
  } else if (e == RingAgent::Event::kDetached) {
    log(LogLevel::kWarning, "bus {}: server detached: {}", target_.text, ring_->last_error());
    detach();
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
    bind<&RingBus::on_peer>(p->done, this, p);
  }
  p->generation = peer_poll_gen_;
  p->in_flight = true;
  peer_poll_ = p;
  io_uring_prep_poll_add(loop_.sqe(p->done), fd, POLLIN | POLLRDHUP);
}

// A server attached: this shard's channels of it are usable.
void RingBus::attach(std::shared_ptr<ring::RingAttach> a) {
  attach_ = std::move(a);
  attached_channels_ = attach_->channel_count();
  for (auto& u : channels_) {
    reset_channel(u.get());
    if (u->channel < attached_channels_) {
      bump(counters_.upstream_connects);
      bump(counters_.upstream_active);
      u->state = UpstreamState::kIdle;
    }
  }
  dispatch();
}

// The server is gone: what was in flight on its channels gets 502; what is
// queued waits for the next server.
void RingBus::detach() {
  for (auto& u : channels_) u->state = UpstreamState::kFree;  // takes nothing more while the others fail
  for (auto& u : channels_) {
    if (u->channel < attached_channels_) drop(counters_.upstream_active);
    fail_all(u.get(), 502);
    reset_channel(u.get());
  }
  attached_channels_ = 0;
  attach_.reset();  // the region is unmapped when the last shard lets go
}

void RingBus::reset_channel(RingChannel* u) {
  u->state = UpstreamState::kFree;
  u->send_pending = false;
  u->failed = false;
  u->draining = false;
  u->slow_front = false;
  u->read_paused = false;
  u->fifo_head = u->fifo_count = 0;
  disarm(u->timer);
}

// The channel that takes the next request: the least loaded one with room
// (spreading keeps workers busy in parallel; a loaded channel still batches).
RingChannel* RingBus::pick() {
  RingChannel* best = nullptr;
  for (auto& u : channels_) {
    if (u->state != UpstreamState::kIdle || u->failed || u->draining || u->send_pending) continue;
    // Nothing behind a response whose client has been too slow for the
    // buffers moves until that client reads: do not add to the wait.
    if (u->slow_front) continue;
    if (u->fifo_count >= depth_) continue;
    if (best == nullptr || u->fifo_count < best->fifo_count) best = u.get();
  }
  return best;
}

// Hands waiting requests to channels with room. A channel that took one is
// polled afterwards (a poll that finds nothing arms its doorbell), which may
// free room again: iterate until nothing moves.
void RingBus::dispatch() {
  bool moved = true;
  while (moved && !ready_.empty()) {
    moved = false;
    uint64_t touched = 0;
    while (!ready_.empty()) {
      RingChannel* u = pick();
      if (u == nullptr) break;
      assign(u, take_from(ready_, counters_));
      touched |= uint64_t(1) << (u->channel % 64);
      moved = true;
    }
    for (auto& u : channels_)
      if (touched & (uint64_t(1) << (u->channel % 64))) drain(u.get());
  }
}

void RingBus::assign(RingChannel* u, ClientConn* c) {
  disarm(c->timer);
  c->ex->up = u;
  u->at(u->fifo_count) = c;
  ++u->fifo_count;
  if (u->fifo_count == 1) arm_response_timer(u);
  send_back(u);
}

// Sends the newest request of the channel; a full ring keeps it pending
// (the channel takes nothing else) until the server's doorbell says room.
void RingBus::send_back(RingChannel* u) {
  OFFLOAD_ASSERT(attach_ != nullptr);  // a channel in use belongs to the current attach
  ClientConn* c = u->at(u->fifo_count - 1);
  if (c == nullptr) {  // its client left while it waited for room
    --u->fifo_count;
    u->send_pending = false;
    return;
  }
  Exchange* ex = c->ex;
  std::string_view head(ex->forward->data(), ex->forward_bytes);
  // The server reads the index instead of parsing: it is made from the head
  // exactly as forwarded (hop-by-hop fields already gone).
  head_parser_.reset();
  if (head_parser_.parse_head(head) != http::Result::kComplete) {
    unsend_back(u, c, 502);
    return;
  }
  const http::Head& h = head_parser_.head();
  fields_.clear();
  for (const auto& f : h.headers) fields_.push_back({{f.name.off, f.name.len}, {f.value.off, f.value.len}});
  std::string_view body;
  if (ex->body.front() != nullptr && ex->body.front()->next == nullptr) {
    body = std::string_view(ex->body.front()->data() + ex->body.front()->head, ex->body.bytes());
  } else if (!ex->body.empty()) {
    body_.clear();  // a record is contiguous: gather a multi-block body
    for (Block* b = ex->body.front(); b != nullptr; b = b->next) body_.append(b->data() + b->head, b->readable());
    body = body_;
  }
  ring::RequestOut req;
  req.id = ++request_ids_;
  req.head = head;
  req.body = body;
  req.method = uint8_t(ex->method);
  req.version_minor = 1;
  req.flags = ex->close_after ? 0 : OFFLOAD_REQ_F_KEEP_ALIVE;
  req.method_text = {h.method_text.off, h.method_text.len};
  req.target = {h.target.off, h.target.len};
  req.fields = fields_;
  switch (attach_->try_send_request(u->channel, req)) {
    case RingAgent::Send::kOk:
      u->send_pending = false;
      if (u->fifo_count > 1) bump(counters_.upstream_reuses);  // pipelined behind another
      return;
    case RingAgent::Send::kFull: u->send_pending = true; return;
    case RingAgent::Send::kTooLarge: unsend_back(u, c, 413); return;
    default: fail_all(u, 502); return;
  }
}

// The newest request cannot go out on the channel: it leaves it, answered
// with `status`.
void RingBus::unsend_back(RingChannel* u, ClientConn* c, int status) {
  --u->fifo_count;
  u->send_pending = false;
  if (u->fifo_count == 0) disarm(u->timer);
  c->ex->up = nullptr;
  proxy_.respond_error(c, status);
}

// Every request on the channel gets `status` (or a close, when its response
// had begun); their late answers are dropped. A channel that timed out takes
// no new request until those have gone by.
void RingBus::fail_all(RingChannel* u, int status) {
  for (uint32_t i = 0; i < u->fifo_count; ++i) {
    ClientConn*& slot = u->at(i);
    if (slot == nullptr) continue;
    ClientConn* c = slot;
    slot = nullptr;
    c->ex->up = nullptr;
    proxy_.fail_exchange(c, status);
  }
  if (u->send_pending) {  // the newest one never went out: nothing will answer it
    --u->fifo_count;
    u->send_pending = false;
  }
  if (u->fifo_count > 0) u->draining = true;
  u->read_paused = false;
  u->slow_front = false;
  disarm(u->timer);
}

void RingBus::pop_front(RingChannel* u) {
  u->slow_front = false;  // a new front: not known to be slow
  u->fifo_head = (u->fifo_head + 1) % kRingDepthMax;
  --u->fifo_count;
  if (u->fifo_count == 0) {
    u->draining = false;
    disarm(u->timer);
  } else if (!u->draining) {
    arm_response_timer(u);
  }
}

// The front client's buffers are full: nothing more is read from this
// channel until that client drains them, however long it takes. The
// requests behind it must not wait on another client: those that may be
// sent again (not in the ring yet, or a GET/HEAD not moved before) go back
// to the front of the ready queue, with its timeout, for another channel
// (their answers here will be dropped); the others keep the response
// timeout, which then fails them, not the paused front (on_response_timeout).
void RingBus::paused(RingChannel* u) {
  u->read_paused = true;
  // Sticky until the front response ends: the pause comes and goes as that
  // client's socket drains, and a request put behind it in between would
  // wait on it again.
  u->slow_front = true;
  bool held = false;
  for (uint32_t i = u->fifo_count; i-- > 1;) {  // newest first: push_front keeps the order
    ClientConn*& slot = u->at(i);
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
  else if (!u->timer.armed()) arm_response_timer(u);
}

// The response timeout of a channel. Behind a slow front only the held
// requests time out (counted from the front's last progress before it
// paused: a client trickling its reads must not stretch their wait); the
// front itself waits for its own client, whose send timeout covers it.
void RingBus::on_response_timeout(RingChannel* u, Timer&) {
  bump(counters_.timeouts_response);
  const bool front_live = u->front() != nullptr;
  if (u->slow_front && front_live && u->held_behind()) {
    for (uint32_t i = 1; i < u->fifo_count; ++i) {
      ClientConn*& slot = u->at(i);
      if (slot == nullptr) continue;
      ClientConn* c = slot;
      slot = nullptr;
      c->ex->up = nullptr;
      proxy_.fail_exchange(c, 504);
    }
    if (u->send_pending) {  // never went out: nothing will answer it
      --u->fifo_count;
      u->send_pending = false;
    }
    if (!u->read_paused) arm_response_timer(u);  // the flowing front's own inactivity bound
    return;
  }
  if (u->read_paused && front_live) return;  // the front waits for its client, bounded by its send timer
  fail_all(u, 504);
  dispatch();
}

bool RingBus::read_allowed(const RingChannel* u) const {
  const ClientConn* c = u->front();
  return c == nullptr || sink_.read_allowed(c->ex);
}

// Takes response pieces off a channel until it is empty (which arms its
// doorbell) or the front client's buffers are full (resumed by its next
// send). Each response goes to the oldest request still on the channel.
// Room it frees is filled by the caller's dispatch().
void RingBus::drain(RingChannel* u) {
  if (u->failed || u->state == UpstreamState::kFree) return;
  OFFLOAD_ASSERT(attach_ != nullptr);  // only a detached channel is kFree
  for (;;) {
    if (!read_allowed(u)) {
      if (!u->read_paused) paused(u);
      proxy_.wait_if_unwoken(u->front());  // a pause for the shared budget has no send to end it
      return;
    }
    u->read_paused = false;
    ring::ResponsePiece piece;
    int r = attach_->poll_response(u->channel, &piece);
    if (r == 0 || r == -EPIPE) break;
    if (r < 0) {
      log(LogLevel::kWarning, "bus channel {}: {}", u->channel, attach_->channel_error(u->channel));
      bump(counters_.upstream_bad_responses);
      fail_all(u, 502);
      u->failed = true;  // said once; unusable until the server attaches again
      return;
    }
    const bool last = piece.end || piece.kind == ring::ResponsePiece::Kind::kAbort;
    ClientConn* c = u->front();
    bool ok = true;
    if (c != nullptr) {
      ok = piece.kind != ring::ResponsePiece::Kind::kAbort && take_piece(u, c, piece);
      if (!ok) u->at(0) = nullptr;
    }
    attach_->release_response(u->channel);
    if (c != nullptr && !ok) {
      c->ex->up = nullptr;
      proxy_.fail_exchange(c, 502);
    }
    if (!last) {
      if (c != nullptr && ok) proxy_.post_client_send(c);
      continue;
    }
    if (u->fifo_count > 0) pop_front(u);
    if (c != nullptr && ok) proxy_.on_response_done(c);
  }
}

// An interim response (1xx, e.g. 103 Early Hints) goes to an HTTP/1.1
// client ahead of the final one (RFC 9110 15.2: never to HTTP/1.0). 100 is
// the agent's own business (the request is complete before it is sent) and
// is dropped. A 1xx that claims to end the response, or 101, fails it.
bool RingBus::take_interim(ClientConn* c, const ring::ResponsePiece& piece) {
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
  ex->log.head_sent += uint32_t(n);
  proxy_.post_client_send(c);  // ahead of the final response, while the server works
  return true;
}

// Copies one piece into the client's output; false to fail the exchange.
bool RingBus::take_piece(RingChannel* u, ClientConn* c, const ring::ResponsePiece& piece) {
  Exchange* ex = c->ex;
  // Progress of a slow front does not extend the wait of those held behind it.
  if (!u->draining && !(u->slow_front && u->held_behind())) arm_response_timer(u);
  ex->response_bytes += piece.body.size() + 1;
  const bool head_request = ex->method == http::Method::kHead;
  if (piece.kind == ring::ResponsePiece::Kind::kHead) {
    if (piece.status < 200) return take_interim(c, piece);
    sink_.count(piece.status);
    const bool bodiless = head_request || piece.status == 204 || piece.status == 304;
    const bool length_known = piece.content_length != OFFLOAD_LENGTH_UNKNOWN;
    u->chunked_out = !length_known && !bodiless && !ex->client_http10;
    if (!length_known && !bodiless && ex->client_http10) ex->close_after = true;
    views_.clear();
    for (const auto& f : piece.fields) views_.push_back({f.name, f.value});
    size_t n = write_ring_response_head(piece.status, views_.data(), views_.size(),
                                        length_known && piece.status != 204 && piece.status != 304,
                                        piece.content_length, u->chunked_out, ex->close_after, ex->client_http10,
                                        scratch_.get(), kScratchBytes);
    if (n == 0 || !sink_.append(c->ex, scratch_.get(), n)) return false;
    ex->log.status = piece.status;
    ex->log.head_sent += uint32_t(n);
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

}  // namespace offload
