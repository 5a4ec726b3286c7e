// Port-range listeners ("ADDR:FIRST-LAST", port = "FIRST-LAST") and
// upstream_port = "same": parsing, the round trip through --show, and each
// error naming its key.
#include <doctest/doctest.h>

#include <string>

#include "config_file.h"
#include "ops/config.h"

using config_test::error_of;
using config_test::load;
using offload::port_of;

namespace {
const std::string kGroup = "[[upstream]]\nname = \"app\"\nservers = [\"tcp://127.0.0.1:9000\"]\n";
}

TEST_CASE("a listener serves a port range: the first port in its address, the last beside it") {
  offload::Config c = load(kGroup + R"(
[[listener]]
listen = "127.0.0.1:9100-9199"
proxy = "passthrough"
upstream_port = "same"
[[listener]]
port = "9300-9301"
[[listener]]
listen = "[::1]:9400-9400"
[[listener]]
listen = "127.0.0.1:8080"
)");
  REQUIRE(c.listeners.size() == 4);
  CHECK(port_of(c.listeners[0].address) == 9100);
  CHECK(c.listeners[0].port_last == 9199);
  CHECK(c.listeners[0].upstream_port_same);
  CHECK(c.listeners[1].address.family() == AF_INET);
  CHECK(port_of(c.listeners[1].address) == 9300);
  CHECK(c.listeners[1].port_last == 9301);
  CHECK_FALSE(c.listeners[1].upstream_port_same);
  CHECK(c.listeners[2].address.family() == AF_INET6);
  CHECK(c.listeners[2].port_last == 9400);  // a range of one
  CHECK(c.listeners[3].port_last == 0);     // one port, as before
  // check --show prints it as written, and it loads back the same.
  offload::Config back = load(offload::format_config(c));
  CHECK(back.listeners[0].port_last == 9199);
  CHECK(back.listeners[0].upstream_port_same);
  CHECK(port_of(back.listeners[1].address) == 9300);
}

TEST_CASE("port ranges: each bad one is named, with what was expected") {
  const std::string l = kGroup + "[[listener]]\n";
  CHECK(error_of(l + "listen = \"127.0.0.1:9199-9100\"\n") ==
        "listener[0].listen: bad value '127.0.0.1:9199-9100' (expected a range FIRST-LAST with 1 <= FIRST <= LAST "
        "and at most 4096 ports)");
  CHECK(error_of(l + "listen = \"127.0.0.1:0-10\"\n").find("listener[0].listen: bad value '127.0.0.1:0-10'") == 0);
  CHECK(error_of(l + "listen = \"127.0.0.1:1000-9000\"\n").find("at most 4096 ports") != std::string::npos);
  CHECK(error_of(l + "listen = \"127.0.0.1:9100-\"\n") ==
        "listener[0].listen: bad value '127.0.0.1:9100-' (expected ADDR:FIRST-LAST with ports from 1 to 65535, such "
        "as 127.0.0.1:9100-9199)");
  CHECK(error_of(l + "listen = \"127.0.0.1:9100-70000\"\n").find("listener[0].listen: bad value") == 0);
  CHECK(error_of(l + "port = \"a-b\"\n").find("listener[0].port: bad value") == 0);
  CHECK(error_of(l + "listen = \"127.0.0.1:9100-9199\"\nupstream_port = \"9000\"\n") ==
        "listener[0].upstream_port: bad value '9000' (expected same (the port the client dialled))");
  // One pool per port would be needed: only pass-through listeners may map ports.
  CHECK(error_of(l + "listen = \"127.0.0.1:9100-9199\"\nupstream_port = \"same\"\n") ==
        "listener[0].upstream_port: bad value 'same' (expected proxy = \"passthrough\" on this listener)");
}

TEST_CASE("two listeners may not share a port, range or not; other addresses or ports may") {
  const std::string l = kGroup;
  CHECK(error_of(l + "[[listener]]\nlisten = \"127.0.0.1:9100-9199\"\n[[listener]]\nlisten = \"127.0.0.1:9150\"\n") ==
        "listener[1].listen: duplicate '127.0.0.1:9150' (also listener[0])");
  CHECK(error_of(l + "[[listener]]\nlisten = \"127.0.0.1:9100-9199\"\n[[listener]]\nlisten = \"127.0.0.1:9000-9100\"\n")
            .find("listener[1].listen: duplicate") == 0);
  CHECK(error_of(l + "[[listener]]\nlisten = \"127.0.0.1:9100-9199\"\n[[listener]]\nlisten = \"127.0.0.1:9200-9299\"\n") ==
        "(no error)");
  CHECK(error_of(l + "[[listener]]\nlisten = \"127.0.0.1:9100-9199\"\n[[listener]]\nlisten = \"127.0.0.2:9100-9199\"\n") ==
        "(no error)");
}

TEST_CASE("port_range_mode: auto by default, sk_lookup or bind, anything else an error naming it") {
  CHECK(load(kGroup).port_range_mode == "auto");
  CHECK(load("port_range_mode = \"bind\"\n" + kGroup).port_range_mode == "bind");
  CHECK(load("port_range_mode = \"sk_lookup\"\n" + kGroup).port_range_mode == "sk_lookup");
  CHECK(error_of("port_range_mode = \"each\"\n" + kGroup) ==
        "port_range_mode: bad value 'each' (expected auto, sk_lookup or bind)");
  // --show writes it, and it loads back.
  offload::Config c = load("port_range_mode = \"bind\"\n" + kGroup);
  CHECK(offload::format_config(c).find("port_range_mode = \"bind\"\n") != std::string::npos);
}
