// The Upstream of the shared-memory bus (upstream shm:NAME): the agent's end
// of the ring (offload::ring::RingAgent), driven from the shard's loop.
//
// Each channel carries up to ring_depth requests at once, unlike an HTTP/1.1
// connection: the records queue in the ring and the server answers them in
// order, so a server worker takes a batch of requests per wake-up instead of
// one (that is where the bus saves the server its per-request sleep and
// wake). One request, as this part serves it:
//   submit    the bus's queue → the least loaded channel with room (dispatch)
//   send_back the request as one record, with an index of its head, so the
//             server reads fields instead of parsing
//   drain     the response's pieces, off the channel when its doorbell rings,
//             into the ResponseSink (the client's head is written from them)
//   the end   the proxy sends it (HttpProxy::on_response_done)
// The loop polls the bus's listening socket, the attached server's socket and
// one doorbell eventfd per channel, and ticks every 250 ms for heartbeats.
//
// With several shards (workers > 1) the bus is one for the agent (a RingHub,
// upstream/ring_hub.h): its control side runs on the hub's thread, and each
// shard's RingBus serves only its own channels (channel c is shard
// c % shards), learning of each attach and detach from its hub wake-up
// eventfd. A shard with no channel keeps its requests queued (503 at their
// queue timeout), as when no server is attached.
//
// Thread rules: everything here runs on the shard's loop thread. The calls
// into the ring: with its own RingAgent (one shard) all of them; with a hub,
// the channel calls on the RingAttach it holds, for its channels only, and
// the any-thread calls of the hub's RingAgent (doorbell_fd, clear_doorbell,
// max_request_bytes).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_parser.h"
#include "http/http_rewrite.h"
#include "loop/loop.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "offload/ring_agent.h"
#include "proxy/connection.h"
#include "proxy/http_proxy.h"
#include "proxy/request_queue.h"
#include "upstream/response_sink.h"
#include "upstream/upstream.h"

namespace offload {

class RingHub;

// Requests one ring channel may carry at once (ring_depth is capped here).
inline constexpr uint32_t kRingDepthMax = 64;

// One channel of the bus: a connection without a socket.
struct RingChannel : Channel {
  explicit RingChannel(uint32_t index) : channel(index) {}

  Timer timer;                  // the response timeout of its front request
  Completion doorbell;          // the server rang
  uint32_t channel;
  UpstreamState state = UpstreamState::kFree;  // kIdle while a server is attached
  bool read_paused = false;     // the front client's buffers are full
  bool send_pending = false;    // the ring was full: resend when it rings
  bool chunked_out = false;     // the client gets the body chunked (length unknown)
  bool failed = false;          // the channel is corrupt until the next attach
  bool draining = false;        // timed out: late answers go by before new requests
  bool slow_front = false;      // the front response paused for its client: nothing joins until it ends
  // The requests on the channel, oldest first; null: its client left (or it
  // failed) and its answer is dropped when it comes.
  ClientConn* fifo[kRingDepthMax] = {};
  uint32_t fifo_head = 0;
  uint32_t fifo_count = 0;

  ClientConn* front() const { return fifo_count > 0 ? fifo[fifo_head] : nullptr; }
  ClientConn*& at(uint32_t i) { return fifo[(fifo_head + i) % kRingDepthMax]; }
  // Requests still waiting behind the front.
  bool held_behind() const;
};

class RingBus final : public Upstream {
 public:
  struct Parts {
    Loop& loop;
    const Config& config;
    Counters& counters;
    ResponseSink& sink;
    HttpProxy& proxy;
    RingHub* hub = nullptr;  // several shards: the agent's bus (channels by config.shard_index); null: this shard's own
  };

  // Creates the bus of `group` (its one server is shm:NAME), or with a hub
  // this shard's part of it; throws ConfigError when it cannot.
  RingBus(const Parts& parts, const GroupConfig& group);
  ~RingBus() override;
  RingBus(const RingBus&) = delete;
  RingBus& operator=(const RingBus&) = delete;

  // Polls the bus and starts the heartbeat tick.
  void start();

  void submit(ClientConn* c) override { enqueue(c, false); }
  void abandon(ClientConn* c) override;
  void resume(Exchange* ex) override;
  void leave(Exchange*) override {}  // a channel is no server's: nothing counts it
  int queue_timeout_status(const ClientConn*) const override { return 503; }
  uint64_t request_bytes_max(const ClientConn*) const override { return agent_->max_request_bytes(); }
  std::string_view default_host(const ClientConn*) const override { return default_host_; }

 private:
  struct PeerPoll;
  void enqueue(ClientConn* c, bool front);
  void post_listen();
  void post_doorbell(RingChannel* u);
  void on_listen(const io_uring_cqe& cqe);
  void on_peer(PeerPoll* p, const io_uring_cqe& cqe);
  void on_doorbell(RingChannel* u, const io_uring_cqe& cqe);
  void on_tick();
  void on_event(ring::RingAgent::Event e);
  void post_wake();
  void on_wake(const io_uring_cqe& cqe);
  void catch_up();
  void attach(std::shared_ptr<ring::RingAttach> a);
  void detach();
  void watch_peer();
  void reset_channel(RingChannel* u);
  RingChannel* pick();
  void dispatch();
  void assign(RingChannel* u, ClientConn* c);
  void send_back(RingChannel* u);
  void unsend_back(RingChannel* u, ClientConn* c, int status);
  void fail_all(RingChannel* u, int status);
  void pop_front(RingChannel* u);
  void drain(RingChannel* u);
  bool take_piece(RingChannel* u, ClientConn* c, const ring::ResponsePiece& piece);
  bool take_interim(ClientConn* c, const ring::ResponsePiece& piece);
  bool read_allowed(const RingChannel* u) const;
  void paused(RingChannel* u);
  void on_response_timeout(RingChannel* u, Timer& t);
  void arm_response_timer(RingChannel* u) { loop_.arm(u->timer, response_timers_); }
  void set_state(ClientConn* c, ClientState s) { offload::set_state(c, s, counters_); }

  Loop& loop_;
  const Config& config_;
  Counters& counters_;
  ResponseSink& sink_;
  HttpProxy& proxy_;
  UpstreamTarget target_;
  std::string default_host_;
  RequestQueue ready_;  // complete requests no channel has taken yet, oldest first
  std::vector<std::unique_ptr<RingChannel>> channels_;
  std::unique_ptr<ring::RingAgent> ring_;  // one shard: its own, all calls; null with a hub
  RingHub* hub_ = nullptr;
  const ring::RingAgent* agent_ = nullptr;  // ring_, or the hub's (any-thread calls only)
  // The attach this shard serves (null: none); its channel calls go here.
  std::shared_ptr<ring::RingAttach> attach_;
  Completion wake_;  // the hub's wake-up: an attach or a detach happened
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  uint32_t attached_channels_ = 0;
  uint32_t depth_ = 1;
  uint64_t request_ids_ = 0;

  TimerList response_timers_;
  TimerList tick_list_{250};
  Timer tick_;
  Completion listen_;
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

  // Scratch for one request's record and one response's head.
  http::Parser head_parser_{http::Parser::Kind::kRequest, http::Limits{}};
  std::vector<offload_field> fields_;
  std::vector<FieldView> views_;
  std::string body_;
  static constexpr size_t kScratchBytes = 64 * 1024;
  std::unique_ptr<char[]> scratch_{new char[kScratchBytes]};
};

}  // namespace offload
