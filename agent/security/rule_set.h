// The allow and deny prefixes in force, as one immutable value: built once
// per change (config at start, each `deny add` and the like later) and then
// only read, by every shard at once, without locks (see live_rules.h).
//
// Longest prefix wins: of every allow and deny prefix that contains the
// source, the longest decides (deny when the same prefix is in both). A
// source no prefix contains is accepted, unless there are allow prefixes:
// then only what they (or a longer allow) contain is. A listener sees the
// global prefixes and its own together, ranked by the same rule.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "security/address.h"

namespace offload {

// What the rules say of one source (the screen's verdicts kAccept,
// kDenied and kNotAllowed are these).
enum class RuleVerdict : uint8_t { kAccept, kDenied, kNotAllowed };

struct PrefixLists {
  std::vector<Prefix> deny;
  std::vector<Prefix> allow;
  bool empty() const { return deny.empty() && allow.empty(); }
};

// One ranked table: every prefix with its action, longest first. A prefix
// is IPv4 when it lies in the mapped range (::ffff:0:0/96 and longer).
class PrefixTable {
 public:
  PrefixTable() = default;
  explicit PrefixTable(const std::vector<const PrefixLists*>& parts);
  RuleVerdict check(const IpAddress& a) const;
  bool empty() const { return v4_.entries.empty() && v6_.entries.empty(); }

 private:
  struct Entry {
    IpAddress address;  // masked to `bits`
    uint8_t bits;
    bool deny;
  };
  // An address as two big-endian words: their order is the bytes' order,
  // compared in two integer steps instead of a memcmp (the accept path
  // does a binary search per prefix length present).
  struct Key {
    uint64_t hi, lo;
    static Key of(const IpAddress& a);
    Key operator&(const Key& m) const { return {hi & m.hi, lo & m.lo}; }
    bool operator<(const Key& o) const { return hi < o.hi || (hi == o.hi && lo < o.lo); }
    bool operator==(const Key& o) const { return hi == o.hi && lo == o.lo; }
  };
  // Sorted by bits (longest first), then address, deny before allow: one
  // binary search per distinct length, at most 129 of them.
  struct Ranked {
    std::vector<Entry> entries;
    std::vector<Key> keys;  // entries[i].address, as a Key
    struct Run {
      uint8_t bits;
      uint32_t end;  // entries of this length end here (they start where the last run ended)
      Key mask;      // the first `bits` bits set
    };
    std::vector<Run> runs;  // one per distinct length present, longest first
    void sort();
    const Entry* longest_match(const IpAddress& a) const;
  };
  // One per family: an IPv6 prefix such as ::/64 never holds an IPv4
  // address, though its mapped form (::ffff:a.b.c.d) lies inside it.
  Ranked v4_, v6_;
  bool allow_only_ = false;
};

class RuleSet {
 public:
  // `listeners[i]`: listener i's own prefixes (fewer entries than listeners: none).
  RuleSet(PrefixLists global, std::vector<PrefixLists> listeners);

  RuleVerdict check(const IpAddress& a, uint32_t listener) const;
  // The global denies the XDP guard may hold. The guard drops a denied
  // prefix whole, before any allow, so a deny with an allow inside it (the
  // global list's or any listener's: longest wins here) stays out of it and
  // is screened here alone; otherwise the guard would drop what the agent
  // lets in.
  std::vector<Prefix> guard_denies() const;
  // No prefix anywhere: the accept path need not look up the peer.
  bool empty() const { return empty_; }
  const PrefixLists& global() const { return global_; }
  const std::vector<PrefixLists>& listeners() const { return listeners_; }

 private:
  PrefixLists global_;
  std::vector<PrefixLists> listeners_;
  PrefixTable global_table_;
  std::vector<PrefixTable> tables_;  // per listener: global and its own
  bool empty_ = true;
};

// "203.0.113.0/24", "2001:db8::/32": the form parse_prefix() reads.
std::string prefix_text(const Prefix& p);

}  // namespace offload
