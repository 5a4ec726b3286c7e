#include "ops/shard_limits.h"

#include <sched.h>

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

namespace offload {

namespace {

[[noreturn]] void bad(const std::string& key, const std::string& value, const std::string& expected) {
  throw ConfigError(fmt::format("{}: bad value '{}' (expected {})", key, value, expected));
}

std::string cpu_list_text(const std::vector<int>& cpus) {
  std::string out;
  for (int c : cpus) out += (out.empty() ? "" : ",") + std::to_string(c);
  return out;
}

}  // namespace

// workers, cpu and cpus say one thing between them; every CPU named must be
// one this process may run on.
void validate_shards(Config& config) {
  const bool folded = config.cpus.size() == 1 && config.cpus[0] == config.cpu;  // validated before
  if (config.cpu >= 0 && !config.cpus.empty() && !folded)
    bad("cpu", std::to_string(config.cpu), fmt::format("either cpu or cpus, not both (cpus is [{}])",
                                                       cpu_list_text(config.cpus)));
  if (config.cpu >= 0) config.cpus = {config.cpu};
  for (size_t i = 0; i < config.cpus.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (config.cpus[i] == config.cpus[j])
        bad("cpus", cpu_list_text(config.cpus), "distinct CPUs, one per shard");
  if (!config.cpus.empty() && config.workers != 0 && config.workers != config.cpus.size())
    bad("workers", std::to_string(config.workers),
        fmt::format("{} to match cpus [{}], or workers alone", config.cpus.size(), cpu_list_text(config.cpus)));
  if (config.workers == 0) config.workers = config.cpus.empty() ? 1 : uint32_t(config.cpus.size());
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (!config.cpus.empty() && ::sched_getaffinity(0, sizeof allowed, &allowed) == 0)
    for (int c : config.cpus)
      if (!CPU_ISSET(c, &allowed))
        bad(config.cpu >= 0 ? "cpu" : "cpus", config.cpu >= 0 ? std::to_string(c) : cpu_list_text(config.cpus),
            fmt::format("CPUs this process may run on; {} is not one", c));
  const uint32_t n = config.workers;
  if (config.max_clients < n)
    bad("max_clients", std::to_string(config.max_clients), fmt::format("at least one per shard ({})", n));
  if (config.max_upstream < n)
    bad("max_upstream", std::to_string(config.max_upstream), fmt::format("at least one per shard ({})", n));
  // With an shm: group and several shards, the bus's channels are divided
  // among the shards (upstream/ring_hub.h): nothing to refuse.
}

namespace {

// An even share of `whole` for shard `i` of `n`: the first whole % n shards
// take one more, so the shares add up to exactly `whole`.
uint64_t share(uint64_t whole, uint32_t n, uint32_t i) { return whole / n + (i < whole % n ? 1 : 0); }

}  // namespace

Config shard_share(const Config& config, uint32_t shard) {
  const uint32_t n = std::max<uint32_t>(config.workers, 1);
  Config c = config;
  c.shard_index = shard;
  c.max_clients = uint32_t(share(config.max_clients, n, shard));
  c.max_upstream = uint32_t(share(config.max_upstream, n, shard));
  c.persistent = uint32_t(std::min<uint64_t>(share(config.persistent, n, shard), c.max_upstream));
  c.buffer_memory_max = share(config.buffer_memory_max, n, shard);
  // A server's connections and a listener's clients are agent-wide too; each
  // shard keeps at least one, or its requests could never be served.
  for (GroupConfig& g : c.groups)
    for (ServerConfig& s : g.servers) {
      const uint32_t whole = s.max_connections;
      s.max_connections = std::max<uint32_t>(1, uint32_t(share(whole, n, shard)));
      s.persistent = std::min<uint32_t>(uint32_t(share(s.persistent, n, shard)), s.max_connections);
    }
  for (ListenerConfig& l : c.listeners) l.max_clients = std::max<uint32_t>(1, uint32_t(share(l.max_clients, n, shard)));
  c.spill_total_max = share(config.spill_total_max, n, shard);
  c.cpus.clear();
  if (shard < config.cpus.size()) c.cpus.push_back(config.cpus[shard]);
  c.cpu = c.cpus.empty() ? -1 : c.cpus.front();
  return c;
}

std::vector<int> parse_cpu_list(const std::string& key, const std::string& value) {
  std::vector<int> out;
  size_t start = 0;
  for (;;) {
    size_t comma = value.find(',', start);
    std::string item = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || n > 4095)
      bad(key, value, "CPU numbers from 0 to 4095 separated by commas, such as 1,2");
    out.push_back(int(n));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

}  // namespace offload
