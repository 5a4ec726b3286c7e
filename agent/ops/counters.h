// Per-shard counters. Each shard is the only writer of its own counters (the
// admin_* ones are the admin thread's alone, in a Counters of its own), so an
// increment is a relaxed load and store (no locked instruction on the hot
// path) and no update is lost; the admin thread reads them with relaxed
// loads and sums the shards when it renders.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace offload {

#define OFFLOAD_COUNTERS(X)                                                                    \
  X(accepted, "client connections accepted")                                                  \
  X(rejected_over_limit, "client connections closed at once: over max_clients")               \
  X(accept_pauses, "accepting paused for 100 ms: out of descriptors or memory")              \
  X(active_clients, "client connections open now (gauge)")                                     \
  X(rejected_screened, "client connections refused by the deny/allow lists")                  \
  X(rejected_per_source, "client connections over max_clients_per_source")                    \
  X(requests, "complete requests received")                                                   \
  X(responses_1xx, "responses sent, by class")                                                \
  X(responses_2xx, "")                                                                        \
  X(responses_3xx, "")                                                                        \
  X(responses_4xx, "")                                                                        \
  X(responses_5xx, "")                                                                        \
  X(agent_errors, "error responses made by the agent itself (400..505)")                      \
  X(parse_errors, "requests rejected by the parser")                                          \
  X(upstream_bad_responses, "responses from upstream rejected by the parser (502)")           \
  X(queue_waits, "requests that waited for a free upstream channel")                          \
  X(queue_length, "requests waiting now (gauge)")                                             \
  X(upstream_connects, "upstream connections opened")                                         \
  X(upstream_connect_errors, "upstream connections that failed to open")                      \
  X(upstream_active, "upstream connections open now (gauge)")                                 \
  X(upstream_reuses, "requests sent on a kept-alive upstream connection")                      \
  X(upstream_limit, "upstream connections the pool may open now (gauge; adapts with max_upstream auto)") \
  X(upstream_rejections, "upstream connections the server closed while a newer one waited unserved") \
  X(upstream_stalls, "new upstream connections whose first request went unanswered for 1 s") \
  X(upstream_retries, "GET/HEAD retried on a fresh connection")                               \
  X(timeouts_header, "timeouts, by kind")                                                     \
  X(timeouts_body, "")                                                                        \
  X(timeouts_keepalive, "")                                                                   \
  X(timeouts_send, "")                                                                        \
  X(timeouts_connect, "")                                                                     \
  X(timeouts_response, "")                                                                    \
  X(timeouts_queue, "")                                                                       \
  X(client_aborts, "clients gone before their response was sent")                             \
  X(spilled_responses, "responses that spilled to a temporary file")                          \
  X(spilled_bodies, "request bodies that went on in a temporary file")                        \
  X(spill_refused, "responses kept in memory: spill budget spent or temp_dir not writable")    \
  X(budget_waits, "responses that waited for buffer memory or spill room")                   \
  X(buffer_exhausted, "requests refused because buffer memory was exhausted")                 \
  X(bytes_in, "bytes received from clients")                                                  \
  X(bytes_out, "bytes sent to clients")                                                      \
  X(tunnels_accepted, "pass-through connections accepted (user-space mode)")                  \
  X(tunnels_active, "pass-through connections open now (gauge)")                              \
  X(tunnel_bytes_up, "pass-through bytes moved client to server")                              \
  X(tunnel_bytes_down, "pass-through bytes moved server to client")                            \
  X(tunnel_half_closes, "pass-through ends (FIN) passed on as a shutdown of the peer's writes") \
  X(tunnel_resets, "pass-through connections ended by a reset, passed on as a reset")          \
  X(tunnel_connect_failures, "pass-through connections closed: no server up, or its connect failed") \
  X(timeouts_tunnel, "pass-through connections closed idle (tunnel or half-close timeout)")    \
  X(upgrades, "HTTP requests with Upgrade (WebSocket...) that went on as a tunnel")             \
  X(upgrades_switched, "of those, answered 101 Switching Protocols by the server")             \
  X(admin_timeouts, "admin connections closed at their 5 s deadline (admin thread)")          \
  X(admin_evicted, "admin connections closed, oldest first, to make room over 64")

struct Counters {
#define OFFLOAD_DECLARE(name, help) std::atomic<uint64_t> name{0};
  OFFLOAD_COUNTERS(OFFLOAD_DECLARE)
#undef OFFLOAD_DECLARE
};

inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
inline void drop(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
}

// Adds every counter of `part` into `total` (gauges too: the agent's number
// of open connections is the shards' sum). `total` is the caller's own.
void add_counters(Counters& total, const Counters& part);

// Renders a snapshot: "name value" lines, one JSON object, or Prometheus text.
enum class StatsFormat { kText, kJson, kPrometheus };
std::string render_counters(const Counters& c, StatsFormat format);

// The agent's counters: the sum of `parts` (the shards' and the admin
// thread's). JSON adds "shards": [...], each shard's own counters, when
// there is more than one shard (the first `shards` of `parts`).
std::string render_totals(const std::vector<const Counters*>& parts, size_t shards, StatsFormat format);

}  // namespace offload
