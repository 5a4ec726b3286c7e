#include "offload/ring_agent.h"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

#include "ring_region.h"

namespace offload::ring {

namespace {

// One bus connection's agent side for the current attach.
struct alignas(64) Channel {  // its own cache lines: channels may be served by different threads
  Producer requests;
  Consumer responses;
  struct Sent {
    uint64_t id;
    bool head;  // a HEAD request: its response announces a length but has no body
  };
  std::deque<Sent> in_flight;      // requests sent, oldest first
  bool in_response = false;        // a head arrived, the end not yet
  uint64_t body_left = 0;          // when the content length is known
  bool length_known = false;
  std::vector<Field> fields;
  std::string text;  // private copy of the current head's names and values
  std::string error;
};

}  // namespace

// One attach: the region, the server's doorbells, the channels' state.
struct RingAttach::State {
  uint64_t generation = 0;
  uint32_t ring_bytes = 0;
  Region region;
  std::vector<Fd> to_server;   // fresh per attach
  std::vector<Channel> channels;

  int fail_channel(uint32_t ch, std::string why);
  int check_piece(Channel& c, const ResponsePiece& p);
};

RingAttach::RingAttach(std::unique_ptr<State> state) : s_(std::move(state)) {}
RingAttach::~RingAttach() = default;
uint64_t RingAttach::generation() const { return s_->generation; }
uint32_t RingAttach::channel_count() const { return uint32_t(s_->channels.size()); }

struct RingAgent::Impl {
  RingAgentOptions opts;
  Fd listener;
  Fd peer;                     // handshaking or attached server
  bool attached = false;
  uint64_t peer_since_ms = 0;  // handshake start
  uint64_t generation = 0;
  uint32_t server_pid = 0;
  std::string last_error;
  std::vector<Fd> to_agent;    // stable doorbells, channels_max of them
  std::shared_ptr<RingAttach> current;  // while attached
  uint64_t my_beat = 0;
  uint64_t seen_beat = 0;
  uint64_t seen_beat_ms = 0;
  // Refused connections linger briefly so the refusal is read before the
  // close (closing with the hello unread would reset the connection).
  std::deque<std::pair<Fd, uint64_t>> refused;

  Event accept_one(uint64_t now);
  Event handle_hello(uint64_t now);
  int build_attach(uint32_t wanted);
  void refuse(Fd sock, int status, uint64_t now);
  void close_refused(uint64_t now);
  Event detach(std::string why);
};

RingAgent::RingAgent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RingAgent::~RingAgent() = default;

std::unique_ptr<RingAgent> RingAgent::create(const RingAgentOptions& opts, std::string* error) {
  if (!valid_name(opts.name)) {
    *error = "ring name '" + opts.name + "': expected 1-64 characters of A-Z a-z 0-9 . _ -";
    return nullptr;
  }
  if (opts.channels_max == 0 || opts.channels_max > OFFLOAD_RING_CHANNELS_MAX) {
    *error = "ring channels " + std::to_string(opts.channels_max) + ": expected 1..64";
    return nullptr;
  }
  uint32_t rb = opts.ring_bytes;
  if (rb < OFFLOAD_RING_BYTES_MIN || rb > OFFLOAD_RING_BYTES_MAX || (rb & (rb - 1)) != 0) {
    *error = "ring bytes " + std::to_string(rb) + ": expected a power of two in 4096..1073741824";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  impl->listener.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un addr;
  socklen_t len = socket_address(opts.name, &addr);
  if (impl->listener.get() < 0 || ::bind(impl->listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(impl->listener.get(), 16) != 0) {
    *error = "ring socket @" OFFLOAD_RING_SOCKET_PREFIX + opts.name + ": " + std::strerror(errno);
    return nullptr;
  }
  for (uint32_t i = 0; i < opts.channels_max; ++i) {
    impl->to_agent.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (impl->to_agent.back().get() < 0) {
      *error = std::string("ring doorbell eventfd: ") + std::strerror(errno);
      return nullptr;
    }
  }
  return std::unique_ptr<RingAgent>(new RingAgent(std::move(impl)));
}

int RingAgent::listen_fd() const { return impl_->listener.get(); }
int RingAgent::peer_fd() const { return impl_->peer.get(); }
bool RingAgent::attached() const { return impl_->attached; }
uint32_t RingAgent::channel_count() const { return impl_->current ? impl_->current->channel_count() : 0; }
uint64_t RingAgent::generation() const { return impl_->generation; }
uint32_t RingAgent::server_pid() const { return impl_->server_pid; }
const std::string& RingAgent::last_error() const { return impl_->last_error; }
int RingAgent::doorbell_fd(uint32_t ch) const {
  return ch < impl_->to_agent.size() ? impl_->to_agent[ch].get() : -1;
}

uint64_t RingAgent::max_request_bytes() const {
  return impl_->opts.ring_bytes - sizeof(offload_rec) - sizeof(offload_req);
}

std::shared_ptr<RingAttach> RingAgent::attachment() const { return impl_->current; }

const std::string& RingAttach::channel_error(uint32_t ch) const {
  static const std::string kNone;
  return ch < s_->channels.size() ? s_->channels[ch].error : kNone;
}

const std::string& RingAgent::channel_error(uint32_t ch) const {
  static const std::string kNone;
  return impl_->current ? impl_->current->channel_error(ch) : kNone;
}

// ---- attach -------------------------------------------------------------------

void RingAgent::Impl::refuse(Fd sock, int status, uint64_t now) {
  offload_welcome w{};
  w.magic = OFFLOAD_RING_MAGIC;
  w.version = OFFLOAD_RING_VERSION;
  w.status = status;
  send_message(sock.get(), &w, sizeof w, nullptr, 0);
  if (refused.size() >= 8) refused.pop_front();
  refused.emplace_back(std::move(sock), now);
}

void RingAgent::Impl::close_refused(uint64_t now) {
  while (!refused.empty() && now - refused.front().second >= 200) refused.pop_front();
}

RingAgent::Event RingAgent::on_listen_ready(uint64_t now) { return impl_->accept_one(now); }

RingAgent::Event RingAgent::Impl::accept_one(uint64_t now) {
  for (;;) {
    Fd sock(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (sock.get() < 0) return Event::kNone;  // EAGAIN, or a transient error
    ucred cred{};
    socklen_t len = sizeof cred;
    bool same_user = ::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
                     (cred.uid == ::geteuid() || cred.uid == 0);
    if (!same_user) {
      last_error = "ring: refused a server of another user (uid " + std::to_string(cred.uid) + ")";
      refuse(std::move(sock), -EPERM, now);
      continue;
    }
    if (peer.get() >= 0) {
      last_error = "ring: refused a second server (pid " + std::to_string(cred.pid) + "): one is attached";
      refuse(std::move(sock), -EBUSY, now);
      continue;
    }
    peer = std::move(sock);
    peer_since_ms = now;
    return handle_hello(now);  // the hello is usually there already
  }
}

RingAgent::Event RingAgent::on_peer_ready(uint64_t now) {
  Impl& m = *impl_;
  if (m.peer.get() < 0) return Event::kNone;
  if (!m.attached) return m.handle_hello(now);
  // Attached: the server says nothing more; readable means it closed.
  char byte;
  ssize_t n = ::recv(m.peer.get(), &byte, 1, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return Event::kNone;
  return m.detach(n == 0 ? "ring: server closed its connection" : "ring: unexpected message from the server");
}

RingAgent::Event RingAgent::Impl::handle_hello(uint64_t now) {
  offload_hello hello{};
  std::vector<Fd> fds;
  int rc = recv_message(peer.get(), &hello, sizeof hello, &fds, 0);
  if (rc == -EAGAIN) return Event::kNone;
  if (rc == 0 && (hello.magic != OFFLOAD_RING_MAGIC || hello.version != OFFLOAD_RING_VERSION)) rc = -EPROTO;
  if (rc == 0) rc = build_attach(hello.channels_wanted);
  if (rc != 0) {
    last_error = std::string("ring: attach failed: ") + std::strerror(-rc);
    if (rc != -EPIPE) refuse(std::move(peer), rc, now);
    peer.reset();
    return Event::kNone;
  }
  attached = true;
  ++generation;
  server_pid = hello.pid;
  seen_beat = 0;
  seen_beat_ms = now;
  return Event::kAttached;
}

// Creates the region and the server's doorbells, and sends the welcome.
int RingAgent::Impl::build_attach(uint32_t wanted) {
  if (wanted == 0) return -EPROTO;
  uint32_t n = std::min(wanted, opts.channels_max);
  Region r;
  if (int rc = Region::create(n, opts.ring_bytes, &r); rc != 0) return rc;
  std::vector<Fd> bells;
  for (uint32_t i = 0; i < n; ++i) {
    bells.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (bells.back().get() < 0) return -errno;
  }
  std::vector<int> fds{r.fd()};
  for (const Fd& b : bells) fds.push_back(b.get());
  for (uint32_t i = 0; i < n; ++i) fds.push_back(to_agent[i].get());
  offload_welcome w{};
  w.magic = OFFLOAD_RING_MAGIC;
  w.version = OFFLOAD_RING_VERSION;
  w.channel_count = n;
  w.ring_bytes = opts.ring_bytes;
  w.region_bytes = r.bytes();
  if (int rc = send_message(peer.get(), &w, sizeof w, fds.data(), fds.size()); rc != 0) return rc;
  auto st = std::make_unique<RingAttach::State>();
  st->generation = generation + 1;
  st->ring_bytes = opts.ring_bytes;
  st->region = std::move(r);
  st->to_server = std::move(bells);
  st->channels.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t stale;
    while (::read(to_agent[i].get(), &stale, sizeof stale) > 0) {
    }
    Channel& c = st->channels[i];
    Region& rg = st->region;
    c.requests.init(rg.request_ctrl(i), rg.request_data(i), opts.ring_bytes, st->to_server[i].get());
    c.responses.init(rg.response_ctrl(i), rg.response_data(i), opts.ring_bytes, st->to_server[i].get());
    c.fields.reserve(64);
  }
  current = std::shared_ptr<RingAttach>(new RingAttach(std::move(st)));
  return 0;
}

RingAgent::Event RingAgent::Impl::detach(std::string why) {
  if (peer.get() < 0 && !attached) return Event::kNone;
  bool was_attached = attached;
  if (current && current->s_->region.mapped())
    offload_store_relaxed_u32(&current->s_->region.header()->agent.state, OFFLOAD_SIDE_CLOSING);
  last_error = std::move(why);
  attached = false;
  peer.reset();
  // Unmapped when the last holder (a thread still serving its channels)
  // lets go of it.
  current.reset();
  return was_attached ? Event::kDetached : Event::kNone;
}

void RingAgent::detach(std::string why) { impl_->detach(std::move(why)); }

RingAgent::Event RingAgent::tick(uint64_t now) {
  Impl& m = *impl_;
  m.close_refused(now);
  if (m.peer.get() >= 0 && !m.attached && now - m.peer_since_ms > m.opts.handshake_ms) {
    m.last_error = "ring: a connecting server sent no hello in time";
    m.peer.reset();
    return Event::kNone;
  }
  if (!m.attached) return Event::kNone;
  offload_region_header* h = m.current->s_->region.header();
  __atomic_store_n(&h->agent.heartbeat, ++m.my_beat, __ATOMIC_RELAXED);
  uint64_t beat = __atomic_load_n(&h->server.heartbeat, __ATOMIC_RELAXED);
  if (beat != m.seen_beat) {
    m.seen_beat = beat;
    m.seen_beat_ms = now;
  } else if (now - m.seen_beat_ms > m.opts.dead_ms) {
    return m.detach("ring: server heartbeat silent for " + std::to_string(now - m.seen_beat_ms) + " ms");
  }
  return Event::kNone;
}

// ---- data path ----------------------------------------------------------------

void RingAgent::clear_doorbell(uint32_t ch) const {
  if (ch >= impl_->to_agent.size()) return;
  uint64_t v;
  while (::read(impl_->to_agent[ch].get(), &v, sizeof v) > 0) {
  }
}

void RingAgent::on_doorbell(uint32_t ch) {
  clear_doorbell(ch);
  if (impl_->current) impl_->current->on_doorbell(ch);
}

RingAgent::Send RingAgent::try_send_request(uint32_t ch, const RequestOut& req) {
  return impl_->current ? impl_->current->try_send_request(ch, req) : Send::kDetached;
}

int RingAgent::poll_response(uint32_t ch, ResponsePiece* out) {
  return impl_->current ? impl_->current->poll_response(ch, out) : -EPIPE;
}

void RingAgent::release_response(uint32_t ch) {
  if (impl_->current) impl_->current->release_response(ch);
}

void RingAttach::on_doorbell(uint32_t ch) {
  if (ch < s_->channels.size()) {
    s_->channels[ch].responses.end_wait();
    s_->channels[ch].requests.end_wait();
  }
}

RingAgent::Send RingAttach::try_send_request(uint32_t ch, const RequestOut& req) {
  State& m = *s_;
  using Send = RingAgent::Send;
  if (ch >= m.channels.size()) return Send::kDetached;
  Channel& c = m.channels[ch];
  if (!c.error.empty()) return Send::kFailed;
  uint64_t bytes = request_payload_bytes(req);
  if (bytes == 0 || bytes > c.requests.max_payload()) return Send::kTooLarge;
  auto len = static_cast<uint32_t>(bytes);
  uint8_t* dst = c.requests.try_reserve(len);
  if (dst == nullptr && !c.requests.failed() && !c.requests.prepare_wait(len)) dst = c.requests.try_reserve(len);
  if (dst == nullptr) {
    if (!c.requests.failed()) return Send::kFull;
    m.fail_channel(ch, c.requests.error());
    return Send::kFailed;
  }
  if (!encode_request(req, dst)) return Send::kBadRequest;  // nothing committed
  c.requests.end_wait();
  c.requests.commit(OFFLOAD_REC_REQUEST, 0, len);
  c.in_flight.push_back({req.id, req.method == OFFLOAD_METHOD_HEAD});
  return Send::kOk;
}

int RingAttach::State::fail_channel(uint32_t ch, std::string why) {
  Channel& c = channels[ch];
  if (c.error.empty()) c.error = "ring channel " + std::to_string(ch) + ": " + why;
  return -EBADMSG;
}

// The server's pieces must follow the requests: ids in order, interim heads
// (1xx, not the end) then one final head first, no more body than
// announced, and the announced length delivered.
int RingAttach::State::check_piece(Channel& c, const ResponsePiece& p) {
  if (c.in_flight.empty() || p.id != c.in_flight.front().id) return -1;
  if (p.kind == ResponsePiece::Kind::kHead) {
    if (c.in_response) return -1;
    // An interim (1xx) head without END: no body, and the final head follows.
    if (p.status < 200 && !p.end) return p.body.empty() ? 0 : -1;
    c.in_response = true;
    // HEAD, 1xx, 204 and 304 responses have no body whatever length they announce.
    const bool bodiless = c.in_flight.front().head || p.status < 200 || p.status == 204 || p.status == 304;
    c.length_known = bodiless || p.content_length != OFFLOAD_LENGTH_UNKNOWN;
    c.body_left = bodiless ? 0 : c.length_known ? p.content_length : 0;
  } else if (p.kind == ResponsePiece::Kind::kBody && !c.in_response) {
    return -1;
  }
  if (c.length_known) {
    if (p.body.size() > c.body_left) return -1;
    c.body_left -= p.body.size();
    if (p.end && p.kind != ResponsePiece::Kind::kAbort && c.body_left != 0) return -1;
  }
  if (p.end) {
    c.in_response = false;
    c.in_flight.pop_front();
  }
  return 0;
}

int RingAttach::poll_response(uint32_t ch, ResponsePiece* out) {
  State& m = *s_;
  if (ch >= m.channels.size()) return -EPIPE;
  Channel& c = m.channels[ch];
  if (!c.error.empty()) return -EBADMSG;
  for (;;) {
    Record rec;
    int rc = c.responses.peek(&rec);
    if (rc < 0) return m.fail_channel(ch, c.responses.error());
    if (rc == 1) {
      if (const char* why = decode_response(rec, out, &c.fields, &c.text)) return m.fail_channel(ch, why);
      if (m.check_piece(c, *out) != 0) return m.fail_channel(ch, "response does not match the request sent");
      return 1;
    }
    if (c.responses.prepare_wait()) return 0;  // armed: the server rings when it publishes
  }
}

void RingAttach::release_response(uint32_t ch) {
  if (ch < s_->channels.size()) s_->channels[ch].responses.release();
}

}  // namespace offload::ring
