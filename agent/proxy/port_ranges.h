// Port-range listeners ("127.0.0.1:9100-9199", up to 4096 ports): how each
// one's ports are served, chosen per generation and said at start-up, one
// line per range listener.
//
//   sk_lookup  one socket per shard, bound to the range's first port, and
//              bpf/sk_dispatch.bpf.c steering every port of the range to it
//              (dispatch/port_dispatch.h). Needs BPF privilege and a build
//              with kernel BTF.
//   bind       one socket per port of the range in every shard (SO_REUSEPORT
//              as any listener's), each with its own accept, all feeding the
//              one listener: its counters, proxy and upstream group. The
//              cost is descriptors, ports x shards of them, checked against
//              RLIMIT_NOFILE before any is opened, so that a range that cannot
//              fit stops the start (or the reload) with one line rather than
//              failing half-way.
//
// port_range_mode picks: "sk_lookup", "bind", or "auto" (sk_lookup when it
// loads and attaches, else bind; --no-bpf is bind). Both serve
// upstream_port = "same": the port a client dialled is the accepted
// socket's local port either way.
//
// A reload hands a range's sockets over as they are (ops/reload.h): one
// bound port by port stays so, whatever sk_lookup could do now, since
// closing its sockets would drop the connections in their queues.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/port_dispatch.h"
#include "ops/config.h"
#include "proxy/listen_sockets.h"

namespace offload {

// Starts sk_lookup for `ranges` and returns what keeps it attached, or null
// with `error` set (PortDispatch::start).
using SkLookupStart = std::function<std::shared_ptr<void>(const std::vector<DispatchRange>& ranges, std::string& error)>;

// Serves the port-range listeners of `config`. `fds` (shard by listener)
// holds at least each listener's socket on its first port in every shard,
// opened or handed over; `start` is empty when the build has no sk_lookup.
// Ranges to bind get their other ports' sockets appended in port order, in
// every shard, each also added to `opened` (for the caller to close if the
// start fails). Returns what keeps sk_lookup attached (null: none needed).
// Throws ConfigError when port_range_mode = "sk_lookup" meets --no-bpf, when
// the ports to bind do not fit the open-file limit, or when a port cannot be
// bound; std::runtime_error when port_range_mode = "sk_lookup" and it
// cannot be had.
std::shared_ptr<void> serve_port_ranges(const Config& config, AgentSockets& fds, std::vector<int>& opened, bool no_bpf,
                                        const SkLookupStart& start);

// Descriptors kept free beyond a range's sockets: the agent's own (rings,
// eventfds, the admin socket) and at least a few clients.
inline constexpr uint64_t kDescriptorReserve = 64;

// Throws ConfigError (naming `what`) unless `needed` more descriptors fit
// under RLIMIT_NOFILE beside those open now and kDescriptorReserve; raises
// the soft limit towards the hard one first.
void check_descriptors(const std::string& what, uint64_t needed);

}  // namespace offload
