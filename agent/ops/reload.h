// What a reload (SIGHUP, `offload-agent reload`) may change and how the
// listening sockets go from one generation of shards to the next.
//
// A reload builds a whole new generation from the re-read configuration
// (validated as `check` does) beside the running one; the running one then
// stops accepting and ends when what it has in flight is done (see
// Shard::request_retire). A socket whose address stays is handed over, the
// same descriptor: closing a SO_REUSEPORT socket drops the connections in
// its accept queue, handing it over loses none. New addresses are opened,
// removed ones shut when the old generation retires and closed when no
// generation uses them any more.
#pragma once

#include <vector>

#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/listen_sockets.h"

namespace offload {

// Throws ConfigError naming the first key of `next` that a reload cannot
// apply, as "KEY: ... (restart the agent to change it)": the number of
// shards and their CPUs (each shard's sockets are its own queue), the admin
// address, the takeover socket, the XDP guard's settings, the pass-through's
// `splice` (its maps are chosen once, for the agent's lifetime),
// `port_range_mode` (a range bound port by port is handed over as it is),
// and shared-memory groups (a bus's socket cannot be held by two generations).
void check_reloadable(const Config& running, const Config& next);

// The same address: family, address and port as bound (":0" matches ":0").
bool same_address(const SocketAddress& a, const SocketAddress& b);

struct Handover {
  // For each shard and each listener of `next`: the running generation's
  // sockets for that address (all of a range bound port by port), or none
  // where they are to be opened.
  AgentSockets fds;
  // The running generation's sockets that `next` keeps.
  std::vector<int> kept;
};
// `running_fds` as Handover::fds, for `running` (same number of shards).
Handover plan_handover(const Config& running, const AgentSockets& running_fds, const Config& next);

// Adds the cumulative counters (the _total families and the histograms) of
// `part`, a generation that has ended, into `total`; its gauges are not
// added (their values ended with it). `total` is the caller's own.
void add_cumulative(Counters& total, const Counters& part);

}  // namespace offload
