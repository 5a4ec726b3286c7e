#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <map>
#include <random>

#include "ip_text.h"
#include "ops/config.h"
#include "security/screen.h"

using offload::IpAddress;
using unit_test::ip;
using offload::Screen;
using offload::Verdict;

TEST_CASE("prefixes: IPv4 and IPv6, longest match by containment, host bits refused") {
  auto p4 = offload::parse_prefix("deny", "203.0.113.0/24");
  CHECK(p4.contains(ip("203.0.113.77")));
  CHECK_FALSE(p4.contains(ip("203.0.114.1")));
  CHECK_FALSE(p4.contains(ip("2001:db8::1")));
  auto p6 = offload::parse_prefix("deny", "2001:db8::/33");
  CHECK(p6.contains(ip("2001:db8:7fff::1")));
  CHECK_FALSE(p6.contains(ip("2001:db8:8000::1")));
  CHECK(offload::parse_prefix("deny", "198.51.100.7").contains(ip("198.51.100.7")));
  CHECK_FALSE(offload::parse_prefix("deny", "198.51.100.7").contains(ip("198.51.100.8")));
  CHECK(offload::parse_prefix("deny", "0.0.0.0/0").contains(ip("192.0.2.1")));
  CHECK_THROWS_AS(offload::parse_prefix("deny", "203.0.113.1/24"), offload::ConfigError);
  CHECK_THROWS_AS(offload::parse_prefix("deny", "203.0.113.0/33"), offload::ConfigError);
  CHECK_THROWS_AS(offload::parse_prefix("deny", "nowhere/8"), offload::ConfigError);
}

TEST_CASE("screen: deny and allow lists") {
  Screen s({offload::parse_prefix("deny", "192.0.2.0/24")}, {offload::parse_prefix("allow", "192.0.0.0/8")}, 0, 100);
  CHECK(s.active());
  CHECK(s.admit(ip("192.0.2.9")) == Verdict::kDenied);
  CHECK(s.admit(ip("192.1.2.3")) == Verdict::kAccept);
  CHECK(s.admit(ip("10.0.0.1")) == Verdict::kNotAllowed);
  CHECK_FALSE(Screen({}, {}, 0, 100).active());
}

TEST_CASE("screen: the per-source limit counts open connections, against a model") {
  constexpr uint32_t kLimit = 3;
  Screen s({}, {}, kLimit, 64);
  std::map<int, uint32_t> model;
  std::mt19937 rng(7);
  for (int step = 0; step < 20000; ++step) {
    int source = int(rng() % 40);  // many sources colliding in a small table
    char text[32];
    std::snprintf(text, sizeof text, "10.0.%d.%d", source / 7, source);
    IpAddress a = ip(text);
    if (rng() % 2 == 0) {
      Verdict v = s.admit(a);
      CHECK(v == (model[source] < kLimit ? Verdict::kAccept : Verdict::kOverSourceLimit));
      if (v == Verdict::kAccept) ++model[source];
    } else if (model[source] > 0) {
      s.release(a);
      --model[source];
    }
    REQUIRE(s.connections_from(a) == model[source]);
  }
}
