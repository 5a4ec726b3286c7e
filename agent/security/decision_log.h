// A sample of the screen's and the request policy's refusals in the log:
// source, reason and listener, at most `per_second` lines in any one second
// of the agent's clock, each line saying how many were left out before it.
// Not a LogLimiter (ops/log.h): that one has one owner, this one is shared
// by every shard, so its counts are atomics.
// A flood of refusals costs a few lines and an atomic add each, not a line
// each. One log for the whole agent: every shard writes through it, so the
// bound holds whatever the number of shards.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "security/address.h"

namespace offload {

class DecisionLog {
 public:
  using Sink = std::function<void(std::string_view line)>;
  DecisionLog(uint32_t per_second, Sink sink);

  // One refusal at `now_ms` (a monotonic clock, the shard loop's).
  void note(uint64_t now_ms, const IpAddress& source, std::string_view reason, std::string_view listener);
  uint64_t logged() const { return logged_.load(std::memory_order_relaxed); }
  uint64_t left_out() const { return left_out_total_.load(std::memory_order_relaxed); }

 private:
  uint32_t per_second_;
  Sink sink_;
  std::atomic<uint64_t> second_{UINT64_MAX};  // the second lines are counted in
  std::atomic<uint32_t> in_second_{0};
  std::atomic<uint64_t> left_out_{0};         // since the last line
  std::atomic<uint64_t> left_out_total_{0};
  std::atomic<uint64_t> logged_{0};
};

// The agent's: 5 lines a second, at level info, through log_line().
DecisionLog& decision_log();

// "203.0.113.7" or "2001:db8::1".
std::string address_text(const IpAddress& a);

}  // namespace offload
