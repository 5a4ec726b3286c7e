// An upstream group of TCP and Unix servers: its servers, the balancer that
// picks one per request, and the requests waiting for a server. Listeners
// name a group; TcpUpstream moves each complete request from the group's
// queue to the server the balancer picks (that server's `pending` list), and
// from there onto one of its connections.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "loop/timer_list.h"
#include "proxy/connection.h"
#include "upstream/balancer.h"
#include "upstream/health_checker.h"
#include "upstream/tcp_pool.h"

namespace offload {

struct UpstreamGroup {
  UpstreamGroup(std::string group_name, BalancePolicy policy, const HealthSpec& health,
                const std::vector<ServerSpec>& specs)
      : name(std::move(group_name)), balancer(policy, health, specs) {}

  std::string name;
  std::string default_host;  // the Host of a request that has none (HTTP/1.0): the first server's address
  Balancer balancer;
  std::vector<std::unique_ptr<TcpPool>> servers;
  // Complete requests that no server has taken yet, oldest first.
  List<ClientConn, &ClientConn::queue_node> ready;
  // Armed while requests wait and every server is down: when the first one
  // may be probed again, the queue is tried once more.
  TimerList wake_list;
  Timer wake;
  // Active health (health = {...}): in shard 0, probes each server, tells
  // the balancer and publishes each result (ServerCounters::probes); in the
  // other shards, `follow` reads those results into this shard's balancer.
  std::unique_ptr<HealthChecker> checker;
  TimerList follow_list;
  Timer follow;
};

}  // namespace offload
