#include "offload/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <thread>

#include "ring_region.h"

namespace offload {

using ring::Fd;

namespace {


void drain(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) > 0) {
  }
}

// Sleeps until `fd` is readable or `timeout_ms` passed, then drains it.
void wait_bell(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) > 0) drain(fd);
}

// A worker sleeps in one blocking read of its doorbell (an eventfd read
// returns and resets the count: the wait and the drain in one system call).
// Stop and detach ring every worker's bell, so no timeout is needed.
void sleep_on_bell(int fd) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
}

// The doorbells must be eventfds: the workers block reading them and write
// them from the data path (a pipe or socket could block or misbehave).
bool is_eventfd(int fd) {
  char link[64];
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(path.c_str(), link, sizeof link);
  return n > 0 && std::string_view(link, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

void make_blocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
}

}  // namespace

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const Field& f : fields_)
    if (ring::iequals(f.name, name)) return f.value;
  return std::nullopt;
}

// One channel's server side: its rings, its doorbell, its request and response.
class ChannelWorker {
 public:
  ChannelWorker(ring::Region& region, unsigned ch, int my_bell, int peer_bell, const ServerOptions& opts,
                const std::atomic<bool>& quit)
      : bell_(my_bell), opts_(opts), quit_(quit), res_(this) {
    make_blocking(bell_);
    requests_.init(region.request_ctrl(ch), region.request_data(ch), region.ring_bytes(), peer_bell);
    responses_.init(region.response_ctrl(ch), region.response_data(ch), region.ring_bytes(), peer_bell);
    req_.fields_.reserve(64);
  }

  int serve_ready(const Handler& handler, uint64_t* served);
  void wait_for_work();
  int bell() const { return bell_; }

  // Response plumbing.
  bool flush(bool end);

 private:
  friend class offload::Response;
  uint8_t* reserve(uint32_t len);
  bool send_head(bool end);
  bool send_interim(uint16_t status);
  bool send_body(std::string_view bytes, bool end);
  bool send_abort();
  void finish();

  int bell_;
  const ServerOptions& opts_;
  const std::atomic<bool>& quit_;
  ring::Consumer requests_;
  ring::Producer responses_;
  Request req_;
  std::vector<uint8_t> copy_;  // the current request record, out of shared memory
  Response res_;
};

// ---- Response -----------------------------------------------------------------

void Response::reset(uint64_t id, bool head_request) {
  id_ = id;
  head_request_ = head_request;
  head_written_ = 0;
  status_ = 200;
  text_.clear();
  fields_.clear();
  body_.clear();
  content_length_ = OFFLOAD_LENGTH_UNKNOWN;
  body_sent_ = 0;
  head_sent_ = false;
  broken_ = false;
}

bool Response::set_status(int status) {
  if (head_sent_) return false;
  // A 1xx here would end the exchange with no final response at all.
  const bool ok = status >= 200 && status <= 999;
  status_ = ok ? status : 500;
  return ok;
}

bool Response::send_interim(int status) {
  if (head_sent_ || broken_ || status < 102 || status > 199) return false;
  if (!worker_->send_interim(static_cast<uint16_t>(status))) return false;
  text_.clear();
  fields_.clear();
  return true;
}

bool Response::add_header(std::string_view name, std::string_view value) {
  if (head_sent_ || !ring::is_token(name) || !ring::is_field_value(value) || ring::is_framing_field(name))
    return false;
  if (text_.size() + name.size() + value.size() > UINT32_MAX / 2 || fields_.size() >= UINT16_MAX) return false;
  auto off = static_cast<uint32_t>(text_.size());
  text_.append(name);
  text_.append(value);
  fields_.push_back({{off, static_cast<uint32_t>(name.size())},
                     {off + static_cast<uint32_t>(name.size()), static_cast<uint32_t>(value.size())}});
  return true;
}

void Response::set_content_length(uint64_t bytes) {
  if (!head_sent_) content_length_ = bytes;
}

bool Response::write(std::string_view bytes) {
  if (broken_) return false;
  if (head_request_) {
    head_written_ += bytes.size();
    return content_length_ == OFFLOAD_LENGTH_UNKNOWN || head_written_ <= content_length_;
  }
  uint64_t total = body_sent_ + body_.size() + bytes.size();
  if (content_length_ != OFFLOAD_LENGTH_UNKNOWN && total > content_length_) return false;
  body_.append(bytes);
  if (body_.size() >= worker_->opts_.stream_bytes && !worker_->flush(false)) broken_ = true;
  return !broken_;
}

// ---- ChannelWorker ------------------------------------------------------------

uint8_t* ChannelWorker::reserve(uint32_t len) {
  for (;;) {
    if (uint8_t* p = responses_.try_reserve(len)) return p;
    if (responses_.failed() || quit_.load(std::memory_order_relaxed)) return nullptr;
    if (responses_.prepare_wait(len)) sleep_on_bell(bell_);
    responses_.end_wait();
  }
}

bool ChannelWorker::send_head(bool end) {
  Response& r = res_;
  ring::ResponseHeadOut h;
  h.id = r.id_;
  h.status = static_cast<uint16_t>(r.status_);
  h.text = r.text_;
  h.fields = r.fields_;
  uint64_t fixed = ring::response_head_payload_bytes(h);
  if (fixed == 0 || fixed > responses_.max_payload()) {  // fields too large for one record
    h.status = 500;
    h.text = {};
    h.fields = {};
    fixed = ring::response_head_payload_bytes(h);
    r.body_.clear();
    r.content_length_ = 0;
  }
  size_t first = std::min<uint64_t>(r.body_.size(), responses_.max_payload() - fixed);
  bool all = end && first == r.body_.size();
  h.content_length = r.content_length_ != OFFLOAD_LENGTH_UNKNOWN ? r.content_length_
                     : end                                       ? r.body_sent_ + r.body_.size()
                                                                 : OFFLOAD_LENGTH_UNKNOWN;
  h.body = std::string_view(r.body_).substr(0, first);
  auto len = static_cast<uint32_t>(fixed + first);
  uint8_t* dst = reserve(len);
  if (dst == nullptr) return false;
  ring::encode_response_head(h, dst);
  responses_.commit(OFFLOAD_REC_RESPONSE_HEAD, all ? OFFLOAD_REC_F_END : 0, len);
  r.head_sent_ = true;
  r.body_sent_ += first;
  r.body_.erase(0, first);
  return true;
}

// An interim head: a 1xx status and the fields so far, no body, not the end.
bool ChannelWorker::send_interim(uint16_t status) {
  ring::ResponseHeadOut h;
  h.id = res_.id_;
  h.status = status;
  h.text = res_.text_;
  h.fields = res_.fields_;
  uint64_t len = ring::response_head_payload_bytes(h);
  if (len == 0 || len > responses_.max_payload()) return false;
  uint8_t* dst = reserve(static_cast<uint32_t>(len));
  if (dst == nullptr) return false;
  ring::encode_response_head(h, dst);
  responses_.commit(OFFLOAD_REC_RESPONSE_HEAD, 0, static_cast<uint32_t>(len));
  return true;
}

bool ChannelWorker::send_body(std::string_view bytes, bool end) {
  uint32_t chunk_max = responses_.max_payload() - static_cast<uint32_t>(sizeof(offload_resp_body));
  chunk_max = std::min<uint32_t>(chunk_max, std::max<uint32_t>(opts_.stream_bytes, 4096));
  do {
    auto n = static_cast<uint32_t>(std::min<size_t>(bytes.size(), chunk_max));
    bool last = end && n == bytes.size();
    uint8_t* dst = reserve(static_cast<uint32_t>(sizeof(offload_resp_body)) + n);
    if (dst == nullptr) return false;
    offload_resp_body b{res_.id_};
    std::memcpy(dst, &b, sizeof b);
    if (n > 0) std::memcpy(dst + sizeof b, bytes.data(), n);
    responses_.commit(OFFLOAD_REC_RESPONSE_BODY, last ? OFFLOAD_REC_F_END : 0, static_cast<uint32_t>(sizeof b) + n);
    res_.body_sent_ += n;
    bytes.remove_prefix(n);
  } while (!bytes.empty());
  return true;
}

bool ChannelWorker::send_abort() {
  uint8_t* dst = reserve(sizeof(offload_resp_body));
  if (dst == nullptr) return false;
  offload_resp_body b{res_.id_};
  std::memcpy(dst, &b, sizeof b);
  responses_.commit(OFFLOAD_REC_RESPONSE_ABORT, OFFLOAD_REC_F_END, sizeof b);
  return true;
}

bool ChannelWorker::flush(bool end) {
  Response& r = res_;
  if (!r.head_sent_) {
    if (!send_head(end)) return false;
    if (r.body_.empty() && end) return true;  // the head carried everything
  }
  if (r.body_.empty() && !end) return true;
  bool ok = send_body(r.body_, end);
  r.body_.clear();
  return ok;
}

// Sends what the handler left, keeping the announced length honest.
void ChannelWorker::finish() {
  Response& r = res_;
  if (r.head_request_ && !r.broken_) {
    if (r.content_length_ == OFFLOAD_LENGTH_UNKNOWN) r.content_length_ = r.head_written_;
    r.body_.clear();
    send_head(true);
    return;
  }
  uint64_t total = r.body_sent_ + r.body_.size();
  bool short_body = r.content_length_ != OFFLOAD_LENGTH_UNKNOWN && total != r.content_length_;
  if (r.broken_ || short_body) {
    if (r.head_sent_) {
      send_abort();
      return;
    }
    r.reset(r.id_, r.head_request_);
    r.status_ = 500;
  }
  flush(true);
}

int ChannelWorker::serve_ready(const Handler& handler, uint64_t* served) {
  int count = 0;
  while (count < 64) {
    if (quit_.load(std::memory_order_relaxed)) return -EPIPE;
    ring::Record rec;
    int rc = requests_.peek(&rec);
    if (rc < 0) return -EBADMSG;
    if (rc == 0) {
      if (requests_.prepare_wait()) return count;
      continue;
    }
    // Copy first: the handler's views and every check it makes then see
    // bytes the agent can no longer change (shared memory is read once).
    copy_.assign(rec.payload, rec.payload + rec.payload_len);
    asm volatile("" ::: "memory");
    ring::Record own{rec.type, rec.flags, copy_.data(), rec.payload_len};
    if (const char* why = ring::decode_request(own, &req_.in_, &req_.fields_)) {
      requests_.fail(why);
      return -EBADMSG;
    }
    res_.reset(req_.in_.id, req_.in_.method == OFFLOAD_METHOD_HEAD);
    try {
      handler(req_, res_);
    } catch (const std::exception&) {
      res_.broken_ = true;  // finish() turns it into a 500 or an abort
    }
    finish();
    requests_.release();
    ++count;
    ++*served;
  }
  return count;
}

void ChannelWorker::wait_for_work() {
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(opts_.spin_us);
  ring::Record rec;
  while (std::chrono::steady_clock::now() < until) {
    if (requests_.peek(&rec) != 0 || quit_.load(std::memory_order_relaxed)) return;
  }
  if (requests_.prepare_wait()) sleep_on_bell(bell_);
  requests_.end_wait();
}

// ---- Server -------------------------------------------------------------------

struct Server::Impl {
  std::string name;
  ServerOptions opts;
  std::string error;
  std::atomic<bool> stop{false};
  std::atomic<bool> quit{false};  // stop, or the agent went away
  Fd stop_bell{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  Fd sock;
  ring::Region region;
  std::vector<Fd> to_server, to_agent;
  std::vector<std::unique_ptr<ChannelWorker>> workers;
  std::thread monitor;
  std::atomic<uint64_t> served{0};
  std::atomic<uint64_t> attaches{0};

  int connect_and_handshake(unsigned channels, offload_welcome* w, std::vector<Fd>* fds);
  int check_agent_user();
  void run_monitor();
  void wake_workers();
};

Server::Server(std::string name, ServerOptions opts) : impl_(std::make_unique<Impl>()) {
  if (!name.empty() && name[0] == '/') name.erase(0, 1);
  impl_->name = std::move(name);
  impl_->opts = opts;
}

Server::~Server() {
  stop();
  detach();
}

const std::string& Server::error() const { return impl_->error; }
uint64_t Server::requests_served() const { return impl_->served.load(); }
uint64_t Server::attach_count() const { return impl_->attaches.load(); }
unsigned Server::channel_count() const { return static_cast<unsigned>(impl_->workers.size()); }
bool Server::attached() const { return !impl_->workers.empty() && !impl_->quit.load(); }

int Server::doorbell_fd(unsigned ch) const {
  return ch < impl_->workers.size() ? impl_->workers[ch]->bell() : -1;
}

void Server::stop() {
  impl_->stop.store(true);
  impl_->quit.store(true);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(impl_->stop_bell.get(), &one, sizeof one);
}

int Server::Impl::connect_and_handshake(unsigned channels, offload_welcome* w, std::vector<Fd>* fds) {
  sock.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) return -errno;
  sockaddr_un addr;
  socklen_t len = ring::socket_address(name, &addr);
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return -errno;
  if (int rc = check_agent_user(); rc != 0) return rc;
  offload_hello hello{OFFLOAD_RING_MAGIC, OFFLOAD_RING_VERSION, channels, static_cast<uint32_t>(::getpid()), 0};
  if (int rc = ring::send_message(sock.get(), &hello, sizeof hello, nullptr, 0); rc != 0) return rc;
  pollfd p{sock.get(), POLLIN, 0};
  if (::poll(&p, 1, 2000) != 1) return -ETIMEDOUT;
  if (int rc = ring::recv_message(sock.get(), w, sizeof *w, fds, 1 + 2 * OFFLOAD_RING_CHANNELS_MAX); rc != 0)
    return rc;
  if (w->magic != OFFLOAD_RING_MAGIC || w->version != OFFLOAD_RING_VERSION) return -EPROTO;
  if (w->status != 0) return w->status < 0 ? w->status : -EPROTO;
  if (w->channel_count == 0 || w->channel_count > channels || fds->size() != 1 + 2 * size_t{w->channel_count})
    return -EPROTO;
  for (size_t i = 1; i < fds->size(); ++i) {
    if (!is_eventfd((*fds)[i].get())) {
      error = "ring attach: refused the agent: doorbell fd " + std::to_string(i) + " of the welcome is not an eventfd";
      return -EPERM;
    }
  }
  return 0;
}

// Anyone local can bind the abstract name before the agent does: only an
// agent of the expected user may hand us requests.
int Server::Impl::check_agent_user() {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -errno;
  const int64_t want = opts.agent_uid >= 0 ? opts.agent_uid : int64_t{::geteuid()};
  if (cred.uid == 0 || int64_t{cred.uid} == want) return 0;
  error = "ring attach: refused the agent at @" OFFLOAD_RING_SOCKET_PREFIX + name + ": it runs as uid " +
          std::to_string(cred.uid) + " (pid " + std::to_string(cred.pid) + "), expected uid " +
          std::to_string(want);
  return -EPERM;
}

int Server::attach(unsigned channels) {
  Impl& m = *impl_;
  if (!ring::valid_name(m.name)) {
    m.error = "ring name '" + m.name + "': expected 1-64 characters of A-Z a-z 0-9 . _ -";
    return -EINVAL;
  }
  if (channels == 0 || channels > OFFLOAD_RING_CHANNELS_MAX) {
    m.error = "ring: channels must be 1..64";
    return -EINVAL;
  }
  detach();
  offload_welcome w{};
  std::vector<Fd> fds;
  m.error.clear();
  int rc = m.connect_and_handshake(channels, &w, &fds);
  if (rc == 0) rc = ring::Region::map(fds[0].get(), w, &m.region, &m.error);
  if (rc != 0) {
    if (m.error.empty()) m.error = std::string("ring attach @" OFFLOAD_RING_SOCKET_PREFIX) + m.name + ": " +
                                   std::strerror(-rc);
    m.sock.reset();
    return rc;
  }
  fds[0].release();  // the region owns it now
  for (unsigned i = 0; i < w.channel_count; ++i) {
    m.to_server.push_back(std::move(fds[1 + i]));
    m.to_agent.push_back(std::move(fds[1 + w.channel_count + i]));
    // A worker must never block ringing the agent (an eventfd whose counter
    // the agent filled would block a blocking write).
    int fl = ::fcntl(m.to_agent.back().get(), F_GETFL);
    if (fl >= 0) ::fcntl(m.to_agent.back().get(), F_SETFL, fl | O_NONBLOCK);
  }
  m.quit.store(m.stop.load());
  for (unsigned i = 0; i < w.channel_count; ++i)
    m.workers.push_back(std::make_unique<ChannelWorker>(m.region, i, m.to_server[i].get(), m.to_agent[i].get(),
                                                        m.opts, m.quit));
  offload_region_header* h = m.region.header();
  h->server.pid = static_cast<uint32_t>(::getpid());
  __atomic_store_n(&h->server.state, OFFLOAD_SIDE_READY, __ATOMIC_RELEASE);
  m.attaches.fetch_add(1);
  m.error.clear();
  m.monitor = std::thread([&m] { m.run_monitor(); });
  return 0;
}

// Beats the heartbeat and watches the agent's socket; wakes the workers when
// the agent goes away or stop() is called.
void Server::Impl::run_monitor() {
  offload_region_header* h = region.header();
  uint64_t beat = 0;
  while (!quit.load()) {
    __atomic_store_n(&h->server.heartbeat, ++beat, __ATOMIC_RELAXED);
    pollfd p[2] = {{sock.get(), POLLIN | POLLRDHUP, 0}, {stop_bell.get(), POLLIN, 0}};
    if (::poll(p, 2, OFFLOAD_RING_HEARTBEAT_MS) <= 0) continue;
    if (p[0].revents != 0) {
      error = "ring: the agent closed the connection";
      quit.store(true);
    }
  }
  if (stop.load()) __atomic_store_n(&h->server.state, OFFLOAD_SIDE_CLOSING, __ATOMIC_RELEASE);
  wake_workers();
}

void Server::Impl::wake_workers() {
  for (const Fd& b : to_server) ring::ring_doorbell(b.get());
}

void Server::detach() {
  Impl& m = *impl_;
  if (m.monitor.joinable()) {
    m.quit.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(m.stop_bell.get(), &one, sizeof one);
    m.monitor.join();
    if (!m.stop.load()) drain(m.stop_bell.get());
  }
  m.workers.clear();
  m.to_server.clear();
  m.to_agent.clear();
  m.region.unmap();
  m.sock.reset();
}

int Server::serve_ready(unsigned ch, const Handler& handler) {
  Impl& m = *impl_;
  if (ch >= m.workers.size()) return -EPIPE;
  drain(m.workers[ch]->bell());
  uint64_t served = 0;
  int rc = m.workers[ch]->serve_ready(handler, &served);
  m.served.fetch_add(served, std::memory_order_relaxed);
  return rc;
}

int Server::serve(Handler handler, unsigned workers) {
  Impl& m = *impl_;
  while (!m.stop.load()) {
    int rc = attach(workers);
    if (rc == -EINVAL || rc == -EPROTO || (rc != 0 && !m.opts.reattach)) return rc;
    if (rc != 0) {  // no agent (yet), or another server holds it: retry
      wait_bell(m.stop_bell.get(), 100);
      continue;
    }
    std::vector<std::thread> threads;
    for (unsigned ch = 0; ch < channel_count(); ++ch) {
      threads.emplace_back([&m, &handler, ch] {
        ChannelWorker& w = *m.workers[ch];
        uint64_t served = 0;
        for (;;) {
          int n = w.serve_ready(handler, &served);
          m.served.fetch_add(served, std::memory_order_relaxed);
          served = 0;
          if (n < 0 || m.quit.load()) break;
          if (n == 0) w.wait_for_work();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    detach();
    if (!m.opts.reattach) break;
  }
  return 0;
}

}  // namespace offload
