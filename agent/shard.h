// A shard: one thread, one Loop, and the parts that serve its listeners.
// Shards share the read-only configuration, the per-listener and
// per-server stats (atomic adds), the live rule set, the per-source table
// (one lock) and the active health checks' results (shard 0 probes), and
// each has its own listening sockets (SO_REUSEPORT) for the same ports.
//
// One request, as one walk through the parts (DESIGN.md's flow):
//   Listener      the socket a client came in on: its limits, timeouts, and
//                 the Upstream of its group (proxy/listener.h)
//   HttpProxy     accept (screen, slot) → receive → parse until complete
//                 → Upstream::submit (proxy/http_proxy.h)
//   Upstream      TcpUpstream: the group's queue → the Balancer's server →
//                 its TcpPool's connection → the request out, the response
//                 in (upstream/tcp_upstream.h); or RingBus: the bus's queue
//                 → a channel → one record out, pieces back
//                 (upstream/ring_bus.h)
//   ResponseSink  memory → spill file → back-pressure; counts the response
//   HttpProxy     on_response_done: sends it as the client reads; keep-alive
//                 or close (finish_exchange / close_client: the only two ends)
// The shard itself only builds the parts, runs the loop, and drains.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "loop/clock.h"
#include "loop/loop.h"
#include "loop/timer_list.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "proxy/buffers.h"
#include "proxy/http_proxy.h"
#include "proxy/listen_sockets.h"
#include "proxy/listener.h"
#include "proxy/passthrough_proxy.h"
#include "upstream/response_sink.h"
#include "upstream/ring_bus.h"
#include "upstream/tcp_upstream.h"

namespace offload {

class RingHub;

class Shard final {
 public:
  // Binds nothing: the listening sockets are made by the caller and shared
  // (each listener's: one, or one per port of a range bound port by port).
  // `topology` (per listener and per server counters, for the whole agent)
  // may be shared by shards; null: the shard keeps its own. `hub`: with
  // several shards and an shm: group, the agent's bus (upstream/ring_hub.h;
  // this shard's channels follow config.shard_index); null: the shard opens
  // the bus itself.
  Shard(const Config& config, ShardSockets listen_fds, Counters& counters, TopologyStats* topology = nullptr,
        RingHub* hub = nullptr, const Clock& clock = default_clock());
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
  // A reload: a newer generation of shards serves from now on. This one
  // stops accepting and ends once what is in flight is done (or at its
  // drain deadline). The sockets in `handed_over` go on in the newer
  // generation: their accept is cancelled, never the socket shut (that
  // would drop its queue); the others are shut at once, so their ports
  // refuse. A connection accepted before the cancel lands is served, one
  // request, with Connection: close; so is the next request of a kept-alive
  // connection: an idle one is not closed, since its client may be sending
  // right now, only at its keep-alive timeout or the drain deadline.
  void request_retire(std::vector<int> handed_over);
  // Why the next generation needs a nudge: a multishot accept waits on its
  // socket exclusively (the kernel wakes one waiter per connection), so a
  // connection whose wake-up went to this shard's accept just as it was
  // cancelled stays queued with nobody woken. `hook` runs (on this shard's
  // thread) once every handed-over accept is cancelled; the agent then asks
  // the newest shards to request_rearm(): a fresh accept takes what is
  // queued at once. Set before run().
  void set_accepts_cancelled_hook(std::function<void()> hook) { accepts_cancelled_hook_ = std::move(hook); }
  // Cancels and re-arms every accept (thread-safe; see above).
  void request_rearm();

 private:
  static const Clock& default_clock();

  void build_listeners(const ShardSockets& fds);
  Proxy& proxy_for(const ListenerConfig& lc);
  uint32_t active() const;
  bool accepting() const;
  void after_batch();
  void housekeeping();
  void on_control(const io_uring_cqe& cqe);
  void post_control_read();
  void start_drain();
  void start_retire();
  void on_retire_cancelled(const io_uring_cqe& cqe);

  const Config& config_;
  Counters& counters_;
  std::unique_ptr<TopologyStats> own_topology_;
  TopologyStats* topology_;
  Loop loop_;
  std::vector<std::unique_ptr<Listener>> listeners_;

  BlockPool data_pool_;    // bodies and responses (64 KiB blocks)
  SpillBudget spill_budget_;
  // Where response bytes go (memory, spill, back-pressure); its waiters are
  // woken after each batch of completions, each bounded by its send timer.
  ResponseSink sink_;
  // The upstream side: TCP and Unix groups, and the bus if one is configured.
  // The application proxies, by kind: the HTTP proxy (the client side of
  // every exchange) and the pass-through proxy (tunnels to a group's servers).
  HttpProxy http_;
  TcpUpstream tcp_;
  std::unique_ptr<RingBus> bus_;
  PassthroughProxy passthrough_;
  std::vector<Proxy*> proxies_;

  // Once a second: stranded requests, and memory back to the system.
  TimerList housekeeping_list_{1000};
  Timer housekeeping_timer_;
  uint64_t released_bytes_ = 0;

  // Draining, asked for by another thread through control_fd_ (an eventfd).
  int control_fd_ = -1;
  Completion control_read_;
  uint64_t control_buf_ = 0;
  std::atomic<bool> drain_requested_{false};
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> retire_requested_{false};
  std::mutex handed_over_mutex_;  // the signal side writes, the loop reads
  std::vector<int> handed_over_;
  std::atomic<bool> rearm_requested_{false};
  Completion retire_cancelled_;
  uint32_t retire_cancels_pending_ = 0;
  std::function<void()> accepts_cancelled_hook_;
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  bool stop_now_ = false;
};

}  // namespace offload
