// The bus shared by several shards (see ring_hub.h).
#include "upstream/ring_hub.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "ops/log.h"

namespace offload {

using ring::RingAgent;

namespace {

constexpr uint64_t kTickMs = 250;

uint64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

}  // namespace

uint32_t RingHub::channels_for(const Config& whole, const GroupConfig& group) {
  uint32_t channels = group.servers.front().max_connections;
  if (whole.max_upstream_auto) channels = std::min<uint32_t>(channels, 8);  // "auto" adapts TCP pools only
  return channels;
}

RingHub::RingHub(const Config& whole, const GroupConfig& group, uint32_t shards)
    : text_(group.servers.front().target.text),
      shards_(std::max<uint32_t>(shards, 1)),
      channels_max_(channels_for(whole, group)) {
  ring::RingAgentOptions opts;
  opts.name = group.servers.front().target.shm_name;
  opts.channels_max = channels_max_;
  opts.ring_bytes = uint32_t(whole.ring_bytes);  // a request travels as one record
  std::string error;
  ring_ = RingAgent::create(opts, &error);
  if (!ring_) throw ConfigError(fmt::format("upstream: cannot open the bus '{}': {}", text_, error));
  auto close_all = [this] {
    for (int fd : wake_fds_) ::close(fd);
    if (stop_fd_ >= 0) ::close(stop_fd_);
  };
  for (uint32_t i = 0; i <= shards_; ++i) {
    // A shard reads its wake-up with io_uring: a blocking eventfd, so the
    // read waits for the write instead of ending at once with EAGAIN.
    const int fd = ::eventfd(0, EFD_CLOEXEC | (i < shards_ ? 0 : EFD_NONBLOCK));
    if (fd < 0) {
      const std::string why = std::strerror(errno);
      close_all();
      throw ConfigError(fmt::format("upstream: the bus '{}': eventfd: {}", text_, why));
    }
    if (i < shards_) wake_fds_.push_back(fd);
    else stop_fd_ = fd;
  }
}

RingHub::~RingHub() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
    thread_.join();
  }
  {
    std::lock_guard lock(mutex_);
    current_.reset();
  }
  ring_.reset();  // closes the sockets: the server sees the agent go
  for (int fd : wake_fds_) ::close(fd);
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

void RingHub::start() {
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "offload-bus");
    run();
  });
}

std::shared_ptr<ring::RingAttach> RingHub::view() const {
  std::lock_guard lock(mutex_);
  return current_;
}

void RingHub::publish(std::shared_ptr<ring::RingAttach> attach) {
  {
    std::lock_guard lock(mutex_);
    current_ = std::move(attach);
  }
  const uint64_t one = 1;
  for (int fd : wake_fds_) (void)!::write(fd, &one, sizeof one);  // fails only on counter overflow
}

// The control loop: the listening socket, the peer's socket, a tick every
// 250 ms; ends when stop_fd_ is written.
void RingHub::run() {
  uint64_t next_tick = monotonic_ms() + kTickMs;
  for (;;) {
    pollfd fds[3] = {{stop_fd_, POLLIN, 0}, {ring_->listen_fd(), POLLIN, 0}, {ring_->peer_fd(), POLLIN | POLLRDHUP, 0}};
    const nfds_t n = fds[2].fd >= 0 ? 3 : 2;
    const uint64_t now0 = monotonic_ms();
    const int wait = next_tick > now0 ? int(next_tick - now0) : 0;
    const int rc = ::poll(fds, n, wait);
    if (rc < 0 && errno != EINTR) {
      log(LogLevel::kError, "bus {}: poll: {}", text_, std::strerror(errno));
      return;
    }
    if (fds[0].revents != 0) return;
    const uint64_t now = monotonic_ms();
    if (rc > 0 && fds[1].revents != 0) on_event(ring_->on_listen_ready(now));
    // The same peer as polled (a new one comes only while there is none).
    if (rc > 0 && n == 3 && fds[2].revents != 0 && ring_->peer_fd() == fds[2].fd)
      on_event(ring_->on_peer_ready(now));
    if (now >= next_tick) {
      on_event(ring_->tick(now));
      next_tick = now + kTickMs;
    }
  }
}

void RingHub::on_event(RingAgent::Event e) {
  if (e == RingAgent::Event::kAttached) {
    const uint32_t channels = ring_->channel_count();
    log(LogLevel::kInfo, "bus {}: server pid {} attached with {} channels", text_, ring_->server_pid(), channels);
    if (channels < shards_) {  // channel c is shard c % shards_: the last shards have none
      const std::string who = shards_ - channels == 1 ? fmt::format("shard {} has", channels)
                                                      : fmt::format("shards {}-{} have", channels, shards_ - 1);
      // Fewer channels than shards: the server's workers, or the bus's own cap.
      const std::string fix = channels == channels_max_
                                  ? fmt::format("raise the bus's max_connections ({}) to at least {}", channels_max_, shards_)
                                  : fmt::format("give the server at least {} workers", shards_);
      log(LogLevel::kWarning,
          "bus {}: the server has {} channel{} for {} shards: {} no channel, so {} requests wait in the queue "
          "and get 503 after queue_timeout_ms ({}, or run fewer shards)",
          text_, channels, channels == 1 ? "" : "s", shards_, who, shards_ - channels == 1 ? "its" : "their", fix);
    }
    publish(ring_->attachment());
  } else if (e == RingAgent::Event::kDetached) {
    log(LogLevel::kWarning, "bus {}: server detached: {}", text_, ring_->last_error());
    publish(nullptr);
  }
}

}  // namespace offload
