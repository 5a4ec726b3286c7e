// A latency histogram as cheap as a counter: fixed bucket bounds, one count
// per bucket (not cumulative, so an observation touches one slot) and a sum,
// each a relaxed atomic with one writer (the shard that owns it, like the
// Counters it lives in). The admin thread sums the shards' and renders the
// cumulative Prometheus form. Observations are whole milliseconds of the
// loop's batch clock: the hot path reads no clock of its own.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace offload {

struct Histogram {
  // Upper bounds in milliseconds (Prometheus `le`, rendered in seconds); a
  // last, implicit bucket takes the rest (+Inf).
  static constexpr std::array<uint64_t, 13> kBoundsMs{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

  std::array<std::atomic<uint64_t>, kBoundsMs.size() + 1> buckets{};
  std::atomic<uint64_t> sum_ms{0};

  void observe(uint64_t ms) {
    size_t i = 0;
    while (i < kBoundsMs.size() && ms > kBoundsMs[i]) ++i;
    buckets[i].store(buckets[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    sum_ms.store(sum_ms.load(std::memory_order_relaxed) + ms, std::memory_order_relaxed);
  }

  uint64_t count() const {
    uint64_t n = 0;
    for (const auto& b : buckets) n += b.load(std::memory_order_relaxed);
    return n;
  }

  // `total` is the caller's own (the admin thread's sum of the shards').
  void add_to(Histogram& total) const {
    for (size_t i = 0; i < buckets.size(); ++i)
      total.buckets[i].store(total.buckets[i].load(std::memory_order_relaxed) +
                                 buckets[i].load(std::memory_order_relaxed),
                             std::memory_order_relaxed);
    total.sum_ms.store(total.sum_ms.load(std::memory_order_relaxed) + sum_ms.load(std::memory_order_relaxed),
                       std::memory_order_relaxed);
  }
};

// The Prometheus text of one histogram family named `name` (offload_ and
// _seconds included by the caller): HELP, TYPE, cumulative _bucket lines,
// _sum and _count. The count is the +Inf bucket, so the two always agree.
std::string render_histogram(const std::string& name, const std::string& help, const Histogram& h);

}  // namespace offload
