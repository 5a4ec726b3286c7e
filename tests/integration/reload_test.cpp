// Reload (SIGHUP, `offload-agent reload`): the re-read file applies to what
// comes next, what is in flight finishes under the old one, and a bad file
// changes nothing.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "load_clients.h"
#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::ConfigAgent;
using rig::echo_request;
using rig::fresh_client;
using rig::keepalive_client;
using rig::Tally;

namespace {

std::string server(const Backend& b) { return "tcp://127.0.0.1:" + std::to_string(b.port()); }

// One GET on a fresh connection; the status, or 0.
int get(uint16_t port, const std::string& target) {
  Client c;
  if (!c.connect(port)) return 0;
  if (!c.send_all("GET " + target + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) return 0;
  rig::ReadResult r = c.read_response(5000);
  return r ? r.response->status : 0;
}

// True when nothing accepts on the port (a connect is refused).
bool refused(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool no = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno == ECONNREFUSED;
  ::close(fd);
  return no;
}

// `offload-agent reload --admin ...`: its exit code, and what it printed to stderr.
int reload_command(uint16_t admin, std::string* said) {
  rig::Child c;
  REQUIRE(c.start(rig::agent_path(), {"reload", "--admin", "127.0.0.1:" + std::to_string(admin)}));
  auto code = c.wait_exit(30000);
  REQUIRE(code);
  if (said) *said = c.stderr_text();
  return *code;
}

size_t lines_with(rig::Child& agent, const std::string& needle) {
  size_t n = 0;
  for (const std::string& line : agent.stderr_lines()) n += line.find(needle) != std::string::npos;
  return n;
}

}  // namespace

TEST_CASE("reload every 200 ms for 10 s under keep-alive and new-connection load: no request lost, no connection reset") {
  Backend b;
  REQUIRE_MESSAGE(b.start(128), b.error());
  // Two shards (each its own socket of the port), and each reload changes
  // a limit, so every generation really is a new one.
  auto config = [&](int variant) {
    return "workers = 2\npersistent = 1\nheader_bytes_max = \"" + std::string(variant ? "12k" : "16k") +
           "\"\n[[upstream]]\nservers = [\"" + server(b) + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  };
  ConfigAgent a;
  a.start(config(0), 1);
  const uint16_t port = a.port(0);

  Tally t;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) clients.emplace_back(keepalive_client, port, i, std::cref(stop), std::ref(t));
  for (int i = 0; i < 2; ++i) clients.emplace_back(fresh_client, port, i, std::cref(stop), std::ref(t));
  constexpr int kReloads = 50;
  for (int i = 1; i <= kReloads; ++i) {
    rig::sleep_ms(200);
    a.rewrite(config(i % 2));
    a.child().signal(SIGHUP);
  }
  rig::sleep_ms(200);
  stop = true;
  for (auto& th : clients) th.join();

  std::string failures;
  for (const std::string& f : t.failures) failures += f + "\n";
  CHECK_MESSAGE(t.failures.empty(), failures);
  CHECK(t.ok > 0);
  MESSAGE("requests answered: ", t.ok.load(), ", kept-alive connections closed by a retiring generation: ",
          t.closes.load());
  // Each SIGHUP was a reload, none failed, and the agent still serves.
  CHECK_MESSAGE(a.child().wait_for_line("reloaded: generation " + std::to_string(kReloads + 1), 10000),
                a.child().stderr_text().substr(0, 4000));
  CHECK(lines_with(a.child(), "reload failed") == 0);
  CHECK(get(port, "/ok?after") == 200);
  // Counters are cumulative across generations: every answered request counted.
  CHECK(a.stats().int_or("requests", -1) >= int64_t(t.ok.load()));
}

// A retiring shard's accept waits on the socket it hands over with the
// newest one's, and the kernel wakes one of them per connection: one woken
// just as its accept is cancelled must not leave the connection unserved.
// Lone clients one after the other across each reload, with nothing else
// to wake anyone.
TEST_CASE("reload: a connection that comes just as the old generation stops accepting is served") {
  Backend b;
  REQUIRE_MESSAGE(b.start(256), b.error());
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"" + server(b) + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n", 1);
  std::vector<Client> idle;  // a kept-alive client holds each old generation
  for (int i = 1; i <= 20; ++i) {
    idle.emplace_back();
    REQUIRE(idle.back().connect(a.port(0)));
    REQUIRE(idle.back().send_all(rig::get_request("/ok?idle")));
    REQUIRE(idle.back().read_response(5000));
    a.child().signal(SIGHUP);
    // Until the reload is done, then 50 more: the old generation's cancel
    // lands around then.
    const std::string done = "reloaded: generation " + std::to_string(i + 1) + ",";
    int after = 0;
    for (int k = 0; k < 5000 && after < 50; ++k) {
      if (after > 0 || a.child().wait_for_line(done, 0)) ++after;
      Client c;
      REQUIRE(c.connect(a.port(0)));
      REQUIRE(c.send_all(rig::get_request("/ok?lone")));
      rig::ReadResult r = c.read_response(5000);
      REQUIRE_MESSAGE(r, "reload ", i, " client ", k, ": ", r.error);
      CHECK(r.response->status == 200);
    }
    REQUIRE(a.child().wait_for_line(done, 10000));
  }
}

TEST_CASE("reload: a bad file keeps the running configuration, says so in one line naming the key") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  const std::string good = "[[upstream]]\nservers = [\"" + server(b) + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  ConfigAgent a;
  a.start(good, 1);
  REQUIRE(get(a.port(0), "/ok?before") == 200);

  a.rewrite("keepalive_timeout_ms = \"soon\"\n" + good);
  a.child().signal(SIGHUP);
  auto line = a.child().wait_for_line("reload failed", 10000);
  REQUIRE_MESSAGE(line, a.child().stderr_text());
  CHECK(line->find("keepalive_timeout_ms") != std::string::npos);
  CHECK(line->find("soon") != std::string::npos);
  CHECK(lines_with(a.child(), "keepalive_timeout_ms") == 1);
  CHECK(a.child().running());
  CHECK(get(a.port(0), "/ok?after") == 200);

  // The command says the same, with exit code 2, and the agent goes on.
  std::string said;
  CHECK(reload_command(a.admin_port(), &said) == 2);
  CHECK(said.find("keepalive_timeout_ms") != std::string::npos);
  CHECK(get(a.port(0), "/ok?still") == 200);
  // A key a reload cannot change is refused by name, too.
  a.rewrite("workers = 2\n" + good);
  CHECK(reload_command(a.admin_port(), &said) == 2);
  CHECK(said.find("workers") != std::string::npos);
  CHECK(get(a.port(0), "/ok?again") == 200);
}

TEST_CASE("reload: an added listener serves, a removed one refuses, a group's new server gets the requests") {
  Backend first, second;
  REQUIRE_MESSAGE(first.start(8), first.error());
  REQUIRE_MESSAGE(second.start(8), second.error());
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"" + server(first) + "\"]\n[[listener]]\nname = \"old\"\nlisten = \"127.0.0.1:0\"\n",
          1);
  const uint16_t removed = a.port(0);
  REQUIRE(get(removed, "/ok?old") == 200);
  const uint16_t added = rig::unused_port();
  a.rewrite("[[upstream]]\nservers = [\"" + server(second) + "\"]\n[[listener]]\nname = \"new\"\nlisten = \"127.0.0.1:" +
            std::to_string(added) + "\"\n");
  std::string said;
  REQUIRE(reload_command(a.admin_port(), &said) == 0);
  CHECK(get(added, "/ok?new") == 200);
  auto rec = second.record();
  REQUIRE(rec);
  CHECK(rec->count("/ok?new") == 1);
  // The old listener's socket is shut as its generation retires.
  bool gone = false;
  for (int i = 0; i < 250 && !(gone = refused(removed)); ++i) rig::sleep_ms(20);
  CHECK(gone);
  CHECK(a.child().running());
}

TEST_CASE("reload: a new access_log path takes the new lines; an old connection's go on to the old file") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  char dir[] = "/tmp/offload-it-reload-log-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string first = std::string(dir) + "/first.log", second = std::string(dir) + "/second.log";
  auto file = [&](const std::string& log) {
    return "access_log = \"" + log + "\"\n[[upstream]]\nservers = [\"" + server(b) +
           "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  };
  auto count = [](const std::string& path, const std::string& needle) {
    std::ifstream in(path);
    size_t n = 0;
    for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
    return n;
  };
  auto wait_count = [&](const std::string& path, const std::string& needle, size_t n) {
    for (int i = 0; i < 250 && count(path, needle) < n; ++i) rig::sleep_ms(20);
    return count(path, needle);
  };
  ConfigAgent a;
  a.start(file(first), 1);
  REQUIRE(get(a.port(0), "/ok?before") == 200);
  Client kept;  // kept alive across the reload: the old generation serves it
  REQUIRE(kept.connect(a.port(0)));
  REQUIRE(kept.send_all("GET /ok?kept1 HTTP/1.1\r\nHost: a\r\n\r\n"));
  REQUIRE(kept.read_response(5000));

  // A path that cannot be opened: refused by name, the running log goes on.
  a.rewrite(file("/nonexistent-dir/x.log"));
  std::string said;
  CHECK(reload_command(a.admin_port(), &said) == 2);
  CHECK(said.find("/nonexistent-dir/x.log") != std::string::npos);
  REQUIRE(get(a.port(0), "/ok?refused") == 200);

  a.rewrite(file(second));
  REQUIRE(reload_command(a.admin_port(), &said) == 0);
  REQUIRE(get(a.port(0), "/ok?after") == 200);
  REQUIRE(kept.send_all("GET /ok?kept2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
  REQUIRE(kept.read_response(5000));
  CHECK(wait_count(second, "/ok?after", 1) == 1);
  CHECK(wait_count(first, "/ok?kept2", 1) == 1);
  CHECK(count(first, "/ok?before") == 1);
  CHECK(count(first, "/ok?refused") == 1);
  CHECK(count(first, "/ok?after") == 0);
  CHECK(count(second, "/ok?before") + count(second, "/ok?kept2") == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("reload: a changed limit applies to new connections; a kept-alive one finishes under the old and closes") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  auto config = [&](const char* header_bytes_max) {
    return "header_bytes_max = \"" + std::string(header_bytes_max) + "\"\n[[upstream]]\nservers = [\"" + server(b) +
           "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  };
  ConfigAgent a;
  a.start(config("16k"), 1);
  const std::string big = "GET /ok?big HTTP/1.1\r\nHost: a\r\nX-Pad: " + std::string(6000, 'p') + "\r\n\r\n";
  Client kept;
  REQUIRE(kept.connect(a.port(0)));
  REQUIRE(kept.send_all(big));
  rig::ReadResult r = kept.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  REQUIRE(r.response->status == 200);
  REQUIRE(!r.response->closes());
  const int64_t before = a.stats().int_or("requests", -1);

  a.rewrite(config("4k"));
  std::string said;
  REQUIRE(reload_command(a.admin_port(), &said) == 0);
  // A new connection gets the new limit.
  Client fresh;
  REQUIRE(fresh.connect(a.port(0)));
  REQUIRE(fresh.send_all(big));
  rig::ReadResult small = fresh.read_response(5000);
  REQUIRE_MESSAGE(small, small.error);
  CHECK(small.response->status == 431);
  // The connection from before: its next request is served (its old
  // generation's limits) and its response says close.
  REQUIRE(kept.send_all(big));
  rig::ReadResult last = kept.read_response(5000);
  REQUIRE_MESSAGE(last, last.error);
  CHECK(last.response->status == 200);
  CHECK(last.response->closes());
  CHECK(kept.wait_closed(5000));
  // The totals went on from where they were (the 431 was no complete request).
  CHECK(a.stats().int_or("requests", -1) == before + 1);
}
