// One server's connections (TCP or Unix): opened, kept idle, closed, and the
// back-off while the server cannot be reached. What travels on a connection
// (an exchange: the request out, the response in) is TcpUpstream's; the pool
// owns only the connections' lifecycle, and the requests that were given to
// this server and wait for one of its connections (`pending`).
#pragma once

#include <memory>
#include <vector>

#include "loop/loop.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "proxy/connection.h"
#include "upstream/concurrency_limit.h"
#include "ops/log.h"

namespace offload {

struct UpstreamGroup;

class TcpPool {
 public:
  // What the pool tells the part that gives its connections work.
  class Host {
   public:
    virtual ~Host() = default;
    // A connection is open and ready: give it a request or make it idle.
    virtual void on_connected(TcpPool& pool, UpstreamConn* u) = 0;
    // An open or a connect failed (status: 502 refused, 504 timed out).
    virtual void on_connect_failed(TcpPool& pool, int status) = 0;
    // A connection's slot is free again (the client it served, if any, is
    // told by the host).
    virtual void on_freed(TcpPool& pool, UpstreamConn* u) = 0;
    // The back-off after a failure is over: connections may be opened again.
    virtual void on_retry(TcpPool& pool) = 0;
  };

  struct Settings {
    UpstreamTarget target;
    uint32_t max_connections = 8;
    uint32_t persistent = 4;
    uint32_t initial_limit = 4;  // where the adaptive limit starts (1..max_connections)
    uint32_t connect_timeout_ms = 5000;
  };

  TcpPool(Loop& loop, Counters& counters, ServerCounters& stats, Host& host, UpstreamGroup& group, uint32_t index,
          Settings settings, const http::Limits& response_limits);
  ~TcpPool();
  TcpPool(const TcpPool&) = delete;
  TcpPool& operator=(const TcpPool&) = delete;

  UpstreamGroup& group() { return group_; }
  uint32_t index() const { return index_; }  // in its group (the balancer's server index)
  const UpstreamTarget& target() const { return settings_.target; }
  ServerCounters& stats() { return stats_; }
  bool counted_down = false;  // this shard has it out: counted in stats().down
  uint16_t probes_seen = 0;   // of its ProbeBoard's results, those this shard has applied (not shard 0)

  // The most recently used idle connection (the warmest), or null.
  UpstreamConn* take_idle();
  // The least recently used idle connection (the coldest), or null.
  UpstreamConn* coldest_idle() const { return idle_.back(); }
  bool has_idle() const { return !idle_.empty(); }
  void make_idle(UpstreamConn* u);
  // Below the limit and not backing off.
  bool may_open() const { return open_ < limit_.limit() && !backing_off(); }
  // How many connections the server is given: adapts from `persistent` up
  // to max_connections (concurrency_limit.h). After changing it, call
  // limit_changed() (the upstream_limit gauge).
  ConcurrencyLimit& limit() { return limit_; }
  void limit_changed();
  // How long a connection is busy with one response, smoothed; responses
  // read in all.
  int64_t response_ms_avg = 0;
  uint64_t responses = 0;
  // Starts a connect; false when none could be started (then backing off).
  bool open();
  // Keeps one connection open ahead of demand (see tcp_pool.cpp).
  void refill();
  // Takes a connection out of service; its slot is freed when its last
  // operation is in.
  void close(UpstreamConn* u);
  void maybe_free(UpstreamConn* u);

  bool backing_off() const { return reconnect_timer_.armed(); }
  // The last open failed and none has succeeded since: what a request that
  // waited in vain for this server is answered (502 or 504).
  bool unreachable() const { return reconnect_delay_ms_ != 0; }
  int unreachable_status() const { return unreachable_status_; }
  void log_error(const char* what, int err);

  uint32_t open_count() const { return open_; }
  uint32_t connecting() const { return connecting_; }
  template <typename F>
  void for_each(F f) {
    for (auto& u : conns_) f(u.get());
  }

  // Requests given to this server by the balancer, waiting for a connection.
  List<ClientConn, &ClientConn::queue_node> pending;

 private:
  void on_connect(UpstreamConn* u, const io_uring_cqe& cqe);
  void on_connect_timeout(UpstreamConn* u, const io_uring_cqe& cqe);
  void on_reconnect_timer();
  void back_off(int status);

  Loop& loop_;
  Counters& counters_;
  ServerCounters& stats_;
  Host& host_;
  UpstreamGroup& group_;
  uint32_t index_;
  Settings settings_;
  std::vector<std::unique_ptr<UpstreamConn>> conns_;
  List<UpstreamConn, &UpstreamConn::idle_node> idle_;
  ConcurrencyLimit limit_;
  uint32_t reported_limit_ = 0;  // this pool's part of the upstream_limit gauge
  uint32_t open_ = 0;        // connecting, idle or busy
  uint32_t connecting_ = 0;
  __kernel_timespec connect_timeout_{};

  static constexpr uint32_t kReconnectFirstMs = 50;
  static constexpr uint32_t kReconnectMaxMs = 1000;
  TimerList reconnect_list_;  // this pool's only reconnect timer: its duration follows the back-off
  Timer reconnect_timer_;     // armed: the last open failed, no new one until it fires
  uint32_t reconnect_delay_ms_ = 0;  // 0: the last connect succeeded
  int unreachable_status_ = 502;
  LogLimiter log_limiter_;
};

}  // namespace offload
