// connect_targets: what a CONNECT on an http listener may open. Parsing,
// matching, the round trip through --show, and each error naming its key.
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <string>

#include "config_file.h"
#include "ops/config.h"

using config_test::error_of;
using config_test::load;

namespace {
const std::string kGroup = "[[upstream]]\nname = \"app\"\nservers = [\"tcp://127.0.0.1:9000\"]\n";

offload::SocketAddress address(const std::string& text) { return offload::parse_socket_address("test", text); }

bool allowed(const offload::ListenerConfig& l, const std::string& text) {
  const offload::SocketAddress a = address(text);
  for (const auto& t : l.connect_targets)
    if (t.allows(a)) return true;
  return false;
}
}  // namespace

TEST_CASE("connect_targets: addresses and port ranges, matched exactly, printed by --show") {
  offload::Config c = load(kGroup + R"(
[[listener]]
listen = "127.0.0.1:8080"
connect_targets = ["127.0.0.1:9000", "[::1]:22", "10.0.0.5:8000-8099"]
[[listener]]
listen = "127.0.0.1:8081"
)");
  REQUIRE(c.listeners.size() == 2);
  const offload::ListenerConfig& l = c.listeners[0];
  REQUIRE(l.connect_targets.size() == 3);
  CHECK(allowed(l, "127.0.0.1:9000"));
  CHECK_FALSE(allowed(l, "127.0.0.1:9001"));
  CHECK_FALSE(allowed(l, "127.0.0.2:9000"));
  CHECK(allowed(l, "[::1]:22"));
  CHECK_FALSE(allowed(l, "[::2]:22"));
  CHECK_FALSE(allowed(l, "127.0.0.1:22"));  // another family
  CHECK(allowed(l, "10.0.0.5:8000"));
  CHECK(allowed(l, "10.0.0.5:8099"));
  CHECK_FALSE(allowed(l, "10.0.0.5:8100"));
  CHECK_FALSE(allowed(l, "10.0.0.5:7999"));
  CHECK(c.listeners[1].connect_targets.empty());  // CONNECT gets 405 there
  const std::string shown = offload::format_config(c);
  CHECK(shown.find("connect_targets = [\"127.0.0.1:9000\", \"[::1]:22\", \"10.0.0.5:8000-8099\"]\n") !=
        std::string::npos);
  offload::Config back = load(shown);
  REQUIRE(back.listeners[0].connect_targets.size() == 3);
  CHECK(allowed(back.listeners[0], "10.0.0.5:8050"));
  CHECK(back.listeners[1].connect_targets.empty());
}

TEST_CASE("connect_targets: each bad entry is named, with what was expected") {
  const std::string l = kGroup + "[[listener]]\nlisten = \"127.0.0.1:8080\"\n";
  CHECK(error_of(l + "connect_targets = [\"example.internal:443\"]\n") ==
        "listener[0].connect_targets[0]: bad value 'example.internal:443' (expected a numeric IPv4 or IPv6 address "
        "(no host names))");
  CHECK(error_of(l + "connect_targets = [\"127.0.0.1:9000\", \"127.0.0.1:0\"]\n") ==
        "listener[0].connect_targets[1]: bad value '127.0.0.1:0' (expected a port from 1 to 65535 (a CONNECT names "
        "its port))");
  CHECK(error_of(l + "connect_targets = [\"127.0.0.1:9010-9000\"]\n") ==
        "listener[0].connect_targets[0]: bad value '127.0.0.1:9010-9000' (expected ADDR:FIRST-LAST with 1 <= FIRST "
        "<= LAST <= 65535, such as 127.0.0.1:9000-9010)");
  CHECK(error_of(l + "connect_targets = [\"127.0.0.1\"]\n").find("listener[0].connect_targets[0]: bad value") == 0);
  CHECK(error_of(l + "connect_targets = []\n").find("listener[0].connect_targets: bad value") == 0);
  CHECK(error_of(l + "connect_targets = \"127.0.0.1:9000\"\n").find("listener[0].connect_targets: bad value") == 0);
  // A pass-through listener moves any bytes already: CONNECT is HTTP's.
  CHECK(error_of(kGroup + "[[listener]]\nlisten = \"127.0.0.1:8080\"\nproxy = \"passthrough\"\n"
                          "connect_targets = [\"127.0.0.1:9000\"]\n") ==
        "listener[0].connect_targets: bad value '127.0.0.1:9000' (expected proxy = \"http\" on this listener)");
}
