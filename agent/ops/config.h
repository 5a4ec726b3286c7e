// The agent's configuration: one struct, filled from TOML, then from flags
// (a flag wins over the file), then validated as a whole.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/socket.h>

namespace offload {

// One bad setting: names the key, the value and what was expected.
// Caught at start-up and printed as one line with exit code 2.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A socket address parsed from "127.0.0.1:8080", "[::1]:8080" or a Unix path.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;  // as the user wrote it, for messages
  int family() const { return storage.ss_family; }
};

struct UpstreamTarget {
  enum class Kind { kTcp, kUnix, kShm } kind = Kind::kTcp;
  SocketAddress address;  // kTcp, kUnix
  std::string shm_name;   // kShm
  std::string text;       // as written: tcp://127.0.0.1:8000
};

struct Config {
  std::vector<SocketAddress> listen;
  UpstreamTarget upstream;
  int cpu = -1;                       // pin the event loop to this core; -1: no pinning
  // Shards: one thread and one io_uring each. `cpus` pins shard i to cpus[i]
  // and sets their number; `cpu = K` is cpus = [K]. After validate(),
  // workers is the number of shards and cpus is empty or has one per shard.
  uint32_t workers = 0;               // 0: unset (one per entry of cpus, else 1)
  std::vector<int> cpus;

  // The whole agent's limits; each shard gets its share (ops/shard_limits.h).
  uint32_t max_clients = 10000;
  uint32_t max_upstream = 8;          // bus connections, far fewer than clients
  uint32_t persistent = 4;            // opened at start-up and kept

  // Request limits.
  uint32_t header_bytes_max = 16 * 1024;
  uint32_t header_count_max = 100;
  uint64_t body_bytes_max = 16ull << 20;
  uint64_t body_buffer = 64 * 1024;   // in memory per request body, then a temporary file

  // Response buffering: in memory up to response_buffer, then an unlinked
  // temporary file up to response_spill_max, then back-pressure.
  uint64_t response_buffer = 256 * 1024;
  uint64_t response_spill_max = 1ull << 30;
  uint64_t spill_total_max = 4ull << 30;  // all spill files' unsent bytes together
  std::string temp_dir = "/tmp";
  uint64_t buffer_memory_max = 512ull << 20;  // all shards' data blocks together

  // Timeouts.
  uint32_t header_timeout_ms = 10000;     // whole request head
  uint32_t body_timeout_ms = 30000;       // between two reads of the body
  uint32_t keepalive_timeout_ms = 75000;  // idle between requests
  uint32_t send_timeout_ms = 60000;       // between two sends that make progress
  uint32_t connect_timeout_ms = 5000;
  uint32_t response_timeout_ms = 60000;   // between two reads from upstream
  uint32_t queue_timeout_ms = 30000;      // waiting for a free upstream channel
  uint32_t drain_timeout_ms = 10000;      // SIGTERM: finish in-flight requests

  // The ring bus (shm:NAME): bytes of each ring. A request travels as one
  // record, so a request larger than this gets 413 over the ring.
  uint64_t ring_bytes = 2ull << 20;
  uint32_t ring_depth = 16;               // requests one ring channel carries at once

  // io_uring and receive buffers.
  uint32_t recv_buffers = 256;            // provided buffers, a power of two
  uint32_t recv_buffer_bytes = 4096;

  std::string admin = "127.0.0.1:9901";   // "off" disables the admin endpoint

  // The security screen at accept (user space; the XDP guard does the deny
  // set at the NIC when attached): CIDR lists and a per-source limit.
  std::vector<std::string> deny;
  std::vector<std::string> allow;          // non-empty: only these sources
  uint32_t max_clients_per_source = 0;     // 0: no limit

  // The XDP guard, attached by `run` for its lifetime when xdp_iface is set
  // (service ports = the listen ports, steering to `cpu`).
  std::string xdp_iface;
  std::string xdp_mode = "auto";          // auto | native | generic
  uint32_t xdp_syn_rate = 0;              // SYNs per second per source; 0: no limit
  uint32_t xdp_syn_burst = 0;
};

// Parses "4096", "64k", "8m", "1g" (powers of 1024). Throws ConfigError naming `key`.
uint64_t parse_size(const std::string& key, const std::string& value);

// Parses "127.0.0.1:8080", "[::1]:8080", "localhost:8080" (numeric only: no DNS).
SocketAddress parse_socket_address(const std::string& key, const std::string& value);

// Parses "tcp://H:P", "unix:/path", "shm:NAME" (a bare "H:P" means tcp).
UpstreamTarget parse_upstream(const std::string& key, const std::string& value);

// Loads a TOML file into `config`. Unknown keys and bad values throw ConfigError.
void load_config_file(const std::string& path, Config& config);

// Checks the settings against each other; throws ConfigError. Resolves
// workers, cpu and cpus (see Config::workers).
void validate(Config& config);


}  // namespace offload

namespace offload {
// The numeric settings by TOML key ("max_clients"); flags are the same names
// with dashes. Sets `key` from a flag's text; false if there is no such key.
bool set_number_from_flag(Config& config, const std::string& key, const std::string& value);
std::vector<std::string> number_key_names();
}  // namespace offload
