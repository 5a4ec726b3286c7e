#include "security/source_table.h"

#include <cstring>
#include <random>

#include "upstream/hash.h"

namespace offload {
namespace {

// Every bit of the address must reach the index's low bits: IPv4 sources
// differ in the last bytes of the mapped form only, and a multiply alone
// carries a difference upwards, never down (the earlier hash put all of a
// /24 in one slot's probe chain). Two rounds of a finalizer, keyed per
// table so that nobody can pick sources that collide.
size_t hash_of(const IpAddress& a, uint64_t seed) {
  uint64_t lo, hi;
  std::memcpy(&lo, a.bytes, 8);
  std::memcpy(&hi, a.bytes + 8, 8);
  return size_t(mix64(hi ^ mix64(lo ^ seed)));
}

}  // namespace

SourceTable::SourceTable(uint32_t capacity) : capacity_(capacity), entries_(new SourceEntry[capacity + 1]) {
  std::random_device random;
  seed_ = (uint64_t{random()} << 32) | random();
  size_t size = 16;
  while (size < size_t(capacity) * 2) size *= 2;
  index_.reset(new uint32_t[size]);
  std::fill(index_.get(), index_.get() + size, kNone);
  mask_ = size - 1;
  SourceEntry& sentinel = entries_[capacity_];
  sentinel.prev = sentinel.next = capacity_;
}

size_t SourceTable::memory_bytes() const {
  return sizeof(SourceEntry) * (size_t(capacity_) + 1) + sizeof(uint32_t) * (mask_ + 1);
}

size_t SourceTable::slot_of(const IpAddress& key) const {
  size_t i = hash_of(key, seed_) & mask_;
  while (index_[i] != kNone && !(entries_[index_[i]].key == key)) i = (i + 1) & mask_;
  return i;
}

uint32_t SourceTable::probe_distance(const IpAddress& key) const {
  return uint32_t((slot_of(key) - (hash_of(key, seed_) & mask_)) & mask_);
}

SourceEntry* SourceTable::find(const IpAddress& key) {
  uint32_t e = index_[slot_of(key)];
  return e == kNone ? nullptr : &entries_[e];
}

void SourceTable::unlink(uint32_t i) {
  SourceEntry& e = entries_[i];
  entries_[e.prev].next = e.next;
  entries_[e.next].prev = e.prev;
  e.prev = e.next = i;
}

void SourceTable::link_front(uint32_t i) {
  SourceEntry& sentinel = entries_[capacity_];
  SourceEntry& e = entries_[i];
  e.prev = capacity_;
  e.next = sentinel.next;
  entries_[sentinel.next].prev = i;
  sentinel.next = i;
}

// Backward-shift deletion: later entries of the probe run move into the hole.
void SourceTable::erase_from_index(const IpAddress& key) {
  size_t hole = slot_of(key);
  index_[hole] = kNone;
  for (size_t j = (hole + 1) & mask_; index_[j] != kNone; j = (j + 1) & mask_) {
    size_t home = hash_of(entries_[index_[j]].key, seed_) & mask_;
    bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
    if (movable) {
      index_[hole] = index_[j];
      index_[j] = kNone;
      hole = j;
    }
  }
}

SourceEntry* SourceTable::get(const IpAddress& key, bool* fresh) {
  size_t slot = slot_of(key);
  *fresh = index_[slot] == kNone;
  if (!*fresh) {
    uint32_t i = index_[slot];
    if (entries_[i].connections == 0) {  // recently used: to the front
      unlink(i);
      link_front(i);
    }
    return &entries_[i];
  }
  uint32_t i;
  if (used_ < capacity_) {
    i = used_++;
  } else {
    i = entries_[capacity_].prev;  // the least recently used idle entry
    if (i == capacity_) return nullptr;  // every entry has a connection
    unlink(i);
    erase_from_index(entries_[i].key);
    ++evictions_;
    slot = slot_of(key);  // the shift may have moved the empty slot
  }
  SourceEntry& e = entries_[i];
  e = SourceEntry{};
  e.key = key;
  index_[slot] = i;
  link_front(i);
  return &e;
}

void SourceTable::connect(SourceEntry* e) {
  if (e->connections++ == 0) unlink(uint32_t(e - entries_.get()));
}

void SourceTable::disconnect(SourceEntry* e) {
  if (e->connections == 0) return;
  if (--e->connections == 0) link_front(uint32_t(e - entries_.get()));
}

}  // namespace offload
