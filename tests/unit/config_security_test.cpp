// [security] and a listener's `security = { ... }`: parsing, the old flat
// keys beside the table, flags, tokens read from their file, and every
// error naming its key, its value and what was expected.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "config_file.h"
#include "ops/config.h"

using offload::Config;
using offload::ConfigError;
using offload::ListenerSecurity;
using config_test::error_of;
using config_test::load;
using config_test::write_file;

TEST_CASE("[security]: the source rules, with their defaults") {
  Config d = load("");
  CHECK(d.rate_limit == 0);
  CHECK(d.source_table_size == 65536);
  CHECK(d.source_ipv4_prefix == 32);
  CHECK(d.source_ipv6_prefix == 64);

  Config c = load(
      "[security]\nrate = 20\nburst = 50\nsource_table_size = 1000\nipv4_prefix = 24\nipv6_prefix = 56\n"
      "max_clients_per_source = 8\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.9\", \"2001:db8::/32\"]\n");
  CHECK(c.rate_limit == 20);
  CHECK(c.rate_burst == 50);
  CHECK(c.source_table_size == 1000);
  CHECK(c.source_ipv4_prefix == 24);
  CHECK(c.source_ipv6_prefix == 56);
  CHECK(c.max_clients_per_source == 8);
  CHECK(c.allow == std::vector<std::string>{"127.0.0.0/8"});
  CHECK(c.deny.size() == 2);

  CHECK(load("[security]\nrate = 7\n").rate_burst == 7);  // no burst: one second's worth
}

TEST_CASE("[security]: the old flat keys still work, and flags use the flat names") {
  Config c = load("max_clients_per_source = 3\ndeny = [\"192.0.2.0/24\"]\nrate_limit = 5\n");
  CHECK(c.max_clients_per_source == 3);
  CHECK(c.deny == std::vector<std::string>{"192.0.2.0/24"});
  CHECK(c.rate_burst == 5);
  Config f;
  CHECK(offload::set_number_from_flag(f, "rate_limit", "100"));
  CHECK(offload::set_number_from_flag(f, "rate_burst", "200"));
  CHECK(offload::set_number_from_flag(f, "source_table_size", "4096"));
  CHECK(offload::set_number_from_flag(f, "source_ipv6_prefix", "48"));
  offload::validate(f);
  CHECK(f.rate_limit == 100);
  CHECK(f.rate_burst == 200);
  CHECK(f.source_table_size == 4096);
  CHECK(f.source_ipv6_prefix == 48);
  CHECK_THROWS_WITH_AS(offload::set_number_from_flag(f, "source_ipv4_prefix", "33"),
                       "--source-ipv4-prefix: bad value '33' (expected a whole number from 1 to 32)", ConfigError);
}

TEST_CASE("[security]: bad values name the key, the value and what was expected") {
  CHECK(error_of("[security]\nrate = -1\n") == "security.rate: bad value '-1' (expected a whole number from 0 to 1000000)");
  CHECK(error_of("[security]\nipv6_prefix = 129\n") ==
        "security.ipv6_prefix: bad value '129' (expected a whole number from 1 to 128)");
  CHECK(error_of("[security]\nsource_table_size = 8\n") ==
        "security.source_table_size: bad value '8' (expected a whole number from 16 to 16777216)");
  CHECK(error_of("[security]\nrates = 1\n").find("security.rates: unknown key (expected rate, burst") == 0);
  CHECK(error_of("[security]\ndeny = [\"192.0.2.1/24\"]\n") ==
        "security.deny[0]: bad value '192.0.2.1/24' (host bits are set; expected the network address)");
  CHECK(error_of("deny = [\"10.0.0.0/8\", \"nowhere\"]\n").find("deny[1]: bad value 'nowhere'") == 0);
  CHECK(error_of("max_clients_per_source = 2\n[security]\nmax_clients_per_source = 3\n") ==
        "security.max_clients_per_source: also set as top-level max_clients_per_source (keep one)");
  CHECK(error_of("rate_limit = 2\n[security]\nrate = 3\n") == "security.rate: also set as top-level rate_limit (keep one)");
  CHECK(error_of("security = 3\n") == "security: bad value '3' (expected a [security] table)");
}

TEST_CASE("listener security: auth with tokens from a file, methods, target length") {
  std::string tokens = write_file("# the app's clients\n  alpha-1  \n\nbeta-2\r\n");
  Config c = load("[[listener]]\nlisten = \"127.0.0.1:0\"\nsecurity = { auth = \"bearer\", token_file = \"" + tokens +
                  "\", methods = [\"GET\", \"HEAD\"], target_bytes_max = 100 }\n"
                  "[[listener]]\nlisten = \"127.0.0.1:0\"\nsecurity = { auth = \"api-key\", token_file = \"" + tokens +
                  "\" }\n[[listener]]\nlisten = \"127.0.0.1:0\"\n");
  const ListenerSecurity& a = c.listeners[0].security;
  CHECK(a.auth == ListenerSecurity::Auth::kBearer);
  CHECK(a.header == "Authorization");
  CHECK(a.tokens == std::vector<std::string>{"alpha-1", "beta-2"});
  CHECK(a.methods == std::vector<std::string>{"GET", "HEAD"});
  CHECK(a.target_bytes_max == 100);
  CHECK(c.listeners[1].security.header == "X-API-Key");
  CHECK(c.listeners[2].security.auth == ListenerSecurity::Auth::kNone);
  CHECK(c.listeners[2].security.target_bytes_max == 8192);
  // Printed with its file, never its tokens, and loads back the same.
  std::string text = offload::format_config(c);
  CHECK(text.find("alpha-1") == std::string::npos);
  Config back = load(text);
  CHECK(back.listeners[0].security.tokens == a.tokens);
  CHECK(back.listeners[0].security.methods == a.methods);
  CHECK(back.listeners[0].security.target_bytes_max == 100);
  std::remove(tokens.c_str());
}

TEST_CASE("listener security: errors") {
  const std::string l = "[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  CHECK(error_of(l + "security = { auth = \"basic\" }\n") ==
        "listener[0].security.auth: bad value 'basic' (expected none, bearer or api-key)");
  CHECK(error_of(l + "security = { auth = \"bearer\" }\n") ==
        "listener[0].security.token_file: missing (expected a file of tokens, one per line)");
  CHECK(error_of(l + "security = { auth = \"bearer\", token_file = \"/nonexistent/tokens\" }\n") ==
        "listener[0].security.token_file: bad value '/nonexistent/tokens' (expected a readable file of tokens, one "
        "per line (No such file or directory))");
  std::string empty = write_file("# nothing\n\n");
  CHECK(error_of(l + "security = { auth = \"api-key\", token_file = \"" + empty + "\" }\n") ==
        "listener[0].security.token_file: bad value '" + empty + "' (expected a file with at least one token)");
  std::remove(empty.c_str());
  CHECK(error_of(l + "security = { methods = [\"get\"] }\n") ==
        "listener[0].security.methods[0]: bad value 'get' (expected a method in upper case, such as GET)");
  CHECK(error_of(l + "security = { methods = [] }\n").find("listener[0].security.methods: bad value") == 0);
  CHECK(error_of(l + "security = { header = \"X Key\", auth = \"api-key\" }\n") ==
        "listener[0].security.header: bad value 'X Key' (expected a header field name such as X-API-Key)");
  CHECK(error_of(l + "security = { token_file = \"/etc/passwd\" }\n") ==
        "listener[0].security.auth: missing (token_file and header need auth = \"bearer\" or \"api-key\")");
  CHECK(error_of(l + "security = { target_bytes_max = 0 }\n") ==
        "listener[0].security.target_bytes_max: bad value '0' (expected a whole number from 1 to 1048576)");
  CHECK(error_of(l + "security = { colour = 1 }\n").find("listener[0].security.colour: unknown key") == 0);
  const std::string pass = "[[listener]]\nlisten = \"127.0.0.1:0\"\nproxy = \"passthrough\"\n";
  CHECK(error_of(pass + "security = { auth = \"bearer\", token_file = \"/etc/passwd\" }\n") ==
        "listener[0].security.auth: bad value 'bearer' (expected none on a passthrough listener (it has no request "
        "head to check))");
  CHECK(error_of(pass + "security = { methods = [\"GET\"] }\n") ==
        "listener[0].security.methods: not for a passthrough listener (it has no request head to check)");
}
