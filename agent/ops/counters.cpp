#include "ops/counters.h"

#include <fmt/format.h>

namespace offload {

std::string render_counters(const Counters& c, StatsFormat format) {
  std::string out;
  bool first = true;
  if (format == StatsFormat::kJson) out += "{";
#define OFFLOAD_RENDER(name, help)                                                   \
  {                                                                                  \
    uint64_t v = c.name.load(std::memory_order_relaxed);                             \
    switch (format) {                                                                \
      case StatsFormat::kText: out += fmt::format("{:<24}{}\n", #name, v); break;    \
      case StatsFormat::kJson:                                                       \
        out += fmt::format("{}\"{}\":{}", first ? "" : ",", #name, v);               \
        break;                                                                       \
      case StatsFormat::kPrometheus:                                                 \
        if (*help) out += fmt::format("# HELP offload_{} {}\n", #name, help);         \
        out += fmt::format("offload_{} {}\n", #name, v);                             \
        break;                                                                       \
    }                                                                                \
    first = false;                                                                   \
  }
  OFFLOAD_COUNTERS(OFFLOAD_RENDER)
#undef OFFLOAD_RENDER
  if (format == StatsFormat::kJson) out += "}\n";
  return out;
}

void add_counters(Counters& total, const Counters& part) {
#define OFFLOAD_ADD(name, help) \
  total.name.store(total.name.load(std::memory_order_relaxed) + part.name.load(std::memory_order_relaxed), \
                   std::memory_order_relaxed);
  OFFLOAD_COUNTERS(OFFLOAD_ADD)
#undef OFFLOAD_ADD
}

std::string render_totals(const std::vector<const Counters*>& parts, size_t shards, StatsFormat format) {
  Counters total;
  for (const Counters* p : parts) add_counters(total, *p);
  std::string out = render_counters(total, format);
  if (format != StatsFormat::kJson || shards < 2) return out;
  // {"accepted":N,...}\n  →  {"accepted":N,...,"shards":[{...},{...}]}\n
  out.resize(out.size() - 2);
  out += ",\"shards\":[";
  for (size_t i = 0; i < shards && i < parts.size(); ++i) {
    std::string one = render_counters(*parts[i], StatsFormat::kJson);
    one.pop_back();  // the newline
    out += (i == 0 ? "" : ",") + one;
  }
  out += "]}\n";
  return out;
}

}  // namespace offload
