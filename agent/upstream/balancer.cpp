#include "upstream/balancer.h"

#include <cmath>

#include "loop/check.h"
#include "upstream/hash.h"

namespace offload {

namespace {

// Weighted rendezvous score: with u uniform in (0, 1), w / -ln(u) is largest
// on each server with probability proportional to w (the exponential race),
// and it depends only on the (source, server) pair, so removing one server
// moves only the sources it held.
double weighted_score(uint64_t h, uint32_t weight) {
  // The top 53 bits, centred in their step: u is never 0 nor 1.
  double u = (static_cast<double>(h >> 11) + 0.5) * 0x1p-53;
  return static_cast<double>(weight) / -std::log(u);
}

}  // namespace

Balancer::Balancer(BalancePolicy policy, const HealthSpec& health,
                   const std::vector<ServerSpec>& servers)
    : policy_(policy), health_(health) {
  OFFLOAD_ASSERT(!servers.empty());
  // pick() returns an int index.
  OFFLOAD_ASSERT(servers.size() <= static_cast<size_t>(INT32_MAX));
  OFFLOAD_ASSERT(!health_.active || (health_.rise >= 1 && health_.fall >= 1));
  servers_.reserve(servers.size());
  for (size_t i = 0; i < servers.size(); ++i) {
    const ServerSpec& spec = servers[i];
    OFFLOAD_ASSERT(spec.weight >= 1);
    uint64_t key = spec.hash_key != 0 ? spec.hash_key : i + 1;
    servers_.push_back(Server{spec.weight, spec.max_outstanding, mix64(key)});
    if (spec.weight != servers[0].weight) uniform_weights_ = false;
  }
}

Balancer::Server& Balancer::at(size_t i) {
  OFFLOAD_ASSERT(i < servers_.size());
  return servers_[i];
}

const Balancer::Server& Balancer::at(size_t i) const {
  OFFLOAD_ASSERT(i < servers_.size());
  return servers_[i];
}

bool Balancer::can_take(const Server& s, uint64_t now_ms) const {
  if (s.max_outstanding != 0 && s.outstanding >= s.max_outstanding) return false;
  return s.health.can_take(now_ms);
}

int Balancer::pick(uint64_t now_ms, uint64_t source_hash) {
  int i = -1;
  switch (policy_) {
    case BalancePolicy::kLeastOutstanding: i = pick_least_outstanding(now_ms); break;
    case BalancePolicy::kRoundRobin: i = pick_round_robin(now_ms, nullptr); break;
    case BalancePolicy::kSourceHash: i = pick_source_hash(now_ms, source_hash); break;
  }
  if (i < 0) return -1;
  Server& s = at(static_cast<size_t>(i));
  OFFLOAD_ASSERT(can_take(s, now_ms));
  ++s.picks_total;
  s.health.on_pick(now_ms);
  return i;
}

// Fewest outstanding per weight: a/wa < b/wb compared as a*wb < b*wa (both
// factors fit in 32 bits, so the products cannot overflow 64). Among the
// servers tied for least, smooth weighted round-robin chooses, so idle
// servers share in their weights and equal ones take turns (nginx's
// least_conn does the same).
int Balancer::pick_least_outstanding(uint64_t now_ms) {
  const Server* best = nullptr;
  for (const Server& s : servers_) {
    if (!can_take(s, now_ms)) continue;
    if (best == nullptr || uint64_t{s.outstanding} * best->weight <
                               uint64_t{best->outstanding} * s.weight) {
      best = &s;
    }
  }
  if (best == nullptr) return -1;
  return pick_round_robin(now_ms, best);
}

// Smooth weighted round-robin (nginx's): every candidate gains its weight,
// the one with the most credit is chosen and pays the total. Weights 5,1,1
// give a a b a c a a, not five a's in a row. `tied_with`, when set, limits
// the candidates to those with the same outstanding/weight as it.
int Balancer::pick_round_robin(uint64_t now_ms, const Server* tied_with) {
  Server* best = nullptr;
  int64_t total = 0;
  for (Server& s : servers_) {
    if (!can_take(s, now_ms)) continue;
    if (tied_with != nullptr && uint64_t{s.outstanding} * tied_with->weight !=
                                    uint64_t{tied_with->outstanding} * s.weight) {
      continue;
    }
    s.rr_current += s.weight;
    total += s.weight;
    if (best == nullptr || s.rr_current > best->rr_current) best = &s;
  }
  if (best == nullptr) return -1;
  best->rr_current -= total;
  return static_cast<int>(best - servers_.data());
}

// Rendezvous (highest random weight) hashing over the servers that can take
// a request: the pair (source, server) alone decides each score, so a
// source stays put while its server is available, and a server that leaves
// hands on only its own sources. With equal weights the order of the raw
// hashes is the order of the scores, so no logarithm is needed.
int Balancer::pick_source_hash(uint64_t now_ms, uint64_t source_hash) const {
  uint64_t source = mix64(source_hash);
  int best = -1;
  uint64_t best_hash = 0;
  double best_score = 0;
  for (size_t i = 0; i < servers_.size(); ++i) {
    const Server& s = servers_[i];
    if (!can_take(s, now_ms)) continue;
    uint64_t h = mix64(source ^ s.hash_seed);
    if (uniform_weights_) {
      if (best < 0 || h > best_hash) {
        best = static_cast<int>(i);
        best_hash = h;
      }
      continue;
    }
    double score = weighted_score(h, s.weight);
    if (best < 0 || score > best_score) {
      best = static_cast<int>(i);
      best_score = score;
    }
  }
  return best;
}

void Balancer::started(size_t i) {
  Server& s = at(i);
  OFFLOAD_ASSERT(s.outstanding < UINT32_MAX);
  ++s.outstanding;
}

void Balancer::finished(size_t i) {
  Server& s = at(i);
  OFFLOAD_ASSERT(s.outstanding > 0);
  --s.outstanding;
  // With nothing outstanding no probe can be in flight, even if its end
  // was never reported (e.g. the client left before the connect finished).
  if (s.outstanding == 0) s.health.on_idle();
}

bool Balancer::report_failure(size_t i, uint64_t now_ms) {
  Server& s = at(i);
  ++s.failures_total;
  return s.health.on_failure(health_, now_ms);
}

bool Balancer::report_success(size_t i, uint64_t now_ms) {
  return at(i).health.on_success(health_, now_ms);
}

bool Balancer::report_probe(size_t i, bool ok, uint64_t now_ms) {
  OFFLOAD_ASSERT(health_.active);
  return at(i).health.on_probe(health_, ok, now_ms);
}

bool Balancer::any_available(uint64_t now_ms) const {
  for (const Server& s : servers_) {
    if (can_take(s, now_ms)) return true;
  }
  return false;
}

uint64_t Balancer::next_change_ms(uint64_t now_ms) const {
  uint64_t next = UINT64_MAX;
  for (const Server& s : servers_) {
    uint64_t until = s.health.down_until_ms();
    if (until > now_ms && until < next) next = until;  // kHeld never wins
  }
  return next;
}

ServerStats Balancer::stats(size_t i, uint64_t now_ms) const {
  const Server& s = at(i);
  HealthState state = s.health.state(now_ms);
  return ServerStats{state,
                     health_state_name(state),
                     s.health.consecutive_failures(),
                     s.outstanding,
                     s.picks_total,
                     s.failures_total,
                     s.health.downs_total()};
}

}  // namespace offload
