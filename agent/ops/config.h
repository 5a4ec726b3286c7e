// The agent's configuration: one struct, filled from TOML, then from flags
// (a flag wins over the file), then validated as a whole.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/socket.h>

namespace offload {

class LiveRules;
struct SharedSources;

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

// The port of an IPv4 or IPv6 address (host order; 0 for others), and the
// same address with another port.
uint16_t port_of(const SocketAddress& a);
void set_port(SocketAddress& a, uint16_t port);

struct UpstreamTarget {
  enum class Kind { kTcp, kUnix, kShm } kind = Kind::kTcp;
  SocketAddress address;  // kTcp, kUnix
  std::string shm_name;   // kShm
  std::string text;       // as written: tcp://127.0.0.1:8000
};

// How a group picks a server for the next request.
enum class Balance { kLeastOutstanding, kRoundRobin, kSourceHash };
const char* balance_name(Balance balance);  // "least-outstanding", as in TOML

// Active health: a GET of `path` every interval; `rise` passes bring a
// server back, `fall` failures take it out. Off unless `health = {...}` is set.
struct HealthConfig {
  bool enabled = false;
  std::string path = "/health";
  uint32_t interval_ms = 2000;
  uint32_t timeout_ms = 1000;  // below interval_ms, so probes never overlap
  uint32_t rise = 2;
  uint32_t fall = 3;
};

// One member of an [[upstream]] group.
struct ServerConfig {
  UpstreamTarget target;
  uint32_t weight = 1;
  // After validate(): the server's own value if its table set one, else the
  // global max_upstream / persistent (persistent capped at max_connections).
  uint32_t max_connections = 0;
  uint32_t persistent = 0;
  std::vector<std::string> explicit_keys;  // keys its table set; the rest follow the globals
};

// [[upstream]]: a named set of servers and how to spread requests over them.
struct GroupConfig {
  std::string name = "default";
  std::vector<ServerConfig> servers;
  Balance balance = Balance::kLeastOutstanding;
  uint32_t max_fails = 3;            // consecutive connect failures or resets; 0: never taken out
  uint32_t fail_timeout_ms = 10000;  // out this long, then probed back in
  HealthConfig health;
  std::string where = "upstream";    // how errors name it: "upstream[1]", or "upstream" for the flat form
  // The shared-memory bus (its one server is shm:NAME; validate() keeps it alone in its group).
  bool is_bus() const { return !servers.empty() && servers.front().target.kind == UpstreamTarget::Kind::kShm; }
};

// A listener's checks on every complete request head, before any upstream
// work (`security = { ... }` in its [[listener]] table).
struct ListenerSecurity {
  enum class Auth : uint8_t { kNone, kBearer, kApiKey };
  Auth auth = Auth::kNone;
  std::string header;                // the field carrying the token; default Authorization / X-API-Key
  std::string token_file;            // one token per line; never on the command line
  std::vector<std::string> tokens;   // read from token_file by validate(); never printed
  std::vector<std::string> methods;  // the methods it allows (405 else); empty: any
  uint32_t target_bytes_max = 8192;  // request-target length (414 beyond)
  // Source prefixes of this listener, ranked with the global ones (longest wins).
  std::vector<std::string> deny;
  std::vector<std::string> allow;
};
const char* auth_name(ListenerSecurity::Auth auth);  // "none", "bearer", "api-key", as in TOML

// One entry of a listener's connect_targets: a numeric address and a port,
// or a range of ports ("10.0.0.5:8000-8099": address holds the first port).
struct ConnectTarget {
  SocketAddress address;
  uint16_t port_last = 0;  // 0: the one port of `address`
  // Does this entry allow a CONNECT to `a` (same family, address and a port in range)?
  bool allows(const SocketAddress& a) const;
};

// [[listener]]: one listening address, the proxy that serves it, its group
// and its limits. After validate() every limit holds a value: the listener's
// own if its table set one, else the global value of the same name.
struct ListenerConfig {
  std::string name;                  // default: the address as written
  SocketAddress address;
  // A port range, "127.0.0.1:9100-9199": address holds its first port and
  // this its last (one socket through sk_lookup, else one per port); 0: one port.
  uint16_t port_last = 0;
  bool upstream_port_same = false;   // upstream_port = "same": the server's port is the one the client dialled
  std::string proxy = "http";        // "http" or "passthrough"
  std::string upstream;              // the group's name; empty: the first group
  size_t group = 0;                  // index into Config::groups, set by validate()

  uint32_t max_clients = 0;
  uint32_t header_bytes_max = 0;
  uint32_t header_count_max = 0;
  uint64_t body_bytes_max = 0;
  uint32_t header_timeout_ms = 0;
  uint32_t body_timeout_ms = 0;
  uint32_t keepalive_timeout_ms = 0;
  uint32_t send_timeout_ms = 0;
  uint32_t queue_timeout_ms = 0;
  uint32_t response_timeout_ms = 0;
  uint32_t tunnel_timeout_ms = 0;      // passthrough listeners
  uint32_t half_close_timeout_ms = 0;
  std::vector<std::string> explicit_keys;  // limits its table set; the rest follow the globals
  ListenerSecurity security;
  // connect_targets = [...] (http listeners): what a CONNECT may open, then
  // tunnelled; empty: CONNECT gets 405.
  std::vector<ConnectTarget> connect_targets;
  std::string where = "listen";      // how errors name it: "listener[0]", "listen" or "--listen"
};


struct Config {
  // The flat form: one listener per address, one group "default" with one
  // server. After validate() they mirror the tables below (every listener's
  // address; the first listener's group's first server), so code written
  // for one listener and one upstream keeps working.
  std::vector<SocketAddress> listen;
  UpstreamTarget upstream;
  // The table form, [[listener]] and [[upstream]]. validate() fills them
  // from the flat form when the file has no tables.
  std::vector<ListenerConfig> listeners;
  std::vector<GroupConfig> groups;
  int cpu = -1;                       // pin the event loop to this core; -1: no pinning
  // Shards: one thread and one io_uring each. `cpus` pins shard i to cpus[i]
  // and sets their number; `cpu = K` is cpus = [K]. After validate(),
  // workers is the number of shards and cpus is empty or has one per shard.
  uint32_t workers = 0;               // 0: unset (one per entry of cpus, else 1)
  std::vector<int> cpus;

  // Which shard a shard's own copy is for (shard_share sets it): shard 0
  // runs the work done once per agent, such as active health checks.
  uint32_t shard_index = 0;
  // The whole agent's limits; each shard gets its share (ops/shard_limits.h).
  uint32_t max_clients = 10000;
  // Bus connections, far fewer than clients. "auto" (the default): an
  // adaptive limit up to max_upstream that grows while the server keeps
  // pace and shrinks when it closes or stalls connections.
  uint32_t max_upstream = 64;
  bool max_upstream_auto = true;
  uint32_t persistent = 4;            // the limit "auto" starts at; TCP connections open on demand

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
  uint32_t tunnel_timeout_ms = 3600000;   // pass-through: nothing moving either way
  uint32_t half_close_timeout_ms = 60000; // pass-through: one side ended, nothing moving the other way

  // The ring bus (shm:NAME): bytes of each ring. A request travels as one
  // record, so a request larger than this gets 413 over the ring.
  uint64_t ring_bytes = 2ull << 20;
  uint32_t ring_depth = 16;               // requests one ring channel carries at once

  // io_uring and receive buffers.
  uint32_t recv_buffers = 256;            // provided buffers, a power of two
  uint32_t recv_buffer_bytes = 4096;

  std::string admin = "127.0.0.1:9901";   // "off" disables the admin endpoint
  // A Unix socket the running agent hands its listening sockets over on,
  // to a new binary started with --takeover (ops/takeover.h); empty: none.
  std::string takeover_socket;
  // One line per HTTP request (ops/access_log.h): a file path, "stderr" or
  // "off"; "combined" (nginx's, then the proxy's fields) or "json".
  std::string access_log = "off";
  std::string access_log_format = "combined";

  // The security screen at accept (user space; the XDP guard does the deny
  // set at the NIC when attached): CIDR lists and a per-source limit.
  std::vector<std::string> deny;
  std::vector<std::string> allow;          // non-empty: only these sources
  uint32_t max_clients_per_source = 0;     // 0: no limit
  // Open connections from a source a live `deny add` now refuses: "close" or "keep".
  std::string deny_established = "close";
  // The rule set the shards and the admin endpoint share, made by run();
  // null (tests, `check`): each screen makes its own from the lists.
  std::shared_ptr<LiveRules> live_rules;
  // Requests per source (a token bucket, 429 with Retry-After over it) and
  // the grouping of addresses into sources; the per-source state of both
  // limits is kept in one table of source_table_size entries that every
  // shard shares (`sources`, made by run() and kept by a reload that
  // leaves its shape alone; null in tests: each screen has its own).
  // [security] in TOML names them rate, burst, source_table_size,
  // ipv4_prefix and ipv6_prefix (and takes allow, deny, max_clients_per_source).
  uint32_t rate_limit = 0;                 // requests per second per source; 0: no limit
  uint32_t rate_burst = 0;                 // requests at once; 0: rate_limit (one second's worth)
  uint32_t source_table_size = 65536;
  std::shared_ptr<SharedSources> sources;
  uint32_t source_ipv4_prefix = 32;        // an IPv4 source is its address...
  uint32_t source_ipv6_prefix = 64;        // ... an IPv6 source its /64

  // The XDP guard, attached by `run` for its lifetime when xdp_iface is set
  // (service ports = the listen ports, steering to `cpu`).
  std::string xdp_iface;
  std::string xdp_mode = "auto";          // auto | native | generic
  std::string log_level = "info";         // error | warning | info | debug: the agent's own lines
  uint32_t xdp_syn_rate = 0;              // SYNs per second per source; 0: no limit
  uint32_t xdp_syn_burst = 0;

  // How pass-through listeners move bytes: "kernel" (the sockhash splice;
  // start-up fails when it cannot be had), "user" (recv/send in the agent),
  // or "auto" (kernel when privileged and the start-up self-test passes).
  // "user" by default: on loopback it moved 1.2-1.3x the kernel splice's
  // bytes and ~1.3x its short connections a second (README, Figures).
  std::string splice = "user";

  // How a port-range listener serves its ports: "sk_lookup" (one socket per
  // shard, bpf/sk_dispatch.bpf.c steering the whole range to it; start-up
  // fails without it), "bind" (one socket per port per shard), or "auto"
  // (sk_lookup when it loads and attaches, else bind; --no-bpf is bind).
  std::string port_range_mode = "auto";
};

// Parses "4096", "64k", "8m", "1g" (powers of 1024). Throws ConfigError naming `key`.
uint64_t parse_size(const std::string& key, const std::string& value);

// Parses "127.0.0.1:8080", "[::1]:8080", "localhost:8080" (numeric only: no DNS).
SocketAddress parse_socket_address(const std::string& key, const std::string& value);

// Parses "tcp://H:P", "unix:/path", "shm:NAME" (a bare "H:P" means tcp).
UpstreamTarget parse_upstream(const std::string& key, const std::string& value);

// Loads a TOML file into `config`. Unknown keys and bad values throw ConfigError.
void load_config_file(const std::string& path, Config& config);

// Checks the settings against each other, builds the listeners and groups
// from the flat form when the file had no tables, resolves each listener's
// group and fills every inherited value; resolves workers, cpu and cpus
// (see Config::workers); throws ConfigError.
void validate(Config& config);

// Flags on top of the file (before validate()). --listen replaces every
// listener the file has (flat or [[listener]]); the new ones use the first
// group. --upstream replaces the flat upstream, or the servers of the
// [[upstream]] table named "default"; with tables and none named so, an error.
void apply_listen_flags(Config& config, const std::vector<std::string>& addresses);
void apply_upstream_flag(Config& config, const std::string& target);

// The whole configuration after validate() as TOML that loads back into
// the same Config: the globals, every listener with its group and limits,
// every group with its servers. Inherited values carry a "# global" comment.
std::string format_config(const Config& config);

}  // namespace offload

namespace offload {
// The numeric settings by TOML key ("max_clients"); flags are the same names
// with dashes. Sets `key` from a flag's text; false if there is no such key.
bool set_number_from_flag(Config& config, const std::string& key, const std::string& value);
std::vector<std::string> number_key_names();
}  // namespace offload
