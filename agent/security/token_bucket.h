// A token bucket for one source's request rate: `rate` tokens a second up to
// `burst`, one per request. Kept in thousandths of a token and whole
// milliseconds, so refilling is exact integer arithmetic (rate thousandths
// per millisecond) and a test clock can hit every boundary.
#pragma once

#include <algorithm>
#include <cstdint>

namespace offload {

struct RateLimit {
  uint32_t rate = 0;   // tokens (requests) per second; 0: no limit
  uint32_t burst = 0;  // the bucket's size in tokens, at least 1 when rate > 0
};

struct TokenBucket {
  uint64_t milli = 0;     // thousandths of a token in the bucket
  uint64_t stamp_ms = 0;  // when it was last refilled

  // A new source starts with a full bucket: its first burst is allowed.
  void fill(const RateLimit& limit, uint64_t now_ms) {
    milli = uint64_t(limit.burst) * 1000;
    stamp_ms = now_ms;
  }

  // Takes one token if there is one: 0. Otherwise takes nothing and returns
  // the milliseconds until a whole token will be there (at least 1).
  uint64_t take(const RateLimit& limit, uint64_t now_ms) {
    const uint64_t cap = uint64_t(limit.burst) * 1000;
    if (now_ms > stamp_ms) {
      // Capped before multiplying: a source idle for years cannot overflow.
      const uint64_t elapsed = std::min<uint64_t>(now_ms - stamp_ms, cap / limit.rate + 1);
      milli = std::min(cap, milli + elapsed * limit.rate);
      stamp_ms = now_ms;
    }
    if (milli >= 1000) {
      milli -= 1000;
      return 0;
    }
    return (1000 - milli + limit.rate - 1) / limit.rate;
  }
};

}  // namespace offload
