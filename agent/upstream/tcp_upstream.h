// The Upstream of TCP and Unix servers. Its groups (one per [[upstream]]
// table that is not a shm: bus) each have a queue, a balancer and a TcpPool
// per server. One request, as this part serves it:
//   submit        the group's queue → the balancer picks a server with room
//                 (dispatch) → that server's pending list
//   serve_pending one of the server's connections: the most recently used
//                 idle one, or a new one when wants_new_upstream allows (the
//                 pool's fit to the server: an adaptive limit up to
//                 max_upstream, starting at `persistent`)
//   assign        the request out in one send (post_up_send)
//   on_up_recv    the response read on the connection's multishot receive,
//                 parsed and framed into the ResponseSink
//   release       the connection serves the next request as soon as the
//                 response is read, however slowly the client takes it; the
//                 proxy sends it (HttpProxy::on_response_done).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "http/http_parser.h"
#include "loop/loop.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "proxy/buffers.h"
#include "proxy/connection.h"
#include "proxy/http_proxy.h"
#include "proxy/request_queue.h"
#include "upstream/response_sink.h"
#include "upstream/tcp_pool.h"
#include "upstream/upstream.h"
#include "upstream/upstream_group.h"
#include "ops/log.h"

namespace offload {

class TcpUpstream final : public Upstream, public TcpPool::Host {
 public:
  // What it works with: the shard's loop and memory, and the proxy that
  // answers the clients.
  struct Parts {
    Loop& loop;
    const Config& config;
    Counters& counters;
    TopologyStats& topology;
    BlockPool& data_pool;
    ResponseSink& sink;
    HttpProxy& proxy;
  };

  // One group per TCP or Unix [[upstream]] of `config` (a shm: group is
  // RingBus's).
  explicit TcpUpstream(const Parts& parts);
  ~TcpUpstream() override;
  TcpUpstream(const TcpUpstream&) = delete;
  TcpUpstream& operator=(const TcpUpstream&) = delete;

  // The group made for config.groups[index]; null for a shm: group.
  UpstreamGroup* group(size_t index) const { return by_config_.at(index); }
  // Health checks and the persistent connections start.
  void start();
  // SIGTERM: health checks stop, and no connection is opened any more.
  void drain();
  // After each batch of completions: a freed slot is refilled and the
  // queues move, never inside the handler of the slot that freed it.
  void after_batch();
  // Once a second: requests stranded on connections the server does not
  // serve go back to the queue (check_unanswered).
  void housekeeping() { check_unanswered(); }

  // Pass-through: the server a tunnel of group `g` connects to, by the
  // group's policy and health (its own connection, not one of the pool's);
  // null when none is up. The connect's outcome is its passive health.
  TcpPool* pick_tunnel_server(UpstreamGroup& g, uint64_t source_hash);
  void tunnel_connected(TcpPool& p, bool ok) { report_health(p, ok); }

  void submit(ClientConn* c) override { enqueue(c, false); }
  void abandon(ClientConn* c) override;
  void resume(Exchange* ex) override;
  void leave(Exchange* ex) override { leave_server(ex); }
  int queue_timeout_status(const ClientConn* c) const override;
  uint64_t request_bytes_max(const ClientConn*) const override { return UINT64_MAX; }
  std::string_view default_host(const ClientConn* c) const override;

 private:
  // Groups and servers: the balancer gives each waiting request a server,
  // the server's pool a connection.
  void build_group(size_t index);
  bool serves_http(size_t index) const;
  void enqueue(ClientConn* c, bool front);
  void dispatch(UpstreamGroup& g);
  void dispatch_all();
  void on_group_wake(UpstreamGroup* g, Timer& t);
  void on_follow(UpstreamGroup* g, Timer& t);
  void serve_pending(TcpPool& p);
  bool wants_new_upstream(TcpPool& p);
  struct PoolCensus {
    uint32_t proven = 0;            // open channels the server has answered on
    uint32_t proven_busy_soon = 0;  // of those, busy and likely to free up soon
    uint32_t unanswered = 0;        // connecting, or carrying their first request
  };
  PoolCensus census(TcpPool& p);
  void check_unanswered();
  void fit_pool(TcpPool& p);
  static constexpr int64_t kSoonMinMs = 10;        // "about to free up": busy no longer than this, at least
  static constexpr uint64_t kUnansweredMs = 1000;  // a first request unanswered this long...
  static constexpr uint64_t kAnsweredElsewhere = 8;  // ... while this many were answered on others: unserved
  void give_back(TcpPool& p);          // pending requests go back to the group
  void leave_server(Exchange* ex);     // the exchange is done with its server
  void report_health(TcpPool& p, bool ok);
  void on_probe(TcpPool& p, bool ok);
  void note_health(TcpPool& p);
  uint64_t source_hash(ClientConn* c);
  void refill_pools();

  // The pools' events.
  void on_connected(TcpPool& pool, UpstreamConn* u) override;
  void on_connect_failed(TcpPool& pool, int status) override;
  void on_freed(TcpPool& pool, UpstreamConn* u) override;
  void on_retry(TcpPool& pool) override;

  // One exchange over a connection.
  void assign(UpstreamConn* u, ClientConn* c);
  void arm_response_timer(UpstreamConn* u) { loop_.arm(u->timer, u->client->listener->timers[kTimerResponse]); }
  void on_response_timeout(UpstreamConn* u, Timer& t);
  void post_up_send(UpstreamConn* u);
  void on_up_send(UpstreamConn* u, const io_uring_cqe& cqe);
  bool load_body_piece(UpstreamConn* u, uint64_t offset);
  void arm_up_recv(UpstreamConn* u);
  void post_up_recv(UpstreamConn* u);
  void pause_up_read(UpstreamConn* u);
  void on_up_cancelled(UpstreamConn* u, const io_uring_cqe& cqe);
  void on_up_recv(UpstreamConn* u, const io_uring_cqe& cqe);
  void on_up_eof(UpstreamConn* u, int res);
  void take_response_bytes(UpstreamConn* u, const char* data, uint32_t len);
  bool on_response_bytes(UpstreamConn* u, ClientConn* c, uint32_t n);
  bool on_response_head(UpstreamConn* u, ClientConn* c, Block* b);
  void forward_interim(ClientConn* c, const http::Head& h, std::string_view msg);
  bool spill_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken);
  bool dechunk_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken);
  void on_response_complete(UpstreamConn* u, ClientConn* c);
  void release_upstream(UpstreamConn* u);
  void upstream_failed(UpstreamConn* u, int status, bool nothing_received);
  void close_upstream(UpstreamConn* u) { u->pool->close(u); }
  void maybe_free_upstream(UpstreamConn* u) { u->pool->maybe_free(u); }
  void log_error(const char* what, int err);
  void set_state(ClientConn* c, ClientState s) { offload::set_state(c, s, counters_); }

  Loop& loop_;
  Uring& uring_;
  const Config& config_;
  Counters& counters_;
  TopologyStats& topology_;
  BlockPool& data_pool_;
  ResponseSink& sink_;
  HttpProxy& proxy_;
  http::Limits response_limits_;

  std::vector<std::unique_ptr<UpstreamGroup>> groups_;
  std::vector<UpstreamGroup*> by_config_;  // config.groups' index → its group (null: a shm: group)
  bool pool_changed_ = false;              // a slot was freed: refill and dispatch after the batch
  bool draining_ = false;
  LogLimiter log_limiter_;
  static constexpr size_t kScratchBytes = 64 * 1024;
  std::unique_ptr<char[]> scratch_{new char[kScratchBytes]};  // response heads being rewritten
};

}  // namespace offload
