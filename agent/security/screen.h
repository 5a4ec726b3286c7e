// The security screen every client connection passes at accept, and every
// request at its complete head, in user space: a deny list, an optional
// allow-only list, a limit on connections per source and a request rate per
// source. It is the user-space twin of the XDP guard's deny set (which drops
// at the NIC when it is attached) and holds where the guard is not loaded.
//
// A "source" is an address grouped by prefix: per address for IPv4 and per
// /64 for IPv6 by default (one IPv6 host is usually given a whole /64, so
// per address would let it count as billions of sources). Per-source state
// lives in one bounded SourceTable.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "security/address.h"
#include "security/live_rules.h"
#include "security/source_table.h"
#include "security/token_bucket.h"

namespace offload {

struct SourceRules {
  uint32_t max_connections = 0;  // open connections per source; 0: no limit
  RateLimit rate;                // requests per source; rate 0: no limit
  uint32_t table_size = 65536;   // sources tracked at once
  uint8_t ipv4_prefix = 32;      // bits of an IPv4 address that make its source
  uint8_t ipv6_prefix = 64;
};

enum class Verdict : uint8_t { kAccept, kDenied, kNotAllowed, kOverSourceLimit, kSourceTableFull };

struct Config;

class Screen {
 public:
  // The agent's: config.live_rules when run() made it (shared by every
  // shard and the admin endpoint), else a set of this screen's own.
  Screen(const Config& config, const SourceRules& rules);
  Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, const SourceRules& rules);
  // A per-source connection limit with a table large enough for every client.
  Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, uint32_t per_source_max, uint32_t max_clients);

  // Nothing to check: the accept path skips the address lookup entirely.
  // Takes a newer rule set first (one atomic load when there is none).
  bool active() {
    rules_view_.refresh();
    return !rules_view_.rules().empty() || tracking();
  }
  bool rate_limited() const { return rules_.rate.rate > 0; }

  // On accept: the verdict, and on kAccept the connection is counted
  // against its source until release().
  // `listener`: its index in the configuration, for its own prefixes.
  Verdict admit(const IpAddress& source, uint64_t now_ms = 0, uint32_t listener = 0);
  void release(const IpAddress& source);

  // At a complete request head: 0 when the source may send it (a token is
  // taken), else the milliseconds until it may send one.
  uint64_t check_rate(const IpAddress& source, uint64_t now_ms, uint32_t listener = 0);

  // After a change to the rule set (the shard is woken for it): true once
  // per new set, when the open connections are to be checked against it.
  bool take_rescreen();
  // What the rules in force say of an open connection's source.
  RuleVerdict recheck(const IpAddress& source, uint32_t listener) const;
  bool close_established() const { return rules_view_.live().close_established(); }
  LiveRules& live() { return *live_; }
  // A refusal into the agent's decision log (sampled), naming the listener.
  void note(const IpAddress& source, const char* reason, uint32_t listener, uint64_t now_ms) const;

  uint32_t connections_from(const IpAddress& source) const;
  // The address `a` counts as: masked to its family's prefix.
  IpAddress source_of(const IpAddress& a) const;
  const SourceTable* table() const { return table_.get(); }
  uint64_t evictions() const { return table_ ? table_->evictions() : 0; }

 private:
  bool tracking() const { return rules_.max_connections > 0 || rules_.rate.rate > 0; }
  SourceEntry* entry(const IpAddress& source, uint64_t now_ms);

  std::shared_ptr<LiveRules> live_;
  RulesView rules_view_;
  uint64_t rescreened_ = 0;  // the rule set's version the open connections were last checked against
  std::vector<std::string> listener_names_;
  SourceRules rules_;
  std::unique_ptr<SourceTable> table_;  // only while tracking()
};

}  // namespace offload
