// Per-source state (open connections, the request-rate bucket) in a table
// of fixed size, so that a flood from more distinct sources than it holds
// cannot grow the agent: all memory is allocated once, when it is made.
//
// Sources with open connections are pinned: their count is what
// max_clients_per_source is checked against, so losing it would let a
// source exceed the limit. Only idle sources (no connection) are evicted,
// the least recently used first; when every entry is pinned a new source
// is refused instead (get() gives null). A source must hold a connection
// to send a request, so its bucket is pinned while it can use it; an
// evicted source comes back with a full bucket, which is the price of the
// bound (an attacker must cycle through more sources than the table holds,
// each idle, to get it).
#pragma once

#include <cstdint>
#include <memory>

#include "security/address.h"
#include "security/token_bucket.h"

namespace offload {

struct SourceEntry {
  IpAddress key;            // the source's address masked to its prefix
  TokenBucket bucket;
  uint32_t connections = 0;
  uint32_t prev = 0, next = 0;  // the idle list (connections == 0), most recent first
};

class SourceTable {
 public:
  explicit SourceTable(uint32_t capacity);

  SourceEntry* find(const IpAddress& key);
  // The entry of `key`, made if new (`fresh` says so: its bucket is for the
  // caller to fill), evicting the least recently used idle entry when the
  // table is full. Null when full and every entry has a connection.
  SourceEntry* get(const IpAddress& key, bool* fresh);

  void connect(SourceEntry* e);     // one more open connection: pinned
  void disconnect(SourceEntry* e);  // one fewer; with none left it may be evicted

  uint32_t size() const { return used_; }
  uint32_t capacity() const { return capacity_; }
  uint64_t evictions() const { return evictions_; }
  // How many slots past its hash's own the index holds `key` (or the empty
  // slot ending its search): each is a comparison at every lookup.
  uint32_t probe_distance(const IpAddress& key) const;
  // Bytes allocated for the table: fixed for its life.
  size_t memory_bytes() const;

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  size_t slot_of(const IpAddress& key) const;  // the index slot holding key, or the empty one ending its probe
  void unlink(uint32_t i);
  void link_front(uint32_t i);
  void erase_from_index(const IpAddress& key);

  uint32_t capacity_;
  uint32_t used_ = 0;
  uint64_t evictions_ = 0;
  // entries_[capacity_] is the idle list's sentinel.
  std::unique_ptr<SourceEntry[]> entries_;
  // Open addressing with linear probing over entry numbers, at most half
  // full; removal shifts later slots back (no tombstones).
  std::unique_ptr<uint32_t[]> index_;
  size_t mask_ = 0;
  uint64_t seed_ = 0;  // the hash's key, random per table
};

}  // namespace offload
