// Per-shard counters. Each shard is the only writer of its own counters (the
// admin_* ones are the admin thread's alone, in a Counters of its own), so an
// increment is a relaxed load and store (no locked instruction on the hot
// path) and no update is lost; the admin thread reads them with relaxed
// loads and sums the shards when it renders. The one exception,
// access_log_dropped, is also added to by the access log's writer thread:
// both sides use an atomic add (drops are rare, never the hot path).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/histogram.h"

namespace offload {

// Each counter: its name in /stats (and `stats`), its Prometheus family
// (after the offload_ prefix; a family ending in _total is a counter, any
// other a gauge), the label that tells it from the others of its family
// ("" for none), and the family's help (on its first member only).
#define OFFLOAD_COUNTERS(X)                                                                                   \
  X(accepted, "connections_accepted_total", "", "Client connections accepted.")                              \
  X(rejected_over_limit, "connections_rejected_total", "reason=\"over_max_clients\"",                          \
    "Client connections closed at once, by reason.")                                                          \
  X(rejected_screened, "connections_rejected_total", "reason=\"screened\"", "")                               \
  X(rejected_per_source, "connections_rejected_total", "reason=\"over_max_clients_per_source\"", "")          \
  X(rejected_source_table_full, "connections_rejected_total", "reason=\"source_table_full\"", "")             \
  X(source_evictions, "source_evictions_total", "",                                                          \
    "Idle sources evicted from the source table (source_table_size); their rate state is forgotten.")         \
  X(closed_by_rules, "connections_closed_by_rules_total", "",                                               \
    "Open client connections closed because a change to the rule set denies their source.")               \
  X(accept_pauses, "accept_pauses_total", "", "Times accepting paused for 100 ms: out of descriptors or memory.") \
  X(active_clients, "connections_active", "", "Client connections open now.")                                \
  X(requests, "requests_total", "", "Complete requests received.")                                           \
  X(rate_limited, "requests_refused_total", "reason=\"rate_limited\"",                                       \
    "Requests refused before any upstream work, by reason (429, 401/403, 405, 414).")                       \
  X(auth_missing, "requests_refused_total", "reason=\"auth_missing\"", "")                                    \
  X(auth_wrong, "requests_refused_total", "reason=\"auth_wrong\"", "")                                        \
  X(method_refused, "requests_refused_total", "reason=\"method\"", "")                                        \
  X(target_too_long, "requests_refused_total", "reason=\"target_too_long\"", "")                              \
  X(responses_1xx, "responses_total", "code=\"1xx\"", "Responses to clients (the server's and the agent's own), by status class.")         \
  X(responses_2xx, "responses_total", "code=\"2xx\"", "")                                                     \
  X(responses_3xx, "responses_total", "code=\"3xx\"", "")                                                     \
  X(responses_4xx, "responses_total", "code=\"4xx\"", "")                                                     \
  X(responses_5xx, "responses_total", "code=\"5xx\"", "")                                                     \
  X(agent_errors, "agent_error_responses_total", "", "Error responses made by the agent itself (400..505).")  \
  X(parse_errors, "parse_errors_total", "", "Requests rejected by the HTTP parser.")                          \
  X(upstream_bad_responses, "upstream_bad_responses_total", "",                                               \
    "Responses from upstream rejected by the parser (answered 502).")                                         \
  X(queue_waits, "queue_waits_total", "", "Requests that waited for a free upstream channel.")                \
  X(queue_length, "queue_length", "", "Requests waiting for an upstream channel now.")                        \
  X(upstream_connects, "upstream_connects_total", "", "Upstream connections opened.")                         \
  X(upstream_connect_errors, "upstream_connect_errors_total", "", "Upstream connections that failed to open.") \
  X(upstream_active, "upstream_connections", "", "Upstream connections open now.")                            \
  X(upstream_reuses, "upstream_reuses_total", "", "Requests sent on a kept-alive upstream connection.")       \
  X(upstream_limit, "upstream_connection_limit", "",                                                          \
    "Upstream connections the pools may open now (adapts with max_upstream = auto).")                         \
  X(upstream_rejections, "upstream_rejections_total", "",                                                     \
    "Upstream connections the server closed while a newer one waited unserved.")                             \
  X(upstream_stalls, "upstream_stalls_total", "",                                                             \
    "New upstream connections whose first request went unanswered for 1 s.")                                 \
  X(upstream_retries, "upstream_retries_total", "", "GET/HEAD requests retried on a fresh connection.")       \
  X(timeouts_header, "timeouts_total", "kind=\"header\"", "Timeouts, by kind (tunnel: pass-through idle or half-closed too long).") \
  X(timeouts_body, "timeouts_total", "kind=\"body\"", "")                                                     \
  X(timeouts_keepalive, "timeouts_total", "kind=\"keepalive\"", "")                                           \
  X(timeouts_send, "timeouts_total", "kind=\"send\"", "")                                                     \
  X(timeouts_connect, "timeouts_total", "kind=\"connect\"", "")                                               \
  X(timeouts_response, "timeouts_total", "kind=\"response\"", "")                                             \
  X(timeouts_queue, "timeouts_total", "kind=\"queue\"", "")                                                   \
  X(timeouts_tunnel, "timeouts_total", "kind=\"tunnel\"", "")                                                 \
  X(client_aborts, "client_aborts_total", "", "Clients gone before their response was sent.")                 \
  X(spilled_responses, "spilled_responses_total", "", "Responses that spilled to a temporary file.")          \
  X(spilled_bodies, "spilled_bodies_total", "", "Request bodies that went on in a temporary file.")           \
  X(spill_refused, "spill_refused_total", "",                                                                 \
    "Responses kept in memory: spill budget spent or temp_dir not writable.")                                 \
  X(budget_waits, "budget_waits_total", "", "Responses that waited for buffer memory or spill room.")         \
  X(buffer_exhausted, "buffer_exhausted_total", "", "Requests refused because buffer memory was exhausted.")  \
  X(bytes_in, "client_received_bytes_total", "", "Bytes received from clients.")                              \
  X(bytes_out, "client_sent_bytes_total", "", "Bytes sent to clients.")                                       \
  X(tunnels_accepted, "tunnels_accepted_total", "", "Pass-through connections accepted.")                    \
  X(tunnels_active, "tunnels_active", "", "Pass-through connections open now.")                              \
  X(tunnels_kernel, "tunnels_opened_total", "mode=\"kernel\"",                                                \
    "Pass-through connections paired with their server, by the mode that moves their bytes.")               \
  X(tunnels_user, "tunnels_opened_total", "mode=\"user\"", "")                                                \
  X(splice_setup_failures, "splice_setup_failures_total", "",                                                 \
    "Pass-through pairs the kernel splice could not take (their bytes moved in user space).")               \
  X(splice_pauses, "splice_pauses_total", "",                                                                 \
    "Kernel-spliced directions whose receiver fell a budget behind; they went on in user space.")            \
  X(spliced_bytes_up, "tunnel_kernel_bytes_total", "direction=\"up\"",                                  \
    "Pass-through bytes the kernel splice moved (included in tunnel_bytes_total), by direction.")           \
  X(spliced_bytes_down, "tunnel_kernel_bytes_total", "direction=\"down\"", "")                          \
  X(tunnel_bytes_up, "tunnel_bytes_total", "direction=\"up\"",                                               \
    "Pass-through bytes moved, by direction (up: client to server, down: server to client).")               \
  X(tunnel_bytes_down, "tunnel_bytes_total", "direction=\"down\"", "")                                        \
  X(tunnel_half_closes, "tunnel_half_closes_total", "",                                                       \
    "Pass-through ends (FIN) passed on as a shutdown of the peer's writes.")                                  \
  X(tunnel_resets, "tunnel_resets_total", "", "Pass-through connections ended by a reset, passed on as a reset.") \
  X(tunnel_connect_failures, "tunnel_connect_failures_total", "",                                             \
    "Pass-through connections closed: no server up, or its connect failed.")                                  \
  X(upgrades, "upgrades_total", "",                                                                       \
    "HTTP requests with Upgrade (WebSocket...) sent on a connection of their own.")                         \
  X(upgrades_switched, "upgrades_switched_total", "",                                                         \
    "Upgrade requests answered 101 Switching Protocols by the server.")                                       \
  X(upgrades_refused, "upgrades_refused_total", "",                                                           \
    "Upgrade requests the server refused: its answer went to the client as an HTTP response.")              \
  X(connect_established, "connect_requests_total", "result=\"established\"",                                 \
    "CONNECT requests on listeners with connect_targets, by outcome (established: 200 and a tunnel).")         \
  X(connect_not_listed, "connect_requests_total", "result=\"not_listed\"", "")                                 \
  X(connect_failed, "connect_requests_total", "result=\"connect_failed\"", "")                                 \
  X(connect_timed_out, "connect_requests_total", "result=\"connect_timeout\"", "")                             \
  X(access_log_dropped, "access_log_dropped_total", "",                                                      \
    "Access log lines dropped: its writer's queue was full, or the log could not be written.")               \
  X(admin_timeouts, "admin_closed_total", "reason=\"deadline\"",                                               \
    "Admin connections closed by the agent, by reason (5 s deadline, or oldest evicted over 64).")            \
  X(admin_evicted, "admin_closed_total", "reason=\"evicted\"", "")

// The latency histograms: member, Prometheus family (offload_ and _seconds
// added), help. Each is observed at one point of an exchange's walk.
#define OFFLOAD_HISTOGRAMS(X)                                                                                 \
  X(request_duration, "request_duration",                                                                     \
    "From a request's first byte to the last byte of its response sent to the client (requests answered in "  \
    "full; whole milliseconds of the loop clock).")                                                           \
  X(queue_wait, "queue_wait",                                                                                 \
    "From a complete request's queueing to its assignment to a TCP or Unix upstream connection (whole "       \
    "milliseconds of the loop clock; the ring bus is not measured).")                                         \
  X(upstream_response, "upstream_response",                                                                   \
    "From a request's assignment to a TCP or Unix upstream connection to the end of the response read from "  \
    "it (whole milliseconds of the loop clock).")

struct Counters {
#define OFFLOAD_DECLARE(name, family, label, help) std::atomic<uint64_t> name{0};
  OFFLOAD_COUNTERS(OFFLOAD_DECLARE)
#undef OFFLOAD_DECLARE
#define OFFLOAD_DECLARE_HISTOGRAM(name, family, help) Histogram name;
  OFFLOAD_HISTOGRAMS(OFFLOAD_DECLARE_HISTOGRAM)
#undef OFFLOAD_DECLARE_HISTOGRAM
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
