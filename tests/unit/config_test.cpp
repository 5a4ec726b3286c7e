#include <doctest/doctest.h>

#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "ops/config.h"

using offload::Config;
using offload::ConfigError;

namespace {
std::string write_temp(const std::string& text) {
  char path[] = "/tmp/offload-config-test-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

std::string error_of(const std::string& toml) {
  std::string path = write_temp(toml);
  Config c;
  std::string what;
  try {
    offload::load_config_file(path, c);
    offload::validate(c);
  } catch (const ConfigError& e) {
    what = e.what();
  }
  std::remove(path.c_str());
  return what;
}
}  // namespace

TEST_CASE("sizes take k, m and g suffixes and reject junk") {
  CHECK(offload::parse_size("x", "4096") == 4096);
  CHECK(offload::parse_size("x", "64k") == 65536);
  CHECK(offload::parse_size("x", "8m") == 8u << 20);
  CHECK(offload::parse_size("x", "1g") == 1u << 30);
  CHECK_THROWS_AS(offload::parse_size("x", "-1"), ConfigError);
  CHECK_THROWS_AS(offload::parse_size("x", "12q"), ConfigError);
  CHECK_THROWS_AS(offload::parse_size("x", ""), ConfigError);
  CHECK_THROWS_AS(offload::parse_size("x", "99999999999999999999"), ConfigError);
}

TEST_CASE("socket addresses: IPv4, IPv6, numeric only") {
  auto v4 = offload::parse_socket_address("listen", "127.0.0.1:8080");
  CHECK(v4.family() == AF_INET);
  CHECK(ntohs(reinterpret_cast<sockaddr_in*>(&v4.storage)->sin_port) == 8080);
  CHECK(offload::parse_socket_address("listen", "[::1]:0").family() == AF_INET6);
  CHECK_THROWS_AS(offload::parse_socket_address("listen", "127.0.0.1"), ConfigError);
  CHECK_THROWS_AS(offload::parse_socket_address("listen", "127.0.0.1:70000"), ConfigError);
  CHECK_THROWS_AS(offload::parse_socket_address("listen", "example.com:80"), ConfigError);
}

TEST_CASE("upstreams: tcp, unix and shm forms") {
  CHECK(offload::parse_upstream("u", "tcp://127.0.0.1:8000").kind == offload::UpstreamTarget::Kind::kTcp);
  CHECK(offload::parse_upstream("u", "127.0.0.1:8000").kind == offload::UpstreamTarget::Kind::kTcp);
  CHECK(offload::parse_upstream("u", "unix:/run/app.sock").kind == offload::UpstreamTarget::Kind::kUnix);
  CHECK(offload::parse_upstream("u", "shm:app").shm_name == "app");
  CHECK_THROWS_AS(offload::parse_upstream("u", "http://127.0.0.1:80"), ConfigError);
  CHECK_THROWS_AS(offload::parse_upstream("u", "shm:bad/name"), ConfigError);
  CHECK_THROWS_AS(offload::parse_upstream("u", "unix:"), ConfigError);
}

TEST_CASE("a TOML file sets every kind of key") {
  std::string path = write_temp(
      "listen = [\"127.0.0.1:9000\", \"[::1]:9000\"]\n"
      "upstream = \"unix:/tmp/app.sock\"\n"
      "max_clients = 500\nmax_upstream = 6\npersistent = 2\n"
      "response_buffer = \"128k\"\nheader_timeout_ms = 1500\ntemp_dir = \"/var/tmp\"\n");
  Config c;
  offload::load_config_file(path, c);
  offload::validate(c);
  std::remove(path.c_str());
  CHECK(c.listen.size() == 2);
  CHECK(c.upstream.kind == offload::UpstreamTarget::Kind::kUnix);
  CHECK(c.max_clients == 500);
  CHECK(c.max_upstream == 6);
  CHECK(c.persistent == 2);
  CHECK(c.response_buffer == 128 * 1024);
  CHECK(c.header_timeout_ms == 1500);
  CHECK(c.temp_dir == "/var/tmp");
}

TEST_CASE("[[upstream]] servers is accepted with one server") {
  std::string path = write_temp("[[upstream]]\nservers = [\"shm:app\"]\n");
  Config c;
  offload::load_config_file(path, c);
  offload::validate(c);  // the flat `upstream` mirrors the tables once validated
  std::remove(path.c_str());
  CHECK(c.upstream.kind == offload::UpstreamTarget::Kind::kShm);
}

TEST_CASE("bad configuration names the key, the value and what was expected") {
  std::string e = error_of("max_clients = \"lots\"\n");
  CHECK(e.find("max_clients") != std::string::npos);
  CHECK(e.find("lots") != std::string::npos);
  CHECK(e.find("expected") != std::string::npos);
  e = error_of("max_clients = 0\n");
  CHECK(e.find("max_clients") != std::string::npos);
  e = error_of("no_such_key = 1\n");
  CHECK(e.find("unknown key 'no_such_key'") != std::string::npos);
  e = error_of("persistent = 9\nmax_upstream = 4\n");
  CHECK(e.find("persistent") != std::string::npos);
  e = error_of("listen = \"nowhere\"\n");
  CHECK(e.find("listen") != std::string::npos);
  e = error_of("max_clients = \n");  // a TOML syntax error names the line
  CHECK(e.find(":1:") != std::string::npos);
}

TEST_CASE("flags use the same table as the file") {
  Config c;
  CHECK(offload::set_number_from_flag(c, "max_upstream", "3"));
  CHECK(c.max_upstream == 3);
  CHECK(offload::set_number_from_flag(c, "response_spill_max", "2g"));
  CHECK(c.response_spill_max == 2ull << 30);
  CHECK_FALSE(offload::set_number_from_flag(c, "nope", "1"));
  try {
    offload::set_number_from_flag(c, "max_clients", "-5");
    FAIL("accepted -5");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("--max-clients") != std::string::npos);
  }
}

TEST_CASE("the documented example configuration is valid and states the defaults") {
  Config defaults;
  Config c;
  offload::load_config_file(OFFLOAD_SOURCE_DIR "/docs/offload.toml", c);
  offload::validate(c);
  CHECK(c.max_clients == defaults.max_clients);
  CHECK(c.max_upstream == defaults.max_upstream);
  CHECK(c.max_upstream_auto == defaults.max_upstream_auto);
  CHECK(c.persistent == defaults.persistent);
  CHECK(c.header_bytes_max == defaults.header_bytes_max);
  CHECK(c.body_bytes_max == defaults.body_bytes_max);
  CHECK(c.response_buffer == defaults.response_buffer);
  CHECK(c.response_spill_max == defaults.response_spill_max);
  CHECK(c.buffer_memory_max == defaults.buffer_memory_max);
  CHECK(c.header_timeout_ms == defaults.header_timeout_ms);
  CHECK(c.body_timeout_ms == defaults.body_timeout_ms);
  CHECK(c.keepalive_timeout_ms == defaults.keepalive_timeout_ms);
  CHECK(c.send_timeout_ms == defaults.send_timeout_ms);
  CHECK(c.connect_timeout_ms == defaults.connect_timeout_ms);
  CHECK(c.response_timeout_ms == defaults.response_timeout_ms);
  CHECK(c.queue_timeout_ms == defaults.queue_timeout_ms);
  CHECK(c.drain_timeout_ms == defaults.drain_timeout_ms);
  CHECK(c.recv_buffers == defaults.recv_buffers);
  CHECK(c.ring_bytes == defaults.ring_bytes);
  CHECK(c.ring_depth == defaults.ring_depth);
  CHECK(c.max_clients_per_source == defaults.max_clients_per_source);
  CHECK(c.recv_buffer_bytes == defaults.recv_buffer_bytes);
  CHECK(c.admin == defaults.admin);
  CHECK(c.temp_dir == defaults.temp_dir);
}

TEST_CASE("max_upstream takes a number (a fixed limit) or \"auto\" (the adaptive one, the default)") {
  Config defaults;
  CHECK(defaults.max_upstream_auto);
  Config c;
  CHECK(offload::set_number_from_flag(c, "max_upstream", "16"));
  CHECK(c.max_upstream == 16);
  CHECK_FALSE(c.max_upstream_auto);
  CHECK(offload::set_number_from_flag(c, "max_upstream", "auto"));
  CHECK(c.max_upstream_auto);
  CHECK(c.max_upstream == defaults.max_upstream);
  std::string path = write_temp("max_upstream = 12\n");
  Config f;
  offload::load_config_file(path, f);
  std::remove(path.c_str());
  CHECK(f.max_upstream == 12);
  CHECK_FALSE(f.max_upstream_auto);
  std::string e = error_of("max_upstream = \"lots\"\n");
  CHECK(e.find("max_upstream") != std::string::npos);
  CHECK(e.find("lots") != std::string::npos);
  CHECK(e.find("\"auto\"") != std::string::npos);
}
