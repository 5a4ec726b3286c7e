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

}  // namespace offload
