#include "ops/counters.h"

#include <fmt/format.h>

#include <string_view>

#include "ops/version.h"

namespace offload {

namespace {

// Prometheus text: each family's HELP and TYPE once, before its first sample
// (the members of a family are adjacent in OFFLOAD_COUNTERS).
void render_prometheus(const Counters& c, std::string& out) {
  out += "# HELP offload_build_info The agent's version; always 1.\n# TYPE offload_build_info gauge\n";
  out += fmt::format("offload_build_info{{version=\"{}\"}} 1\n", kVersion);
  std::string_view last;
#define OFFLOAD_PROMETHEUS(name, family, label, help)                                                   \
  {                                                                                                     \
    const std::string_view f = family;                                                                  \
    if (f != last) {                                                                                    \
      const bool counter = f.ends_with("_total");                                                       \
      out += fmt::format("# HELP offload_{} {}\n# TYPE offload_{} {}\n", f, help, f, counter ? "counter" : "gauge"); \
      last = f;                                                                                         \
    }                                                                                                   \
    const std::string_view l = label;                                                                   \
    out += fmt::format("offload_{}{}{}{} {}\n", f, l.empty() ? "" : "{", l, l.empty() ? "" : "}",          \
                       c.name.load(std::memory_order_relaxed));                                         \
  }
  OFFLOAD_COUNTERS(OFFLOAD_PROMETHEUS)
#undef OFFLOAD_PROMETHEUS
#define OFFLOAD_PROMETHEUS_HISTOGRAM(name, family, help) \
  out += render_histogram(std::string("offload_") + family + "_seconds", help, c.name);
  OFFLOAD_HISTOGRAMS(OFFLOAD_PROMETHEUS_HISTOGRAM)
#undef OFFLOAD_PROMETHEUS_HISTOGRAM
}

}  // namespace

std::string render_histogram(const std::string& name, const std::string& help, const Histogram& h) {
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < Histogram::kBoundsMs.size(); ++i) {
    cumulative += h.buckets[i].load(std::memory_order_relaxed);
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, double(Histogram::kBoundsMs[i]) / 1000, cumulative);
  }
  cumulative += h.buckets.back().load(std::memory_order_relaxed);
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, cumulative);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, double(h.sum_ms.load(std::memory_order_relaxed)) / 1000,
                     name, cumulative);
  return out;
}

std::string render_counters(const Counters& c, StatsFormat format) {
  std::string out;
  if (format == StatsFormat::kPrometheus) {
    render_prometheus(c, out);
    return out;
  }
  bool first = true;
  if (format == StatsFormat::kJson) out += "{";
#define OFFLOAD_RENDER(name, family, label, help)                                    \
  {                                                                                  \
    uint64_t v = c.name.load(std::memory_order_relaxed);                             \
    if (format == StatsFormat::kText) out += fmt::format("{:<24}{}\n", #name, v);    \
    else out += fmt::format("{}\"{}\":{}", first ? "" : ",", #name, v);               \
    first = false;                                                                   \
  }
  OFFLOAD_COUNTERS(OFFLOAD_RENDER)
#undef OFFLOAD_RENDER
  if (format == StatsFormat::kJson) out += "}\n";
  return out;
}

void add_counters(Counters& total, const Counters& part) {
#define OFFLOAD_ADD(name, family, label, help) \
  total.name.store(total.name.load(std::memory_order_relaxed) + part.name.load(std::memory_order_relaxed), \
                   std::memory_order_relaxed);
  OFFLOAD_COUNTERS(OFFLOAD_ADD)
#undef OFFLOAD_ADD
#define OFFLOAD_ADD_HISTOGRAM(name, family, help) part.name.add_to(total.name);
  OFFLOAD_HISTOGRAMS(OFFLOAD_ADD_HISTOGRAM)
#undef OFFLOAD_ADD_HISTOGRAM
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
