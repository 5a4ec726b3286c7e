#include "ops/config.h"

#include "ops/log.h"
#include "ops/shard_limits.h"
#include "security/screen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace offload {

uint16_t port_of(const SocketAddress& a) {
  if (a.family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_port);
  if (a.family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_port);
  return 0;
}

void set_port(SocketAddress& a, uint16_t port) {
  if (a.family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&a.storage)->sin6_port = htons(port);
  else if (a.family() == AF_INET) reinterpret_cast<sockaddr_in*>(&a.storage)->sin_port = htons(port);
}

bool ConnectTarget::allows(const SocketAddress& a) const {
  if (a.family() != address.family()) return false;
  const uint16_t first = port_of(address), port = port_of(a);
  if (port < first || port > std::max(first, port_last)) return false;
  if (a.family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&address.storage)->sin_addr.s_addr;
  return a.family() == AF_INET6 && std::memcmp(&reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr,
                                               &reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_addr,
                                               16) == 0;
}

namespace {

constexpr uint32_t kDayMs = 86400000;
constexpr uint32_t kMaxWeight = 256;

[[noreturn]] void bad(const std::string& key, const std::string& value, const std::string& expected) {
  throw ConfigError(fmt::format("{}: bad value '{}' (expected {})", key, value, expected));
}

uint64_t parse_uint(const std::string& key, const std::string& value, uint64_t min, uint64_t max) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || n < min || n > max)
    bad(key, value, fmt::format("a whole number from {} to {}", min, max));
  return n;
}

// Every numeric setting with its bounds: one table serves TOML and flags.
struct NumberKey {
  const char* key;
  uint64_t min, max;
  bool is_size;
  std::function<void(Config&, uint64_t)> set;
  std::function<int64_t(const Config&)> get;
};

template <typename T>
NumberKey number(const char* key, uint64_t min, uint64_t max, bool is_size, T Config::*field) {
  return {key, min, max, is_size, [field](Config& c, uint64_t v) { c.*field = T(v); },
          [field](const Config& c) { return int64_t(c.*field); }};
}

const std::vector<NumberKey>& number_keys() {
  static const std::vector<NumberKey> keys = {
      number("cpu", 0, 4095, false, &Config::cpu),
      number("workers", 1, 256, false, &Config::workers),
      number("max_clients", 1, 1000000, false, &Config::max_clients),
      // A number: a fixed ceiling for the adaptive limit; "auto" (set_auto): 64.
      {"max_upstream", 1, 4096, false,
       [](Config& c, uint64_t v) {
         c.max_upstream = uint32_t(v);
         c.max_upstream_auto = false;
       },
       [](const Config& c) { return int64_t(c.max_upstream); }},
      number("persistent", 0, 4096, false, &Config::persistent),
      number("header_bytes_max", 256, 1 << 20, true, &Config::header_bytes_max),
      number("header_count_max", 1, 10000, false, &Config::header_count_max),
      number("body_bytes_max", 0, 1ull << 40, true, &Config::body_bytes_max),
      number("response_buffer", 4096, 1ull << 32, true, &Config::response_buffer),
      number("response_spill_max", 0, 1ull << 42, true, &Config::response_spill_max),
      number("body_buffer", 4096, 1ull << 32, true, &Config::body_buffer),
      number("spill_total_max", 0, 1ull << 44, true, &Config::spill_total_max),
      number("buffer_memory_max", 1 << 20, 1ull << 40, true, &Config::buffer_memory_max),
      number("header_timeout_ms", 1, kDayMs, false, &Config::header_timeout_ms),
      number("body_timeout_ms", 1, kDayMs, false, &Config::body_timeout_ms),
      number("keepalive_timeout_ms", 1, kDayMs, false, &Config::keepalive_timeout_ms),
      number("send_timeout_ms", 1, kDayMs, false, &Config::send_timeout_ms),
      number("connect_timeout_ms", 1, kDayMs, false, &Config::connect_timeout_ms),
      number("response_timeout_ms", 1, kDayMs, false, &Config::response_timeout_ms),
      number("queue_timeout_ms", 1, kDayMs, false, &Config::queue_timeout_ms),
      number("drain_timeout_ms", 0, kDayMs, false, &Config::drain_timeout_ms),
      number("tunnel_timeout_ms", 1, kDayMs, false, &Config::tunnel_timeout_ms),
      number("half_close_timeout_ms", 1, kDayMs, false, &Config::half_close_timeout_ms),
      number("recv_buffers", 16, 32768, false, &Config::recv_buffers),
      number("recv_buffer_bytes", 512, 1 << 20, true, &Config::recv_buffer_bytes),
      number("ring_depth", 1, 64, false, &Config::ring_depth),
      number("ring_bytes", 64 * 1024, 1ull << 30, true, &Config::ring_bytes),
      number("max_clients_per_source", 0, 1000000, false, &Config::max_clients_per_source),
      number("rate_limit", 0, 1000000, false, &Config::rate_limit),
      number("rate_burst", 0, 10000000, false, &Config::rate_burst),
      number("source_table_size", 16, 1 << 24, false, &Config::source_table_size),
      number("source_ipv4_prefix", 1, 32, false, &Config::source_ipv4_prefix),
      number("source_ipv6_prefix", 1, 128, false, &Config::source_ipv6_prefix),
      number("xdp_syn_rate", 0, 100000000, false, &Config::xdp_syn_rate),
      number("xdp_syn_burst", 0, 100000000, false, &Config::xdp_syn_burst),
  };
  return keys;
}

const NumberKey* find_number_key(std::string_view key) {
  for (const auto& k : number_keys())
    if (key == k.key) return &k;
  return nullptr;
}

std::string node_text(const toml::node& node) {
  if (auto s = node.value<std::string>()) return *s;
  std::ostringstream out;
  node.visit([&out](auto&& v) { out << v; });
  return out.str();
}

// max_upstream = "auto": the adaptive limit, up to kAutoMaxUpstream.
constexpr uint32_t kAutoMaxUpstream = 64;
bool set_auto(Config& config, std::string_view key, std::string_view text) {
  if (key != "max_upstream" || text != "auto") return false;
  config.max_upstream = kAutoMaxUpstream;
  config.max_upstream_auto = true;
  return true;
}

// A number from TOML under `path` ("max_clients", "listener[0].max_clients"),
// within the bounds of the global key of the same name.
uint64_t number_value(const std::string& path, const NumberKey& k, const toml::node& node) {
  std::string text = node_text(node);
  uint64_t v = 0;
  if (auto i = node.value<int64_t>(); i && node.is_integer()) {
    if (*i < 0) bad(path, text, fmt::format("a whole number from {} to {}", k.min, k.max));
    v = uint64_t(*i);
    if (v < k.min || v > k.max) bad(path, text, fmt::format("a whole number from {} to {}", k.min, k.max));
  } else if (node.is_string() && k.is_size) {
    v = parse_size(path, text);
  } else {
    bad(path, text, k.is_size                                  ? "a size such as 65536, \"64k\" or \"8m\""
                    : std::string_view(k.key) == "max_upstream" ? "a whole number or \"auto\""
                                                                : "a whole number");
  }
  if (v < k.min || v > k.max) bad(path, text, fmt::format("a value from {} to {}", k.min, k.max));
  return v;
}

// A whole number for a key of its own (weight, rise, ...), TOML integers only.
uint32_t whole_number(const std::string& path, const toml::node& node, uint32_t min, uint32_t max) {
  auto i = node.value<int64_t>();
  if (!node.is_integer() || !i || *i < int64_t(min) || *i > int64_t(max))
    bad(path, node_text(node), fmt::format("a whole number from {} to {}", min, max));
  return uint32_t(*i);
}

std::string string_value(const std::string& key, const toml::node& node) {
  if (!node.is_string()) bad(key, node_text(node), "a string");
  return *node.value<std::string>();
}

void load_listen(const toml::node& node, Config& config) {
  config.listen.clear();
  if (node.is_string()) {
    config.listen.push_back(parse_socket_address("listen", string_value("listen", node)));
  } else if (auto* arr = node.as_array()) {
    for (const auto& item : *arr)
      config.listen.push_back(parse_socket_address("listen", string_value("listen", item)));
  } else {
    bad("listen", node_text(node), "\"ADDR:PORT\" or a list of them");
  }
}

// "a, b or c", for the list of what was expected.
std::string one_of(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += i + 1 == words.size() ? " or " : ", ";
    out += words[i];
  }
  return out;
}

// Walks a table's keys, each with its full path ("upstream[1].balance"); a
// key not in `known` is an error that lists the known ones.
using KeyVisitor = std::function<void(const std::string& key, const toml::node& value, const std::string& path)>;
void each_key(const toml::table& table, const std::string& where, const std::vector<std::string>& known,
              const KeyVisitor& visit) {
  for (const auto& [key_node, value] : table) {
    std::string key(key_node.str());
    std::string path = where + "." + key;
    if (std::find(known.begin(), known.end(), key) == known.end())
      throw ConfigError(fmt::format("{}: unknown key (expected {})", path, one_of(known)));
    visit(key, value, path);
  }
}

// Names of groups and listeners: they appear in stats, metrics and messages.
std::string name_value(const std::string& path, const toml::node& node) {
  std::string name = string_value(path, node);
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) ok = ok && c > ' ' && c < 127 && c != '"' && c != '\\';
  if (!ok) bad(path, name, "a name of 1 to 64 printable characters, no spaces or quotes");
  return name;
}

Balance balance_value(const std::string& path, const toml::node& node) {
  std::string text = string_value(path, node);
  for (Balance b : {Balance::kLeastOutstanding, Balance::kRoundRobin, Balance::kSourceHash})
    if (text == balance_name(b)) return b;
  bad(path, text, "least-outstanding, round-robin or source-hash");
}

// The per-listener limits: the global keys of the same name, same bounds.
struct ListenerLimit {
  const char* key;
  std::function<void(ListenerConfig&, uint64_t)> set;
  std::function<uint64_t(const ListenerConfig&)> get;
  std::function<uint64_t(const Config&)> global;
};

template <typename T>
ListenerLimit limit(const char* key, T ListenerConfig::*mine, T Config::*global) {
  return {key, [mine](ListenerConfig& l, uint64_t v) { l.*mine = T(v); },
          [mine](const ListenerConfig& l) { return uint64_t(l.*mine); },
          [global](const Config& c) { return uint64_t(c.*global); }};
}

const std::vector<ListenerLimit>& listener_limits() {
  static const std::vector<ListenerLimit> limits = {
      limit("max_clients", &ListenerConfig::max_clients, &Config::max_clients),
      limit("header_bytes_max", &ListenerConfig::header_bytes_max, &Config::header_bytes_max),
      limit("header_count_max", &ListenerConfig::header_count_max, &Config::header_count_max),
      limit("body_bytes_max", &ListenerConfig::body_bytes_max, &Config::body_bytes_max),
      limit("header_timeout_ms", &ListenerConfig::header_timeout_ms, &Config::header_timeout_ms),
      limit("body_timeout_ms", &ListenerConfig::body_timeout_ms, &Config::body_timeout_ms),
      limit("keepalive_timeout_ms", &ListenerConfig::keepalive_timeout_ms, &Config::keepalive_timeout_ms),
      limit("send_timeout_ms", &ListenerConfig::send_timeout_ms, &Config::send_timeout_ms),
      limit("queue_timeout_ms", &ListenerConfig::queue_timeout_ms, &Config::queue_timeout_ms),
      limit("response_timeout_ms", &ListenerConfig::response_timeout_ms, &Config::response_timeout_ms),
      limit("tunnel_timeout_ms", &ListenerConfig::tunnel_timeout_ms, &Config::tunnel_timeout_ms),
      limit("half_close_timeout_ms", &ListenerConfig::half_close_timeout_ms, &Config::half_close_timeout_ms),
  };
  return limits;
}

const ListenerLimit* find_limit(std::string_view key) {
  for (const auto& l : listener_limits())
    if (key == l.key) return &l;
  return nullptr;
}

bool has_key(const std::vector<std::string>& keys, std::string_view key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

// "servers = [...]": a string, or a table with the address and its settings.
ServerConfig server_value(const std::string& path, const toml::node& node) {
  ServerConfig server;
  if (node.is_string()) {
    server.target = parse_upstream(path, *node.value<std::string>());
    return server;
  }
  const toml::table* table = node.as_table();
  if (table == nullptr)
    bad(path, node_text(node), "\"tcp://HOST:PORT\", \"unix:PATH\", \"shm:NAME\" or { address = ..., weight = N }");
  const NumberKey& pool = *find_number_key("max_upstream");
  each_key(*table, path, {"address", "weight", "max_connections", "persistent"},
           [&](const std::string& key, const toml::node& value, const std::string& key_path) {
             if (key == "address") {
               server.target = parse_upstream(key_path, string_value(key_path, value));
             } else if (key == "weight") {
               server.weight = whole_number(key_path, value, 1, kMaxWeight);
             } else if (key == "max_connections") {
               server.max_connections = uint32_t(number_value(key_path, pool, value));
               server.explicit_keys.push_back(key);
             } else {
               server.persistent = whole_number(key_path, value, 0, uint32_t(pool.max));
               server.explicit_keys.push_back(key);
             }
           });
  if (server.target.text.empty())
    throw ConfigError(fmt::format("{}.address: missing (expected \"tcp://HOST:PORT\", \"unix:PATH\" or \"shm:NAME\")", path));
  return server;
}

std::string probe_path(const std::string& path, const toml::node& node) {
  std::string text = string_value(path, node);
  bool ok = !text.empty() && text.front() == '/';
  for (char c : text) ok = ok && c > ' ' && c < 127;
  if (!ok) bad(path, text, "a path such as /health: '/' first, no spaces");
  return text;
}

HealthConfig health_value(const std::string& path, const toml::node& node) {
  const toml::table* table = node.as_table();
  if (table == nullptr) bad(path, node_text(node), "a table such as { path = \"/health\", interval_ms = 2000 }");
  HealthConfig health;
  health.enabled = true;
  each_key(*table, path, {"path", "interval_ms", "timeout_ms", "rise", "fall"},
           [&](const std::string& key, const toml::node& value, const std::string& key_path) {
             if (key == "path") health.path = probe_path(key_path, value);
             else if (key == "interval_ms") health.interval_ms = whole_number(key_path, value, 1, kDayMs);
             else if (key == "timeout_ms") health.timeout_ms = whole_number(key_path, value, 1, kDayMs);
             else if (key == "rise") health.rise = whole_number(key_path, value, 1, 100);
             else health.fall = whole_number(key_path, value, 1, 100);
           });
  return health;
}

GroupConfig group_value(const std::string& where, const toml::table& table) {
  GroupConfig group;
  group.where = where;
  each_key(table, where, {"name", "servers", "balance", "max_fails", "fail_timeout_ms", "health"},
           [&](const std::string& key, const toml::node& value, const std::string& path) {
             if (key == "name") {
               group.name = name_value(path, value);
             } else if (key == "servers") {
               const toml::array* list = value.as_array();
               if (list == nullptr) bad(path, node_text(value), "a list of servers, such as [\"tcp://127.0.0.1:8000\"]");
               for (size_t i = 0; i < list->size(); ++i)
                 group.servers.push_back(server_value(fmt::format("{}[{}]", path, i), *list->get(i)));
             } else if (key == "balance") {
               group.balance = balance_value(path, value);
             } else if (key == "max_fails") {
               group.max_fails = whole_number(path, value, 0, 1000);
             } else if (key == "fail_timeout_ms") {
               group.fail_timeout_ms = whole_number(path, value, 1, kDayMs);
             } else {
               group.health = health_value(path, value);
             }
           });
  return group;
}

// allow / deny: a list of CIDR prefixes, each checked where it is written.
void prefix_list(const std::string& path, const toml::node& node, std::vector<std::string>& out) {
  auto* list = node.as_array();
  if (list == nullptr) bad(path, node_text(node), "a list of CIDR prefixes, such as [\"203.0.113.0/24\"]");
  out.clear();
  for (size_t i = 0; i < list->size(); ++i) {
    std::string item_path = fmt::format("{}[{}]", path, i);
    out.push_back(string_value(item_path, *list->get(i)));
    parse_prefix(item_path, out.back());
  }
}

// [security]: the source rules under their short names; each one is the
// top-level key on the right, which an older file may still use.
const std::vector<std::pair<const char*, const char*>>& security_keys() {
  static const std::vector<std::pair<const char*, const char*>> keys = {
      {"rate", "rate_limit"},
      {"burst", "rate_burst"},
      {"source_table_size", "source_table_size"},
      {"ipv4_prefix", "source_ipv4_prefix"},
      {"ipv6_prefix", "source_ipv6_prefix"},
      {"max_clients_per_source", "max_clients_per_source"},
      {"allow", "allow"},
      {"deny", "deny"},
  };
  return keys;
}

// Open connections from a source a live change denies.
void deny_established_value(const std::string& path, const toml::node& value, Config& config) {
  config.deny_established = string_value(path, value);
  if (config.deny_established != "close" && config.deny_established != "keep")
    bad(path, config.deny_established, "close or keep");
}

void load_security(const toml::table& top, const toml::node& node, Config& config) {
  const toml::table* table = node.as_table();
  if (table == nullptr) bad("security", node_text(node), "a [security] table");
  std::vector<std::string> known;
  for (const auto& [short_key, flat] : security_keys()) known.push_back(short_key);
  known.push_back("deny_established");
  each_key(*table, "security", known, [&](const std::string& key, const toml::node& value, const std::string& path) {
    if (key == "deny_established") {
      if (top.contains(key)) throw ConfigError(fmt::format("{}: also set as top-level {} (keep one)", path, key));
      return deny_established_value(path, value, config);
    }
    const char* flat = nullptr;
    for (const auto& [short_key, flat_key] : security_keys())
      if (key == short_key) flat = flat_key;
    // Two places for one setting: which one is meant cannot be guessed.
    if (top.contains(flat)) throw ConfigError(fmt::format("{}: also set as top-level {} (keep one)", path, flat));
    if (key == "allow") return prefix_list(path, value, config.allow);
    if (key == "deny") return prefix_list(path, value, config.deny);
    const NumberKey* k = find_number_key(flat);
    k->set(config, number_value(path, *k, value));
  });
}

ListenerSecurity::Auth auth_value(const std::string& path, const toml::node& node) {
  std::string text = string_value(path, node);
  for (auto a : {ListenerSecurity::Auth::kNone, ListenerSecurity::Auth::kBearer, ListenerSecurity::Auth::kApiKey})
    if (text == auth_name(a)) return a;
  bad(path, text, "none, bearer or api-key");
}

// A field name: a token (RFC 9110 5.6.2).
std::string field_name_value(const std::string& path, const toml::node& node) {
  std::string text = string_value(path, node);
  bool ok = !text.empty() && text.size() <= 64;
  for (char c : text) ok = ok && (std::isalnum(uint8_t(c)) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
  if (!ok) bad(path, text, "a header field name such as X-API-Key");
  return text;
}

std::vector<std::string> methods_value(const std::string& path, const toml::node& node) {
  auto* list = node.as_array();
  if (list == nullptr || list->empty()) bad(path, node_text(node), "a list of methods, such as [\"GET\", \"HEAD\"]");
  std::vector<std::string> out;
  for (size_t i = 0; i < list->size(); ++i) {
    std::string item_path = fmt::format("{}[{}]", path, i);
    std::string m = string_value(item_path, *list->get(i));
    bool ok = !m.empty() && m.size() <= 32;
    for (char c : m) ok = ok && c >= 'A' && c <= 'Z';
    if (!ok) bad(item_path, m, "a method in upper case, such as GET");
    if (m == "CONNECT") bad(item_path, m, "a method the http proxy serves (CONNECT is allowed by the listener's connect_targets)");
    out.push_back(m);
  }
  return out;
}

ListenerSecurity security_value(const std::string& path, const toml::node& node) {
  const toml::table* table = node.as_table();
  if (table == nullptr)
    bad(path, node_text(node), "a table such as { auth = \"bearer\", token_file = \"/etc/offload/tokens\" }");
  ListenerSecurity sec;
  each_key(*table, path, {"auth", "header", "token_file", "methods", "target_bytes_max", "allow", "deny"},
           [&](const std::string& key, const toml::node& value, const std::string& key_path) {
             if (key == "allow") prefix_list(key_path, value, sec.allow);
             else if (key == "deny") prefix_list(key_path, value, sec.deny);
             else if (key == "auth") sec.auth = auth_value(key_path, value);
             else if (key == "header") sec.header = field_name_value(key_path, value);
             else if (key == "token_file") sec.token_file = string_value(key_path, value);
             else if (key == "methods") sec.methods = methods_value(key_path, value);
             else sec.target_bytes_max = whole_number(key_path, value, 1, 1 << 20);
           });
  return sec;
}

// "ADDR:PORT" or "ADDR:FIRST-LAST" (a range of at most kPortRangeMax ports);
// `last` gets the range's last port, 0 for one port.
constexpr uint32_t kPortRangeMax = 4096;
SocketAddress parse_listen_range(const std::string& key, const std::string& text, uint16_t& last) {
  last = 0;
  const auto colon = text.rfind(':');
  const auto dash = text.find('-', colon == std::string::npos ? 0 : colon);
  if (colon == std::string::npos || dash == std::string::npos) return parse_socket_address(key, text);
  const std::string tail = text.substr(dash + 1);
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), n);
  if (tail.empty() || ec != std::errc() || end != tail.data() + tail.size() || n > 65535)
    bad(key, text, "ADDR:FIRST-LAST with ports from 1 to 65535, such as 127.0.0.1:9100-9199");
  SocketAddress a = parse_socket_address(key, text.substr(0, dash));
  a.text = text;
  const uint16_t first = port_of(a);
  if (first == 0 || n < first || n - first + 1 > kPortRangeMax)
    bad(key, text, fmt::format("a range FIRST-LAST with 1 <= FIRST <= LAST and at most {} ports", kPortRangeMax));
  last = uint16_t(n);
  return a;
}

// connect_targets = ["127.0.0.1:9000", "[::1]:22", "10.0.0.5:8000-8099"]:
// numeric addresses only, so a CONNECT never waits for a resolver.
std::vector<ConnectTarget> connect_targets_value(const std::string& path, const toml::node& node) {
  auto* list = node.as_array();
  if (list == nullptr || list->empty())
    bad(path, node_text(node), "a list of ADDR:PORT or ADDR:FIRST-LAST, such as [\"127.0.0.1:9000\", \"[::1]:22\"]");
  std::vector<ConnectTarget> out;
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string item_path = fmt::format("{}[{}]", path, i);
    const std::string text = string_value(item_path, *list->get(i));
    ConnectTarget t;
    const auto colon = text.rfind(':');
    const auto dash = text.find('-', colon == std::string::npos ? 0 : colon);
    t.address = parse_socket_address(item_path, dash == std::string::npos ? text : text.substr(0, dash));
    t.address.text = text;
    const uint16_t first = port_of(t.address);
    if (dash != std::string::npos) {
      const std::string tail = text.substr(dash + 1);
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), n);
      if (tail.empty() || ec != std::errc() || end != tail.data() + tail.size() || n > 65535 || n < first)
        bad(item_path, text, "ADDR:FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 127.0.0.1:9000-9010");
      t.port_last = uint16_t(n);
    }
    if (first == 0) bad(item_path, text, "a port from 1 to 65535 (a CONNECT names its port)");
    out.push_back(std::move(t));
  }
  return out;
}

ListenerConfig listener_value(const std::string& where, const toml::table& table) {
  ListenerConfig listener;
  listener.where = where;
  std::vector<std::string> known = {"name", "listen", "port", "proxy", "upstream", "upstream_port"};
  for (const auto& l : listener_limits()) known.push_back(l.key);
  known.push_back("security");
  known.push_back("connect_targets");
  bool has_listen = false, has_port = false;
  each_key(table, where, known, [&](const std::string& key, const toml::node& value, const std::string& path) {
    if (key == "name") {
      listener.name = name_value(path, value);
    } else if (key == "listen") {
      listener.address = parse_listen_range(path, string_value(path, value), listener.port_last);
      has_listen = true;
    } else if (key == "port" && value.is_string()) {  // port = "9100-9199": the range on 0.0.0.0
      const std::string range = string_value(path, value);
      if (range.find('-') == std::string::npos || range.find(':') != std::string::npos)
        bad(path, range, "a port number, or a range \"FIRST-LAST\" such as \"9100-9199\"");
      listener.address = parse_listen_range(path, "0.0.0.0:" + range, listener.port_last);
      listener.address.text = "0.0.0.0:" + range;
      has_port = true;
    } else if (key == "port") {
      uint32_t port = whole_number(path, value, 0, 65535);
      listener.address = parse_socket_address(path, fmt::format("0.0.0.0:{}", port));
      has_port = true;
    } else if (key == "upstream_port") {
      std::string how = string_value(path, value);
      if (how != "same") bad(path, how, "same (the port the client dialled)");
      listener.upstream_port_same = true;
    } else if (key == "proxy") {
      listener.proxy = string_value(path, value);
      if (listener.proxy != "http" && listener.proxy != "passthrough") bad(path, listener.proxy, "http or passthrough");
    } else if (key == "upstream") {
      listener.upstream = name_value(path, value);
    } else if (key == "security") {
      listener.security = security_value(path, value);
    } else if (key == "connect_targets") {
      listener.connect_targets = connect_targets_value(path, value);
    } else {
      find_limit(key)->set(listener, number_value(path, *find_number_key(key), value));
      listener.explicit_keys.push_back(key);
    }
  });
  if (has_listen && has_port)
    throw ConfigError(fmt::format("{}.port: cannot be combined with listen (give listen = \"ADDR:PORT\", or port = N for 0.0.0.0:N)", where));
  if (!has_listen && !has_port)
    throw ConfigError(fmt::format("{}.listen: missing (expected listen = \"ADDR:PORT\", or port = N for 0.0.0.0:N)", where));
  return listener;
}

// [[upstream]] or [[listener]] tables (a single [upstream] table counts as
// one): calls `one` with "upstream[0]", "upstream[1]", ...
void each_table(const std::string& key, const toml::node& node, const std::string& expected,
                const std::function<void(const std::string&, const toml::table&)>& one) {
  if (const toml::table* table = node.as_table()) return one(key + "[0]", *table);
  const toml::array* list = node.as_array();
  bool ok = list != nullptr && !list->empty();
  for (size_t i = 0; ok && i < list->size(); ++i) ok = list->get(i)->is_table();
  if (!ok) bad(key, node_text(node), expected);
  for (size_t i = 0; i < list->size(); ++i) one(fmt::format("{}[{}]", key, i), *list->get(i)->as_table());
}

void load_groups(const toml::node& node, Config& config) {
  config.groups.clear();
  each_table("upstream", node, "one server \"tcp://HOST:PORT\", or [[upstream]] tables with servers = [...]",
             [&](const std::string& where, const toml::table& t) { config.groups.push_back(group_value(where, t)); });
}

void load_listeners(const toml::node& node, Config& config) {
  config.listeners.clear();
  each_table("listener", node, "[[listener]] tables with listen = \"ADDR:PORT\"",
             [&](const std::string& where, const toml::table& t) { config.listeners.push_back(listener_value(where, t)); });
}

// ---- Validation of the tables: every message names the full key path. ----

// "listener[0]" + "listen" → "listener[0].listen"; a flat one ("listen",
// "--listen") is named by itself.
std::string key_of(const std::string& where, const std::string& key) {
  return !where.empty() && where.back() == ']' ? where + "." + key : where;
}

std::string server_key(const GroupConfig& group, size_t index) {
  return key_of(group.where, fmt::format("servers[{}]", index));
}

bool same_address(const SocketAddress& a, const SocketAddress& b) {
  return a.length == b.length && std::memcmp(&a.storage, &b.storage, a.length) == 0;
}

bool same_target(const UpstreamTarget& a, const UpstreamTarget& b) {
  if (a.kind != b.kind) return false;
  return a.kind == UpstreamTarget::Kind::kShm ? a.shm_name == b.shm_name : same_address(a.address, b.address);
}

// No tables: the flat form is one group "default" with one server and one
// listener per address.
void build_from_flat(Config& config) {
  if (config.groups.empty()) {
    if (config.upstream.text.empty()) config.upstream = parse_upstream("upstream", "tcp://127.0.0.1:8000");
    GroupConfig group;
    group.servers.push_back(ServerConfig{config.upstream});
    config.groups.push_back(group);
  }
  if (config.listeners.empty()) {
    if (config.listen.empty()) config.listen.push_back(parse_socket_address("listen", "127.0.0.1:8080"));
    for (const auto& address : config.listen) {
      ListenerConfig listener;
      listener.address = address;
      config.listeners.push_back(listener);
    }
  }
}

// A server's pool follows the globals unless its table set it.
void fill_server(const Config& config, const GroupConfig& group, size_t index, ServerConfig& server) {
  std::string path = server_key(group, index);
  if (server.weight < 1 || server.weight > kMaxWeight)
    bad(path + ".weight", std::to_string(server.weight), fmt::format("a whole number from 1 to {}", kMaxWeight));
  if (!has_key(server.explicit_keys, "max_connections")) server.max_connections = config.max_upstream;
  if (!has_key(server.explicit_keys, "persistent")) server.persistent = std::min(config.persistent, server.max_connections);
  if (server.persistent > server.max_connections)
    throw ConfigError(fmt::format("{}.persistent: bad value '{}' (expected at most its max_connections, {})", path,
                                  server.persistent, server.max_connections));
}

void validate_servers(const Config& config, GroupConfig& group) {
  if (group.servers.empty())
    throw ConfigError(fmt::format("{}: empty (expected at least one server, such as \"tcp://127.0.0.1:8000\")",
                                  key_of(group.where, "servers")));
  for (size_t i = 0; i < group.servers.size(); ++i) {
    ServerConfig& server = group.servers[i];
    // The bus carries a request as one record up to ring_bytes; tcp and
    // unix servers take any size. In one group the same request would get
    // 413 or 200 by the balancer's pick, so the bus stands alone.
    if (server.target.kind == UpstreamTarget::Kind::kShm && group.servers.size() > 1)
      bad(server_key(group, i), server.target.text,
          "a shm: server alone in its group (the bus takes requests up to ring_bytes, other servers any size)");
    for (size_t j = 0; j < i; ++j)
      if (same_target(group.servers[j].target, server.target))
        throw ConfigError(fmt::format("{}: duplicate '{}' (also servers[{}]; give one server a higher weight instead)",
                                      server_key(group, i), server.target.text, j));
    fill_server(config, group, i, server);
  }
}

void validate_health(const GroupConfig& group) {
  const HealthConfig& h = group.health;
  if (!h.enabled) return;
  std::string where = key_of(group.where, "health");
  if (h.rise < 1) bad(where + ".rise", std::to_string(h.rise), "a whole number from 1 to 100");
  if (h.fall < 1) bad(where + ".fall", std::to_string(h.fall), "a whole number from 1 to 100");
  // A probe still running when the next is due would stack up.
  if (h.timeout_ms >= h.interval_ms)
    throw ConfigError(fmt::format("{}.timeout_ms: bad value '{}' (expected less than interval_ms, {})", where,
                                  h.timeout_ms, h.interval_ms));
}

void validate_groups(Config& config) {
  for (size_t i = 0; i < config.groups.size(); ++i) {
    GroupConfig& group = config.groups[i];
    for (size_t j = 0; j < i; ++j)
      if (config.groups[j].name == group.name)
        throw ConfigError(fmt::format("{}: duplicate '{}' (also {})", key_of(group.where, "name"), group.name,
                                      config.groups[j].where));
    validate_servers(config, group);
    validate_health(group);
  }
  // One bus, one group: two groups on the same ring would both create it;
  // and one bus per agent for now (a shard serves one RingBus).
  for (size_t i = 0; i < config.groups.size(); ++i)
    for (size_t j = 0; j < i; ++j) {
      if (!config.groups[i].is_bus() || !config.groups[j].is_bus()) continue;
      const UpstreamTarget& a = config.groups[i].servers.front().target;
      const UpstreamTarget& b = config.groups[j].servers.front().target;
      if (same_target(a, b))
        bad(server_key(config.groups[i], 0), a.text, fmt::format("a bus no other group uses ({} has it)", config.groups[j].where));
      bad(server_key(config.groups[i], 0), a.text,
          fmt::format("one shm: bus per agent ({} has one; a second is not supported yet)", config.groups[j].where));
    }
}

std::vector<std::string> group_names(const Config& config) {
  std::vector<std::string> names;
  for (const auto& g : config.groups) names.push_back(g.name);
  return names;
}

// A listener without `upstream` uses the first group.
void resolve_group(const Config& config, ListenerConfig& listener) {
  if (listener.upstream.empty()) listener.upstream = config.groups.front().name;
  for (size_t i = 0; i < config.groups.size(); ++i)
    if (config.groups[i].name == listener.upstream) {
      listener.group = i;
      return;
    }
  std::vector<std::string> names = group_names(config);
  std::string list = names.front();
  for (size_t i = 1; i < names.size(); ++i) list += ", " + names[i];
  bad(key_of(listener.where, "upstream"), listener.upstream, "the name of an [[upstream]] table: " + list);
}

// Unnamed listeners are called by their address; two on port 0 share one,
// so the later gets its position too ("127.0.0.1:0#1").
void name_listener(Config& config, size_t index) {
  ListenerConfig& listener = config.listeners[index];
  auto holder = [&](const std::string& name) {
    for (size_t j = 0; j < index; ++j)
      if (config.listeners[j].name == name) return j;
    return index;
  };
  if (listener.name.empty()) {
    listener.name = listener.address.text;
    if (holder(listener.name) != index) listener.name += fmt::format("#{}", index);
  } else if (size_t j = holder(listener.name); j != index) {
    throw ConfigError(fmt::format("{}: duplicate '{}' (also {})", key_of(listener.where, "name"), listener.name,
                                  config.listeners[j].where));
  }
}

// Limits the listener's table did not set follow the globals; one it set
// may not exceed what the agent allocates for all listeners together.
void fill_limits(const Config& config, ListenerConfig& listener) {
  for (const auto& limit : listener_limits())
    if (!has_key(listener.explicit_keys, limit.key)) limit.set(listener, limit.global(config));
  if (listener.max_clients > config.max_clients)
    throw ConfigError(fmt::format("{}: bad value '{}' (expected at most max_clients, {})",
                                  key_of(listener.where, "max_clients"), listener.max_clients, config.max_clients));
}

// Tokens: one a line, surrounding blanks ignored, '#' lines comments.
std::vector<std::string> read_tokens(const std::string& path, const std::string& file) {
  std::ifstream in(file);
  if (!in) bad(path, file, fmt::format("a readable file of tokens, one per line ({})", std::strerror(errno)));
  std::vector<std::string> tokens;
  std::string line;
  while (std::getline(in, line)) {
    size_t b = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    std::string token = line.substr(b, e - b + 1);
    bool ok = token.size() <= 4096;
    for (char c : token) ok = ok && c > ' ' && c < 127;
    if (!ok)
      throw ConfigError(fmt::format("{}: bad token on line {} of '{}' (expected printable characters, no spaces, "
                                    "at most 4096)", path, tokens.size() + 1, file));
    tokens.push_back(token);
  }
  if (tokens.empty()) bad(path, file, "a file with at least one token");
  return tokens;
}

// A listener that checks tokens has them, read now: a missing file is an
// error at start-up, not a 401 for every client.
void fill_security(ListenerConfig& listener) {
  ListenerSecurity& sec = listener.security;
  const std::string where = key_of(listener.where, "security");
  // A byte stream has no request head to check: the source rules only.
  if (listener.proxy == "passthrough" && sec.auth != ListenerSecurity::Auth::kNone)
    bad(where + ".auth", auth_name(sec.auth), "none on a passthrough listener (it has no request head to check)");
  if (listener.proxy == "passthrough" && !sec.methods.empty())
    throw ConfigError(fmt::format("{}.methods: not for a passthrough listener (it has no request head to check)", where));
  if (sec.auth == ListenerSecurity::Auth::kNone) {
    if (!sec.token_file.empty() || !sec.header.empty())
      throw ConfigError(fmt::format("{}.auth: missing (token_file and header need auth = \"bearer\" or \"api-key\")", where));
    return;
  }
  if (sec.header.empty()) sec.header = sec.auth == ListenerSecurity::Auth::kBearer ? "Authorization" : "X-API-Key";
  if (sec.token_file.empty())
    throw ConfigError(fmt::format("{}.token_file: missing (expected a file of tokens, one per line)", where));
  sec.tokens = read_tokens(where + ".token_file", sec.token_file);
}

// The same address (or both on it wildcard-free and equal) with ports in common.
bool ports_overlap(const ListenerConfig& a, const ListenerConfig& b) {
  SocketAddress a0 = a.address, b0 = b.address;
  const uint16_t a_first = port_of(a0), b_first = port_of(b0);
  const uint16_t a_last = std::max(a.port_last, a_first), b_last = std::max(b.port_last, b_first);
  if (a_first > b_last || b_first > a_last) return false;
  set_port(a0, 0);
  set_port(b0, 0);
  return same_address(a0, b0);
}

void validate_listeners(Config& config) {
  for (size_t i = 0; i < config.listeners.size(); ++i) {
    ListenerConfig& listener = config.listeners[i];
    if (listener.proxy != "http" && listener.proxy != "passthrough")
      bad(key_of(listener.where, "proxy"), listener.proxy, "http or passthrough");
    // SO_REUSEPORT lets two sockets bind one address and the kernel would
    // split clients between them, so a duplicate must be caught here.
    for (size_t j = 0; j < i && port_of(listener.address) != 0; ++j)
      if (ports_overlap(config.listeners[j], listener))
        throw ConfigError(fmt::format("{}: duplicate '{}' (also {})", key_of(listener.where, "listen"),
                                      listener.address.text, config.listeners[j].where));
    // Each port would need its own pool of server connections: only a
    // pass-through listener opens one connection per client anyway.
    if (listener.upstream_port_same && listener.proxy != "passthrough")
      bad(key_of(listener.where, "upstream_port"), "same", "proxy = \"passthrough\" on this listener");
    // A pass-through listener moves any bytes already; CONNECT is an HTTP request.
    if (!listener.connect_targets.empty() && listener.proxy != "http")
      bad(key_of(listener.where, "connect_targets"), listener.connect_targets.front().address.text,
          "proxy = \"http\" on this listener");
    name_listener(config, i);
    resolve_group(config, listener);
    // The bus carries HTTP requests as records; a byte stream has no place on it.
    if (listener.proxy == "passthrough" && config.groups[listener.group].is_bus())
      bad(key_of(listener.where, "upstream"), listener.upstream, "a group of tcp or unix servers for a passthrough listener");
    fill_limits(config, listener);
    fill_security(listener);
  }
}

}  // namespace

uint64_t parse_size(const std::string& key, const std::string& value) {
  std::string digits = value;
  uint64_t scale = 1;
  if (!digits.empty()) {
    switch (digits.back()) {
      case 'k': case 'K': scale = 1ull << 10; break;
      case 'm': case 'M': scale = 1ull << 20; break;
      case 'g': case 'G': scale = 1ull << 30; break;
      default: break;
    }
    if (scale != 1) digits.pop_back();
  }
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
      n > (UINT64_MAX >> 20) / scale * (1ull << 20))
    bad(key, value, "a size such as 65536, 64k, 8m or 1g");
  return n * scale;
}

SocketAddress parse_socket_address(const std::string& key, const std::string& value) {
  SocketAddress out;
  out.text = value;
  std::string host, port;
  if (!value.empty() && value.front() == '[') {
    auto close = value.find(']');
    if (close == std::string::npos || close + 1 >= value.size() || value[close + 1] != ':')
      bad(key, value, "ADDR:PORT, such as 127.0.0.1:8080 or [::1]:8080");
    host = value.substr(1, close - 1);
    port = value.substr(close + 2);
  } else {
    auto colon = value.rfind(':');
    if (colon == std::string::npos) bad(key, value, "ADDR:PORT, such as 127.0.0.1:8080 or [::1]:8080");
    host = value.substr(0, colon);
    port = value.substr(colon + 1);
  }
  if (host == "localhost") host = "127.0.0.1";
  uint16_t p = 0;
  {
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || n > 65535)
      bad(key, value, "a port from 0 to 65535 after the address");
    p = uint16_t(n);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(p);
    out.length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(p);
    out.length = sizeof(sockaddr_in6);
  } else {
    bad(key, value, "a numeric IPv4 or IPv6 address (no host names)");
  }
  return out;
}

UpstreamTarget parse_upstream(const std::string& key, const std::string& value) {
  UpstreamTarget t;
  t.text = value;
  auto starts = [&](std::string_view p) { return value.rfind(p, 0) == 0; };
  if (starts("unix:")) {
    std::string path = value.substr(5);
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof(un.sun_path))
      bad(key, value, fmt::format("unix:PATH with a path of 1 to {} bytes", sizeof(un.sun_path) - 1));
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    std::memcpy(&t.address.storage, &un, sizeof(un));
    t.address.length = socklen_t(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    t.address.text = value;
    t.kind = UpstreamTarget::Kind::kUnix;
  } else if (starts("shm:")) {
    t.shm_name = value.substr(4);
    bool ok = !t.shm_name.empty() && t.shm_name.size() <= 64;
    for (char c : t.shm_name) ok = ok && (std::isalnum(uint8_t(c)) || c == '-' || c == '_' || c == '.');
    if (!ok) bad(key, value, "shm:NAME with 1 to 64 letters, digits, '-', '_' or '.'");
    t.kind = UpstreamTarget::Kind::kShm;
  } else {
    std::string hostport = starts("tcp://") ? value.substr(6) : value;
    if (value.find("://") != std::string::npos && !starts("tcp://"))
      bad(key, value, "tcp://HOST:PORT, unix:PATH or shm:NAME");
    t.address = parse_socket_address(key, hostport);
    t.kind = UpstreamTarget::Kind::kTcp;
  }
  return t;
}

void load_config_file(const std::string& path, Config& config) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw ConfigError(fmt::format("{}:{}:{}: {}", path, where.line, where.column, e.description()));
  }
  for (const auto& [key_node, node] : table) {
    std::string key(key_node.str());
    if (const NumberKey* k = find_number_key(key)) {
      if (node.is_string() && set_auto(config, key, node_text(node))) continue;
      k->set(config, number_value(key, *k, node));
    } else if (key == "listen") {
      load_listen(node, config);
    } else if (key == "upstream" && node.is_string()) {
      config.upstream = parse_upstream("upstream", string_value(key, node));
    } else if (key == "upstream") {
      load_groups(node, config);
    } else if (key == "listener") {
      load_listeners(node, config);
    } else if (key == "temp_dir") {
      config.temp_dir = string_value(key, node);
    } else if (key == "admin") {
      config.admin = string_value(key, node);
    } else if (key == "takeover_socket") {
      config.takeover_socket = string_value(key, node);
    } else if (key == "access_log") {
      config.access_log = string_value(key, node);
    } else if (key == "access_log_format") {
      config.access_log_format = string_value(key, node);
    } else if (key == "deny" || key == "allow") {
      prefix_list(key, node, key == "deny" ? config.deny : config.allow);
    } else if (key == "security") {
      load_security(table, node, config);
    } else if (key == "deny_established") {
      deny_established_value(key, node, config);
    } else if (key == "cpus") {
      auto* list = node.as_array();
      if (list == nullptr) bad(key, node_text(node), "a list of CPU numbers, such as [1, 2]");
      config.cpus.clear();
      for (const auto& item : *list) {
        auto n = item.value<int64_t>();
        if (!item.is_integer() || !n || *n < 0 || *n > 4095) bad(key, node_text(item), "CPU numbers from 0 to 4095");
        config.cpus.push_back(int(*n));
      }
    } else if (key == "xdp_iface") {
      config.xdp_iface = string_value(key, node);
    } else if (key == "xdp_mode") {
      config.xdp_mode = string_value(key, node);
    } else if (key == "log_level") {
      config.log_level = string_value(key, node);
    } else if (key == "splice") {
      config.splice = string_value(key, node);
    } else if (key == "port_range_mode") {
      config.port_range_mode = string_value(key, node);
    } else {
      throw ConfigError(fmt::format("{}: unknown key '{}'", path, key));
    }
  }
  // Flat addresses beside [[listener]] tables: which limits and group would
  // they get? One form per file.
  if (table.contains("listen") && table.contains("listener"))
    throw ConfigError("listen: cannot be combined with [[listener]] tables (give each address its own [[listener]])");
}

void validate(Config& config) {
  if (config.persistent > config.max_upstream)
    throw ConfigError(fmt::format("persistent: bad value '{}' (expected at most max_upstream, {})",
                                  config.persistent, config.max_upstream));
  if ((config.ring_bytes & (config.ring_bytes - 1)) != 0)
    throw ConfigError(fmt::format("ring_bytes: bad value '{}' (expected a power of two, such as 4m)", config.ring_bytes));
  if ((config.recv_buffers & (config.recv_buffers - 1)) != 0)
    throw ConfigError(fmt::format("recv_buffers: bad value '{}' (expected a power of two)", config.recv_buffers));
  if (config.admin != "off") parse_socket_address("admin", config.admin);
  // sockaddr_un holds 108 bytes; the server binds PATH.PID first (ops/takeover.cpp).
  if (!config.takeover_socket.empty() && (config.takeover_socket.front() != '/' || config.takeover_socket.size() > 90))
    bad("takeover_socket", config.takeover_socket, "an absolute path of at most 90 bytes, or \"\" for none");
  if (config.access_log.empty()) bad("access_log", config.access_log, "a file path, \"stderr\" or \"off\"");
  if (config.access_log_format != "combined" && config.access_log_format != "json")
    bad("access_log_format", config.access_log_format, "combined or json");
  for (const auto& d : config.deny) parse_prefix("deny", d);
  for (const auto& a : config.allow) parse_prefix("allow", a);
  if (config.rate_limit > 0 && config.rate_burst == 0) config.rate_burst = config.rate_limit;
  if (config.xdp_mode != "auto" && config.xdp_mode != "native" && config.xdp_mode != "generic")
    bad("xdp_mode", config.xdp_mode, "auto, native or generic");
  if (!parse_log_level(config.log_level)) bad("log_level", config.log_level, "error, warning, info or debug");
  if (config.splice != "auto" && config.splice != "kernel" && config.splice != "user")
    bad("splice", config.splice, "auto, kernel or user");
  if (config.port_range_mode != "auto" && config.port_range_mode != "sk_lookup" && config.port_range_mode != "bind")
    bad("port_range_mode", config.port_range_mode, "auto, sk_lookup or bind");
  validate_shards(config);
  // One response's memory must fit one shard's share of the buffer memory.
  const uint64_t shard_memory = config.buffer_memory_max / config.workers;
  if (config.response_buffer > shard_memory)
    throw ConfigError(fmt::format("response_buffer: bad value '{}' (expected at most buffer_memory_max{}, {})",
                                  config.response_buffer, config.workers > 1 ? " / workers" : "", shard_memory));
  build_from_flat(config);
  validate_groups(config);
  validate_listeners(config);
  // The flat fields mirror the tables for code that knows one of each.
  config.listen.clear();
  for (const auto& l : config.listeners) config.listen.push_back(l.address);
  config.upstream = config.groups[config.listeners.front().group].servers.front().target;
}

// Flags share the table: "--max-clients" sets "max_clients".
bool set_number_from_flag(Config& config, const std::string& key, const std::string& value) {
  const NumberKey* k = find_number_key(key);
  if (k == nullptr) return false;
  if (set_auto(config, key, value)) return true;
  std::string flag = "--" + key;
  for (auto& c : flag) if (c == '_') c = '-';
  uint64_t v = k->is_size ? parse_size(flag, value) : parse_uint(flag, value, k->min, k->max);
  if (v < k->min || v > k->max) bad(flag, value, fmt::format("a value from {} to {}", k->min, k->max));
  k->set(config, v);
  return true;
}

std::vector<std::string> number_key_names() {
  std::vector<std::string> names;
  for (const auto& k : number_keys()) names.push_back(k.key);
  return names;
}

const char* auth_name(ListenerSecurity::Auth auth) {
  switch (auth) {
    case ListenerSecurity::Auth::kNone: return "none";
    case ListenerSecurity::Auth::kBearer: return "bearer";
    case ListenerSecurity::Auth::kApiKey: return "api-key";
  }
  return "?";
}

const char* balance_name(Balance balance) {
  switch (balance) {
    case Balance::kLeastOutstanding: return "least-outstanding";
    case Balance::kRoundRobin: return "round-robin";
    case Balance::kSourceHash: return "source-hash";
  }
  return "?";
}

// A command-line --listen is a quick "serve here instead": it replaces what
// the file listens on, whichever form the file used.
void apply_listen_flags(Config& config, const std::vector<std::string>& addresses) {
  if (addresses.empty()) return;
  config.listen.clear();
  config.listeners.clear();
  for (const auto& text : addresses) {
    ListenerConfig listener;
    listener.address = parse_socket_address("--listen", text);
    listener.where = "--listen";
    config.listeners.push_back(listener);
  }
}

// With several groups, which one's servers --upstream means must be said in
// the file (name it "default"), never guessed.
void apply_upstream_flag(Config& config, const std::string& text) {
  if (text.empty()) return;
  UpstreamTarget target = parse_upstream("--upstream", text);
  if (config.groups.empty()) {
    config.upstream = target;
    return;
  }
  for (auto& group : config.groups)
    if (group.name == "default") {
      group.servers = {ServerConfig{target}};  // the rest of the table (balance, health) stays
      return;
    }
  std::string names;
  for (const auto& group : config.groups) names += (names.empty() ? "" : ", ") + group.name;
  bad("--upstream", text,
      fmt::format("an [[upstream]] table named \"default\" whose servers it replaces; the file has {}", names));
}

namespace {

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (uint8_t(c) < 0x20 || c == 0x7f) {
      out += fmt::format("\\u{:04x}", unsigned(uint8_t(c)));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i > 0 ? ", " : "") + quoted(items[i]);
  return out + "]";
}

void format_globals(const Config& config, std::string& out) {
  out += "# Global settings; a listener's limits follow them unless it sets its own.\n";
  for (const auto& k : number_keys()) {
    if (std::string_view(k.key) == "cpu") continue;  // validate() folds it into cpus
    if (std::string_view(k.key) == "max_upstream" && config.max_upstream_auto) {
      out += "max_upstream = \"auto\"\n";
      continue;
    }
    out += fmt::format("{} = {}\n", k.key, k.get(config));
  }
  if (!config.cpus.empty()) {
    std::string list;
    for (int cpu : config.cpus) list += (list.empty() ? "" : ", ") + std::to_string(cpu);
    out += fmt::format("cpus = [{}]\n", list);
  }
  out += fmt::format("admin = {}\ntemp_dir = {}\n", quoted(config.admin), quoted(config.temp_dir));
  if (!config.takeover_socket.empty()) out += fmt::format("takeover_socket = {}\n", quoted(config.takeover_socket));
  out += fmt::format("access_log = {}\naccess_log_format = {}\n", quoted(config.access_log),
                     quoted(config.access_log_format));
  out += fmt::format("deny = {}\nallow = {}\n", quoted_list(config.deny), quoted_list(config.allow));
  out += fmt::format("deny_established = {}\n", quoted(config.deny_established));
  if (!config.xdp_iface.empty()) out += fmt::format("xdp_iface = {}\n", quoted(config.xdp_iface));
  out += fmt::format("xdp_mode = {}\nlog_level = {}\n", quoted(config.xdp_mode), quoted(config.log_level));
  out += fmt::format("splice = {}\n", quoted(config.splice));
  out += fmt::format("port_range_mode = {}\n", quoted(config.port_range_mode));
}

void format_listener(const ListenerConfig& listener, std::string& out) {
  out += fmt::format("\n[[listener]]\nname = {}\nlisten = {}\nproxy = {}\nupstream = {}\n", quoted(listener.name),
                     quoted(listener.address.text), quoted(listener.proxy), quoted(listener.upstream));
  if (listener.upstream_port_same) out += "upstream_port = \"same\"\n";
  if (!listener.connect_targets.empty()) {
    std::vector<std::string> targets;
    for (const ConnectTarget& t : listener.connect_targets) targets.push_back(t.address.text);
    out += fmt::format("connect_targets = {}\n", quoted_list(targets));
  }
  for (const auto& limit : listener_limits()) {
    std::string line = fmt::format("{} = {}", limit.key, limit.get(listener));
    if (!has_key(listener.explicit_keys, limit.key)) line = fmt::format("{:<36}# global", line);
    out += line + "\n";
  }
  const ListenerSecurity& sec = listener.security;
  std::string fields = fmt::format("auth = {}", quoted(auth_name(sec.auth)));
  if (sec.auth != ListenerSecurity::Auth::kNone)  // the tokens stay in their file
    fields += fmt::format(", header = {}, token_file = {}", quoted(sec.header), quoted(sec.token_file));
  if (!sec.methods.empty()) fields += fmt::format(", methods = {}", quoted_list(sec.methods));
  if (!sec.deny.empty()) fields += fmt::format(", deny = {}", quoted_list(sec.deny));
  if (!sec.allow.empty()) fields += fmt::format(", allow = {}", quoted_list(sec.allow));
  out += fmt::format("security = {{ {}, target_bytes_max = {} }}\n", fields, sec.target_bytes_max);
}

void format_group(const Config& config, const GroupConfig& group, std::string& out) {
  std::string users;
  for (const auto& l : config.listeners)
    if (&config.groups[l.group] == &group) users += (users.empty() ? "" : ", ") + l.name;
  out += fmt::format("\n[[upstream]]                        # used by {}\n", users.empty() ? "no listener" : users);
  out += fmt::format("name = {}\nbalance = {}\nmax_fails = {}\nfail_timeout_ms = {}\n", quoted(group.name),
                     quoted(balance_name(group.balance)), group.max_fails, group.fail_timeout_ms);
  const HealthConfig& h = group.health;
  if (h.enabled)
    out += fmt::format("health = {{ path = {}, interval_ms = {}, timeout_ms = {}, rise = {}, fall = {} }}\n",
                       quoted(h.path), h.interval_ms, h.timeout_ms, h.rise, h.fall);
  else
    out += "# health: off (passive only: max_fails, fail_timeout_ms)\n";
  out += "servers = [\n";
  for (const auto& s : group.servers) {
    std::string inherited;
    for (const char* key : {"max_connections", "persistent"})
      if (!has_key(s.explicit_keys, key)) inherited += std::string(inherited.empty() ? "  # global: " : ", ") + key;
    out += fmt::format("  {{ address = {}, weight = {}, max_connections = {}, persistent = {} }},{}\n",
                       quoted(s.target.text), s.weight, s.max_connections, s.persistent, inherited);
  }
  out += "]\n";
}

}  // namespace

std::string format_config(const Config& config) {
  std::string out;
  format_globals(config, out);
  for (const auto& listener : config.listeners) format_listener(listener, out);
  for (const auto& group : config.groups) format_group(config, group, out);
  return out;
}

}  // namespace offload
