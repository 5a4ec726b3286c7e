// The security screen every client connection passes at accept, and every
// request at its complete head, in user space: a deny list, an optional
// allow-only list, a limit on connections per source and a request rate per
// source. It is the user-space twin of the XDP guard's deny set (which drops
// at the NIC when it is attached) and holds where the guard is not loaded.
//
// A "source" is an address grouped by prefix: per address for IPv4 and per
// /64 for IPv6 by default (one IPv6 host is usually given a whole /64, so
// per address would let it count as billions of sources). Per-source state
// lives in one bounded SourceTable that every shard shares (SharedSources):
// the limits are the agent's, as nginx's limit_req zone and HAProxy's stick
// table are, so a source spread over N shards cannot have N times them.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
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

// The source table of one generation's shards, behind a lock. Each accept
// and each rate-checked request takes it once, for well under a
// microsecond (a probe of the table and a few stores); the shards are few,
// so it is rarely contended. A reload keeps it when the table's shape
// (size, prefixes) is unchanged, so reloading resets no source's count.
struct SharedSources {
  explicit SharedSources(const SourceRules& r)
      : table(r.table_size), ipv4_prefix(r.ipv4_prefix), ipv6_prefix(r.ipv6_prefix) {}
  std::mutex lock;
  SourceTable table;  // under lock (its capacity is fixed: read it without)
  const uint8_t ipv4_prefix, ipv6_prefix;
};

struct Config;

SourceRules source_rules(const Config& config);
// The shared table for `next`'s shards: the running one's when `next`
// groups sources the same way and sizes the table alike, a new one when it
// tracks sources and none fits, null when it tracks none.
std::shared_ptr<SharedSources> share_sources(const Config& next, const Config* running);

enum class Verdict : uint8_t { kAccept, kDenied, kNotAllowed, kOverSourceLimit, kSourceTableFull };

class Screen {
 public:
  // The agent's: config.live_rules and config.sources when run() made them
  // (shared by every shard, and the rules by the admin endpoint), else a
  // set and a table of this screen's own.
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
  // The table's entries in use (every shard's sources).
  uint32_t sources_tracked() const;
  // Sources this screen evicted since the last call (each shard counts its own).
  uint64_t take_evictions() { return std::exchange(evictions_, 0); }

 private:
  bool tracking() const { return rules_.max_connections > 0 || rules_.rate.rate > 0; }
  SourceEntry* entry(const IpAddress& source, uint64_t now_ms);  // under sources_->lock

  std::shared_ptr<LiveRules> live_;
  RulesView rules_view_;
  uint64_t rescreened_ = 0;  // the rule set's version the open connections were last checked against
  std::vector<std::string> listener_names_;
  SourceRules rules_;
  std::shared_ptr<SharedSources> sources_;  // only while tracking()
  uint64_t evictions_ = 0;
};

}  // namespace offload
