#include "generation.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "ops/shard_limits.h"
#include "shard.h"
#include "upstream/ring_hub.h"

namespace offload {

// One shard's thread and what the signal side needs of it. The Shard is
// made and destroyed on its own thread (its io_uring is single-issuer);
// `mutex` keeps the signal side from reaching it while it is made or gone.
struct ShardThread {
  std::mutex mutex;
  Shard* shard = nullptr;
  std::string features;
  int code = 1;
  std::thread thread;
};

namespace {

void pin_to_cpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0) throw ConfigError(fmt::format("cpus: bad value '{}' (expected a CPU this process may use: {})", cpu,
                                             std::strerror(rc)));
}

// Makes shard `i`, says it is ready (or why not), runs it, and counts
// itself done on `done_fd` whatever happened.
void run_shard(const Config& whole, uint32_t i, ShardSockets fds, Counters& counters, TopologyStats& topology,
               RingHub* hub, ShardThread& slot, std::promise<void>& ready, int done_fd, int rearm_fd) {
  const Config config = shard_share(whole, i);
  std::unique_ptr<Shard> shard;
  try {
    pin_to_cpu(config.cpu);
    shard = std::make_unique<Shard>(config, std::move(fds), counters, &topology, hub);
    shard->set_accepts_cancelled_hook([rearm_fd] {
      const uint64_t one = 1;
      (void)!::write(rearm_fd, &one, sizeof one);
    });
    {
      std::lock_guard lock(slot.mutex);
      slot.shard = shard.get();
      slot.features = shard->features();
    }
    ready.set_value();
  } catch (...) {
    ready.set_exception(std::current_exception());
  }
  if (shard) {
    try {
      slot.code = shard->run();
    } catch (const std::exception& e) {
      fmt::print(stderr, "offload-agent: shard {}: {}\n", i, e.what());
      slot.code = 1;
    }
    std::lock_guard lock(slot.mutex);
    slot.shard = nullptr;
  }
  shard.reset();
  const uint64_t one = 1;
  (void)!::write(done_fd, &one, sizeof one);  // fails only on counter overflow
}

}  // namespace

Generation::Generation(uint64_t number, Config config, AgentSockets fds, const TopologyStats* carry,
                       int rearm_fd)
    : number_(number), config_(std::move(config)), fds_(std::move(fds)), rearm_fd_(rearm_fd) {
  for (uint32_t i = 0; i < config_.workers; ++i) counters_.push_back(std::make_unique<Counters>());
  topology_ = TopologyStats::from(config_, carry);
  done_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (done_fd_ < 0) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
}

Generation::~Generation() {
  if (!joined_) {
    stop();
    join();
  }
  if (done_fd_ >= 0) ::close(done_fd_);
}

void Generation::start() {
  // One shard opens the bus itself; several divide one (upstream/ring_hub.h).
  if (config_.workers > 1)
    for (const GroupConfig& g : config_.groups)
      if (g.is_bus()) hub_ = std::make_unique<RingHub>(config_, g, config_.workers);
  std::vector<std::promise<void>> ready(config_.workers);
  for (uint32_t i = 0; i < config_.workers; ++i) {
    slots_.push_back(std::make_unique<ShardThread>());
    slots_.back()->thread = std::thread(run_shard, std::cref(config_), i, fds_[i], std::ref(*counters_[i]),
                                        std::ref(*topology_), hub_.get(), std::ref(*slots_.back()), std::ref(ready[i]),
                                        done_fd_, rearm_fd_);
  }
  std::exception_ptr failed;
  for (auto& r : ready) {
    try {
      r.get_future().get();
    } catch (...) {
      if (!failed) failed = std::current_exception();
    }
  }
  if (failed) {  // a shard could not start: the others stop, the reason is reported
    stop();
    join();
    std::rethrow_exception(failed);
  }
  if (hub_) hub_->start();  // every shard is built: servers may attach now
}

void Generation::drain() {
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    if (slot->shard != nullptr) slot->shard->request_drain();
  }
}

void Generation::stop() {
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    if (slot->shard != nullptr) slot->shard->request_stop();
  }
}

void Generation::retire(const std::vector<int>& kept) {
  retiring_ = true;
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    if (slot->shard != nullptr) slot->shard->request_retire(kept);
  }
}

void Generation::rearm() {
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mutex);
    if (slot->shard != nullptr) slot->shard->request_rearm();
  }
}

bool Generation::note_done() {
  uint64_t n = 0;
  if (::read(done_fd_, &n, sizeof n) == sizeof n) done_ += n;
  return ended();
}

int Generation::join() {
  int code = 0;
  for (auto& slot : slots_) {
    if (slot->thread.joinable()) slot->thread.join();
    if (code == 0) code = slot->code;
  }
  hub_.reset();  // no shard uses the bus any more: close it (the server sees the agent go)
  joined_ = true;
  return code;
}

std::vector<const Counters*> Generation::counters() const {
  std::vector<const Counters*> out;
  for (const auto& c : counters_) out.push_back(c.get());
  return out;
}

std::string Generation::features() const { return slots_.empty() ? std::string() : slots_.front()->features; }

}  // namespace offload
