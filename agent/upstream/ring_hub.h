// The bus (upstream shm:NAME) shared by the shards of one generation, when
// there are several (workers > 1). With one shard its RingBus owns the
// RingAgent and drives all of it from the shard's loop; with several there is
// one RingAgent for the agent (one listening socket "@offload-ring-NAME", one
// server attached at a time, one region), and its channels are divided:
//
//   control   this hub's own small thread: the listening socket, the
//             handshake, the attached server's socket, the heartbeat tick
//             and the detach (RingAgent's control calls, owner thread). It
//             logs each attach and detach once for the agent.
//   channels  channel c belongs to shard c % shards; only that shard's loop
//             makes its channel calls (send, poll, release, doorbell), on the
//             RingAttach of the attach it was told of. No channel is used by
//             two threads.
//   telling   after each attach and detach the hub publishes the current
//             attach (under `mutex_`) and writes every shard's wake-up
//             eventfd; each shard's RingBus then reads view() and catches up:
//             a detach fails its in-flight requests with 502, an attach makes
//             its channels usable. A shard that holds the attach it replaced
//             keeps that region mapped until it lets go (RingAttach is shared),
//             so a detach never unmaps memory another shard is still in.
//
// A shard with no channel (the server has fewer workers than the agent has
// shards): its requests wait in its queue as when no server is attached, and
// get 503 at their queue timeout; the hub says so in one warning line at
// each such attach, with the bus, the channel count and the shard count.
//
// Thread rules: the constructor, start() and the destructor on the
// generation's thread (before the shards start, after they have ended);
// agent(), shards(), channels_max() and wake_fd() from any thread (fixed at
// construction; of agent() only the calls ring_agent.h names as any-thread);
// view() from any thread (takes the mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "offload/ring_agent.h"
#include "ops/config.h"

namespace offload {

class RingHub {
 public:
  // The number of channels a bus of `group` may have: the server's
  // max_connections for the whole agent ("auto" max_upstream: at most 8).
  static uint32_t channels_for(const Config& whole, const GroupConfig& group);

  // Opens the bus of `group` (its one server is shm:NAME) for `shards`
  // shards; `whole` is the agent's configuration before it is shared out.
  // Throws ConfigError when it cannot (the name is taken, ...).
  RingHub(const Config& whole, const GroupConfig& group, uint32_t shards);
  ~RingHub();  // stops the thread; closes the bus (the server sees it go)
  RingHub(const RingHub&) = delete;
  RingHub& operator=(const RingHub&) = delete;

  void start();  // the control thread

  const ring::RingAgent& agent() const { return *ring_; }
  uint32_t shards() const { return shards_; }
  uint32_t channels_max() const { return channels_max_; }
  int wake_fd(uint32_t shard) const { return wake_fds_.at(shard); }

  // The current attach (null: no server attached).
  std::shared_ptr<ring::RingAttach> view() const;

 private:
  void run();
  void on_event(ring::RingAgent::Event e);
  void publish(std::shared_ptr<ring::RingAttach> attach);

  std::string text_;  // "shm:NAME"
  uint32_t shards_;
  uint32_t channels_max_;
  std::unique_ptr<ring::RingAgent> ring_;  // the control calls: the thread's alone
  std::vector<int> wake_fds_;              // one eventfd per shard
  int stop_fd_ = -1;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::shared_ptr<ring::RingAttach> current_;  // guarded by mutex_
};

}  // namespace offload
