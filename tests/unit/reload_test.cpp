// What a reload may change, and which sockets the next generation keeps.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "ops/config.h"
#include "ops/counters.h"
#include "ops/reload.h"

using offload::Config;
using offload::ConfigError;

namespace {

Config with_listeners(const std::vector<std::string>& addresses) {
  Config c;
  for (const std::string& a : addresses) c.listen.push_back(offload::parse_socket_address("listen", a));
  offload::validate(c);
  return c;
}

std::string refusal(const Config& running, const Config& next) {
  try {
    offload::check_reloadable(running, next);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("reload hand-over: an unchanged address keeps each shard's socket, a new one is to be opened") {
  Config running = with_listeners({"127.0.0.1:7001", "127.0.0.1:0"});
  Config next = with_listeners({"127.0.0.1:0", "127.0.0.1:7002"});
  // Two shards, each with its own socket per address.
  offload::Handover h = offload::plan_handover(running, {{{10}, {11}}, {{20}, {21}}}, next);
  REQUIRE(h.fds.size() == 2);
  CHECK(h.fds[0] == offload::ShardSockets{{11}, {}});
  CHECK(h.fds[1] == offload::ShardSockets{{21}, {}});
  CHECK(h.kept == std::vector<int>{11, 21});  // 10 and 20 (port 7001) are removed
}

TEST_CASE("reload hand-over: the same address twice is not one socket given to two listeners") {
  Config running = with_listeners({"127.0.0.1:7001"});
  Config next = with_listeners({"127.0.0.1:7001", "127.0.0.1:7003"});
  offload::Handover h = offload::plan_handover(running, {{{5}}}, next);
  CHECK(h.fds[0] == offload::ShardSockets{{5}, {}});
}

TEST_CASE("reload hand-over: a range bound port by port goes over whole, each shard's socket of every port") {
  Config running = with_listeners({"127.0.0.1:7001"});
  running.listeners[0].port_last = 7003;
  Config next = running;  // the range stays; a listener is added before it
  next.listeners.insert(next.listeners.begin(), running.listeners[0]);
  next.listeners[0].address = offload::parse_socket_address("listen", "127.0.0.1:7100");
  next.listeners[0].port_last = 0;
  offload::Handover h = offload::plan_handover(running, {{{10, 11, 12}}, {{20, 21, 22}}}, next);
  CHECK(h.fds[0] == offload::ShardSockets{{}, {10, 11, 12}});
  CHECK(h.fds[1] == offload::ShardSockets{{}, {20, 21, 22}});
  CHECK(h.kept == std::vector<int>{10, 11, 12, 20, 21, 22});
  // Another last port is another range: nothing goes over.
  next.listeners[1].port_last = 7004;
  h = offload::plan_handover(running, {{{10, 11, 12}}, {{20, 21, 22}}}, next);
  CHECK(h.kept.empty());
}

TEST_CASE("reload: limits may change; shards, CPUs, the admin address and the XDP guard need a restart, by name") {
  Config running = with_listeners({"127.0.0.1:7001"});
  Config next = running;
  next.max_clients = 5;
  next.header_bytes_max = 4096;
  next.listen.push_back(offload::parse_socket_address("listen", "127.0.0.1:7002"));
  CHECK(refusal(running, next).empty());

  next = running;
  next.workers = running.workers + 1;
  CHECK(refusal(running, next).rfind("workers: ", 0) == 0);
  next = running;
  next.admin = "127.0.0.1:9999";
  CHECK(refusal(running, next).rfind("admin: '127.0.0.1:9999'", 0) == 0);
  next = running;
  next.xdp_iface = "lo";
  CHECK(refusal(running, next).rfind("xdp_iface: ", 0) == 0);
  next = running;
  next.port_range_mode = "bind";
  CHECK(refusal(running, next) ==
        "port_range_mode: 'bind' differs from the running 'auto' (a reload cannot change it; restart the agent)");
}

TEST_CASE("reload: an ended generation's totals are kept, its gauges are not") {
  offload::Counters total, part;
  offload::bump(total.requests, 5);
  offload::bump(part.requests, 3);
  offload::bump(part.active_clients, 2);  // a gauge: gone with its generation
  part.request_duration.observe(7);
  offload::add_cumulative(total, part);
  CHECK(total.requests.load() == 8);
  CHECK(total.active_clients.load() == 0);
  CHECK(total.request_duration.count() == 1);
}
