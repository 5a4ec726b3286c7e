// The admin endpoint: a small HTTP server on its own thread (never on the
// event loop's core path) that serves the shards' counters.
//   GET /stats                 "name value" lines
//   GET /stats?format=json     one JSON object
//   GET /metrics               Prometheus text
//   POST /reload               re-read the configuration (as SIGHUP): 200 and
//                              one line when applied, 400 and the line
//                              naming the bad key when not
//   GET /security/deny         the live deny prefixes, one a line (and /security/allow)
//   POST /security/deny?cidr=P     adds P to the running agent's rule set
//   DELETE /security/deny?cidr=P   removes it
// A change is applied by every shard within its next accept (and its open
// connections checked at once), and mirrored into the XDP guard's maps when
// the agent attached one. The answer says what each of the two did, one
// line each; a bad prefix is 400 with one line naming it.
//
// One poll() loop serves up to kConnectionsMax connections at once, each
// with a total deadline (kDeadlineMs from accept to the last byte of the
// answer) and a bounded request (kRequestBytesMax), so a client that sends a
// byte a second neither delays anyone else nor holds a slot for long. Over
// the limit the oldest connection is closed to make room (a client that is
// served at once never stays long; the oldest is the most likely to be
// stuck), counted in admin_evicted. A wake-up eventfd ends the loop at once:
// the agent's exit never waits on an admin client.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ops/config.h"
#include "ops/counters.h"
#include "ops/topology_stats.h"
#include "security/live_rules.h"

namespace offload {

class AdminServer {
 public:
  static constexpr size_t kConnectionsMax = 64;
  static constexpr int kDeadlineMs = 5000;
  static constexpr size_t kRequestBytesMax = 2048;

  // Binds at once (so a bad address fails start-up); serves from start().
  // Renders the sum of the shards' counters (each outlives the server); the
  // admin thread keeps its own admin_* counters, so each has one writer.
  // `topology` (per listener and server counters) may be null.
  AdminServer(const SocketAddress& address, std::vector<const Counters*> shards,
              const TopologyStats* topology = nullptr);
  // The same on a listening socket the agent already has (a binary
  // upgrade's, ops/takeover.h); owned from here.
  AdminServer(int listening_fd, std::vector<const Counters*> shards, const TopologyStats* topology = nullptr);
  ~AdminServer();  // wakes the thread, joins it, closes every connection
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // The guard's side of a change: one line ("guard: added", "guard: ..."),
  // called on the admin thread after the agent's own set changed.
  using Mirror = std::function<std::string(LiveRules::List list, bool add, const std::string& cidr)>;
  // The rule set /security/* shows and changes (set before start(), and again by each reload); `mirror`
  // empty: no guard attached to the agent.
  void set_rules(std::shared_ptr<LiveRules> rules, Mirror mirror);  // also after a reload

  void start();
  std::string bound_address() const;  // "127.0.0.1:PORT"
  int listen_fd() const { return fd_; }  // for a binary upgrade to hand over
  // A binary upgrade's new agent serves this socket too: from now on this
  // one leaves its connections to it (thread-safe; at most one more wake-up).
  void stop_accepting() { accepting_.store(false, std::memory_order_relaxed); }

  // After a reload: what is rendered from now on. `shards` begins with the
  // `shown` shards of the running generation (the per-shard breakdown),
  // then those still draining and the ended ones' sum. Returns once no
  // answer uses the old ones, which the caller may then free. `meanwhile`
  // runs under the same lock: the caller moves an ended generation's counts
  // into the sum there, so no answer counts them twice or not at all.
  void set_sources(std::vector<const Counters*> shards, size_t shown, const TopologyStats* topology,
                   const std::function<void()>& meanwhile = {});
  // What POST /reload runs (on the admin thread): true and a line when the
  // configuration was applied, false and the reason. Unset: 404. Set it
  // before start().
  using Reload = std::function<std::pair<bool, std::string>()>;
  void set_reload(Reload reload) { reload_ = std::move(reload); }

 private:
  struct Conn {
    int fd = -1;
    int64_t deadline_ms = 0;
    std::string in;   // the request so far
    std::string out;  // the answer, once the request is in
    size_t sent = 0;
  };

  void make_wake_fd();
  void serve();
  void accept_ready(int64_t now_ms);
  bool on_readable(Conn& c);  // false: the connection is finished
  bool on_writable(Conn& c);
  void close_conn(size_t i);
  std::string answer(std::string_view request) const;
  std::string security_answer(std::string_view method, std::string_view target) const;

  mutable std::mutex security_change_mutex_;  // one /security change at a time, the guard's part included
  mutable std::mutex sources_mutex_;  // shards_, shown_ and topology_: a reload replaces them
  std::vector<const Counters*> shards_;
  size_t shown_ = 0;
  const TopologyStats* topology_;
  Reload reload_;
  std::shared_ptr<LiveRules> rules_;
  Mirror mirror_;
  Counters counters_;  // the admin_* ones: written by the admin thread only
  int fd_ = -1;
  int wake_fd_ = -1;                // eventfd: the destructor's "stop now"
  int64_t accept_paused_until_ = 0; // after EMFILE: do not spin on the listener
  std::atomic<bool> accepting_{true};
  std::vector<Conn> conns_;         // in accept order: the oldest first
  std::thread thread_;
};

// The client side, for `offload-agent stats`: fetches `path` from the admin
// endpoint and returns the body. Throws std::runtime_error with the reason.
std::string fetch_admin(const SocketAddress& address, const std::string& path);
// The same for any method, each read and write bounded by `timeout_s`: the
// status code and the body.
// What the guard must change for one change of the rule set, through
// `mirror` (its answers, one line each): the global denies it may hold
// (RuleSet::guard_denies) before and after the change, so an allow added
// inside a deny takes that deny out of the guard (the agent alone screens
// it) and deleting the allow puts it back; a global allow is mirrored as
// well. `listener`: the change was to a listener's own lists, which the
// guard (one for every port) does not hold.
std::string mirror_change(const AdminServer::Mirror& mirror, const RuleSet& before, const RuleSet& after,
                          LiveRules::List list, bool add, const std::string& cidr, bool listener = false);

std::pair<int, std::string> request_admin(const SocketAddress& address, const std::string& method,
                                          const std::string& path, int timeout_s);

}  // namespace offload
