// [[listener]] and [[upstream]] tables: parsing, defaults, flags on top,
// and every error naming its full key path.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "config_file.h"
#include "ops/config.h"

using offload::Balance;
using offload::Config;
using offload::ConfigError;
using offload::UpstreamTarget;
using config_test::error_of;
using config_test::load;
using config_test::write_file;

namespace {
const char* kTwoByTwo = R"(
max_upstream = 8
persistent = 4
header_timeout_ms = 9000

[[upstream]]
name = "app"
servers = ["tcp://127.0.0.1:8000", { address = "unix:/run/app.sock", weight = 2, max_connections = 16, persistent = 6 }]
balance = "round-robin"
max_fails = 5
fail_timeout_ms = 20000
health = { path = "/ready", interval_ms = 3000, timeout_ms = 500, rise = 1, fall = 4 }

[[upstream]]
name = "api"
servers = ["shm:api"]
balance = "source-hash"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
proxy = "http"
upstream = "api"
header_timeout_ms = 5000
body_bytes_max = "1m"

[[listener]]
port = 8081
upstream = "app"
max_clients = 100
)";

}  // namespace

TEST_CASE("two listeners and two groups load into the structs the file describes") {
  Config c = load(kTwoByTwo);
  REQUIRE(c.groups.size() == 2);
  const auto& app = c.groups[0];
  CHECK(app.name == "app");
  CHECK(app.balance == Balance::kRoundRobin);
  CHECK(app.max_fails == 5);
  CHECK(app.fail_timeout_ms == 20000);
  CHECK(app.health.enabled);
  CHECK(app.health.path == "/ready");
  CHECK(app.health.interval_ms == 3000);
  CHECK(app.health.timeout_ms == 500);
  CHECK(app.health.rise == 1);
  CHECK(app.health.fall == 4);
  REQUIRE(app.servers.size() == 2);
  CHECK(app.servers[0].target.kind == UpstreamTarget::Kind::kTcp);
  CHECK(app.servers[0].target.text == "tcp://127.0.0.1:8000");
  CHECK(app.servers[0].weight == 1);
  CHECK(app.servers[0].max_connections == 8);  // the global max_upstream
  CHECK(app.servers[0].persistent == 4);       // the global persistent
  CHECK(app.servers[1].target.kind == UpstreamTarget::Kind::kUnix);
  CHECK(app.servers[1].weight == 2);
  CHECK(app.servers[1].max_connections == 16);
  CHECK(app.servers[1].persistent == 6);

  const auto& api = c.groups[1];
  CHECK(api.name == "api");
  CHECK(api.balance == Balance::kSourceHash);
  CHECK(api.max_fails == 3);
  CHECK(api.fail_timeout_ms == 10000);
  CHECK_FALSE(api.health.enabled);
  REQUIRE(api.servers.size() == 1);
  CHECK(api.servers[0].target.kind == UpstreamTarget::Kind::kShm);
  CHECK(api.servers[0].target.shm_name == "api");

  REQUIRE(c.listeners.size() == 2);
  const auto& web = c.listeners[0];
  CHECK(web.name == "web");
  CHECK(web.address.text == "127.0.0.1:8080");
  CHECK(web.proxy == "http");
  CHECK(web.upstream == "api");
  CHECK(web.group == 1);
  CHECK(web.header_timeout_ms == 5000);
  CHECK(web.body_bytes_max == 1u << 20);
  const auto& second = c.listeners[1];
  CHECK(second.name == "0.0.0.0:8081");  // port = N: every IPv4 address
  CHECK(second.address.family() == AF_INET);
  CHECK(port_of(second.address) == 8081);
  CHECK(reinterpret_cast<const sockaddr_in*>(&second.address.storage)->sin_addr.s_addr == htonl(INADDR_ANY));
  CHECK(second.group == 0);
  CHECK(second.max_clients == 100);
  CHECK(second.header_timeout_ms == 9000);  // the global value from this file

  // The flat fields mirror the tables for the code that knows one of each.
  REQUIRE(c.listen.size() == 2);
  CHECK(c.listen[0].text == "127.0.0.1:8080");
  CHECK(c.listen[1].text == "0.0.0.0:8081");
  CHECK(c.upstream.text == "shm:api");  // the first listener's group's first server
}

TEST_CASE("flat keys are one group named default and one listener per address") {
  Config c = load("listen = [\"127.0.0.1:9000\", \"[::1]:9000\"]\nupstream = \"unix:/tmp/app.sock\"\n"
                  "max_upstream = 6\npersistent = 2\n");
  REQUIRE(c.groups.size() == 1);
  CHECK(c.groups[0].name == "default");
  CHECK(c.groups[0].balance == Balance::kLeastOutstanding);
  REQUIRE(c.groups[0].servers.size() == 1);
  CHECK(c.groups[0].servers[0].target.text == "unix:/tmp/app.sock");
  CHECK(c.groups[0].servers[0].max_connections == 6);
  CHECK(c.groups[0].servers[0].persistent == 2);
  REQUIRE(c.listeners.size() == 2);
  for (const auto& l : c.listeners) {
    CHECK(l.upstream == "default");
    CHECK(l.group == 0);
    CHECK(l.proxy == "http");
  }
  CHECK(c.listeners[0].name == "127.0.0.1:9000");
  CHECK(c.listeners[1].name == "[::1]:9000");
  CHECK(c.listeners[1].address.family() == AF_INET6);
  CHECK(c.upstream.text == "unix:/tmp/app.sock");
  CHECK(c.listen.size() == 2);
}

TEST_CASE("an empty file is 127.0.0.1:8080 to tcp://127.0.0.1:8000") {
  Config c = load("");
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].address.text == "127.0.0.1:8080");
  REQUIRE(c.groups.size() == 1);
  CHECK(c.groups[0].servers[0].target.text == "tcp://127.0.0.1:8000");
}

TEST_CASE("two unnamed port-0 listeners get distinct names") {
  Config c = load("listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n");
  REQUIRE(c.listeners.size() == 2);
  CHECK(c.listeners[0].name == "127.0.0.1:0");
  CHECK(c.listeners[1].name == "127.0.0.1:0#1");
}

TEST_CASE("a listener's limits follow the globals, flags included, unless it sets its own") {
  std::string path = write_file(
      "max_clients = 500\nkeepalive_timeout_ms = 1000\n"
      "[[listener]]\nlisten = \"127.0.0.1:1\"\nsend_timeout_ms = 777\n"
      "[[listener]]\nlisten = \"127.0.0.1:2\"\nmax_clients = 50\nkeepalive_timeout_ms = 2000\n");
  Config c;
  offload::load_config_file(path, c);
  std::remove(path.c_str());
  offload::set_number_from_flag(c, "queue_timeout_ms", "4321");  // a flag after the file
  offload::validate(c);
  const auto& a = c.listeners[0];
  CHECK(a.max_clients == 500);
  CHECK(a.header_bytes_max == c.header_bytes_max);
  CHECK(a.header_count_max == c.header_count_max);
  CHECK(a.body_bytes_max == c.body_bytes_max);
  CHECK(a.header_timeout_ms == c.header_timeout_ms);
  CHECK(a.body_timeout_ms == c.body_timeout_ms);
  CHECK(a.keepalive_timeout_ms == 1000);
  CHECK(a.send_timeout_ms == 777);
  CHECK(a.queue_timeout_ms == 4321);
  CHECK(a.response_timeout_ms == c.response_timeout_ms);
  const auto& b = c.listeners[1];
  CHECK(b.max_clients == 50);
  CHECK(b.keepalive_timeout_ms == 2000);
  CHECK(b.send_timeout_ms == c.send_timeout_ms);
  CHECK(b.queue_timeout_ms == 4321);
}

TEST_CASE("a server's pool follows max_upstream and persistent; persistent is capped at its max_connections") {
  Config c = load("max_upstream = 10\npersistent = 6\n"
                  "[[upstream]]\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", max_connections = 3 },"
                  " { address = \"127.0.0.1:3\", persistent = 0 }]\n");
  const auto& s = c.groups[0].servers;
  CHECK(s[0].max_connections == 10);
  CHECK(s[0].persistent == 6);
  CHECK(s[1].max_connections == 3);
  CHECK(s[1].persistent == 3);
  CHECK(s[2].max_connections == 10);
  CHECK(s[2].persistent == 0);
}

TEST_CASE("validate() twice gives the same result") {
  Config c = load(kTwoByTwo);
  Config again = c;
  offload::validate(again);
  REQUIRE(again.listeners.size() == c.listeners.size());
  for (size_t i = 0; i < c.listeners.size(); ++i) {
    CHECK(again.listeners[i].name == c.listeners[i].name);
    CHECK(again.listeners[i].group == c.listeners[i].group);
    CHECK(again.listeners[i].header_timeout_ms == c.listeners[i].header_timeout_ms);
  }
  CHECK(again.listen.size() == c.listen.size());
  CHECK(again.groups[0].servers[0].persistent == c.groups[0].servers[0].persistent);
}

TEST_CASE("a single [upstream] table and an unnamed [[upstream]] are the group \"default\"") {
  CHECK(load("[upstream]\nservers = [\"shm:app\"]\n").groups[0].name == "default");
  Config c = load("[[upstream]]\nservers = [\"127.0.0.1:1\"]\n[[listener]]\nport = 0\nupstream = \"default\"\n");
  CHECK(c.listeners[0].group == 0);
}

TEST_CASE("without upstream a listener uses the first group") {
  Config c = load("[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n"
                  "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n"
                  "[[listener]]\nport = 0\n");
  CHECK(c.listeners[0].upstream == "b");
  CHECK(c.listeners[0].group == 0);
  // Flat listen with groups: the same rule.
  c = load("listen = \"127.0.0.1:0\"\n[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n"
           "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n");
  CHECK(c.listeners[0].upstream == "b");
}

TEST_CASE("--listen replaces the file's listeners, which then use the first group") {
  Config c = load(kTwoByTwo, {"127.0.0.1:7000", "127.0.0.1:7001"});
  REQUIRE(c.listeners.size() == 2);
  CHECK(c.listeners[0].address.text == "127.0.0.1:7000");
  CHECK(c.listeners[1].address.text == "127.0.0.1:7001");
  CHECK(c.listeners[0].upstream == "app");
  CHECK(c.listeners[1].upstream == "app");
  CHECK(c.listeners[0].header_timeout_ms == 9000);  // no overrides: the globals
  CHECK(c.groups.size() == 2);                      // the groups stay

  c = load("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n", {"127.0.0.1:3"});
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].address.text == "127.0.0.1:3");
  CHECK(c.listen.size() == 1);
}

TEST_CASE("--upstream replaces the flat upstream or the servers of the group named default") {
  Config c = load("upstream = \"tcp://127.0.0.1:1\"\n", {}, "unix:/tmp/x.sock");
  CHECK(c.groups[0].servers[0].target.text == "unix:/tmp/x.sock");
  CHECK(c.upstream.text == "unix:/tmp/x.sock");

  c = load("[[upstream]]\nname = \"default\"\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"round-robin\"\n"
           "[[upstream]]\nname = \"other\"\nservers = [\"127.0.0.1:3\"]\n",
           {}, "127.0.0.1:9");
  REQUIRE(c.groups[0].servers.size() == 1);
  CHECK(c.groups[0].servers[0].target.text == "127.0.0.1:9");
  CHECK(c.groups[0].balance == Balance::kRoundRobin);  // the rest of the table stays
  CHECK(c.groups[1].servers[0].target.text == "127.0.0.1:3");

  CHECK(error_of(kTwoByTwo, {}, "tcp://127.0.0.1:9") ==
        "--upstream: bad value 'tcp://127.0.0.1:9' (expected an [[upstream]] table named \"default\" whose servers "
        "it replaces; the file has app, api)");
}

TEST_CASE("the effective configuration loads back into the same topology") {
  Config c = load(kTwoByTwo);
  std::string text = offload::format_config(c);
  Config back = load(text);
  REQUIRE(back.listeners.size() == c.listeners.size());
  for (size_t i = 0; i < c.listeners.size(); ++i) {
    const auto& a = c.listeners[i];
    const auto& b = back.listeners[i];
    CHECK(b.name == a.name);
    CHECK(b.address.text == a.address.text);
    CHECK(b.proxy == a.proxy);
    CHECK(b.upstream == a.upstream);
    CHECK(b.group == a.group);
    CHECK(b.max_clients == a.max_clients);
    CHECK(b.header_bytes_max == a.header_bytes_max);
    CHECK(b.header_count_max == a.header_count_max);
    CHECK(b.body_bytes_max == a.body_bytes_max);
    CHECK(b.header_timeout_ms == a.header_timeout_ms);
    CHECK(b.body_timeout_ms == a.body_timeout_ms);
    CHECK(b.keepalive_timeout_ms == a.keepalive_timeout_ms);
    CHECK(b.send_timeout_ms == a.send_timeout_ms);
    CHECK(b.queue_timeout_ms == a.queue_timeout_ms);
    CHECK(b.response_timeout_ms == a.response_timeout_ms);
  }
  REQUIRE(back.groups.size() == c.groups.size());
  for (size_t i = 0; i < c.groups.size(); ++i) {
    const auto& a = c.groups[i];
    const auto& b = back.groups[i];
    CHECK(b.name == a.name);
    CHECK(b.balance == a.balance);
    CHECK(b.max_fails == a.max_fails);
    CHECK(b.fail_timeout_ms == a.fail_timeout_ms);
    CHECK(b.health.enabled == a.health.enabled);
    CHECK(b.health.path == a.health.path);
    CHECK(b.health.interval_ms == a.health.interval_ms);
    CHECK(b.health.timeout_ms == a.health.timeout_ms);
    CHECK(b.health.rise == a.health.rise);
    CHECK(b.health.fall == a.health.fall);
    REQUIRE(b.servers.size() == a.servers.size());
    for (size_t j = 0; j < a.servers.size(); ++j) {
      CHECK(b.servers[j].target.text == a.servers[j].target.text);
      CHECK(b.servers[j].weight == a.servers[j].weight);
      CHECK(b.servers[j].max_connections == a.servers[j].max_connections);
      CHECK(b.servers[j].persistent == a.servers[j].persistent);
    }
  }
  CHECK(back.max_upstream == c.max_upstream);
  CHECK(back.header_timeout_ms == c.header_timeout_ms);
  CHECK(back.admin == c.admin);
  // Inherited values are marked, set ones are not.
  CHECK(text.find("header_timeout_ms = 5000\n") != std::string::npos);
  CHECK(text.find("# global") != std::string::npos);
}

TEST_CASE("the example in docs/offload.toml is valid") {
  std::ifstream in(OFFLOAD_SOURCE_DIR "/docs/offload.toml");
  std::string line, example;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line == "# --- end of example ---") break;
    if (inside) example += (line.size() > 2 ? line.substr(2) : "") + "\n";
    if (line == "# --- example: listeners and groups ---") inside = true;
  }
  REQUIRE(!example.empty());
  Config c = load(example);
  CHECK(c.groups.size() == 2);
  CHECK(c.listeners.size() == 2);
  CHECK(c.listeners[0].upstream == "app");
  CHECK(c.listeners[1].name == "0.0.0.0:8081");
}

// ---- Errors: each names the full key path, the value and what was expected.

TEST_CASE("bad group settings name upstream[i].key") {
  std::string two = "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\n[[upstream]]\nname = \"api\"\n"
                    "servers = [\"127.0.0.1:2\"]\n";
  CHECK(error_of(two + "balance = \"random\"\n") ==
        "upstream[1].balance: bad value 'random' (expected least-outstanding, round-robin or source-hash)");
  CHECK(error_of(two + "[[listener]]\nport = 0\nupstream = \"ap\"\n") ==
        "listener[0].upstream: bad value 'ap' (expected the name of an [[upstream]] table: app, api)");
  CHECK(error_of("[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\n[[upstream]]\nname = \"app\"\n"
                 "servers = [\"127.0.0.1:2\"]\n") == "upstream[1].name: duplicate 'app' (also upstream[0])");
  CHECK(error_of("[[upstream]]\nservers = [\"127.0.0.1:1\"]\n[[upstream]]\nservers = [\"127.0.0.1:2\"]\n") ==
        "upstream[1].name: duplicate 'default' (also upstream[0])");
  CHECK(error_of("[[upstream]]\nname = \"app\"\nservers = []\n") ==
        "upstream[0].servers: empty (expected at least one server, such as \"tcp://127.0.0.1:8000\")");
  CHECK(error_of("[[upstream]]\nname = \"app\"\n") ==
        "upstream[0].servers: empty (expected at least one server, such as \"tcp://127.0.0.1:8000\")");
  CHECK(error_of("[[upstream]]\nservers = \"127.0.0.1:1\"\n") ==
        "upstream[0].servers: bad value '127.0.0.1:1' (expected a list of servers, such as [\"tcp://127.0.0.1:8000\"])");
  CHECK(error_of("[[upstream]]\nservers = [\"127.0.0.1:1\"]\nmax_fails = -1\n") ==
        "upstream[0].max_fails: bad value '-1' (expected a whole number from 0 to 1000)");
  CHECK(error_of("[[upstream]]\nservers = [\"127.0.0.1:1\"]\nfail_timeout_ms = 0\n") ==
        "upstream[0].fail_timeout_ms: bad value '0' (expected a whole number from 1 to 86400000)");
  CHECK(error_of("[[upstream]]\nname = \"a b\"\nservers = [\"127.0.0.1:1\"]\n") ==
        "upstream[0].name: bad value 'a b' (expected a name of 1 to 64 printable characters, no spaces or quotes)");
  CHECK(error_of("[[upstream]]\nservers = [\"127.0.0.1:1\"]\nbalanse = \"round-robin\"\n") ==
        "upstream[0].balanse: unknown key (expected name, servers, balance, max_fails, fail_timeout_ms or health)");
  CHECK(error_of("upstream = []\n") ==
        "upstream: bad value '[]' (expected one server \"tcp://HOST:PORT\", or [[upstream]] tables with servers = [...])");
}

TEST_CASE("bad servers name upstream[i].servers[j]") {
  std::string head = "[[upstream]]\nname = \"app\"\nservers = [";
  CHECK(error_of(head + "\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = 0 }]\n") ==
        "upstream[0].servers[1].weight: bad value '0' (expected a whole number from 1 to 256)");
  CHECK(error_of(head + "{ address = \"127.0.0.1:2\", weight = \"2\" }]\n") ==
        "upstream[0].servers[0].weight: bad value '2' (expected a whole number from 1 to 256)");
  CHECK(error_of(head + "{ address = \"127.0.0.1:2\", wieght = 2 }]\n") ==
        "upstream[0].servers[0].wieght: unknown key (expected address, weight, max_connections or persistent)");
  CHECK(error_of(head + "{ weight = 2 }]\n") ==
        "upstream[0].servers[0].address: missing (expected \"tcp://HOST:PORT\", \"unix:PATH\" or \"shm:NAME\")");
  CHECK(error_of(head + "\"http://127.0.0.1:1\"]\n") ==
        "upstream[0].servers[0]: bad value 'http://127.0.0.1:1' (expected tcp://HOST:PORT, unix:PATH or shm:NAME)");
  CHECK(error_of(head + "{ address = \"127.0.0.1:1\", max_connections = 4, persistent = 8 }]\n") ==
        "upstream[0].servers[0].persistent: bad value '8' (expected at most its max_connections, 4)");
  CHECK(error_of(head + "{ address = \"127.0.0.1:1\", max_connections = 0 }]\n") ==
        "upstream[0].servers[0].max_connections: bad value '0' (expected a whole number from 1 to 4096)");
  CHECK(error_of(head + "\"127.0.0.1:1\", \"tcp://127.0.0.1:1\"]\n") ==
        "upstream[0].servers[1]: duplicate 'tcp://127.0.0.1:1' (also servers[0]; give one server a higher weight "
        "instead)");
  CHECK(error_of(head + "42]\n") ==
        "upstream[0].servers[0]: bad value '42' (expected \"tcp://HOST:PORT\", \"unix:PATH\", \"shm:NAME\" or "
        "{ address = ..., weight = N })");
}

TEST_CASE("a shm server stands alone in its group, one group per bus, one bus per agent") {
  CHECK(error_of("[[upstream]]\nservers = [\"127.0.0.1:1\", \"shm:app\"]\n") ==
        "upstream[0].servers[1]: bad value 'shm:app' (expected a shm: server alone in its group (the bus takes "
        "requests up to ring_bytes, other servers any size))");
  CHECK(error_of("[[upstream]]\nname = \"a\"\nservers = [\"shm:app\"]\n[[upstream]]\nname = \"b\"\n"
                 "servers = [\"shm:app\"]\n") ==
        "upstream[1].servers[0]: bad value 'shm:app' (expected a bus no other group uses (upstream[0] has it))");
  // A shard serves one bus: a second one is refused by `check`, not at start.
  CHECK(error_of("[[upstream]]\nname = \"a\"\nservers = [\"shm:one\"]\n[[upstream]]\nname = \"b\"\n"
                 "servers = [\"shm:two\"]\n") ==
        "upstream[1].servers[0]: bad value 'shm:two' (expected one shm: bus per agent (upstream[0] has one; a second "
        "is not supported yet))");
}

TEST_CASE("bad health checks name upstream[i].health.key") {
  std::string head = "[[upstream]]\nservers = [\"127.0.0.1:1\"]\nhealth = ";
  CHECK(error_of(head + "{ rise = 0 }\n") ==
        "upstream[0].health.rise: bad value '0' (expected a whole number from 1 to 100)");
  CHECK(error_of(head + "{ fall = 0 }\n") ==
        "upstream[0].health.fall: bad value '0' (expected a whole number from 1 to 100)");
  CHECK(error_of(head + "{ interval_ms = 2000, timeout_ms = 2000 }\n") ==
        "upstream[0].health.timeout_ms: bad value '2000' (expected less than interval_ms, 2000)");
  CHECK(error_of(head + "{ interval_ms = 500 }\n") ==  // the default timeout, 1000, is not below it
        "upstream[0].health.timeout_ms: bad value '1000' (expected less than interval_ms, 500)");
  CHECK(error_of(head + "{ path = \"health\" }\n") ==
        "upstream[0].health.path: bad value 'health' (expected a path such as /health: '/' first, no spaces)");
  CHECK(error_of(head + "{ paht = \"/\" }\n") ==
        "upstream[0].health.paht: unknown key (expected path, interval_ms, timeout_ms, rise or fall)");
  CHECK(error_of(head + "true\n") ==
        "upstream[0].health: bad value 'true' (expected a table such as { path = \"/health\", interval_ms = 2000 })");
  Config c = load(head + "{}\n");  // an empty table: on, with the defaults
  CHECK(c.groups[0].health.enabled);
  CHECK(c.groups[0].health.path == "/health");
}

TEST_CASE("bad listeners name listener[i].key") {
  CHECK(error_of("[[listener]]\nlisten = \"127.0.0.1:8080\"\n[[listener]]\nlisten = \"127.0.0.1:8080\"\n") ==
        "listener[1].listen: duplicate '127.0.0.1:8080' (also listener[0])");
  CHECK(error_of("[[listener]]\nport = 8080\n[[listener]]\nlisten = \"0.0.0.0:8080\"\n") ==
        "listener[1].listen: duplicate '0.0.0.0:8080' (also listener[0])");
  CHECK(error_of("listen = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n") ==
        "listen: duplicate '127.0.0.1:8080' (also listen)");
  CHECK(error_of("[[listener]]\nname = \"web\"\nport = 1\n[[listener]]\nname = \"web\"\nport = 2\n") ==
        "listener[1].name: duplicate 'web' (also listener[0])");
  CHECK(error_of("[[listener]]\nport = 1\nproxy = \"tcp\"\n") ==
        "listener[0].proxy: bad value 'tcp' (expected http or passthrough)");
  CHECK(error_of("[[upstream]]\nname = \"bus\"\nservers = [\"shm:app\"]\n[[listener]]\nport = 1\n"
                 "proxy = \"passthrough\"\n") ==
        "listener[0].upstream: bad value 'bus' (expected a group of tcp or unix servers for a passthrough listener)");
  CHECK(load("[[upstream]]\nname = \"db\"\nservers = [\"tcp://127.0.0.1:5432\"]\n[[listener]]\nport = 1\n"
             "proxy = \"passthrough\"\ntunnel_timeout_ms = 1000\n")
            .listeners.front()
            .proxy == "passthrough");
  CHECK(error_of("[[listener]]\nport = 1\nlisten = \"127.0.0.1:1\"\n") ==
        "listener[0].port: cannot be combined with listen (give listen = \"ADDR:PORT\", or port = N for 0.0.0.0:N)");
  CHECK(error_of("[[listener]]\nname = \"web\"\n") ==
        "listener[0].listen: missing (expected listen = \"ADDR:PORT\", or port = N for 0.0.0.0:N)");
  CHECK(error_of("[[listener]]\nport = 70000\n") ==
        "listener[0].port: bad value '70000' (expected a whole number from 0 to 65535)");
  CHECK(error_of("[[listener]]\nlisten = \"nowhere\"\n") ==
        "listener[0].listen: bad value 'nowhere' (expected ADDR:PORT, such as 127.0.0.1:8080 or [::1]:8080)");
  CHECK(error_of("[[listener]]\nport = 1\nheader_timeout_ms = 0\n") ==
        "listener[0].header_timeout_ms: bad value '0' (expected a whole number from 1 to 86400000)");
  CHECK(error_of("[[listener]]\nport = 1\nbody_bytes_max = \"lots\"\n") ==
        "listener[0].body_bytes_max: bad value 'lots' (expected a size such as 65536, 64k, 8m or 1g)");
  CHECK(error_of("max_clients = 100\n[[listener]]\nport = 1\nmax_clients = 200\n") ==
        "listener[0].max_clients: bad value '200' (expected at most max_clients, 100)");
  CHECK(error_of("[[listener]]\nport = 1\nconnect_timeout_ms = 5\n") ==
        "listener[0].connect_timeout_ms: unknown key (expected name, listen, port, proxy, upstream, upstream_port, max_clients, "
        "header_bytes_max, header_count_max, body_bytes_max, header_timeout_ms, body_timeout_ms, "
        "keepalive_timeout_ms, send_timeout_ms, queue_timeout_ms, response_timeout_ms, tunnel_timeout_ms, "
        "half_close_timeout_ms, security or connect_targets)");
  CHECK(error_of("listener = 5\n") == "listener: bad value '5' (expected [[listener]] tables with listen = \"ADDR:PORT\")");
  CHECK(error_of("listen = \"127.0.0.1:1\"\n[[listener]]\nport = 2\n") ==
        "listen: cannot be combined with [[listener]] tables (give each address its own [[listener]])");
  // Port 0 asks the kernel for a port each time: never a duplicate.
  CHECK(load("[[listener]]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n").listeners.size() == 2);
}

TEST_CASE("flat upstream beside [[upstream]] tables is refused by TOML, naming the line") {
  std::string e = error_of("upstream = \"tcp://127.0.0.1:1\"\n[[upstream]]\nservers = [\"127.0.0.1:2\"]\n");
  CHECK(e.find(":2:") != std::string::npos);
  CHECK(e.find("upstream") != std::string::npos);
}

TEST_CASE("--listen duplicates name the flag") {
  CHECK(error_of("", {"127.0.0.1:5", "127.0.0.1:5"}) == "--listen: duplicate '127.0.0.1:5' (also --listen)");
}

TEST_CASE("the effective configuration keeps workers and cpus") {
  Config c = load("workers = 2\nmax_upstream = 6\n");
  Config back = load(offload::format_config(c));
  CHECK(back.workers == 2);
  CHECK(back.max_upstream == 6);
  c = load("cpu = 0\n");  // cpu = K is cpus = [K]
  back = load(offload::format_config(c));
  REQUIRE(back.cpus.size() == 1);
  CHECK(back.cpus[0] == 0);
}
