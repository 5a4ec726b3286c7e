#include "proxy/http_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "http/http_rewrite.h"
#include "ops/topology_stats.h"
#include "proxy/passthrough_proxy.h"

namespace offload {
namespace {

// Most request heads fit 2 KiB; a connection that trickles a head (slowloris)
// holds only this much until its head really grows.
constexpr uint32_t kSmallInputBytes = 2048;
// Free exchanges kept made for the next requests; the rest of a burst's are
// given back (each holds its parser's header table, a few KiB).
constexpr uint32_t kExchangesKeptFree = 32;

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

// The input blocks hold the largest head any listener allows.
uint32_t largest_head(const Config& config) {
  uint32_t n = config.header_bytes_max;
  for (const ListenerConfig& l : config.listeners) n = std::max(n, l.header_bytes_max);
  return n;
}

// A CONNECT's target, "192.0.2.7:443" or "[2001:db8::7]:22", as an address;
// false for a name (nothing is resolved on the loop: a name is never listed).
bool parse_connect_target(std::string_view text, sockaddr_storage& out, socklen_t& len) {
  std::string host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
  }
  uint32_t p = 0;
  for (char ch : port) {
    if (ch < '0' || ch > '9' || p > 65535) return false;
    p = p * 10 + uint32_t(ch - '0');
  }
  if (port.empty() || p == 0 || p > 65535) return false;
  out = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(uint16_t(p));
    len = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(uint16_t(p));
    len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

// Retry-After beyond an hour says nothing a client can use.
constexpr uint64_t kRetryAfterMaxS = 3600;

// The cause of an error of the agent's own, where none was noted before it.
Termination error_cause(int status) {
  switch (status) {
    case 429: return Termination::kRefusedScreen;
    case 401: case 403: case 405: return Termination::kRefusedPolicy;
    case 408: return Termination::kTimeoutHeader;
    case 503: return Termination::kNoBuffer;
    case 502: return Termination::kUpstreamError;
    case 504: return Termination::kTimeoutResponse;
    default: return Termination::kParseError;
  }
}

}  // namespace

HttpProxy::HttpProxy(Loop& loop, const Config& config, Counters& counters, BlockPool& data_pool, ResponseSink& sink)
    : loop_(loop),
      uring_(loop.uring()),
      config_(config),
      counters_(counters),
      data_pool_(data_pool),
      sink_(sink),
      acceptor_(loop, counters, this, &HttpProxy::on_accepted),
      clients_(new ClientConn[config.max_clients]),
      screen_(config, source_rules(config)),
      small_input_pool_(kSmallInputBytes, config.buffer_memory_max / 8, 256),
      input_pool_((largest_head(config) + 1024 + 4095) / 4096 * 4096, config.buffer_memory_max / 4, 32),
      exchanges_(config.max_clients, [this](void* at) { return new (at) Exchange(request_limits_); },
                 kExchangesKeptFree),
      access_log_(loop, config, counters) {
  request_limits_.header_bytes_max = config.header_bytes_max;
  request_limits_.header_count_max = config.header_count_max;
  request_limits_.body_bytes_max = config.body_bytes_max;
  // Requests land in provided buffers, one group for every client.
  uring_.setup_buffers(kClientGroup, config.recv_buffers, config.recv_buffer_bytes);
  free_slots_.reserve(config.max_clients);
  for (uint32_t i = config.max_clients; i > 0; --i) free_slots_.push_back(i - 1);
  for (uint32_t i = 0; i < config.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    bind<&HttpProxy::on_client_recv>(c->received, this, c);
    bind<&HttpProxy::on_client_send>(c->sent, this, c);
    bind<&HttpProxy::on_client_cancelled>(c->cancelled, this, c);
    bind<&HttpProxy::on_client_timer>(c->timer, this, c);
  }
}

HttpProxy::~HttpProxy() { release_all(); }

void HttpProxy::release_all() {
  for (uint32_t i = 0; i < config_.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    if (c->fd >= 0) ::close(std::exchange(c->fd, -1));
    if (c->ex != nullptr) put_exchange(c);
  }
}

void HttpProxy::serve(Listener* l) {
  l->proxy = this;
  // Its request checks, from its [[listener]] table (names are unique).
  for (const ListenerConfig& lc : config_.listeners) {
    if (lc.name != l->name) continue;
    l->limits.target_bytes_max = lc.security.target_bytes_max;
    policies_.push_back(std::make_unique<RequestPolicy>(lc.security));
    if (policies_.back()->active()) l->policy = policies_.back().get();
    if (!lc.connect_targets.empty()) connect_targets_.emplace_back(l, &lc.connect_targets);
  }
  acceptor_.serve(l);
}

void HttpProxy::start() {
  acceptor_.start();
}

uint64_t HttpProxy::release_idle() {
  return small_input_pool_.release_idle() + input_pool_.release_idle();
}

void HttpProxy::drain() {
  draining_ = true;
  acceptor_.stop();
  for (uint32_t i = 0; i < config_.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    if (c->fd < 0 || c->state == ClientState::kClosing) continue;
    bool has_bytes = c->ex != nullptr && c->ex->in != nullptr && c->ex->in->readable() > 0;
    // After a reload a request may be on its way, and a response head may
    // have gone out without Connection: close: such a connection is closed
    // only after a response that says so (see finish_exchange).
    if (c->listener->serve_late) continue;
    if (c->state == ClientState::kIdle || (c->state == ClientState::kHead && !has_bytes)) close_client(c);
    else if (c->ex != nullptr) c->ex->close_after = true;
  }
}

void HttpProxy::on_client_timer(ClientConn* c, Timer& t) {
  switch (TimerKind(t.list->kind())) {
    case kTimerHeader:
      bump(counters_.timeouts_header);
      if (c->ex != nullptr) c->ex->log.end_with(Termination::kTimeoutHeader);
      // A connection that never sent a byte just closes; a partial head gets 408.
      if (c->ex != nullptr && c->ex->in != nullptr && c->ex->in->readable() > 0) reject(c, 408);
      else close_client(c);
      break;
    case kTimerBody:
      bump(counters_.timeouts_body);
      c->ex->log.end_with(Termination::kTimeoutBody);
      reject(c, 408);
      break;
    case kTimerKeepalive: bump(counters_.timeouts_keepalive); close_client(c); break;
    case kTimerSend:
      bump(counters_.timeouts_send);
      if (c->ex != nullptr) c->ex->log.end_with(Termination::kTimeoutSend);
      close_client(c);
      break;
    case kTimerQueue:
    {
      bump(counters_.timeouts_queue);
      // Busy channels: 503. No connection could be opened: the gateway's error.
      const int status = upstream_of(c).queue_timeout_status(c);
      c->ex->log.end_with(status == 503   ? Termination::kTimeoutQueue
                          : status == 504 ? Termination::kTimeoutConnect
                                          : Termination::kUpstreamConnectError);
      respond_error(c, status);  // leaves the queue
    }
      break;
    case kTimerLinger: close_client(c); break;
    default: break;
  }
}

void HttpProxy::on_accepted(void* self, Listener* l, int fd) { static_cast<HttpProxy*>(self)->accept(l, fd); }

void HttpProxy::accept(Listener* l, int fd) {
  if (free_slots_.empty() || l->active >= l->max_clients) {
    // Counted before the close: the client may ask the stats as soon as it sees it.
    bump(counters_.rejected_over_limit);
    add(l->stats->rejected);
    ::close(fd);
    return;
  }
  ClientConn* c = &clients_[free_slots_.back()];
  c->slot = free_slots_.back();
  free_slots_.pop_back();
  c->fd = fd;
  c->listener = l;
  set_state(c, ClientState::kHead);
  c->peer_family = 0;
  c->in.eof = c->in.paused = c->out.busy = false;
  c->handed_over = false;
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

void HttpProxy::post_recv(ClientConn* c) {
  OFFLOAD_ASSERT(!c->in.armed);
  io_uring_sqe* s = loop_.sqe(c->received);
  io_uring_prep_recv_multishot(s, c->fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kClientGroup;
  c->in.armed = true;
  ++c->inflight;
}

void HttpProxy::on_client_cancelled(ClientConn* c, const io_uring_cqe&) {
  client_op_done(c);
  maybe_free_client(c);
}

void HttpProxy::on_client_recv(ClientConn* c, const io_uring_cqe& e) {
  const io_uring_cqe* cqe = &e;
  const bool more = cqe->flags & IORING_CQE_F_MORE;
  if (!more) {
    c->in.armed = false;
    client_op_done(c);
  }
  if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
    uint16_t bid = uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    if (c->state != ClientState::kClosing) on_client_bytes(c, uring_.buffer(kClientGroup, bid), size_t(cqe->res), true);
    uring_.recycle_buffer(kClientGroup, bid);
  } else if (cqe->res == 0 || (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -ECANCELED)) {
    c->in.eof = true;
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
  if (!c->in.armed && c->ex != nullptr && c->ex->handing_over) {  // its last receive: see start_hand_over
    hand_over(c);
    return;
  }
  // Out of provided buffers ends a multishot receive: back-pressure, re-arm.
  if (!c->in.armed && !c->in.eof && !c->in.paused) {
    uring_.publish_buffers();
    post_recv(c);
  }
}

void HttpProxy::on_client_bytes(ClientConn* c, const char* data, size_t len, bool fresh) {
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
size_t HttpProxy::append_head_bytes(ClientConn* c, const char* data, size_t len) {
  Block* in = input_block(c);
  if (in != nullptr && in->writable() < len) in = grow_input(c);
  if (in == nullptr) return 0;
  size_t n = std::min<size_t>(len, in->writable());
  std::memcpy(in->data() + in->tail, data, n);
  in->tail += uint32_t(n);
  return n;
}

// The connection's input block, with its unread bytes slid to the front.
Block* HttpProxy::input_block(ClientConn* c) {
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
Block* HttpProxy::grow_input(ClientConn* c) {
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

void HttpProxy::put_input(Block* b) {
  (b->capacity == small_input_pool_.block_bytes() ? small_input_pool_ : input_pool_).put(b);
}

// Keeps bytes that arrive behind the request in progress (pipelining): in
// the input block, then in the overflow chain with receiving paused.
void HttpProxy::keep_pipelined(ClientConn* c, const char* data, size_t len) {
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

void HttpProxy::pause_recv(ClientConn* c) {
  if (c->in.paused) return;
  c->in.paused = true;
  if (!c->in.armed) return;
  // Both completions (the cancelled receive and the cancel's own) come back.
  loop_.cancel(c->received, &c->cancelled);
  ++c->inflight;
}

// Parses the head at the front of the input block; on completion moves on to
// the body and, when the request is whole, to the queue.
void HttpProxy::parse_input(ClientConn* c) {
  Exchange* ex = c->ex;
  Block* in = ex->in;
  std::string_view msg(in->data() + in->head, in->readable());
  http::Result r = ex->parser.parse_head(msg);
  if (r == http::Result::kIncomplete) return;
  if (r == http::Result::kError) {
    bump(counters_.parse_errors);
    if (ex->parser.error() == http::Error::kTargetTooLong) {
      bump(counters_.target_too_long);
      add(c->listener->stats->target_too_long);
    }
    reject(c, http::status_for(ex->parser.error()));
    return;
  }
  if (!take_head(c)) return;
  const uint32_t head_bytes = ex->parser.head().head_bytes;
  if (ex->parser.head().body == http::BodyKind::kLength &&
      ex->parser.head().content_length + ex->forward_bytes + 64 > upstream_of(c).request_bytes_max(c)) {
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
bool HttpProxy::take_head(ClientConn* c) {
  Exchange* ex = c->ex;
  const http::Head& h = ex->parser.head();
  std::string_view msg(ex->in->data() + ex->in->head, h.head_bytes);
  if (access_log_.on()) ex->log.capture(h, msg);
  ex->log.received = h.head_bytes;
  ex->method = h.method;
  ex->client_http10 = h.version_minor == 0;
  ex->close_after = !h.keep_alive || draining_;
  if (!screen_request(c, h, msg)) return false;
  if (h.method == http::Method::kConnect) return take_connect(c, h, msg);
  // A protocol switch (WebSocket and others) goes on to a server of the
  // listener's group, over a connection of its own; where there is no
  // tunnel to be had (the bus) it is not implemented (501). An HTTP/1.0
  // request's Upgrade is ignored (RFC 9110 7.8): it goes on without it.
  const bool upgrade = h.upgrade && h.version_minor == 1;
  const bool can_tunnel = tunnels_ != nullptr && c->listener->group != nullptr;
  if (upgrade && !can_tunnel) {
    bump(counters_.parse_errors);
    reject(c, 501);
    return false;
  }
  ex->upgrade = upgrade;
  ex->forward = input_pool_.get();
  if (ex->forward == nullptr) {
    bump(counters_.buffer_exhausted);
    respond_error(c, 503);
    return false;
  }
  char ip[INET6_ADDRSTRLEN];
  ForwardInfo info;
  info.client_ip = client_ip(c, ip, sizeof ip);
  info.default_host = upstream_of(c).default_host(c);
  info.upgrade = ex->upgrade;
  size_t n = write_upstream_request_head(h, msg, info, ex->forward->data(), ex->forward->capacity);
  if (n == 0) {
    bump(counters_.parse_errors);
    reject(c, 431);
    return false;
  }
  ex->forward_bytes = uint32_t(n);
  return true;
}

// CONNECT is not a method this proxy serves (405, with the ones it does)
// unless the listener has connect_targets; then a target not among them, or
// not a numeric address, gets 403.
bool HttpProxy::take_connect(ClientConn* c, const http::Head& h, std::string_view msg) {
  const std::vector<ConnectTarget>* targets = nullptr;
  for (const auto& [l, t] : connect_targets_)
    if (l == c->listener) targets = t;
  if (targets == nullptr || tunnels_ == nullptr) {
    static const std::string kRefused =
        error_response_with(405, "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n", true);
    bump(counters_.method_refused);
    add(c->listener->stats->method_refused);
    reject(c, 405, kRefused);
    return false;
  }
  Exchange* ex = c->ex;
  SocketAddress to;
  bool listed = parse_connect_target(h.target.in(msg), to.storage, to.length);
  if (listed) {
    listed = false;
    for (const ConnectTarget& t : *targets) listed = listed || t.allows(to);
  }
  if (!listed) {
    bump(counters_.connect_not_listed);
    reject(c, 403);
    return false;
  }
  ex->connect = true;
  ex->connect_to = to.storage;
  ex->connect_to_len = to.length;
  return true;
}

void HttpProxy::feed_body(ClientConn* c, const char* data, size_t len, bool from_input) {
  Exchange* ex = c->ex;
  if (from_input) {
    data = ex->in->data() + ex->in->head;
    len = ex->in->readable();
  }
  // A group that carries a request as one record has it all in memory.
  BodySinkCtx sink{&sink_, c->ex, upstream_of(c).request_bytes_max(c) == UINT64_MAX, false};
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
  ex->log.received += p.consumed;
  if (!p.done) return;
  if (!from_input && p.consumed < len) keep_pipelined(c, data + p.consumed, len - p.consumed);
  if (c->state == ClientState::kClosing) return;
  on_request_complete(c);
}

void HttpProxy::on_request_complete(ClientConn* c) {
  Exchange* ex = c->ex;
  bump(counters_.requests);
  add(c->listener->stats->requests);
  disarm(c->timer);
  if (ex->connect) {
    start_hand_over(c);
    return;
  }
  // The body is forwarded de-chunked: now its length is known.
  size_t n = finish_upstream_request_head(ex->forward->data(), ex->forward_bytes, ex->forward->capacity,
                                          ex->parser.head().body != http::BodyKind::kNone, ex->body_bytes());
  if (n == 0) {
    reject(c, 431);
    return;
  }
  ex->forward_bytes = uint32_t(n);
  if (ex->upgrade) {
    start_hand_over(c);
    return;
  }
  upstream_of(c).submit(c);
}

void HttpProxy::set_tunnels(PassthroughProxy* tunnels) {
  tunnels_ = tunnels;
  if (tunnels != nullptr) tunnels->set_http(this);
}

// The client's receive stops first (its last completion hands over, in
// on_client_recv): every byte it sent after its request is then in the
// input here, and goes along; none is read and lost in between.
void HttpProxy::start_hand_over(ClientConn* c) {
  set_state(c, ClientState::kUpstream);
  if (!c->in.armed) {
    hand_over(c);
    return;
  }
  c->ex->handing_over = true;
  pause_recv(c);
}

// The upgrade request (or the CONNECT) goes to the pass-through proxy with
// what the client sent after it (`held`). An upgrade's request goes to a
// server, whose answer decides: a 101 moves bytes both ways from then on,
// any other answer goes to the client and the connection comes back here
// (take_back). A CONNECT's target is dialled; 200 and a tunnel, or back
// here for a 502 or 504.
void HttpProxy::hand_over(ClientConn* c) {
  Exchange* ex = c->ex;
  ex->handing_over = false;
  std::string held;
  if (ex->in != nullptr) held.assign(ex->in->data() + ex->in->head, ex->in->readable());
  std::string first;
  if (ex->upgrade) {
    first.assign(ex->forward->data(), ex->forward_bytes);
    for (Block* b = ex->body.front(); b != nullptr; b = b->next) first.append(b->data() + b->head, b->readable());
  }
  const int fd = ::fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0 || ex->body_spill.fd >= 0 || ex->overflow.bytes() > 0) {
    if (fd >= 0) ::close(fd);
    respond_error(c, 503);
    return;
  }
  look_up_peer(c);
  const bool screened = screen_.active() && c->peer_family != 0;
  const IpAddress source = c->peer_family == 0 ? IpAddress{} : peer_of(c);
  Listener* l = c->listener;
  const bool connect = ex->connect;
  const bool keep_alive = !ex->close_after;
  SocketAddress to;
  to.storage = ex->connect_to;
  to.length = ex->connect_to_len;
  if (!connect) bump(counters_.upgrades);  // a CONNECT is counted by its outcome
  c->handed_over = true;
  ex->log.end_with(Termination::kUpgraded);
  // This connection ends first: one given back at once finds its slot free.
  close_client(c);
  if (connect) tunnels_->connect_to(l, fd, source, screened, to, std::move(held));
  else tunnels_->adopt(l, fd, source, screened, std::move(first), std::move(held), keep_alive);
}

void HttpProxy::take_back(Listener* l, int fd, const IpAddress& source, bool screened, int status, bool close,
                          std::string held) {
  if (free_slots_.empty()) {
    bump(counters_.rejected_over_limit);
    ::close(fd);
    if (screened) screen_.release(source);
    return;
  }
  ClientConn* c = &clients_[free_slots_.back()];
  c->slot = free_slots_.back();
  free_slots_.pop_back();
  c->fd = fd;
  c->listener = l;
  c->peer_family = 0;
  if (screened) {  // released when this connection is freed
    c->peer_family = source.is_v4() ? AF_INET : AF_INET6;
    std::memcpy(c->peer_addr, source.is_v4() ? source.bytes + 12 : source.bytes, source.is_v4() ? 4 : 16);
  }
  c->in.eof = c->in.paused = c->out.busy = false;
  c->in.armed = false;
  c->handed_over = false;
  ++active_clients_;
  ++l->active;
  add(l->stats->active);
  bump(counters_.active_clients);
  if (status != 0) {  // the gateway's error: sent, then the connection lingers and closes
    set_state(c, ClientState::kHead);
    c->ex = get_exchange(c);
    respond_error(c, status);
    return;
  }
  if (close || (draining_ && !l->serve_late)) {
    set_state(c, ClientState::kIdle);
    linger(c);
    return;
  }
  set_state(c, ClientState::kIdle);
  arm_client_timer(c, kTimerKeepalive);
  post_recv(c);
  if (!held.empty()) on_client_bytes(c, held.data(), held.size(), false);
}

// The multishot accept gives no addresses: the peer is looked up once, when
// first needed (the screen at accept, or X-Forwarded-For), and kept.
void HttpProxy::look_up_peer(ClientConn* c) {
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

IpAddress HttpProxy::peer_of(const ClientConn* c) const {
  return c->peer_family == AF_INET ? IpAddress::from_v4(c->peer_addr) : IpAddress::from_v6(c->peer_addr);
}

// True when the connection was refused (closed and counted, slot returned).
bool HttpProxy::screen_out(ClientConn* c) {
  look_up_peer(c);
  Verdict v = c->peer_family == 0 ? Verdict::kAccept : screen_.admit(peer_of(c), loop_.now_ms(), c->listener->index);
  bump(counters_.source_evictions, screen_.take_evictions());
  if (v == Verdict::kAccept) return false;
  count_refusal(v, counters_);
  ::close(c->fd);
  c->fd = -1;
  c->peer_family = 0;
  free_slots_.push_back(c->slot);
  return true;
}

// The source's request rate and the listener's rules, on a complete head and
// before any upstream work. False when the request was answered here (an
// error that ends the connection), counted by reason and listener.
bool HttpProxy::screen_request(ClientConn* c, const http::Head& h, std::string_view msg) {
  ListenerCounters& stats = *c->listener->stats;
  // The peer was looked up at accept: a rate limit makes the screen active.
  if (screen_.rate_limited() && c->peer_family != 0) {
    const uint64_t wait_ms = screen_.check_rate(peer_of(c), loop_.now_ms(), c->listener->index);
    bump(counters_.source_evictions, screen_.take_evictions());
    if (wait_ms > 0) {
      bump(counters_.rate_limited);
      add(stats.rate_limited);
      reject(c, 429, too_many((wait_ms + 999) / 1000));
      return false;
    }
  }
  const RequestPolicy* policy = c->listener->policy;
  if (policy == nullptr) return true;
  Refusal r = policy->check(h, msg);
  switch (r) {
    case Refusal::kNone: return true;
    case Refusal::kAuthMissing: bump(counters_.auth_missing); add(stats.auth_missing); break;
    case Refusal::kAuthWrong: bump(counters_.auth_wrong); add(stats.auth_wrong); break;
    case Refusal::kMethod: bump(counters_.method_refused); add(stats.method_refused); break;
  }
  look_up_peer(c);
  if (c->peer_family != 0) screen_.note(peer_of(c), refusal_name(r), c->listener->index, loop_.now_ms());
  reject(c, policy->status(r), policy->response(r));
  return false;
}

// After a change to the rule set: a client whose source it now refuses is
// closed (whatever it is doing: a denied source gets no more answers).
void HttpProxy::rescreen() {
  for (uint32_t i = 0; i < config_.max_clients; ++i) {
    ClientConn* c = &clients_[i];
    if (c->fd < 0 || c->state == ClientState::kClosing || c->handed_over) continue;
    look_up_peer(c);
    if (c->peer_family == 0 || screen_.recheck(peer_of(c), c->listener->index) == RuleVerdict::kAccept) continue;
    bump(counters_.closed_by_rules);
    screen_.note(peer_of(c), "denied, open connection closed", c->listener->index, loop_.now_ms());
    close_client(c);
  }
}

// Kept for the proxy's life: the exchange sends from it without a copy.
const std::string& HttpProxy::too_many(uint64_t retry_after_s) {
  const size_t s = size_t(std::min(std::max<uint64_t>(retry_after_s, 1), kRetryAfterMaxS));
  std::string& text = too_many_[s];  // a map: the texts never move
  if (text.empty()) text = error_response_with(429, fmt::format("Retry-After: {}\r\n", s), true);
  return text;
}

std::string_view HttpProxy::client_ip(ClientConn* c, char* buf, size_t cap) {
  look_up_peer(c);
  if (c->peer_family == 0 || inet_ntop(c->peer_family, c->peer_addr, buf, socklen_t(cap)) == nullptr)
    return "unknown";
  return buf;
}

// An error the agent makes for a request it will not forward; the rest of
// the connection's input is not trusted any more, so it closes afterwards.
void HttpProxy::reject(ClientConn* c, int status, std::string_view response) {
  if (c->state == ClientState::kClosing || c->state == ClientState::kLingering) return;
  if (c->ex == nullptr) {
    close_client(c);
    return;
  }
  respond_error(c, status, response);
}

void HttpProxy::on_response_done(ClientConn* c) {
  c->ex->response_done = true;
  c->ex->up = nullptr;
  if (c->state == ClientState::kClosing) {
    maybe_free_client(c);
    return;
  }
  send_or_finish(c);
}

void HttpProxy::fail_exchange(ClientConn* c, int status) {
  Exchange* ex = c->ex;
  ex->up = nullptr;
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

// Replaces whatever response was pending with the agent's own error response.
void HttpProxy::respond_error(ClientConn* c, int status, std::string_view response) {
  Exchange* ex = c->ex;
  if (ex == nullptr || ex->sent_to_client || c->out.busy || ex->up != nullptr) {
    // Part of a response already went out, or one is on its way from the
    // server into this exchange: the only honest end is a close.
    close_client(c);
    return;
  }
  bump(counters_.agent_errors);
  ex->log.end_with(error_cause(status));
  ex->log.status = uint16_t(status);
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
  ex->canned = response.empty() ? error_response(status, ex->close_after) : response;
  ex->log.head_sent = uint32_t(std::min(ex->canned.size(), ex->canned.find("\r\n\r\n") + 4));
  sink_.count(status);
  ex->response_head_done = ex->response_done = true;
  set_state(c, ClientState::kUpstream);  // answered: sending is all that is left
  upstream_of(c).leave(ex);
  disarm(c->timer);
  post_client_send(c);
}

void HttpProxy::post_client_send(ClientConn* c) {
  Exchange* ex = c->ex;
  if (c->out.busy || ex == nullptr) return;
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
  c->out.busy = true;
  arm_client_timer(c, kTimerSend);
}

// The client has drained memory: bring the next part of the spill file in.
void HttpProxy::fill_out_from_spill(ClientConn* c) {
  switch (sink_.refill(c->ex)) {
    case ResponseSink::Refill::kNoMemory: wait_for_budget(c); break;  // retried when memory is given back
    case ResponseSink::Refill::kFailed: close_client(c); break;
    case ResponseSink::Refill::kNothing:
    case ResponseSink::Refill::kDone: break;
  }
}

void HttpProxy::on_client_send(ClientConn* c, const io_uring_cqe& cqe) {
  int res = cqe.res;
  client_op_done(c);
  c->out.busy = false;
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
  ex->log.sent += uint64_t(res);
  if (res > 0) ex->sent_to_client = true;
  if (!ex->canned.empty()) ex->canned.remove_prefix(size_t(res));
  else if (ex->interim_pending()) ex->interim_sent += size_t(res);
  else ex->out.consume(data_pool_, uint64_t(res));
  upstream_of(c).resume(ex);  // it may have paused because our buffers were full
  if (ex->unsent()) {
    post_client_send(c);
    return;
  }
  if (ex->response_done) finish_exchange(c);
}

// The response is all sent: close, or go back for the next request.
void HttpProxy::finish_exchange(ClientConn* c) {
  Exchange* ex = c->ex;
  counters_.request_duration.observe(loop_.now_ms() - ex->started_ms);
  if (access_log_.on()) {
    look_up_peer(c);  // known already unless the head was never taken (an error of ours)
    access_log_.log(*c, Termination::kDone);
  }
  sink_.forget(c);
  if (ex->close_after || c->in.eof || (draining_ && !c->listener->serve_late)) {
    linger(c);
    return;
  }
  Block* in = ex->in;
  ex->in = nullptr;
  BlockChain overflow;
  overflow.swap(ex->overflow);
  put_exchange(c);
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
  if (c->in.paused && c->state != ClientState::kClosing && (c->ex == nullptr || c->ex->overflow.empty())) {
    c->in.paused = false;
    if (!c->in.armed) post_recv(c);
  }
}

// Shut the write side so the response is delivered before any reset, read
// and discard what the client still sends for a moment, then close.
void HttpProxy::linger(ClientConn* c) {
  ::shutdown(c->fd, SHUT_WR);
  if (c->in.eof) {
    close_client(c);
    return;
  }
  set_state(c, ClientState::kLingering);
  arm_client_timer(c, kTimerLinger);
  if (!c->in.armed && !c->in.paused) post_recv(c);
}

void HttpProxy::close_client(ClientConn* c) {
  if (c->state == ClientState::kClosing) return;
  if (c->ex != nullptr && access_log_.on()) log_closed(c);
  set_state(c, ClientState::kClosing);
  if (c->ex != nullptr) upstream_of(c).leave(c->ex);
  sink_.forget(c);
  disarm(c->timer);
  // Wakes the in-flight receive and send so their completions come back; a
  // socket handed over lives on in its tunnel: only the receive is cancelled.
  if (!c->handed_over) {
    ::shutdown(c->fd, SHUT_RDWR);
  } else if (c->in.armed) {
    loop_.cancel(c->received, &c->cancelled);
    ++c->inflight;
  }
  if (c->ex != nullptr && c->ex->up != nullptr) upstream_of(c).abandon(c);
  maybe_free_client(c);
}

void HttpProxy::maybe_free_client(ClientConn* c) {
  if (c->state != ClientState::kClosing || c->inflight > 0 || c->fd < 0) return;
  if (c->ex != nullptr && c->ex->up != nullptr) return;  // freed when the upstream lets go
  OFFLOAD_ASSERT(!c->queue_node.linked() && !c->wait_node.linked());
  ::close(c->fd);
  c->fd = -1;
  // A socket handed over keeps its place in the screen: its tunnel releases it.
  if (screen_.active() && c->peer_family != 0 && !c->handed_over) screen_.release(peer_of(c));
  c->peer_family = 0;
  if (c->ex != nullptr) put_exchange(c);
  c->in.armed = c->in.paused = c->out.busy = false;
  free_slots_.push_back(c->slot);
  --active_clients_;
  --c->listener->active;
  sub(c->listener->stats->active);
  drop(counters_.active_clients);
}

// The line of an exchange the connection's close ends: who ended it, where,
// unless its cause is known already (a timeout, an upstream failure).
// A connection with no request byte in it has no line.
void HttpProxy::log_closed(ClientConn* c) {
  const Exchange* ex = c->ex;
  if (ex->log.logged) return;
  const bool has_bytes = ex->log.received > 0 || (ex->in != nullptr && ex->in->readable() > 0);
  if (!has_bytes && ex->log.end == Termination::kUnset) return;
  Termination t = Termination::kClientAbortWaiting;
  if (c->state == ClientState::kHead || c->state == ClientState::kBody) t = Termination::kClientAbortRequest;
  else if (ex->sent_to_client) t = Termination::kClientAbortResponse;
  look_up_peer(c);
  access_log_.log(*c, t);
}

// Never null: a client holds at most one exchange and there is one per client.
Exchange* HttpProxy::get_exchange(const ClientConn* c) {
  Exchange* ex = exchanges_.get();
  OFFLOAD_ASSERT(ex != nullptr);
  ex->parser.set_limits(c->listener->limits);
  ex->started_ms = loop_.now_ms();  // made at the request's first byte
  return ex;
}

// Takes the client's exchange back, done with its server.
void HttpProxy::put_exchange(ClientConn* c) {
  Exchange* ex = std::exchange(c->ex, nullptr);
  upstream_of(c).leave(ex);
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
  ex->discard_input = ex->upgrade = ex->connect = ex->handing_over = false;
  ex->connect_to_len = 0;
  ex->canned = {};
  ex->log.reset();
  ex->interim.clear();
  ex->interim_sent = 0;
  exchanges_.put(ex);
}

// More of the response is ready: send it, or end the exchange if all is sent.
void HttpProxy::send_or_finish(ClientConn* c) {
  Exchange* ex = c->ex;
  post_client_send(c);
  if (!c->out.busy && !ex->unsent()) finish_exchange(c);
}

void HttpProxy::wait_for_budget(ClientConn* c) {
  if (sink_.wait(c)) arm_client_timer(c, kTimerSend);  // a wait that never ends is a stalled client
}

// A paused read is resumed by the client's next send completion. With no
// send in flight nothing would resume it: the pause is the shared budget's
// (spill room), and the client waits for it.
void HttpProxy::wait_if_unwoken(ClientConn* c) {
  if (!c->out.busy) wait_for_budget(c);
}

void HttpProxy::wait_in_queue(ClientConn* c) {
  bump(counters_.queue_waits);
  arm_client_timer(c, kTimerQueue);
}

void HttpProxy::wake_budget_waiters() {
  sink_.wake([this](ClientConn* c) {
    OFFLOAD_ASSERT(c->state != ClientState::kClosing && c->ex != nullptr);
    resume_response(c);
  });
}

// The client drained some of its response, or a budget gave some back:
// refill from the spill file, send, and let a paused upstream read on.
void HttpProxy::resume_response(ClientConn* c) {
  Exchange* ex = c->ex;
  disarm(c->timer);  // the wait's bound; sending arms its own
  post_client_send(c);
  if (c->state == ClientState::kClosing || c->ex != ex) return;
  upstream_of(c).resume(ex);
}

}  // namespace offload
