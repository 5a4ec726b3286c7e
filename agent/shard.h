// A shard: one thread, one Loop, its listeners, the HTTP proxy that serves
// them, the upstream groups and their servers' pools, and its counters.
// Shards share the read-only configuration and the per-listener and
// per-server stats (atomic adds), and each has its own listening sockets
// (SO_REUSEPORT) for the same ports.
//
// One request, as one walk through the parts (DESIGN.md's flow):
//   Listener       the socket a client came in on: its limits, timeouts, group
//   HttpProxy      accept (screen, slot) → receive → parse until complete
//                  (proxy/http_proxy.cpp), then submit() to the upstream side
//   UpstreamGroup  the group's queue → its Balancer picks a server with room
//                  (dispatch, upstream/upstream.cpp)
//   TcpPool        that server's pending list → one of its connections
//                  (most recently used idle first, or a new one)
//   exchange I/O   the request in one send; the response read on the
//                  connection's multishot receive (upstream/upstream.cpp)
//   ResponseSink   memory → spill file → back-pressure; counts the response
//   TcpPool        the connection goes back idle as soon as the response is
//                  read, however slowly the client takes it
//   HttpProxy      sends the response as the client reads; keep-alive or
//                  close (finish_exchange / close_client: the only two ends)
// The ring bus (shm:) is the other kind of group: ring_upstream.cpp.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "proxy/buffers.h"
#include "ops/config.h"
#include "proxy/connection.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "http/http_rewrite.h"
#include "loop/list.h"
#include "proxy/http_proxy.h"
#include "proxy/listener.h"
#include "security/screen.h"
#include "upstream/response_sink.h"
#include "upstream/tcp_pool.h"
#include "upstream/upstream_group.h"
#include "loop/clock.h"
#include "loop/loop.h"
#include "loop/slab.h"
#include "loop/timer_list.h"
#include "offload/ring_agent.h"

namespace offload {


class Shard final : public TcpPool::Host, public HttpProxy::Upstreams {
 public:
  // Binds nothing: the listening sockets are made by the caller and shared.
  // `topology` (per listener and per server counters, for the whole agent)
  // may be shared by shards; null: the shard keeps its own.
  Shard(const Config& config, std::vector<int> listen_fds, Counters& counters, TopologyStats* topology = nullptr,
        const Clock& clock = default_clock());
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Runs until drained after request_drain() (or stopped by
  // request_stop()). Returns the shard's exit code.
  int run();
  // run() in steps, for tests that drive the shard with a TestClock: start()
  // once, then turn() until it returns false (drained or stopped). A turn
  // waits at most `max_wait_ms` of real time for a completion.
  void start();
  bool turn(uint64_t max_wait_ms = 1000);

  const std::string& features() const { return loop_.features(); }

  // Thread-safe, for the one thread that receives signals: finish in-flight
  // requests and end (SIGTERM, a first SIGINT), or end at once (a second
  // SIGINT). Each wakes the loop through an eventfd it reads.
  void request_drain();
  void request_stop();


 private:
  static const Clock& default_clock();

  // The loop: each operation's result goes to the handler its Completion
  // was bound to, each expired timer to its own.
  void arm_timer(Timer& t, TimerKind kind) { loop_.arm(t, timers_[kind]); }
  void on_response_timeout(UpstreamConn* u, Timer& t);
  void on_group_wake(UpstreamGroup* g, Timer& t);
  void on_control(const io_uring_cqe& cqe);
  void start_drain();
  void post_control_read();
  void housekeeping();
  void after_batch();

  // Listeners: each names the proxy that serves it (HTTP, for now).
  void build_listeners(const std::vector<int>& fds);
  void arm_client_timer(ClientConn* c, TimerKind kind) { proxy_.arm_client_timer(c, kind); }
  void arm_response_timer(UpstreamConn* u) { loop_.arm(u->timer, u->client->listener->timers[kTimerResponse]); }

  // What the HTTP proxy asks of the upstream side.
  void submit(ClientConn* c) override { enqueue(c, false); }
  void abandon(ClientConn* c) override;
  void resume(Exchange* ex) override { resume_up_read(ex); }
  void leave(Exchange* ex) override { leave_server(ex); }
  uint64_t request_bytes_max(const ClientConn* c) const override;
  std::string_view default_host(const ClientConn* c) const override;
  // The proxy's ways back into an exchange, as the upstream side uses them.
  void post_client_send(ClientConn* c) { proxy_.post_client_send(c); }
  void respond_error(ClientConn* c, int status) { proxy_.respond_error(c, status); }
  void maybe_free_client(ClientConn* c) { proxy_.maybe_free_client(c); }
  void send_or_finish(ClientConn* c) { proxy_.send_or_finish(c); }
  void wait_if_unwoken(ClientConn* c) { proxy_.wait_if_unwoken(c); }
  void resume_response(ClientConn* c) { proxy_.resume_response(c); }

  // The queues: enqueue() is the only way in, set_state() (proxy/http_proxy.h)
  // and take_from() the ways out.
  void set_state(ClientConn* c, ClientState s) { offload::set_state(c, s, counters_); }
  void enqueue(ClientConn* c, bool front);
  void queue_on(ClientConn* c, List<ClientConn, &ClientConn::queue_node>& q, bool front);
  // The oldest client waiting in `q`, now kUpstream; or null.
  ClientConn* take_from(List<ClientConn, &ClientConn::queue_node>& q);

  // Upstream groups: the balancer gives each waiting request a server, the
  // server's pool a connection.
  void build_groups();
  void dispatch(UpstreamGroup& g);
  void dispatch_all();
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
  int queue_timeout_status(const ClientConn* c) const;
  uint64_t source_hash(ClientConn* c);
  void on_connected(TcpPool& pool, UpstreamConn* u) override;
  void on_connect_failed(TcpPool& pool, int status) override;
  void on_freed(TcpPool& pool, UpstreamConn* u) override;
  void on_retry(TcpPool& pool) override;
  void assign(UpstreamConn* u, ClientConn* c);
  void log_error(const char* what, int err);
  void on_up_cancelled(UpstreamConn* u, const io_uring_cqe& cqe);
  void post_up_send(UpstreamConn* u);
  void on_up_send(UpstreamConn* u, const io_uring_cqe& cqe);
  bool load_body_piece(UpstreamConn* u, uint64_t offset);
  void post_up_recv(UpstreamConn* u);
  void arm_up_recv(UpstreamConn* u);
  void pause_up_read(UpstreamConn* u);
  void wake_budget_waiters();
  void resume_up_read(Exchange* ex);
  void on_up_recv(UpstreamConn* u, const io_uring_cqe& cqe);
  void on_up_eof(UpstreamConn* u, int res);
  void take_response_bytes(UpstreamConn* u, const char* data, uint32_t len);
  bool on_response_bytes(UpstreamConn* u, ClientConn* c, uint32_t n);
  bool on_response_head(UpstreamConn* u, ClientConn* c, Block* b);
  void forward_interim(ClientConn* c, const http::Head& h, std::string_view msg);
  bool spill_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken);
  bool dechunk_bytes(UpstreamConn* u, ClientConn* c, const char* data, uint32_t n, uint32_t& taken);
  void on_response_complete(UpstreamConn* u, ClientConn* c);
  void upstream_failed(UpstreamConn* u, int status, bool nothing_received);
  void fail_exchange(ClientConn* c, int status);
  void release_upstream(UpstreamConn* u);
  void close_upstream(UpstreamConn* u) { u->pool->close(u); }
  void maybe_free_upstream(UpstreamConn* u) { u->pool->maybe_free(u); }
  void refill_pool();

  // Ring channels (ring_upstream.cpp).
  void ring_create();
  void ring_start();
  struct PeerPoll;
  void on_ring_listen(const io_uring_cqe& cqe);
  void on_ring_peer(PeerPoll* p, const io_uring_cqe& cqe);
  void on_ring_doorbell(UpstreamConn* u, const io_uring_cqe& cqe);
  void post_ring_listen();
  void post_doorbell(UpstreamConn* u);
  void ring_tick();
  void ring_event(ring::RingAgent::Event e);
  void ring_reset_channel(UpstreamConn* u);
  UpstreamConn* ring_pick();
  void ring_dispatch();
  void ring_assign(UpstreamConn* u, ClientConn* c);
  void ring_send_back(UpstreamConn* u);
  void ring_fail_all(UpstreamConn* u, int status);
  void ring_abandon(UpstreamConn* u, ClientConn* c);
  void ring_pop_front(UpstreamConn* u);
  void ring_drain(UpstreamConn* u);
  bool ring_piece(UpstreamConn* u, ClientConn* c, const ring::ResponsePiece& piece);
  bool ring_interim(ClientConn* c, const ring::ResponsePiece& piece);
  bool ring_read_allowed(UpstreamConn* u) const;
  void ring_paused(UpstreamConn* u);
  void ring_timed_out(UpstreamConn* u);

  const Config& config_;
  Counters& counters_;
  std::unique_ptr<TopologyStats> own_topology_;
  TopologyStats* topology_;
  Loop loop_;
  Uring& uring_ = loop_.uring();
  std::vector<std::unique_ptr<Listener>> listeners_;
  http::Limits response_limits_;

  uint64_t released_bytes_ = 0;
  Timer housekeeping_timer_;

  BlockPool data_pool_;    // bodies and responses (64 KiB blocks)
  SpillBudget spill_budget_;
  // Where response bytes go (memory, spill, back-pressure); its waiters are
  // woken after each batch of completions, each bounded by its send timer.
  ResponseSink sink_;
  // The client side of every exchange.
  HttpProxy proxy_;

  // Upstream groups (one per [[upstream]], or "default" from the flat keys).
  std::vector<std::unique_ptr<UpstreamGroup>> groups_;
  bool pool_changed_ = false;        // a slot was freed: refill and dispatch after the batch
  uint64_t last_log_ms_ = 0;

  // Ring channels (upstream shm:NAME), served by the ring group.
  std::vector<std::unique_ptr<UpstreamConn>> upstreams_;
  UpstreamGroup* ring_group_ = nullptr;
  UpstreamTarget ring_target_;
  uint32_t ring_channels_ = 0;

  // The bus (upstream shm:NAME): null for TCP and Unix upstreams.
  std::unique_ptr<ring::RingAgent> ring_;
  Timer ring_tick_;
  Completion ring_listen_;
  // A poll on the ring's current peer socket. The peer changes on attach and
  // detach; a poll for an earlier peer may still complete, so each poll has
  // its own record, reused once its completion is in.
  struct PeerPoll {
    Completion done;
    uint64_t generation = 0;
    bool in_flight = false;
  };
  std::vector<std::unique_ptr<PeerPoll>> peer_polls_;
  PeerPoll* peer_poll_ = nullptr;  // the one on the current peer
  int peer_poll_fd_ = -1;
  uint64_t peer_poll_gen_ = 0;
  uint64_t ring_request_ids_ = 0;
  uint32_t attached_channels_ = 0;
  uint32_t ring_depth_ = 1;
  http::Parser ring_head_parser_{http::Parser::Kind::kRequest, http::Limits{}};
  std::vector<offload_field> ring_fields_;
  std::vector<FieldView> ring_views_;
  std::string ring_body_;

  TimerList timers_[kTimerKinds];
  static constexpr size_t kScratchBytes = 64 * 1024;
  std::unique_ptr<char[]> scratch_{new char[kScratchBytes]};  // response heads being rewritten

  // Draining, asked for by another thread through control_fd_ (an eventfd).
  int control_fd_ = -1;
  Completion control_read_;
  uint64_t control_buf_ = 0;
  std::atomic<bool> drain_requested_{false};
  std::atomic<bool> stop_requested_{false};
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  bool stop_now_ = false;
};

}  // namespace offload
