// Shards and the whole agent's limits: how workers, cpu and cpus resolve to
// a number of shards, and what share of each agent-wide limit a shard gets.
//
// Agent-wide (divided among shards): max_clients, max_upstream, persistent,
// buffer_memory_max, spill_total_max. Dividing them keeps what a user
// configures true whatever the number of shards: the server behind sees at
// most max_upstream connections, the machine at most buffer_memory_max of
// blocks. The price: a shard cannot borrow another's unused share, so with
// uneven load one shard can queue while another has idle connections.
// Everything else (timeouts, per-request and per-response sizes,
// max_clients_per_source) applies as written within each shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/config.h"

namespace offload {

// Checks workers, cpu and cpus against each other and against the CPUs this
// process may run on, and that every shard gets at least one client and one
// upstream connection; then sets workers to the number of shards and cpus to
// one CPU per shard (or none: no pinning). Throws ConfigError naming the key.
void validate_shards(Config& config);

// Parses a CPU list such as "1,2" (the --cpus flag). Throws ConfigError naming `key`.
std::vector<int> parse_cpu_list(const std::string& key, const std::string& value);

// The configuration shard `shard` of `config.workers` runs with: the
// agent-wide limits above divided evenly, the first shards taking one more
// of any remainder so that the shares add up to exactly the whole; `cpu` is
// the shard's own CPU (-1: not pinned). Call after validate().
Config shard_share(const Config& config, uint32_t shard);

}  // namespace offload
