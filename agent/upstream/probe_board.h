// Where the one shard that runs a group's active health checks publishes
// each probe's result for the other shards. Probing from every shard would
// send N probes per server per interval and let each shard's view of a
// server drift from the others'; instead shard 0 probes, and every other
// shard replays the same results, in order, into its own balancer (the same
// rise and fall), a fraction of an interval later.
//
// One word per server, written by the prober and read by the followers
// without locks: the count of results published (16 bits, wrapping) and the
// last kKept results (bit 0 the newest, 1 = ok). A follower reads the board
// several times an interval, so it is never more than a result or two
// behind; one that somehow fell more than kKept behind replays the newest
// kKept.
#pragma once

#include <atomic>
#include <cstdint>

namespace offload {

class ProbeBoard {
 public:
  static constexpr uint32_t kKept = 48;

  // The prober's (or, while a reload overlaps, the two generations' probers').
  void publish(bool ok) {
    uint64_t w = word_.load(std::memory_order_relaxed);
    uint64_t next;
    do {
      const uint64_t count = (w >> kKept) + 1;
      const uint64_t results = ((w << 1) | (ok ? 1 : 0)) & kResultsMask;
      next = (count << kKept) | results;
    } while (!word_.compare_exchange_weak(w, next, std::memory_order_release, std::memory_order_relaxed));
  }

  uint16_t count() const { return uint16_t(word_.load(std::memory_order_acquire) >> kKept); }

  // Hands `apply(ok)` the results published since `seen`, oldest first, and
  // moves `seen` on. Returns how many.
  template <class Apply>
  uint32_t replay(uint16_t& seen, Apply&& apply) const {
    const uint64_t w = word_.load(std::memory_order_acquire);
    const uint16_t count = uint16_t(w >> kKept);
    uint32_t n = uint16_t(count - seen);
    if (n > kKept) n = kKept;
    for (uint32_t i = n; i > 0; --i) apply(((w >> (i - 1)) & 1) != 0);
    seen = count;
    return n;
  }

 private:
  static constexpr uint64_t kResultsMask = (uint64_t{1} << kKept) - 1;
  std::atomic<uint64_t> word_{0};
};

}  // namespace offload
