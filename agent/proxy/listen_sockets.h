// Who holds which listening sockets. A listener has one socket per shard,
// all bound with SO_REUSEPORT to its address; a port range served without
// sk_lookup has one per port of the range in every shard (the first port
// first), all feeding the same listener. These lists are what a reload
// hands over from one generation of shards to the next.
#pragma once

#include <vector>

namespace offload {

// One shard's sockets: for each listener of the configuration, in its order,
// that listener's sockets (never empty once opened).
using ShardSockets = std::vector<std::vector<int>>;
// Every shard's, by shard.
using AgentSockets = std::vector<ShardSockets>;

// A shard's sockets in one list, listener after listener.
inline std::vector<int> flat(const ShardSockets& shard) {
  std::vector<int> all;
  for (const std::vector<int>& l : shard) all.insert(all.end(), l.begin(), l.end());
  return all;
}

}  // namespace offload
