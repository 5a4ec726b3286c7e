// The shard: one thread's loop and the parts it builds (see shard.h).
#include "shard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "http/http_rewrite.h"

namespace offload {
namespace {

constexpr uint32_t kDataBlockBytes = 64 * 1024;

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

ResponseSink::Settings sink_settings(const Config& config) {
  ResponseSink::Settings s;
  s.response_buffer = config.response_buffer;
  s.response_spill_max = config.response_spill_max;
  s.body_buffer = config.body_buffer;
  s.temp_dir = config.temp_dir;
  return s;
}

}  // namespace

const Clock& Shard::default_clock() {
  static const SteadyClock clock;
  return clock;
}

Shard::Shard(const Config& config, ShardSockets listen_fds, Counters& counters, TopologyStats* topology,
             RingHub* hub, const Clock& clock)
    : config_(config),
      counters_(counters),
      own_topology_(topology == nullptr ? TopologyStats::from(config) : nullptr),
      topology_(topology != nullptr ? topology : own_topology_.get()),
      loop_(clock, 1024, 8192),
      data_pool_(kDataBlockBytes, config.buffer_memory_max, 64),
      sink_(loop_, data_pool_, spill_budget_, counters_, sink_settings(config)),
      http_(loop_, config, counters_, data_pool_, sink_),
      tcp_({loop_, config, counters_, *topology_, data_pool_, sink_, http_}),
      passthrough_(loop_, config, counters_, data_pool_, http_.screen(), tcp_),
      proxies_{&http_, &passthrough_} {
  http_.set_tunnels(&passthrough_);
  spill_budget_.bytes_max = config.spill_total_max;
  spill_budget_.files_max = spill_files_max(config);
  for (const GroupConfig& g : config.groups)
    if (g.is_bus())
      bus_ = std::make_unique<RingBus>(RingBus::Parts{loop_, config, counters_, sink_, http_, hub}, g);
  build_listeners(listen_fds);
  bind<&Shard::housekeeping>(housekeeping_timer_, this);
  loop_.add_timers(housekeeping_list_);
  bind<&Shard::on_control>(control_read_, this);
  bind<&Shard::on_retire_cancelled>(retire_cancelled_, this);
  control_fd_ = eventfd(0, EFD_CLOEXEC);
  // A change to the live rule set wakes the loop too: open connections are
  // checked against it at once, not at their next request.
  if (control_fd_ >= 0) http_.screen().live().subscribe(control_fd_);
}

Shard::~Shard() {
  for (Proxy* p : proxies_) p->release_all();  // exchanges leave their servers while the upstreams exist
  if (control_fd_ >= 0) http_.screen().live().unsubscribe(control_fd_);
  if (control_fd_ >= 0) ::close(control_fd_);
}

// ---------------------------------------------------------------- the loop

int Shard::run() {
  start();
  while (turn()) {
  }
  if (draining_ && active() > 0)
    fmt::print(stderr, "offload-agent: drain deadline passed with {} connections open\n", active());
  return 0;
}

void Shard::start() {
  loop_.refresh_clock();
  for (Proxy* p : proxies_) p->start();
  post_control_read();
  if (bus_) bus_->start();
  loop_.arm(housekeeping_timer_, housekeeping_list_);
  tcp_.start();
}

bool Shard::turn(uint64_t max_wait_ms) {
  if (stop_now_) return false;
  loop_.turn(draining_ ? drain_deadline_ms_ : UINT64_MAX, max_wait_ms);
  after_batch();
  return !(stop_now_ || (draining_ && ((active() == 0 && !accepting()) || loop_.now_ms() >= drain_deadline_ms_)));
}

// An accept still armed may yet complete with a connection (one the kernel
// gave it just before its cancel or shutdown): a draining shard that ended
// first would leave that client unserved and its descriptor open. Each
// accept's last completion (no IORING_CQE_F_MORE) clears `armed`.
bool Shard::accepting() const {
  for (const auto& l : listeners_)
    for (const ListenSocket& sock : l->sockets)
      if (sock.armed) return true;
  return false;
}

// Work that waits for a whole batch of completions: a freed channel is
// refilled and used only after the batch, never inside the handler of the
// slot that freed it, and budget given back wakes the responses waiting on it.
void Shard::after_batch() {
  tcp_.after_batch();
  for (Proxy* p : proxies_) p->after_batch();
}

// Once a second: requests stranded on connections the server does not serve
// go back to the queue, and memory freed after a burst goes back to the
// system, so the resident size follows the connections actually open.
void Shard::housekeeping() {
  tcp_.housekeeping();
  released_bytes_ += data_pool_.release_idle();
  for (Proxy* p : proxies_) released_bytes_ += p->release_idle();
  if (released_bytes_ >= (1u << 20)) {
    malloc_trim(0);
    released_bytes_ = 0;
  }
  loop_.arm(housekeeping_timer_, housekeeping_list_);
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

void Shard::request_retire(std::vector<int> handed_over) {
  {
    std::lock_guard lock(handed_over_mutex_);
    handed_over_ = std::move(handed_over);
  }
  retire_requested_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(control_fd_, &one, sizeof one);
}

void Shard::request_rearm() {
  rearm_requested_.store(true, std::memory_order_release);
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
    else if (retire_requested_.load(std::memory_order_acquire)) start_retire();
    // The acceptor re-arms an accept whose end was a cancel (not stopped).
    if (rearm_requested_.exchange(false, std::memory_order_acq_rel) && !draining_)
      for (auto& l : listeners_)
        for (ListenSocket& sock : l->sockets)
          if (sock.armed) loop_.cancel(sock.accepted, nullptr);
    if (http_.screen().take_rescreen() && http_.screen().close_established()) {
      http_.rescreen();
      passthrough_.rescreen();
    }
  }
  post_control_read();
}

void Shard::start_drain() {
  if (draining_) return;
  draining_ = true;
  drain_deadline_ms_ = loop_.now_ms() + config_.drain_timeout_ms;
  fmt::print(stderr, "offload-agent: draining {} connections (deadline {} ms)\n", active(),
             config_.drain_timeout_ms);
  // shutdown() ends a multishot accept; the sockets close with the process.
  for (auto& l : listeners_)
    for (ListenSocket& sock : l->sockets) ::shutdown(sock.fd, SHUT_RDWR);
  tcp_.drain();
  for (Proxy* p : proxies_) p->drain();
}

// Not tcp_.drain(): that stops opening upstream connections, and a request
// still to come here (the next one of a kept-alive client) needs one. The
// upstream side works as before until the shard ends and closes it.
void Shard::start_retire() {
  if (draining_) return;
  draining_ = true;
  drain_deadline_ms_ = loop_.now_ms() + config_.drain_timeout_ms;
  std::vector<int> kept;
  {
    std::lock_guard lock(handed_over_mutex_);
    kept = handed_over_;
  }
  for (auto& l : listeners_) l->serve_late = true;
  for (Proxy* p : proxies_) p->drain();  // their acceptors stop first: a cancelled accept is not re-armed
  for (auto& l : listeners_)
    for (ListenSocket& sock : l->sockets) {
      if (std::find(kept.begin(), kept.end(), sock.fd) != kept.end()) {
        loop_.cancel(sock.accepted, &retire_cancelled_);
        ++retire_cancels_pending_;
      } else {
        ::shutdown(sock.fd, SHUT_RDWR);
      }
    }
}

// A cancel's own completion comes once its target is off the socket's wait
// queue: from then on no wake-up can be lost here.
void Shard::on_retire_cancelled(const io_uring_cqe&) {
  if (--retire_cancels_pending_ == 0 && accepts_cancelled_hook_) accepts_cancelled_hook_();
}

// ------------------------------------------------------------- accepting

// Each listener's clients get its own limits and timeouts ([[listener]]
// values; the globals where its table sets none, and with the flat keys).
void Shard::build_listeners(const ShardSockets& fds) {
  OFFLOAD_ASSERT(fds.size() == config_.listeners.size());
  for (const std::vector<int>& sockets : fds) {
    const ListenerConfig& lc = config_.listeners[listeners_.size()];
    const uint32_t client_durations[kClientTimerKinds] = {
        lc.header_timeout_ms, lc.body_timeout_ms, lc.keepalive_timeout_ms, lc.send_timeout_ms,
        lc.queue_timeout_ms,  2000 /* linger */,  lc.response_timeout_ms};
    auto l = std::make_unique<Listener>();
    OFFLOAD_ASSERT(!sockets.empty());
    l->sockets.resize(sockets.size());
    for (size_t k = 0; k < sockets.size(); ++k) {
      l->sockets[k].fd = sockets[k];
      l->sockets[k].listener = l.get();
    }
    l->index = uint32_t(listeners_.size());
    l->stats = topology_->listeners.at(listeners_.size()).get();
    l->name = lc.name;
    l->limits.header_bytes_max = lc.header_bytes_max;
    l->limits.header_count_max = lc.header_count_max;
    l->limits.body_bytes_max = lc.body_bytes_max;
    l->max_clients = lc.max_clients;
    l->upstream_port_same = lc.upstream_port_same;
    for (int k = 0; k < kClientTimerKinds; ++k) {
      l->timers[k].set_duration(client_durations[k]);
      l->timers[k].set_kind(uint8_t(k));
      loop_.add_timers(l->timers[k]);
    }
    l->tunnel_idle.set_duration(lc.tunnel_timeout_ms);
    l->tunnel_half_close.set_duration(lc.half_close_timeout_ms);
    loop_.add_timers(l->tunnel_idle);
    loop_.add_timers(l->tunnel_half_close);
    if (config_.groups.at(lc.group).is_bus()) {
      l->upstream = bus_.get();
    } else {
      l->group = tcp_.group(lc.group);
      l->upstream = &tcp_;
    }
    proxy_for(lc).serve(l.get());
    listeners_.push_back(std::move(l));
  }
}

// The proxy of a listener's kind (validate() admits only the kinds built).
Proxy& Shard::proxy_for(const ListenerConfig& lc) {
  if (lc.proxy == "passthrough") return passthrough_;
  OFFLOAD_ASSERT(lc.proxy == "http");
  return http_;
}

uint32_t Shard::active() const {
  uint32_t n = 0;
  for (const Proxy* p : proxies_) n += p->active();
  return n;
}

}  // namespace offload
