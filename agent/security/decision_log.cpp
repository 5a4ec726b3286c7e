#include "security/decision_log.h"

#include <arpa/inet.h>

#include <string>

#include <fmt/format.h>

#include "ops/log.h"

namespace offload {

DecisionLog::DecisionLog(uint32_t per_second, Sink sink) : per_second_(per_second), sink_(std::move(sink)) {}

void DecisionLog::note(uint64_t now_ms, const IpAddress& source, std::string_view reason, std::string_view listener) {
  const uint64_t second = now_ms / 1000;
  uint64_t seen = second_.load(std::memory_order_relaxed);
  // The first to see a new second starts its count; losing the race means
  // another did. Two shards may each count a line to the old second at the
  // edge: a line more, never a flood.
  if (seen != second && second_.compare_exchange_strong(seen, second, std::memory_order_relaxed))
    in_second_.store(0, std::memory_order_relaxed);
  if (in_second_.fetch_add(1, std::memory_order_relaxed) >= per_second_) {
    left_out_.fetch_add(1, std::memory_order_relaxed);
    left_out_total_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const uint64_t before = left_out_.exchange(0, std::memory_order_relaxed);
  std::string line = fmt::format("security: refused {} on listener {}: {}", address_text(source), listener, reason);
  if (before > 0) line += fmt::format(" ({} more like it left out)", before);
  logged_.fetch_add(1, std::memory_order_relaxed);
  sink_(line);
}

DecisionLog& decision_log() {
  // log_line writes each line at once: lines from several shards do not interleave.
  static DecisionLog log(5, [](std::string_view line) { log_line(LogLevel::kInfo, line); });
  return log;
}

std::string address_text(const IpAddress& a) {
  char buf[INET6_ADDRSTRLEN];
  if (a.is_v4()) inet_ntop(AF_INET, a.bytes + 12, buf, sizeof buf);
  else inet_ntop(AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

}  // namespace offload
