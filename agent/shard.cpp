// The shard's loop and the client side of the flow. The upstream side (the
// ready queue, the channel pool and the responses) is in upstream.cpp.
#include "shard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "http/http_rewrite.h"

namespace offload {
namespace {

constexpr uint32_t kDataBlockBytes = 64 * 1024;
// Most request heads fit 2 KiB; a connection that trickles a head (slowloris)
// holds only this much until its head really grows.
constexpr uint32_t kSmallInputBytes = 2048;

struct BodySinkCtx {
  ResponseSink* sink;
  Exchange* ex;
  bool may_spill;
  bool failed;
};

void sink_to_body(void* ctx, const char* data, size_t len) {
  auto* s = static_cast<BodySinkCtx*>(ctx);
  if (!s->failed && !s->sink->append_body(s->ex, data, len, s->may_spill)) s->failed = true;
}


// Spill files take descriptors too: they get what the open-file limit leaves
// after every client, every channel and a margin for listeners, the ring and
// the admin endpoint, so a spill can never make an accept or a connect fail.
// The limit is the process's: each of `workers` shards gets an even share.
uint32_t spill_files_max(const Config& config) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  const uint64_t shards = std::max<uint32_t>(config.workers, 1);
  const uint64_t taken = (uint64_t(config.max_clients) + config.max_upstream) * shards + 64;
  return rl.rlim_cur > taken ? uint32_t(std::min<uint64_t>((rl.rlim_cur - taken) / shards, UINT32_MAX)) : 0;
}

// The input blocks hold the largest head any listener allows.
uint32_t largest_head(const Config& config) {
  uint32_t n = config.header_bytes_max;
  for (const ListenerConfig& l : config.listeners) n = std::max(n, l.header_bytes_max);
  return n;
}

ResponseSink::Settings sink_settings(const Config& config) {
  ResponseSink::Settings s;
  s.response_buffer = config.response_buffer;
  s.response_spill_max = config.response_spill_max;
  s.body_buffer = config.body_buffer;
  s.temp_dir = config.temp_dir;
  return s;
}

std::vector<Prefix> parse_prefixes(const char* key, const std::vector<std::string>& texts) {
  std::vector<Prefix> out;
  for (const auto& t : texts) out.push_back(parse_prefix(key, t));
  return out;
}

}  // namespace

const Clock& Shard::default_clock() {
  static const SteadyClock clock;
  return clock;
}

Shard::Shard(const Config& config, std::vector<int> listen_fds, Counters& counters, TopologyStats* topology,
             const Clock& clock)
    : config_(config),
      counters_(counters),
      own_topology_(topology == nullptr ? TopologyStats::from(config) : nullptr),
      topology_(topology != nullptr ? topology : own_topology_.get()),
      loop_(clock, 1024, 8192),
      clients_(new ClientConn[config.max_clients]),
      screen_(parse_prefixes("deny", config.deny), parse_prefixes("allow", config.allow),
              config.max_clients_per_source, config.max_clients),
      exchanges_(config.max_clients, [this](void* at) { return new (at) Exchange(request_limits_); }),
      small_input_pool_(kSmallInputBytes, config.buffer_memory_max / 8, 256),
      input_pool_((largest_head(config) + 1024 + 4095) / 4096 * 4096, config.buffer_memory_max / 4, 32),
      data_pool_(kDataBlockBytes, config.buffer_memory_max, 64),
      sink_(loop_, data_pool_, spill_budget_, counters_, sink_settings(config)) {
  request_limits_.header_bytes_max = config.header_bytes_max;
  request_limits_.header_count_max = config.header_count_max;
  request_limits_.body_bytes_max = config.body_bytes_max;
  response_limits_.header_bytes_max = kDataBlockBytes / 2;
  response_limits_.header_count_max = 1000;
  response_limits_.body_bytes_max = 0;  // unlimited: responses stream through
  spill_budget_.bytes_max = config.spill_total_max;
  spill_budget_.files_max = spill_files_max(config);
  uring_.setup_buffers(kClientGroup, config.recv_buffers, config.recv_buffer_bytes);
  bool any_tcp = false;
  for (const GroupConfig& g : config.groups)
    for (const ServerConfig& s : g.servers) any_tcp = any_tcp || s.target.kind != UpstreamTarget::Kind::kShm;
  if (any_tcp) uring_.setup_buffers(kUpstreamGroup, kUpstreamBuffers, kUpstreamBufferBytes);

  free_slots_.reserve(config.max_clients);
  for (uint32_t i = config.max_clients; i > 0; --i) free_slots_.push_back(i - 1);
  for (uint32_t i = 0; i < config.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    bind<&Shard::on_client_recv>(c->received, this, c);
    bind<&Shard::on_client_send>(c->sent, this, c);
    bind<&Shard::on_client_cancelled>(c->cancelled, this, c);
    bind<&Shard::on_client_timer>(c->timer, this, c);
  }
  bind<&Shard::housekeeping>(housekeeping_timer_, this);
  bind<&Shard::on_accept_retry_timer>(accept_retry_timer_, this);
  bind<&Shard::ring_tick>(ring_tick_, this);
  bind<&Shard::on_control>(control_read_, this);
  bind<&Shard::on_ring_listen>(ring_listen_, this);

  const uint32_t durations[kTimerKinds] = {
      config.header_timeout_ms, config.body_timeout_ms, config.keepalive_timeout_ms,
      config.send_timeout_ms,   config.queue_timeout_ms, 2000 /* linger */,
      config.response_timeout_ms, 250 /* ring heartbeat tick */,
      1000 /* housekeeping */, 100 /* accept retry after EMFILE */};
  for (int k = 0; k < kTimerKinds; ++k) {
    timers_[k].set_duration(durations[k]);
    timers_[k].set_kind(uint8_t(k));
    loop_.add_timers(timers_[k]);
  }
  build_listeners(listen_fds);
  build_groups();
  if (ring_group_ != nullptr) {
    for (uint32_t i = 0; i < ring_channels_; ++i) {
      upstreams_.push_back(std::make_unique<UpstreamConn>(i, response_limits_));
      UpstreamConn* u = upstreams_.back().get();
      bind<&Shard::on_ring_doorbell>(u->doorbell, this, u);
      bind<&Shard::on_response_timeout>(u->timer, this, u);
    }
    ring_create();
  }

  control_fd_ = eventfd(0, EFD_CLOEXEC);
}

Shard::~Shard() {
  for (uint32_t i = 0; i < config_.max_clients; ++i) {
    if (clients_[i].fd >= 0) ::close(clients_[i].fd);
    if (clients_[i].ex != nullptr) put_exchange(clients_[i].ex);
  }
  groups_.clear();  // closes the servers' connections
  for (auto& u : upstreams_)  // ring channels
    if (u->fd >= 0) ::close(u->fd);
  if (control_fd_ >= 0) ::close(control_fd_);
}

// ---------------------------------------------------------------- the loop

int Shard::run() {
  start();
  while (turn()) {
  }
  if (draining_ && active_clients_ > 0)
    fmt::print(stderr, "offload-agent: drain deadline passed with {} connections open\n", active_clients_);
  return 0;
}

void Shard::start() {
  loop_.refresh_clock();
  for (auto& l : listeners_) post_accept(l.get());
  post_control_read();
  if (ring_) ring_start();
  arm_timer(housekeeping_timer_, kTimerHousekeeping);
  for (auto& g : groups_)
    if (g->checker) g->checker->start();
  refill_pool();
}

bool Shard::turn(uint64_t max_wait_ms) {
  if (stop_now_) return false;
  loop_.turn(draining_ ? drain_deadline_ms_ : UINT64_MAX, max_wait_ms);
  after_batch();
  return !(stop_now_ || (draining_ && (active_clients_ == 0 || loop_.now_ms() >= drain_deadline_ms_)));
}

// Work that waits for a whole batch of completions: a freed channel is
// refilled and used only after the batch, never inside the handler of the
// slot that freed it, and budget given back wakes the responses waiting on it.
void Shard::after_batch() {
  if (pool_changed_) {
    pool_changed_ = false;
    refill_pool();
    dispatch_all();
  }
  wake_budget_waiters();
}

void Shard::on_accept_retry_timer() {
  for (auto& l : listeners_)
    if (!l->armed) post_accept(l.get());
}

void Shard::on_response_timeout(UpstreamConn* u, Timer&) {
  bump(counters_.timeouts_response);
  if (u->ring) {
    ring_timed_out(u);
  } else {
    upstream_failed(u, 504, false);
  }
}

void Shard::on_client_timer(ClientConn* c, Timer& t) {
  switch (TimerKind(t.list->kind())) {
    case kTimerHeader:
      bump(counters_.timeouts_header);
      // A connection that never sent a byte just closes; a partial head gets 408.
      if (c->ex != nullptr && c->ex->in != nullptr && c->ex->in->readable() > 0) reject(c, 408);
      else close_client(c);
      break;
    case kTimerBody: bump(counters_.timeouts_body); reject(c, 408); break;
    case kTimerKeepalive: bump(counters_.timeouts_keepalive); close_client(c); break;
    case kTimerSend: bump(counters_.timeouts_send); close_client(c); break;
    case kTimerQueue:
      bump(counters_.timeouts_queue);
      // Busy channels: 503. No connection could be opened: the gateway's error.
      respond_error(c, queue_timeout_status(c));  // leaves the queue
      break;
    case kTimerLinger: close_client(c); break;
    default: break;
  }
}

// Once a second: memory freed after a burst goes back to the system, so the
// resident size follows the connections actually open.
void Shard::housekeeping() {
  released_bytes_ += small_input_pool_.take_released_bytes() + input_pool_.take_released_bytes() +
                     data_pool_.take_released_bytes();
  if (released_bytes_ >= (1u << 20)) {
    malloc_trim(0);
    released_bytes_ = 0;
  }
  arm_timer(housekeeping_timer_, kTimerHousekeeping);
}

void Shard::request_drain() {
  drain_requested_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(control_fd_, &one, sizeof one);  // fails only on counter overflow
}

void Shard::request_stop() {
  stop_requested_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(control_fd_, &one, sizeof one);
}

void Shard::post_control_read() {
  if (control_fd_ < 0) return;
  io_uring_prep_read(loop_.sqe(control_read_), control_fd_, &control_buf_, sizeof control_buf_, 0);
}

// The flags, not the eventfd's count, say what was asked: several requests
// may arrive as one read.
void Shard::on_control(const io_uring_cqe& cqe) {
  if (cqe.res == int(sizeof control_buf_)) {
    if (stop_requested_.load(std::memory_order_acquire)) {
      stop_now_ = true;
      return;
    }
    if (drain_requested_.load(std::memory_order_acquire)) start_drain();
  }
  post_control_read();
}

void Shard::start_drain() {
  if (draining_) return;
  draining_ = true;
  drain_deadline_ms_ = loop_.now_ms() + config_.drain_timeout_ms;
  fmt::print(stderr, "offload-agent: draining {} connections (deadline {} ms)\n", active_clients_,
             config_.drain_timeout_ms);
  // shutdown() ends a multishot accept; the sockets close with the process.
  for (auto& l : listeners_) ::shutdown(l->fd, SHUT_RDWR);
  for (auto& g : groups_)
    if (g->checker) g->checker->stop();
  for (uint32_t i = 0; i < config_.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    if (c->fd < 0 || c->state == ClientState::kClosing) continue;
    bool has_bytes = c->ex != nullptr && c->ex->in != nullptr && c->ex->in->readable() > 0;
    if (c->state == ClientState::kIdle || (c->state == ClientState::kHead && !has_bytes)) close_client(c);
    else if (c->ex != nullptr) c->ex->close_after = true;
  }
}

// ------------------------------------------------------------- accepting

// Each listener's clients get its own limits and timeouts ([[listener]]
// values; the globals where its table sets none, and with the flat keys).
void Shard::build_listeners(const std::vector<int>& fds) {
  OFFLOAD_ASSERT(fds.size() == config_.listeners.size());
  for (int fd : fds) {
    const ListenerConfig& lc = config_.listeners[listeners_.size()];
    const uint32_t client_durations[kClientTimerKinds] = {
        lc.header_timeout_ms, lc.body_timeout_ms, lc.keepalive_timeout_ms, lc.send_timeout_ms,
        lc.queue_timeout_ms,  2000 /* linger */,  lc.response_timeout_ms};
    auto l = std::make_unique<Listener>();
    l->fd = fd;
    l->stats = topology_->listeners.at(listeners_.size()).get();
    l->name = lc.name;
    l->limits.header_bytes_max = lc.header_bytes_max;
    l->limits.header_count_max = lc.header_count_max;
    l->limits.body_bytes_max = lc.body_bytes_max;
    l->max_clients = lc.max_clients;
    for (int k = 0; k < kClientTimerKinds; ++k) {
      l->timers[k].set_duration(client_durations[k]);
      l->timers[k].set_kind(uint8_t(k));
      loop_.add_timers(l->timers[k]);
    }
    bind<&Shard::on_accept>(l->accepted, this, l.get());
    listeners_.push_back(std::move(l));
  }
}

void Shard::post_accept(Listener* l) {
  if (draining_) return;
  OFFLOAD_ASSERT(!l->armed);
  l->armed = true;
  io_uring_prep_multishot_accept(loop_.sqe(l->accepted), l->fd, nullptr, nullptr, SOCK_CLOEXEC);
}

void Shard::on_accept(Listener* l, const io_uring_cqe& e) {
  const io_uring_cqe* cqe = &e;
  if (!(cqe->flags & IORING_CQE_F_MORE)) {
    l->armed = false;
    // Out of descriptors or memory: accepting again at once would fail at
    // once, forever. Pause (the backlog keeps the clients), like nginx.
    const bool starved = cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM || cqe->res == -ENOBUFS;
    if (starved) {
      bump(counters_.accept_pauses);
      if (!accept_retry_timer_.armed()) arm_timer(accept_retry_timer_, kTimerAcceptRetry);
    } else if (!draining_) {
      post_accept(l);
    }
  }
  if (cqe->res < 0) return;
  int fd = cqe->res;
  if (draining_) {
    ::close(fd);
    return;
  }
  if (free_slots_.empty() || l->active >= l->max_clients) {
    ::close(fd);
    bump(counters_.rejected_over_limit);
    add(l->stats->rejected);
    return;
  }
  ClientConn* c = &clients_[free_slots_.back()];
  c->slot = free_slots_.back();
  free_slots_.pop_back();
  c->fd = fd;
  c->listener = l;
  set_state(c, ClientState::kHead);
  c->peer_family = 0;
  c->peer_eof = c->recv_paused = c->send_busy = false;
  if (screen_.active() && screen_out(c)) return;
  ++active_clients_;
  ++l->active;
  add(l->stats->accepted);
  add(l->stats->active);
  bump(counters_.accepted);
  bump(counters_.active_clients);
  arm_client_timer(c, kTimerHeader);
  post_recv(c);
}

// -------------------------------------------------------------- receiving

void Shard::post_recv(ClientConn* c) {
  OFFLOAD_ASSERT(!c->recv_armed);
  io_uring_sqe* s = loop_.sqe(c->received);
  io_uring_prep_recv_multishot(s, c->fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kClientGroup;
  c->recv_armed = true;
  ++c->inflight;
}

void Shard::on_client_cancelled(ClientConn* c, const io_uring_cqe&) {
  client_op_done(c);
  maybe_free_client(c);
}

void Shard::on_client_recv(ClientConn* c, const io_uring_cqe& e) {
  const io_uring_cqe* cqe = &e;
  const bool more = cqe->flags & IORING_CQE_F_MORE;
  if (!more) {
    c->recv_armed = false;
    client_op_done(c);
  }
  if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
    uint16_t bid = uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    if (c->state != ClientState::kClosing) on_client_bytes(c, uring_.buffer(kClientGroup, bid), size_t(cqe->res), true);
    uring_.recycle_buffer(kClientGroup, bid);
  } else if (cqe->res == 0 || (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -ECANCELED)) {
    c->peer_eof = true;
    const bool answering = c->state == ClientState::kQueued || c->state == ClientState::kUpstream;
    if (cqe->res == 0 && answering) {
      // A half-close after a complete request: the response is still
      // delivered (a dead client shows up as a failed send), then we close.
    } else if (c->state != ClientState::kClosing) {
      if (answering) bump(counters_.client_aborts);
      close_client(c);
    }
  }
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  // Out of provided buffers ends a multishot receive: back-pressure, re-arm.
  if (!c->recv_armed && !c->peer_eof && !c->recv_paused) {
    uring_.publish_buffers();
    post_recv(c);
  }
}

void Shard::on_client_bytes(ClientConn* c, const char* data, size_t len, bool fresh) {
  if (fresh) bump(counters_.bytes_in, len);
  if (c->state == ClientState::kLingering) return;  // discarded on purpose
  if (c->ex != nullptr && c->ex->discard_input) return;  // after an error of ours: closing
  if (c->ex == nullptr) {
    c->ex = get_exchange(c);
    if (c->ex == nullptr) {
      bump(counters_.buffer_exhausted);
      respond_error(c, 503);
      return;
    }
  }
  switch (c->state) {
    case ClientState::kIdle:
      set_state(c, ClientState::kHead);
      arm_client_timer(c, kTimerHeader);
      [[fallthrough]];
    case ClientState::kHead: {
      size_t n = append_head_bytes(c, data, len);
      if (c->state != ClientState::kHead) break;
      parse_input(c);
      if (n == len || c->state == ClientState::kClosing || c->state == ClientState::kLingering) break;
      if (c->state == ClientState::kHead) {
        // The input block is full and the head is still not complete.
        bump(counters_.parse_errors);
        reject(c, 431);
        break;
      }
      on_client_bytes(c, data + n, len - n, false);  // body or pipelined bytes
      break;
    }
    case ClientState::kBody:
      arm_client_timer(c, kTimerBody);
      feed_body(c, data, len, false);
      break;
    default:
      // A pipelined request behind the one in progress: kept for later.
      keep_pipelined(c, data, len);
      break;
  }
}

// Copies as much of a head as fits into the input block; returns how much.
size_t Shard::append_head_bytes(ClientConn* c, const char* data, size_t len) {
  Block* in = input_block(c);
  if (in != nullptr && in->writable() < len) in = grow_input(c);
  if (in == nullptr) return 0;
  size_t n = std::min<size_t>(len, in->writable());
  std::memcpy(in->data() + in->tail, data, n);
  in->tail += uint32_t(n);
  return n;
}

// The connection's input block, with its unread bytes slid to the front.
Block* Shard::input_block(ClientConn* c) {
  Exchange* ex = c->ex;
  if (ex->in == nullptr) {
    ex->in = small_input_pool_.get();
    if (ex->in == nullptr) {
      bump(counters_.buffer_exhausted);
      respond_error(c, 503);
      return nullptr;
    }
  }
  Block* in = ex->in;
  if (in->head > 0) {
    std::memmove(in->data(), in->data() + in->head, in->readable());
    in->tail -= in->head;
    in->head = 0;
  }
  return in;
}

// Moves the input from a small block to a full-size one (once per request at
// most); returns the block to write into, or null after answering 503.
Block* Shard::grow_input(ClientConn* c) {
  Exchange* ex = c->ex;
  if (ex->in->capacity == input_pool_.block_bytes()) return ex->in;
  Block* big = input_pool_.get();
  if (big == nullptr) {
    bump(counters_.buffer_exhausted);
    respond_error(c, 503);
    return nullptr;
  }
  std::memcpy(big->data(), ex->in->data() + ex->in->head, ex->in->readable());
  big->tail = ex->in->readable();
  put_input(ex->in);
  ex->in = big;
  return big;
}

void Shard::put_input(Block* b) {
  (b->capacity == small_input_pool_.block_bytes() ? small_input_pool_ : input_pool_).put(b);
}

// Keeps bytes that arrive behind the request in progress (pipelining): in
// the input block, then in the overflow chain with receiving paused.
void Shard::keep_pipelined(ClientConn* c, const char* data, size_t len) {
  Exchange* ex = c->ex;
  Block* in = ex->overflow.empty() ? input_block(c) : ex->in;
  if (in != nullptr && ex->overflow.empty() && in->writable() < len) in = grow_input(c);
  if (in == nullptr) return;
  if (len > in->writable() || !ex->overflow.empty()) {
    // More pipelined input than one block: park it and stop receiving until
    // the request in progress is answered (bounded input per connection).
    if (!ex->overflow.append(data_pool_, data, len)) {
      bump(counters_.buffer_exhausted);
      reject(c, 503);
      return;
    }
    pause_recv(c);
    return;
  }
  std::memcpy(in->data() + in->tail, data, len);
  in->tail += uint32_t(len);
}

void Shard::pause_recv(ClientConn* c) {
  if (c->recv_paused) return;
  c->recv_paused = true;
  if (!c->recv_armed) return;
  // Both completions (the cancelled receive and the cancel's own) come back.
  loop_.cancel(c->received, &c->cancelled);
  ++c->inflight;
}

// Parses the head at the front of the input block; on completion moves on to
// the body and, when the request is whole, to the queue.
void Shard::parse_input(ClientConn* c) {
  Exchange* ex = c->ex;
  Block* in = ex->in;
  std::string_view msg(in->data() + in->head, in->readable());
  http::Result r = ex->parser.parse_head(msg);
  if (r == http::Result::kIncomplete) return;
  if (r == http::Result::kError) {
    bump(counters_.parse_errors);
    reject(c, http::status_for(ex->parser.error()));
    return;
  }
  if (!take_head(c)) return;
  const uint32_t head_bytes = ex->parser.head().head_bytes;
  if (c->listener->group->ring && ex->parser.head().body == http::BodyKind::kLength &&
      ex->parser.head().content_length + ex->forward_bytes + 64 > ring_->max_request_bytes()) {
    // Over the ring a request is one record: say so now, not after the body.
    reject(c, 413);
    return;
  }
  in->head += head_bytes;
  // Ask the parser, not the body kind: `Content-Length: 0` is a body that is
  // already complete, and no further byte will come to say so.
  if (ex->parser.body_done()) {
    on_request_complete(c);
    return;
  }
  set_state(c, ClientState::kBody);
  arm_client_timer(c, kTimerBody);
  if (ex->parser.head().expect_continue && in->readable() == 0) {
    static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    // Tiny and first on the socket: a direct non-blocking send cannot block.
    (void)::send(c->fd, kContinue, sizeof kContinue - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  if (in->readable() > 0) {
    // Body bytes that came with the head are fed from the input block; what
    // follows the body stays there as the next (pipelined) request.
    feed_body(c, nullptr, 0, true);
  }
}

// Builds the upstream head while the client's head is at the front of `in`.
bool Shard::take_head(ClientConn* c) {
  Exchange* ex = c->ex;
  const http::Head& h = ex->parser.head();
  std::string_view msg(ex->in->data() + ex->in->head, h.head_bytes);
  ex->method = h.method;
  ex->client_http10 = h.version_minor == 0;
  ex->close_after = !h.keep_alive || draining_;
  if (h.method == http::Method::kConnect || h.upgrade) {
    // Tunnels and protocol switches belong to the pass-through proxy.
    bump(counters_.parse_errors);
    reject(c, 501);
    return false;
  }
  ex->forward = input_pool_.get();
  if (ex->forward == nullptr) {
    bump(counters_.buffer_exhausted);
    respond_error(c, 503);
    return false;
  }
  char ip[INET6_ADDRSTRLEN];
  ForwardInfo info;
  info.client_ip = client_ip(c, ip, sizeof ip);
  info.default_host = c->listener->group->default_host;
  size_t n = write_upstream_request_head(h, msg, info, ex->forward->data(), ex->forward->capacity);
  if (n == 0) {
    bump(counters_.parse_errors);
    reject(c, 431);
    return false;
  }
  ex->forward_bytes = uint32_t(n);
  return true;
}

void Shard::feed_body(ClientConn* c, const char* data, size_t len, bool from_input) {
  Exchange* ex = c->ex;
  if (from_input) {
    data = ex->in->data() + ex->in->head;
    len = ex->in->readable();
  }
  BodySinkCtx sink{&sink_, c->ex, !c->listener->group->ring, false};
  http::BodyProgress p = ex->parser.parse_body(std::string_view(data, len), sink_to_body, &sink);
  if (p.error != http::Error::kNone) {
    bump(counters_.parse_errors);
    reject(c, http::status_for(p.error));
    return;
  }
  if (sink.failed) {
    bump(counters_.buffer_exhausted);
    reject(c, 503);
    return;
  }
  if (from_input) ex->in->head += uint32_t(p.consumed);
  if (!p.done) return;
  if (!from_input && p.consumed < len) keep_pipelined(c, data + p.consumed, len - p.consumed);
  if (c->state == ClientState::kClosing) return;
  on_request_complete(c);
}

void Shard::on_request_complete(ClientConn* c) {
  Exchange* ex = c->ex;
  bump(counters_.requests);
  add(c->listener->stats->requests);
  disarm(c->timer);
  // The body is forwarded de-chunked: now its length is known.
  size_t n = finish_upstream_request_head(ex->forward->data(), ex->forward_bytes, ex->forward->capacity,
                                          ex->parser.head().body != http::BodyKind::kNone, ex->body_bytes());
  if (n == 0) {
    reject(c, 431);
    return;
  }
  ex->forward_bytes = uint32_t(n);
  enqueue(c, false);
}

// The multishot accept gives no addresses: the peer is looked up once, when
// first needed (the screen at accept, or X-Forwarded-For), and kept.
void Shard::look_up_peer(ClientConn* c) {
  if (c->peer_family != 0) return;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(c->fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  if (ss.ss_family == AF_INET) {
    c->peer_family = AF_INET;
    std::memcpy(c->peer_addr, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, 4);
  } else if (ss.ss_family == AF_INET6) {
    c->peer_family = AF_INET6;
    std::memcpy(c->peer_addr, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
  }
}

IpAddress Shard::peer_of(const ClientConn* c) const {
  return c->peer_family == AF_INET ? IpAddress::from_v4(c->peer_addr) : IpAddress::from_v6(c->peer_addr);
}

// True when the connection was refused (closed and counted, slot returned).
bool Shard::screen_out(ClientConn* c) {
  look_up_peer(c);
  Verdict v = c->peer_family == 0 ? Verdict::kAccept : screen_.admit(peer_of(c));
  if (v == Verdict::kAccept) return false;
  bump(v == Verdict::kOverSourceLimit ? counters_.rejected_per_source : counters_.rejected_screened);
  ::close(c->fd);
  c->fd = -1;
  c->peer_family = 0;
  free_slots_.push_back(c->slot);
  return true;
}

std::string_view Shard::client_ip(ClientConn* c, char* buf, size_t cap) {
  look_up_peer(c);
  if (c->peer_family == 0 || inet_ntop(c->peer_family, c->peer_addr, buf, socklen_t(cap)) == nullptr)
    return "unknown";
  return buf;
}

// --------------------------------------------------------------- answering

// An error the agent makes for a request it will not forward; the rest of
// the connection's input is not trusted any more, so it closes afterwards.
void Shard::reject(ClientConn* c, int status) {
  if (c->state == ClientState::kClosing || c->state == ClientState::kLingering) return;
  if (c->ex == nullptr) {
    close_client(c);
    return;
  }
  respond_error(c, status);
}

// Replaces whatever response was pending with the agent's own error response.
void Shard::respond_error(ClientConn* c, int status) {
  Exchange* ex = c->ex;
  if (ex == nullptr || ex->sent_to_client || c->send_busy || ex->up != nullptr) {
    // Part of a response already went out, or one is on its way from the
    // server into this exchange: the only honest end is a close.
    close_client(c);
    return;
  }
  bump(counters_.agent_errors);
  ex->out.clear(data_pool_);
  spill_close(ex->spill);
  ex->body.clear(data_pool_);  // never forwarded now: give its memory back
  spill_close(ex->body_spill);
  // Like HAProxy's own error pages: the agent's errors end the connection, so
  // a client never pipelines into a connection whose state is in doubt; what
  // it sends from now on is read and dropped.
  ex->close_after = true;
  ex->discard_input = true;
  ex->interim.clear();  // none of it went out (else this would be a close)
  ex->interim_sent = 0;
  // Sent from static storage: a 503 for exhausted buffer memory needs none.
  ex->canned = error_response(status, ex->close_after);
  sink_.count(status);
  ex->response_head_done = ex->response_done = true;
  set_state(c, ClientState::kUpstream);  // answered: sending is all that is left
  leave_server(ex);
  disarm(c->timer);
  post_client_send(c);
}

void Shard::post_client_send(ClientConn* c) {
  Exchange* ex = c->ex;
  if (c->send_busy || ex == nullptr) return;
  int n = 1;
  if (!ex->canned.empty()) {
    ex->send_iov[0].iov_base = const_cast<char*>(ex->canned.data());
    ex->send_iov[0].iov_len = ex->canned.size();
  } else if (ex->interim_pending()) {  // 103 Early Hints go out while the server works
    ex->send_iov[0].iov_base = ex->interim.data() + ex->interim_sent;
    ex->send_iov[0].iov_len = ex->interim.size() - ex->interim_sent;
  } else {
    // Nothing of a response leaves before its head is whole and rewritten: a
    // head split across reads is still being parsed where it lies.
    if (!ex->response_head_done) return;
    if (ex->out.empty()) fill_out_from_spill(c);
    if (ex->out.empty()) return;
    n = ex->out.fill_iovec(ex->send_iov, 8);
  }
  prep_send_iov(loop_.sqe(c->sent), c->fd, ex->send_msg, ex->send_iov, n);
  ++c->inflight;
  c->send_busy = true;
  arm_client_timer(c, kTimerSend);
}

// The client has drained memory: bring the next part of the spill file in.
void Shard::fill_out_from_spill(ClientConn* c) {
  switch (sink_.refill(c->ex)) {
    case ResponseSink::Refill::kNoMemory: wait_for_budget(c); break;  // retried when memory is given back
    case ResponseSink::Refill::kFailed: close_client(c); break;
    case ResponseSink::Refill::kNothing:
    case ResponseSink::Refill::kDone: break;
  }
}

void Shard::on_client_send(ClientConn* c, const io_uring_cqe& cqe) {
  int res = cqe.res;
  client_op_done(c);
  c->send_busy = false;
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  if (!c->wait_node.linked()) disarm(c->timer);  // a budget wait keeps its bound
  if (res <= 0) {
    if (res != -EAGAIN) {
      bump(counters_.client_aborts);
      close_client(c);
      return;
    }
    res = 0;
  }
  Exchange* ex = c->ex;
  bump(counters_.bytes_out, uint64_t(res));
  if (res > 0) ex->sent_to_client = true;
  if (!ex->canned.empty()) ex->canned.remove_prefix(size_t(res));
  else if (ex->interim_pending()) ex->interim_sent += size_t(res);
  else ex->out.consume(data_pool_, uint64_t(res));
  resume_up_read(ex);  // it may have paused because our buffers were full
  if (ex->unsent()) {
    post_client_send(c);
    return;
  }
  if (ex->response_done) finish_exchange(c);
}

// The response is all sent: close, or go back for the next request.
void Shard::finish_exchange(ClientConn* c) {
  Exchange* ex = c->ex;
  sink_.forget(c);
  if (ex->close_after || c->peer_eof || draining_) {
    linger(c);
    return;
  }
  Block* in = ex->in;
  ex->in = nullptr;
  BlockChain overflow;
  overflow.swap(ex->overflow);
  put_exchange(ex);
  c->ex = nullptr;
  if (in == nullptr || in->readable() == 0) {
    if (in != nullptr) put_input(in);
    set_state(c, ClientState::kIdle);
    arm_client_timer(c, kTimerKeepalive);
  } else {
    c->ex = get_exchange(c);
    c->ex->in = in;
    set_state(c, ClientState::kHead);
    arm_client_timer(c, kTimerHeader);
    parse_input(c);
  }
  // Input parked while the last request was served goes through the normal
  // path now, as if it had just arrived.
  while (Block* b = overflow.front()) {
    const uint32_t n = b->readable();
    if (c->state != ClientState::kClosing && c->state != ClientState::kLingering)
      on_client_bytes(c, b->data() + b->head, n, false);
    overflow.consume(data_pool_, n);  // frees the drained block: the loop ends
  }
  if (c->recv_paused && c->state != ClientState::kClosing && (c->ex == nullptr || c->ex->overflow.empty())) {
    c->recv_paused = false;
    if (!c->recv_armed) post_recv(c);
  }
}

// Shut the write side so the response is delivered before any reset, read
// and discard what the client still sends for a moment, then close.
void Shard::linger(ClientConn* c) {
  ::shutdown(c->fd, SHUT_WR);
  if (c->peer_eof) {
    close_client(c);
    return;
  }
  set_state(c, ClientState::kLingering);
  arm_client_timer(c, kTimerLinger);
  if (!c->recv_armed && !c->recv_paused) post_recv(c);
}

void Shard::close_client(ClientConn* c) {
  if (c->state == ClientState::kClosing) return;
  set_state(c, ClientState::kClosing);
  if (c->ex != nullptr) leave_server(c->ex);
  sink_.forget(c);
  disarm(c->timer);
  // Wakes the in-flight receive and send so their completions come back.
  ::shutdown(c->fd, SHUT_RDWR);
  if (c->ex != nullptr && c->ex->up != nullptr) {
    UpstreamConn* u = c->ex->up;
    if (u->ring) {
      ring_abandon(u, c);  // the channel carries on; this answer will be dropped
    } else {
      // The upstream is mid-exchange for a client that left: it cannot be reused.
      u->reusable = false;
      close_upstream(u);
    }
  }
  maybe_free_client(c);
}

void Shard::maybe_free_client(ClientConn* c) {
  if (c->state != ClientState::kClosing || c->inflight > 0 || c->fd < 0) return;
  if (c->ex != nullptr && c->ex->up != nullptr) return;  // freed when the upstream lets go
  OFFLOAD_ASSERT(!c->queue_node.linked() && !c->wait_node.linked());
  ::close(c->fd);
  c->fd = -1;
  if (screen_.active() && c->peer_family != 0) screen_.release(peer_of(c));
  c->peer_family = 0;
  if (c->ex != nullptr) {
    put_exchange(c->ex);
    c->ex = nullptr;
  }
  c->recv_armed = c->recv_paused = c->send_busy = false;
  free_slots_.push_back(c->slot);
  --active_clients_;
  --c->listener->active;
  sub(c->listener->stats->active);
  drop(counters_.active_clients);
}

// Never null: a client holds at most one exchange and there is one per client.
Exchange* Shard::get_exchange(const ClientConn* c) {
  Exchange* ex = exchanges_.get();
  OFFLOAD_ASSERT(ex != nullptr);
  ex->parser.set_limits(c->listener->limits);
  return ex;
}

void Shard::put_exchange(Exchange* ex) {
  leave_server(ex);
  if (ex->in != nullptr) put_input(ex->in);
  if (ex->forward != nullptr) input_pool_.put(ex->forward);
  ex->body.clear(data_pool_);
  spill_close(ex->body_spill);
  if (ex->bounce != nullptr) data_pool_.put(std::exchange(ex->bounce, nullptr));
  ex->out.clear(data_pool_);
  ex->overflow.clear(data_pool_);
  spill_close(ex->spill);
  ex->in = ex->forward = nullptr;
  ex->forward_bytes = 0;
  ex->up = nullptr;
  ex->parser.reset();
  ex->response_bytes = 0;
  ex->response_head_done = ex->response_done = false;
  ex->sent_to_client = ex->retried = ex->close_after = ex->client_http10 = ex->dechunk = false;
  ex->discard_input = false;
  ex->canned = {};
  ex->interim.clear();
  ex->interim_sent = 0;
  exchanges_.put(ex);
}

}  // namespace offload
