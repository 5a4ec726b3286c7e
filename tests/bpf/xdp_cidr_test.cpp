// CIDR parsing and the CLI's input checks: no privilege needed, nothing touches the kernel.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "cidr.h"
#include "xdp_cli.h"

using offload::xdp::parse_prefix;

TEST_CASE("valid prefixes") {
  struct Valid {
    const char* text;
    const char* canonical;
    bool v6;
    bool whole;
  };
  const Valid cases[] = {
      {"10.0.0.0/8", "10.0.0.0/8", false, false},
      {"10.1.2.3", "10.1.2.3/32", false, true},
      {"10.1.2.3/32", "10.1.2.3/32", false, true},
      {"0.0.0.0/0", "0.0.0.0/0", false, false},
      {"192.168.128.0/17", "192.168.128.0/17", false, false},
      {"2001:db8::/32", "2001:db8::/32", true, false},
      {"2001:DB8:0:0::1", "2001:db8::1/128", true, true},
      {"::/0", "::/0", true, false},
      {"fd00::8000/113", "fd00::8000/113", true, false},
  };
  for (const auto& c : cases) {
    SUBCASE(c.text) {
      std::string error;
      const auto prefix = parse_prefix(c.text, error);
      REQUIRE_MESSAGE(prefix, error);
      CHECK(prefix->str() == c.canonical);
      CHECK(prefix->v6 == c.v6);
      CHECK(prefix->whole_address() == c.whole);
    }
  }
}

TEST_CASE("invalid prefixes say why") {
  struct Invalid {
    const char* text;
    const char* reason;  // a part of the message
  };
  const Invalid cases[] = {
      {"", "not an IPv4 or IPv6 address"},
      {"banana", "not an IPv4 or IPv6 address"},
      {"10.0.0/8", "not an IPv4 or IPv6 address"},
      {"10.0.0.256", "not an IPv4 or IPv6 address"},
      {"10.0.0.0/33", "bad prefix length"},
      {"10.0.0.0/", "bad prefix length"},
      {"10.0.0.0/-1", "bad prefix length"},
      {"10.0.0.0/8x", "bad prefix length"},
      {"10.0.0.0/0008", "bad prefix length"},
      {"fd00::/129", "bad prefix length"},
      {"10.0.0.1/8", "host bits set (the network is 10.0.0.0/8)"},
      {"192.168.1.1/24", "host bits set (the network is 192.168.1.0/24)"},
      {"2001:db8::1/64", "host bits set (the network is 2001:db8::/64)"},
      {"fd00::8000/112", "host bits set (the network is fd00::/112)"},
  };
  for (const auto& c : cases) {
    SUBCASE(c.text) {
      std::string error;
      CHECK_FALSE(parse_prefix(c.text, error));
      CHECK_MESSAGE(error.find(c.reason) != std::string::npos, error);
    }
  }
}

namespace {

int run_cli(std::vector<std::string> args) {
  CLI::App app{"test"};
  app.require_subcommand(1);
  int exit_code = -1;
  offload::xdp::add_xdp_commands(app, exit_code);
  std::vector<const char*> argv{"offload-agent"};
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    app.parse(int(argv.size()), const_cast<char**>(argv.data()));
  } catch (const CLI::ParseError&) {
    return 2;
  }
  return exit_code;
}

}  // namespace

// The interface does not exist: should a check regress, the command fails (exit 1) instead of
// attaching anything to a real interface.
TEST_CASE("bad command-line input is exit code 2, before any kernel call") {
  CHECK(run_cli({"deny", "add", "10.0.0.1/8"}) == 2);
  CHECK(run_cli({"deny", "add", "banana"}) == 2);
  CHECK(run_cli({"deny", "add"}) == 2);
  CHECK(run_cli({"deny", "del"}) == 2);
  CHECK(run_cli({"deny", "list", "10.0.0.0/8"}) == 2);
  CHECK(run_cli({"deny", "frobnicate", "10.0.0.0/8"}) == 2);
  CHECK(run_cli({"allow", "add", "fd00::1/64"}) == 2);
  CHECK(run_cli({"attach"}) == 2);                                   // --iface is required
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--mode", "turbo"}) == 2);
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--ports", "0"}) == 2);
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--ports", "70000"}) == 2);
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--ports", "80,http"}) == 2);
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--cpu", "100000"}) == 2);
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--syn-burst", "5"}) == 2);  // burst without rate
  CHECK(run_cli({"attach", "--iface", "xg-none0", "--allow-only", "--allow", "10.0.0.1/8"}) == 2);
  CHECK(run_cli({"attach", "--iface", "this-is-a-name-far-too-long"}) == 2);
  CHECK(run_cli({"detach"}) == 2);
}
