// Counters per listener and per upstream server, for the whole agent. Every
// shard adds to the same ones (so each add is an atomic fetch_add: several
// writers, unlike the per-shard Counters); the admin thread reads them.
// Made once at start-up from the configuration, in its order: listener i of
// every shard is listeners[i], server j of group g is the j-th server of g.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ops/counters.h"
#include "upstream/probe_board.h"

namespace offload {

struct Config;

inline void add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
inline void sub(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_sub(n, std::memory_order_relaxed); }

struct ListenerCounters {
  std::string name;
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> active{0};          // gauge
  std::atomic<uint64_t> rejected{0};        // over its max_clients, or screened
  std::atomic<uint64_t> requests{0};        // complete requests
  // Requests refused before any upstream work, by reason.
  std::atomic<uint64_t> rate_limited{0};    // 429
  std::atomic<uint64_t> auth_missing{0};    // 401 / 403
  std::atomic<uint64_t> auth_wrong{0};      // 401 / 403
  std::atomic<uint64_t> method_refused{0};  // 405
  std::atomic<uint64_t> target_too_long{0}; // 414
  // Tunnels (pass-through connections and upgraded ones), by the mode that
  // moved them, and their bytes: up is client → server. A kernel tunnel's
  // bytes are read from its flows (bpftool shows them per socket in the
  // pinned splice_flows) as they move and at its end.
  std::atomic<uint64_t> tunnels_kernel{0};
  std::atomic<uint64_t> tunnels_user{0};
  std::atomic<uint64_t> user_bytes_up{0};
  std::atomic<uint64_t> user_bytes_down{0};
  std::atomic<uint64_t> kernel_bytes_up{0};
  std::atomic<uint64_t> kernel_bytes_down{0};
  std::atomic<uint64_t> tunnel_half_closes{0};
  std::atomic<uint64_t> tunnel_resets{0};
  std::atomic<uint64_t> splice_setup_failures{0};
};

struct ServerCounters {
  std::string group;
  std::string name;                          // as configured: tcp://127.0.0.1:8000
  std::atomic<uint64_t> requests{0};         // sent to it
  std::atomic<uint64_t> responses{0};        // response heads received from it
  std::atomic<uint64_t> failures{0};         // failed connects, resets, timeouts, bad answers
  std::atomic<uint64_t> connects{0};
  std::atomic<uint64_t> connections{0};      // gauge: open now
  std::atomic<uint64_t> down{0};             // gauge: shards that have taken it out
  ProbeBoard probes;                         // active health: shard 0's results for the others
};

// Shared: after a reload, a listener or server of the same name is the same
// entry in both generations, so its totals go on and its gauges are right
// while the old generation drains.
struct TopologyStats {
  std::vector<std::shared_ptr<ListenerCounters>> listeners;
  std::vector<std::shared_ptr<ServerCounters>> servers;

  // One entry per listener and per server of `config`; those named as in
  // `carry` (the running generation's, on a reload) are its entries.
  static std::unique_ptr<TopologyStats> from(const Config& config, const TopologyStats* carry = nullptr);
  ServerCounters* server(size_t group, size_t index) const;
  std::vector<size_t> group_offsets;  // index of each group's first server in `servers`
};

// Text: one line per listener and server; JSON: "listeners" and "servers"
// arrays to be placed inside the stats object; Prometheus: labelled series.
std::string render_topology(const TopologyStats& stats, StatsFormat format);

}  // namespace offload
