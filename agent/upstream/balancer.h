// Which server of an upstream group gets the next request.
//
// A pure component: no sockets, no clock of its own (every call that depends
// on time takes `now_ms`), no allocation after construction. The caller owns
// the loop around it:
//
//   int i = balancer.pick(now, source_hash);   // -1: wait, see next_change_ms
//   balancer.started(i);                       // the request goes out on i
//   ... report_success(i, now) / report_failure(i, now) on connect or reset
//   balancer.finished(i);                      // the exchange on i is over
//
// Every pick() that returns a server must be followed by started() for the
// request it sends (a probing server counts its one probe from the pick).
// A server can take a request when its health allows it (server_health.h)
// and it holds fewer than max_outstanding requests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "upstream/server_health.h"

namespace offload {

enum class BalancePolicy : uint8_t {
  kLeastOutstanding,  // fewest outstanding per weight; ties by weighted round-robin
  kRoundRobin,        // smooth weighted round-robin
  kSourceHash,        // weighted rendezvous hashing of the source
};

struct ServerSpec {
  uint32_t weight = 1;           // >= 1
  uint32_t max_outstanding = 0;  // requests at once; 0 = no cap
  // The server's identity for source-hash, e.g. a hash of its address, so
  // that reordering the configured servers does not move sources. 0: use
  // the index.
  uint64_t hash_key = 0;
};

struct ServerStats {
  HealthState state;
  const char* state_name;  // "up", "down", "probing"
  uint32_t consecutive_failures;
  uint32_t outstanding;
  uint64_t picks_total;
  uint64_t failures_total;
  uint64_t downs_total;    // times taken out, by either kind of health
};

class Balancer {
 public:
  Balancer(BalancePolicy policy, const HealthSpec& health, const std::vector<ServerSpec>& servers);

  size_t size() const { return servers_.size(); }
  BalancePolicy policy() const { return policy_; }

  // The server for the next request, or -1 when none can take one now (all
  // down, probing with their probe out, or at their cap). source_hash is
  // used by kSourceHash only.
  int pick(uint64_t now_ms, uint64_t source_hash = 0);

  void started(size_t i);
  void finished(size_t i);

  // Passive health, from live traffic: a connect failure or a reset, or a
  // request that got its answer. Each returns true when the report made the
  // server available again (wake the requests waiting for this group).
  bool report_failure(size_t i, uint64_t now_ms);
  bool report_success(size_t i, uint64_t now_ms);
  // Active health: one health-check result. Only with HealthSpec::active.
  bool report_probe(size_t i, bool ok, uint64_t now_ms);

  // Would pick() return a server now?
  bool any_available(uint64_t now_ms) const;
  // The earliest moment after now_ms at which a down server turns probing
  // (arm a timer for it to wake waiting requests); UINT64_MAX when none
  // will by time alone (the rest wait for probes, or nothing is down).
  uint64_t next_change_ms(uint64_t now_ms) const;

  ServerStats stats(size_t i, uint64_t now_ms) const;

 private:
  struct Server {
    uint32_t weight;
    uint32_t max_outstanding;
    uint64_t hash_seed;       // mixed hash_key
    uint32_t outstanding = 0;
    int64_t rr_current = 0;   // smooth weighted round-robin
    uint64_t picks_total = 0;
    uint64_t failures_total = 0;
    ServerHealth health;
  };

  bool can_take(const Server& s, uint64_t now_ms) const;
  int pick_least_outstanding(uint64_t now_ms);
  int pick_round_robin(uint64_t now_ms, const Server* tied_with);
  int pick_source_hash(uint64_t now_ms, uint64_t source_hash) const;
  Server& at(size_t i);
  const Server& at(size_t i) const;

  BalancePolicy policy_;
  HealthSpec health_;
  bool uniform_weights_ = true;
  std::vector<Server> servers_;
};

}  // namespace offload
