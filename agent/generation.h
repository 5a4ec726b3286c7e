// One generation of the agent: the shards built from one configuration, on
// their threads, with their counters. The agent starts with one; each reload
// starts the next beside it and retires the running one (ops/reload.h), so
// for a moment several generations run, the newest accepting, the others
// finishing what they had.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ops/config.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "proxy/listen_sockets.h"

namespace offload {

struct ShardThread;
class AccessLogWriter;
class RingHub;

class Generation {
 public:
  // `config` is whole and validated; `fds` has each listener's sockets for
  // each shard, all listening. The sockets are not owned: the agent closes
  // one when no generation uses it. `carry`: the running generation's
  // stats, whose listeners and servers of the same names count on.
  // `rearm_fd` (an eventfd) is written when a retiring shard has cancelled
  // its accepts: the agent then calls rearm() on the newest generation.
  Generation(uint64_t number, Config config, AgentSockets fds, const TopologyStats* carry,
             int rearm_fd);
  ~Generation();  // stops the shards still running and joins them
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Starts every shard's thread and waits until each is built (its loop is
  // about to accept). If one cannot be built, the others stop and its
  // reason is rethrown.
  void start();

  // Each thread-safe towards the shards (see Shard).
  void drain();                               // SIGTERM
  void stop();                                // a second SIGINT
  void retire(const std::vector<int>& kept);  // a reload: see Shard::request_retire
  void rearm();                               // see Shard::request_rearm
  bool retiring() const { return retiring_; }

  // Readable when a shard has ended; note_done() reads it and says whether
  // every shard has ended (then join() does not wait).
  int done_fd() const { return done_fd_; }
  bool note_done();
  bool ended() const { return done_ == slots_.size(); }
  int join();  // the first shard's non-zero code, else 0

  uint64_t number() const { return number_; }
  const Config& config() const { return config_; }
  const AgentSockets& fds() const { return fds_; }
  const TopologyStats& topology() const { return *topology_; }
  std::vector<const Counters*> counters() const;
  std::string features() const;

 // The access-log writer its shards write to (null: off), kept until the
  // generation has ended: a reload to another path gets a writer of its own
  // while this one's last lines still go to the old path.
  void keep_access_log(std::shared_ptr<AccessLogWriter> writer) { access_log_ = std::move(writer); }
  const std::shared_ptr<AccessLogWriter>& access_log() const { return access_log_; }

 private:
  std::shared_ptr<AccessLogWriter> access_log_;  // first: released after the shards have ended
  uint64_t number_;
  const Config config_;
  AgentSockets fds_;
  std::vector<std::unique_ptr<Counters>> counters_;  // one per shard, each its shard's alone
  std::unique_ptr<TopologyStats> topology_;
  // With several shards and an shm: group: the one bus they divide (made in
  // start() before the shards, closed in join() once they have all ended).
  std::unique_ptr<RingHub> hub_;
  std::vector<std::unique_ptr<ShardThread>> slots_;
  int done_fd_ = -1;
  int rearm_fd_ = -1;
  size_t done_ = 0;
  bool retiring_ = false;
  bool joined_ = false;
};

}  // namespace offload
