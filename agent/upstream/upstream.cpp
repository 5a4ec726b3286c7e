// The upstream side of a shard: the ready queue, the pool of bus connections
// (at most max_upstream, `persistent` of them opened at start-up and kept),
// and reading responses into the client's output queue.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "http/http_rewrite.h"
#include "shard.h"

namespace offload {
namespace {

// Room left before the first response bytes, so the rewritten response head
// can be written in place in front of the body (no copy of the body).
constexpr uint32_t kHeadroom = 1024;

void count_response(Counters& counters, uint16_t status) {
  switch (status / 100) {
    case 1: bump(counters.responses_1xx); break;
    case 2: bump(counters.responses_2xx); break;
    case 3: bump(counters.responses_3xx); break;
    case 4: bump(counters.responses_4xx); break;
    default: bump(counters.responses_5xx); break;
  }
}

}  // namespace

// --------------------------------------------------------- the ready queue

void Shard::set_state(ClientConn* c, ClientState s) {
  OFFLOAD_ASSERT(s != ClientState::kQueued);  // enqueue() is the way in
  if (c->state == ClientState::kQueued) {
    ready_.remove(c);  // asserts that it was there
    drop(counters_.queue_length);
  }
  OFFLOAD_ASSERT(!c->queue_node.linked());
  c->state = s;
}

void Shard::enqueue(ClientConn* c, bool front) {
  OFFLOAD_ASSERT(c->state != ClientState::kQueued && !c->queue_node.linked());
  OFFLOAD_ASSERT(c->fd >= 0 && c->ex != nullptr && c->ex->up == nullptr);
  c->state = ClientState::kQueued;
  if (front) ready_.push_front(c);
  else ready_.push_back(c);
  bump(counters_.queue_length);
  dispatch();
  if (c->state == ClientState::kQueued) {
    bump(counters_.queue_waits);
    arm_timer(c->timer, kTimerQueue);
  }
}

ClientConn* Shard::dequeue() {
  ClientConn* c = ready_.front();
  if (c == nullptr) return nullptr;
  OFFLOAD_ASSERT(c->state == ClientState::kQueued && c->fd >= 0 && c->ex != nullptr);
  set_state(c, ClientState::kUpstream);
  return c;
}

void Shard::dispatch() {
  if (ring_) {  // ring channels carry several requests each: ring_upstream.cpp
    ring_dispatch();
    return;
  }
  while (!ready_.empty() && !idle_.empty()) {
    UpstreamConn* u = idle_.pop_front();
    assign(u, dequeue());
  }
  // One new channel per waiting request, up to max_upstream. While the
  // backend cannot be reached the requests wait (each with its queue timer)
  // and the reconnect timer tries again; a failed open ends the loop.
  while (ready_.size() > upstream_connecting_ && upstream_open_ < config_.max_upstream && !backing_off())
    if (!open_upstream()) break;
}

void Shard::assign(UpstreamConn* u, ClientConn* c) {
  Exchange* ex = c->ex;
  disarm(c->timer);
  Block* first = ex->out.writable_tail(data_pool_, data_pool_.block_bytes());
  if (first == nullptr) {
    bump(counters_.buffer_exhausted);
    make_idle(u);
    respond_error(c, 503);
    return;
  }
  first->head = first->tail = kHeadroom;
  u->state = UpstreamState::kBusy;
  u->client = c;
  u->send_off = 0;
  u->read_paused = false;
  ex->up = u;
  if (u->used) bump(counters_.upstream_reuses);
  u->used = true;
  u->parser.reset();
  u->parser.set_request_method(ex->method);
  post_up_send(u);
  arm_timer(u->timer, kTimerResponse);
}

// ------------------------------------------------------------ the channels

void Shard::refill_pool() {
  if (ring_) return;
  while (upstream_open_ < config_.persistent && !backing_off() && !draining_)
    if (!open_upstream()) break;
}

// A failed open or connect: no new connection is tried until the reconnect
// timer fires, its delay doubling from 50 ms up to 1 s while failures go on.
// Queued requests wait meanwhile, each bounded by its queue timer.
void Shard::back_off(int status) {
  unreachable_status_ = status;
  if (backing_off()) return;
  reconnect_delay_ms_ = reconnect_delay_ms_ == 0 ? kReconnectFirstMs : std::min(reconnect_delay_ms_ * 2, kReconnectMaxMs);
  OFFLOAD_ASSERT(timers_[kTimerReconnect].size() == 0);  // its only timer: the duration may change
  timers_[kTimerReconnect].set_duration(reconnect_delay_ms_);
  arm_timer(reconnect_timer_, kTimerReconnect);
}

void Shard::log_upstream_error(const char* what, int err) {
  static uint64_t last_log_ms = 0;
  if (last_log_ms != 0 && loop_.now_ms() - last_log_ms < 5000) return;  // a down backend is loud enough
  fmt::print(stderr, "offload-agent: upstream {}: {}: {}\n", config_.upstream.text, what, std::strerror(err));
  last_log_ms = loop_.now_ms();
}

bool Shard::open_upstream() {
  UpstreamConn* u = nullptr;
  for (auto& candidate : upstreams_)
    if (candidate->state == UpstreamState::kFree) {
      u = candidate.get();
      break;
    }
  if (u == nullptr) return false;
  const SocketAddress& addr = config_.upstream.address;
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {  // EMFILE, ENFILE, ENOMEM: like a refused connect
    bump(counters_.upstream_connect_errors);
    log_upstream_error("socket", errno);
    back_off(502);
    return false;
  }
  if (addr.family() != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  u->fd = fd;
  u->state = UpstreamState::kConnecting;
  u->used = false;
  u->reusable = true;
  u->client = nullptr;
  ++u->generation;
  ++upstream_open_;
  ++upstream_connecting_;
  bump(counters_.upstream_connects);
  bump(counters_.upstream_active);
  io_uring_sqe* s = loop_.sqe(u->connected);
  io_uring_prep_connect(s, fd, reinterpret_cast<const sockaddr*>(&addr.storage), addr.length);
  s->flags |= IOSQE_IO_LINK;
  io_uring_prep_link_timeout(loop_.sqe(u->connect_timed_out), &connect_timeout_, 0);
  u->inflight += 2;
  return true;
}

void Shard::on_up_connect_timeout(UpstreamConn* u, const io_uring_cqe& cqe) {
  --u->inflight;
  if (cqe.res == -ETIME) bump(counters_.timeouts_connect);
  maybe_free_upstream(u);
}

void Shard::on_up_cancelled(UpstreamConn* u, const io_uring_cqe&) {
  --u->inflight;
  maybe_free_upstream(u);
}

void Shard::on_up_connect(UpstreamConn* u, const io_uring_cqe& cqe) {
  const int res = cqe.res;
  --u->inflight;
  --upstream_connecting_;
  if (u->state == UpstreamState::kClosing) {
    maybe_free_upstream(u);
    return;
  }
  if (res < 0) {
    bump(counters_.upstream_connect_errors);
    log_upstream_error("connect", res == -ECANCELED ? ETIMEDOUT : -res);
    u->reusable = false;
    close_upstream(u);
    // The waiting requests stay queued: a backend that restarts costs them
    // latency, not errors. Their queue timers bound the wait.
    back_off(res == -ECANCELED ? 504 : 502);
    return;
  }
  reconnect_delay_ms_ = 0;
  arm_up_recv(u);
  if (ClientConn* c = dequeue()) {
    assign(u, c);
  } else {
    make_idle(u);
  }
}

// An idle channel keeps its multishot receive: a server closing it shows up
// as an end of file there, so no poll is needed to notice.
void Shard::make_idle(UpstreamConn* u) {
  u->state = UpstreamState::kIdle;
  u->client = nullptr;
  disarm(u->timer);
  idle_.push_front(u);  // LIFO: the warmest channel serves next
}

void Shard::close_upstream(UpstreamConn* u) {
  if (u->state == UpstreamState::kClosing || u->state == UpstreamState::kFree) return;
  if (u->state == UpstreamState::kIdle) idle_.remove(u);
  disarm(u->timer);
  u->state = UpstreamState::kClosing;
  ::shutdown(u->fd, SHUT_RDWR);
  maybe_free_upstream(u);
}

void Shard::maybe_free_upstream(UpstreamConn* u) {
  if (u->state != UpstreamState::kClosing || u->inflight > 0) return;
  ::close(u->fd);
  u->fd = -1;
  u->state = UpstreamState::kFree;
  --upstream_open_;
  drop(counters_.upstream_active);
  OFFLOAD_ASSERT(!u->recv_armed && !u->send_busy);
  if (ClientConn* c = u->client) {
    u->client = nullptr;
    if (c->ex != nullptr) c->ex->up = nullptr;
    maybe_free_client(c);
  }
  // The pool is refilled after this batch of completions, not here: the
  // handler that freed the slot may still be running for it.
  pool_changed_ = true;
}

// ------------------------------------------------------ sending the request

void Shard::post_up_send(UpstreamConn* u) {
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
  u->send_busy = true;
}

// Reads the next piece of a spilled request body, from `offset` in its file,
// into the exchange's bounce block (pread: a retry reads it again from 0).
bool Shard::load_body_piece(UpstreamConn* u, uint64_t offset) {
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
    log_upstream_error("reading a request body's spill file", got < 0 ? errno : EIO);
    upstream_failed(u, 500, false);
    return false;
  }
  ex->bounce->head = 0;
  ex->bounce->tail = uint32_t(got);
  return true;
}

void Shard::on_up_send(UpstreamConn* u, const io_uring_cqe& cqe) {
  const int res = cqe.res;
  --u->inflight;
  u->send_busy = false;
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
void Shard::arm_up_recv(UpstreamConn* u) {
  OFFLOAD_ASSERT(!u->recv_armed && u->fd >= 0);  // one receive per connection
  io_uring_sqe* s = loop_.sqe(u->received);
  io_uring_prep_recv_multishot(s, u->fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kUpstreamGroup;
  ++u->inflight;
  u->recv_armed = true;
}

bool Shard::read_allowed(const Exchange* ex) const {
  if (ex->spill.fd >= 0) {
    if (ex->spill.unread() >= config_.response_spill_max) return false;
    if (spill_budget_.has_room()) return true;
    // The shared room is spent: a response whose own file is drained goes on
    // through memory, so it never waits for other clients to read theirs.
    return ex->spill.unread() == 0 && ex->out.bytes() < config_.response_buffer;
  }
  if (config_.response_spill_max == 0 || ex->spill.refused || !spill_budget_.can_open())
    return ex->out.bytes() < config_.response_buffer;  // memory only
  return true;
}

// Where the next response bytes go: the spill file while it has unsent bytes
// (they must stay in order behind them) or while the shared room lasts.
bool Shard::spill_takes(const Exchange* ex) const {
  return ex->spill.fd >= 0 && (ex->spill.unread() > 0 || spill_budget_.has_room());
}

// A paused read is resumed by the client's next send completion. With no
// send in flight nothing would resume it: the pause is the shared budget's
// (spill room), and the client waits for it.
void Shard::wait_if_unwoken(ClientConn* c) {
  if (!c->send_busy) wait_for_budget(c);
}

// Goes on in a temporary file; false when this response must stay in memory
// (spilling off, the budget spent, or temp_dir refusing the file).
bool Shard::start_spill(Exchange* ex) {
  if (ex->spill.fd >= 0) return true;
  if (config_.response_spill_max == 0 || ex->spill.refused) return false;
  return open_spill(ex->spill, counters_.spilled_responses);
}

// Opens a spill file within the shared budget, counting it in `opened`, or
// the refusal (a temp_dir that fails is logged; a spent budget is not news).
bool Shard::open_spill(Spill& spill, std::atomic<uint64_t>& opened) {
  if (!spill_open(spill, spill_budget_, config_.temp_dir)) {
    bump(counters_.spill_refused);
    if (errno != ENOSPC) log_upstream_error("spill file in temp_dir", errno);
    return false;
  }
  bump(opened);
  return true;
}

void Shard::wait_for_budget(ClientConn* c) {
  if (c->wait_node.linked()) return;
  bump(counters_.budget_waits);
  budget_waiters_.push_back(c);
  arm_timer(c->timer, kTimerSend);  // a wait that never ends is a stalled client
}

// Wakes every waiter once some budget is back; one that still finds none
// waits again. Bounded: only the waiters there at the start are woken.
void Shard::wake_budget_waiters() {
  if (budget_waiters_.empty()) return;
  const bool memory = data_pool_.bytes_in_use() + data_pool_.block_bytes() <= data_pool_.budget_bytes();
  if (!memory && !spill_budget_.has_room()) return;
  size_t n = budget_waiters_.size();
  while (n-- > 0) {
    ClientConn* c = budget_waiters_.pop_front();
    OFFLOAD_ASSERT(c->state != ClientState::kClosing && c->ex != nullptr);
    resume_response(c);
  }
}

// The client drained some of its response, or a budget gave some back:
// refill from the spill file, send, and let a paused upstream read on.
void Shard::resume_response(ClientConn* c) {
  Exchange* ex = c->ex;
  disarm(c->timer);  // the wait's bound; sending arms its own
  post_client_send(c);
  if (c->state == ClientState::kClosing || c->ex != ex) return;
  resume_up_read(ex);
}

// A read paused for this exchange's buffers tries again (and pauses again if
// there is still no room).
void Shard::resume_up_read(Exchange* ex) {
  if (ex->up == nullptr || !ex->up->read_paused) return;
  ex->up->read_paused = false;
  post_up_recv(ex->up);
}

// Back-pressure: the client's buffers (memory and spill file) are full.
void Shard::pause_up_read(UpstreamConn* u) {
  u->read_paused = true;
  disarm(u->timer);
  if (!u->recv_armed) return;
  loop_.cancel(u->received, &u->cancelled);
  ++u->inflight;
}

// The client drained some of its response: read on if there is room.
void Shard::post_up_recv(UpstreamConn* u) {
  if (u->ring) {
    ring_drain(u);
    ring_dispatch();
    return;
  }
  if (u->state != UpstreamState::kBusy || !read_allowed(u->client->ex)) {
    u->read_paused = true;
    if (u->state == UpstreamState::kBusy) wait_if_unwoken(u->client);
    return;
  }
  arm_timer(u->timer, kTimerResponse);
  if (!u->recv_armed) arm_up_recv(u);
}

void Shard::on_up_recv(UpstreamConn* u, const io_uring_cqe& e) {
  const io_uring_cqe* cqe = &e;
  const uint32_t generation = u->generation;
  if (!(cqe->flags & IORING_CQE_F_MORE)) {
    u->recv_armed = false;
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
  if (!u->recv_armed && !u->read_paused) {
    uring_.publish_buffers();
    arm_up_recv(u);
  }
}

void Shard::on_up_eof(UpstreamConn* u, int res) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  if (res == 0 && ex->response_head_done && u->parser.finish_at_eof()) {
    u->reusable = false;  // an until-close body ends here
    on_response_complete(u, c);
    return;
  }
  upstream_failed(u, 502, ex->response_bytes == 0);
}

// Copies received bytes into the client's output (memory, then the spill
// file) and frames them. Ends the exchange when the response is complete.
void Shard::take_response_bytes(UpstreamConn* u, const char* data, uint32_t len) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  ex->response_bytes += len;
  arm_timer(u->timer, kTimerResponse);
  while (len > 0 && !ex->response_done) {
    if (ex->spill.fd < 0 && ex->response_head_done && ex->out.bytes() >= config_.response_buffer) {
      // Memory for this response is full: go on in a temporary file, so the
      // channel is still released as soon as the server is done.
      (void)start_spill(ex);
    }
    uint32_t n = 0;
    if (ex->dechunk) {
      if (!dechunk_bytes(u, c, data, len, n)) return;
    } else if (spill_takes(ex)) {
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
  post_client_send(c);
  if (!read_allowed(ex)) {
    pause_up_read(u);
    wait_if_unwoken(c);
  }
}

// Takes n new bytes; false when the exchange ended in an error.
bool Shard::on_response_bytes(UpstreamConn* u, ClientConn* c, uint32_t n) {
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
void Shard::forward_interim(ClientConn* c, const http::Head& h, std::string_view msg) {
  Exchange* ex = c->ex;
  constexpr size_t kInterimMax = 16 * 1024;  // hints are optional: more is dropped
  if (h.status == 100 || ex->client_http10 || ex->interim.size() >= kInterimMax) return;
  size_t n = write_interim_head(h, msg, scratch_.get(), kInterimMax - ex->interim.size());
  if (n == 0) return;
  ex->interim.append(scratch_.get(), n);
  bump(counters_.responses_1xx);
  post_client_send(c);
}

// The head is parsed in the first block, rewritten in place right in front
// of the body, and what body came with it is framed.
bool Shard::on_response_head(UpstreamConn* u, ClientConn* c, Block* b) {
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
    count_response(counters_, h.status);
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
  Shard* shard;
  ClientConn* client;
  bool failed;
};
}  // namespace

// An HTTP/1.0 client's chunked response: the chunk data goes on decoded.
bool Shard::dechunk_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken) {
  DechunkSink sink{this, c, false};
  http::BodyProgress p = u->parser.parse_body(
      std::string_view(data, n),
      [](void* ctx, const char* d, size_t len) {
        auto* s = static_cast<DechunkSink*>(ctx);
        if (!s->failed && !s->shard->append_response(s->client, d, len)) s->failed = true;
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
bool Shard::spill_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken) {
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

void Shard::on_response_complete(UpstreamConn* u, ClientConn* c) {
  Exchange* ex = c->ex;
  ex->response_done = true;
  ex->up = nullptr;
  release_upstream(u);
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  send_or_finish(c);
}

// The response is read: the channel serves the next waiting request at once,
// while this client is still receiving its response.
void Shard::release_upstream(UpstreamConn* u) {
  u->client = nullptr;
  disarm(u->timer);
  u->read_paused = false;
  if (!u->reusable || draining_ || u->send_busy) {
    close_upstream(u);
    return;
  }
  // A receive that ran out of provided buffers (or was paused) serves on.
  if (!u->recv_armed) arm_up_recv(u);
  if (ClientConn* next = dequeue()) {
    assign(u, next);
  } else {
    make_idle(u);
  }
}

void Shard::upstream_failed(UpstreamConn* u, int status, bool nothing_received) {
  ClientConn* c = u->client;
  Exchange* ex = c->ex;
  u->reusable = false;
  ex->up = nullptr;
  u->client = nullptr;
  close_upstream(u);
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  if (nothing_received && status == 502 && ex->may_retry()) {
    // A kept-alive channel can die just as a request is sent: try once more.
    ex->retried = true;
    bump(counters_.upstream_retries);
    ex->out.clear(data_pool_);
    ex->response_head_done = ex->response_done = false;
    ex->response_bytes = 0;
    enqueue(c, true);
    return;
  }
  fail_exchange(c, status);
}

// The upstream side let this exchange down: an error response if nothing
// went to the client yet, else a close once what did arrive has gone out.
void Shard::fail_exchange(ClientConn* c, int status) {
  Exchange* ex = c->ex;
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  if (!ex->response_head_done) {
    respond_error(c, status);
    return;
  }
  ex->close_after = true;
  ex->response_done = true;
  send_or_finish(c);
}

// More of the response is ready: send it, or end the exchange if all is sent.
void Shard::send_or_finish(ClientConn* c) {
  Exchange* ex = c->ex;
  post_client_send(c);
  if (!c->send_busy && !ex->unsent()) finish_exchange(c);
}

}  // namespace offload
