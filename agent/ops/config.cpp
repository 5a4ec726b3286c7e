#include "ops/config.h"

#include "ops/shard_limits.h"
#include "security/screen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>
#include <functional>
#include <cctype>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace offload {
namespace {

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
};

const std::vector<NumberKey>& number_keys() {
  constexpr uint64_t kDay = 86400000;
  static const std::vector<NumberKey> keys = {
      {"cpu", 0, 4095, false, [](Config& c, uint64_t v) { c.cpu = int(v); }},
      {"workers", 1, 256, false, [](Config& c, uint64_t v) { c.workers = uint32_t(v); }},
      {"max_clients", 1, 1000000, false, [](Config& c, uint64_t v) { c.max_clients = uint32_t(v); }},
      {"max_upstream", 1, 4096, false, [](Config& c, uint64_t v) { c.max_upstream = uint32_t(v); }},
      {"persistent", 0, 4096, false, [](Config& c, uint64_t v) { c.persistent = uint32_t(v); }},
      {"header_bytes_max", 256, 1 << 20, true, [](Config& c, uint64_t v) { c.header_bytes_max = uint32_t(v); }},
      {"header_count_max", 1, 10000, false, [](Config& c, uint64_t v) { c.header_count_max = uint32_t(v); }},
      {"body_bytes_max", 0, 1ull << 40, true, [](Config& c, uint64_t v) { c.body_bytes_max = v; }},
      {"response_buffer", 4096, 1ull << 32, true, [](Config& c, uint64_t v) { c.response_buffer = v; }},
      {"response_spill_max", 0, 1ull << 42, true, [](Config& c, uint64_t v) { c.response_spill_max = v; }},
      {"body_buffer", 4096, 1ull << 32, true, [](Config& c, uint64_t v) { c.body_buffer = v; }},
      {"spill_total_max", 0, 1ull << 44, true, [](Config& c, uint64_t v) { c.spill_total_max = v; }},
      {"buffer_memory_max", 1 << 20, 1ull << 40, true, [](Config& c, uint64_t v) { c.buffer_memory_max = v; }},
      {"header_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.header_timeout_ms = uint32_t(v); }},
      {"body_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.body_timeout_ms = uint32_t(v); }},
      {"keepalive_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.keepalive_timeout_ms = uint32_t(v); }},
      {"send_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.send_timeout_ms = uint32_t(v); }},
      {"connect_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.connect_timeout_ms = uint32_t(v); }},
      {"response_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.response_timeout_ms = uint32_t(v); }},
      {"queue_timeout_ms", 1, kDay, false, [](Config& c, uint64_t v) { c.queue_timeout_ms = uint32_t(v); }},
      {"drain_timeout_ms", 0, kDay, false, [](Config& c, uint64_t v) { c.drain_timeout_ms = uint32_t(v); }},
      {"recv_buffers", 16, 32768, false, [](Config& c, uint64_t v) { c.recv_buffers = uint32_t(v); }},
      {"recv_buffer_bytes", 512, 1 << 20, true, [](Config& c, uint64_t v) { c.recv_buffer_bytes = uint32_t(v); }},
      {"ring_depth", 1, 64, false, [](Config& c, uint64_t v) { c.ring_depth = uint32_t(v); }},
      {"ring_bytes", 64 * 1024, 1ull << 30, true, [](Config& c, uint64_t v) { c.ring_bytes = v; }},
      {"max_clients_per_source", 0, 1000000, false, [](Config& c, uint64_t v) { c.max_clients_per_source = uint32_t(v); }},
      {"xdp_syn_rate", 0, 100000000, false, [](Config& c, uint64_t v) { c.xdp_syn_rate = uint32_t(v); }},
      {"xdp_syn_burst", 0, 100000000, false, [](Config& c, uint64_t v) { c.xdp_syn_burst = uint32_t(v); }},
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

void load_number(const NumberKey& k, const toml::node& node, Config& config) {
  std::string text = node_text(node);
  uint64_t v = 0;
  if (auto i = node.value<int64_t>(); i && node.is_integer()) {
    if (*i < 0) bad(k.key, text, fmt::format("a whole number from {} to {}", k.min, k.max));
    v = uint64_t(*i);
    if (v < k.min || v > k.max) bad(k.key, text, fmt::format("a whole number from {} to {}", k.min, k.max));
  } else if (node.is_string() && k.is_size) {
    v = parse_size(k.key, text);
  } else {
    bad(k.key, text, k.is_size ? "a size such as 65536, \"64k\" or \"8m\"" : "a whole number");
  }
  if (v < k.min || v > k.max) bad(k.key, text, fmt::format("a value from {} to {}", k.min, k.max));
  k.set(config, v);
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

// upstream = "tcp://..."  or  [upstream] servers = ["tcp://..."]
void load_upstream(const toml::node& node, Config& config) {
  if (node.is_string()) {
    config.upstream = parse_upstream("upstream", string_value("upstream", node));
    return;
  }
  const toml::table* table = node.as_table();
  const toml::array* tables = node.as_array();
  if (table == nullptr && tables != nullptr && tables->size() == 1) {
    const toml::node* first = tables->get(0);
    if (first != nullptr) table = first->as_table();  // [[upstream]]
  }
  if (table == nullptr) bad("upstream", node_text(node), "\"tcp://H:P\", \"unix:PATH\" or \"shm:NAME\"");
  for (const auto& [key, value] : *table) {
    if (key.str() != "servers") throw ConfigError(fmt::format("upstream.{}: unknown key (expected servers)", key.str()));
    const toml::array* servers = value.as_array();
    const toml::node* server = servers != nullptr && servers->size() == 1 ? servers->get(0) : nullptr;
    if (server == nullptr)
      bad("upstream.servers", node_text(value), "a list of exactly one server (one upstream per agent for now)");
    config.upstream = parse_upstream("upstream.servers", string_value("upstream.servers", *server));
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
      load_number(*k, node, config);
    } else if (key == "listen") {
      load_listen(node, config);
    } else if (key == "upstream") {
      load_upstream(node, config);
    } else if (key == "temp_dir") {
      config.temp_dir = string_value(key, node);
    } else if (key == "admin") {
      config.admin = string_value(key, node);
    } else if (key == "deny" || key == "allow") {
      auto* list = node.as_array();
      if (list == nullptr) bad(key, node_text(node), "a list of CIDR prefixes, such as [\"203.0.113.0/24\"]");
      auto& out = key == "deny" ? config.deny : config.allow;
      for (const auto& item : *list) out.push_back(string_value(key, item));
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
    } else {
      throw ConfigError(fmt::format("{}: unknown key '{}'", path, key));
    }
  }
}

void validate(Config& config) {
  if (config.listen.empty()) config.listen.push_back(parse_socket_address("listen", "127.0.0.1:8080"));
  if (config.upstream.text.empty()) config.upstream = parse_upstream("upstream", "tcp://127.0.0.1:8000");
  if (config.persistent > config.max_upstream)
    throw ConfigError(fmt::format("persistent: bad value '{}' (expected at most max_upstream, {})",
                                  config.persistent, config.max_upstream));
  if ((config.ring_bytes & (config.ring_bytes - 1)) != 0)
    throw ConfigError(fmt::format("ring_bytes: bad value '{}' (expected a power of two, such as 4m)", config.ring_bytes));
  if ((config.recv_buffers & (config.recv_buffers - 1)) != 0)
    throw ConfigError(fmt::format("recv_buffers: bad value '{}' (expected a power of two)", config.recv_buffers));
  if (config.admin != "off") parse_socket_address("admin", config.admin);
  for (const auto& d : config.deny) parse_prefix("deny", d);
  for (const auto& a : config.allow) parse_prefix("allow", a);
  if (config.xdp_mode != "auto" && config.xdp_mode != "native" && config.xdp_mode != "generic")
    bad("xdp_mode", config.xdp_mode, "auto, native or generic");
  validate_shards(config);
  // One response's memory must fit one shard's share of the buffer memory.
  const uint64_t shard_memory = config.buffer_memory_max / config.workers;
  if (config.response_buffer > shard_memory)
    throw ConfigError(fmt::format("response_buffer: bad value '{}' (expected at most buffer_memory_max{}, {})",
                                  config.response_buffer, config.workers > 1 ? " / workers" : "", shard_memory));
}

// Flags share the table: "--max-clients" sets "max_clients".
bool set_number_from_flag(Config& config, const std::string& key, const std::string& value) {
  const NumberKey* k = find_number_key(key);
  if (k == nullptr) return false;
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

}  // namespace offload
