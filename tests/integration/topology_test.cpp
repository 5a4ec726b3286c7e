// Several listeners and upstream groups in one agent, tried as a user would:
// a config file with [[listener]] and [[upstream]] tables, recording
// backends as the servers, and the stats to see what the agent decided.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "config_agent.h"
#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::ConfigAgent;

namespace {

std::string server(const Backend& b) { return "tcp://127.0.0.1:" + std::to_string(b.port()); }

// One GET on a fresh connection; the status, or 0.
int get(uint16_t port, const std::string& target, int timeout_ms = 5000) {
  Client c;
  if (!c.connect(port)) return 0;
  if (!c.send_all("GET " + target + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) return 0;
  rig::ReadResult r = c.read_response(timeout_ms);
  return r ? r.response->status : 0;
}

int count(Backend& b, const std::string& target) {
  auto rec = b.record();
  REQUIRE(rec);
  return rec->count(target);
}

// Waits (bounded) until `pred` holds, polling every 20 ms.
template <typename Pred>
bool eventually(Pred pred, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    if (pred()) return true;
    rig::sleep_ms(20);
  }
  return pred();
}

}  // namespace

TEST_CASE("two listeners with different upstream groups: each listener's requests reach its own servers only") {
  Backend app, api;
  REQUIRE_MESSAGE(app.start(8), app.error());
  REQUIRE_MESSAGE(api.start(8), api.error());
  ConfigAgent a;
  a.start("[[upstream]]\nname = \"app\"\nservers = [\"" + server(app) + "\"]\n"
          "[[upstream]]\nname = \"api\"\nservers = [\"" + server(api) + "\"]\n"
          "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n"
          "[[listener]]\nname = \"rest\"\nlisten = \"127.0.0.1:0\"\nupstream = \"api\"\n",
          2);
  for (int i = 0; i < 5; ++i) CHECK(get(a.port(0), "/ok?web") == 200);
  for (int i = 0; i < 3; ++i) CHECK(get(a.port(1), "/ok?rest") == 200);
  CHECK(count(app, "/ok?web") == 5);
  CHECK(count(app, "/ok?rest") == 0);
  CHECK(count(api, "/ok?rest") == 3);
  CHECK(count(api, "/ok?web") == 0);
  rig::Json doc = a.stats();
  std::map<std::string, int64_t> requests;
  const rig::Json* listeners = doc.get("listeners");
  REQUIRE(listeners != nullptr);
  for (const rig::Json& l : listeners->array) requests[l.str_or("name", "")] = l.int_or("requests", -1);
  CHECK(requests["web"] == 5);
  CHECK(requests["rest"] == 3);
}

TEST_CASE("a listener's own timeouts apply to its clients only") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"" + server(b) + "\"]\n"
          "[[listener]]\nname = \"strict\"\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 300\n"
          "[[listener]]\nname = \"lax\"\nlisten = \"127.0.0.1:0\"\n",
          2);
  Client strict, lax;
  REQUIRE(strict.connect(a.port(0)));
  REQUIRE(lax.connect(a.port(1)));
  REQUIRE(strict.send_all("GET / HTTP/1.1\r\nHost: a\r\n"));
  REQUIRE(lax.send_all("GET / HTTP/1.1\r\nHost: a\r\n"));
  rig::ReadResult r = strict.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 408);
  // The other listener's client (global 10 s header timeout) is still open:
  // it completes its request and is answered.
  REQUIRE(lax.send_all("\r\n"));
  rig::ReadResult ok = lax.read_response(5000);
  REQUIRE_MESSAGE(ok, ok.error);
  CHECK(ok.response->status == 200);
}

TEST_CASE("round-robin with weights spreads requests exactly by weight") {
  Backend s1, s2, s3;
  for (Backend* b : {&s1, &s2, &s3}) REQUIRE_MESSAGE(b->start(8), b->error());
  ConfigAgent a;
  a.start("[[upstream]]\nbalance = \"round-robin\"\nservers = [\"" + server(s1) + "\", { address = \"" + server(s2) +
              "\", weight = 2 }, \"" + server(s3) + "\"]\n"
              "[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  for (int i = 0; i < 100; ++i) REQUIRE(get(a.port(0), "/ok?rr") == 200);
  CHECK(count(s1, "/ok?rr") == 25);
  CHECK(count(s2, "/ok?rr") == 50);
  CHECK(count(s3, "/ok?rr") == 25);
}

TEST_CASE("least-outstanding sends new requests past a server that is busy with slow ones") {
  Backend slow, fast;
  REQUIRE_MESSAGE(slow.start(8), slow.error());
  REQUIRE_MESSAGE(fast.start(8), fast.error());
  ConfigAgent a;
  a.start("[[upstream]]\nbalance = \"least-outstanding\"\nservers = [\"" + server(slow) + "\", \"" + server(fast) +
              "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  // A slow request holds one server.
  Client c1;
  REQUIRE(c1.connect(a.port(0)));
  REQUIRE(c1.send_all("GET /sleep/1500 HTTP/1.1\r\nHost: a\r\n\r\n"));
  REQUIRE(eventually([&] { return count(slow, "/sleep/1500") + count(fast, "/sleep/1500") == 1; }, 3000));
  // While one server holds a request, the next ones go to the other.
  Backend& idle = count(slow, "/sleep/1500") == 1 ? fast : slow;
  for (int i = 0; i < 10; ++i) REQUIRE(get(a.port(0), "/ok?lo") == 200);
  CHECK(count(idle, "/ok?lo") == 10);
  rig::ReadResult r = c1.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
}

TEST_CASE("a server that fails is taken out, its requests go to the others, and it is probed back in") {
  Backend good, bad;
  REQUIRE_MESSAGE(good.start(8), good.error());
  REQUIRE_MESSAGE(bad.start(8), bad.error());
  const uint16_t bad_port = bad.port();
  const std::string bad_name = server(bad);
  bad.stop();  // refuses connections from now on
  ConfigAgent a;
  a.start("[[upstream]]\nbalance = \"round-robin\"\nmax_fails = 2\nfail_timeout_ms = 1000\nservers = [\"" +
              server(good) + "\", \"" + bad_name + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  // Every request is answered by the good server, whatever the balancer
  // picked first: a refused server gives its waiting requests back.
  for (int i = 0; i < 20; ++i) REQUIRE(get(a.port(0), "/ok?fail") == 200);
  CHECK(count(good, "/ok?fail") == 20);
  CHECK(a.server_state(bad_name) == "down");
  // Back on the same port: after fail_timeout_ms it is probed and serves again.
  Backend back;
  REQUIRE_MESSAGE(back.start(8, bad_port), back.error());
  CHECK(eventually([&] {
    get(a.port(0), "/ok?back");
    return count(back, "/ok?back") > 0;
  }, 10000));
  CHECK(a.server_state(bad_name) == "up");
}

namespace {

// Two recording servers in a round-robin group, actively checked at a path
// every 100 ms (rise 2, fall 2), and one listener; `two` is the one the
// cases stop and bring back on the same port.
struct CheckedPair {
  Backend one, two;
  uint16_t two_port = 0;
  std::string two_name;
  CheckedPair() {
    REQUIRE_MESSAGE(one.start(8), one.error());
    REQUIRE_MESSAGE(two.start(8), two.error());
    two_port = two.port();
    two_name = server(two);
  }
  std::string config(const std::string& path) const {
    return "[[upstream]]\nbalance = \"round-robin\"\nservers = [\"" + server(one) + "\", \"" + two_name +
           "\"]\nhealth = { path = \"" + path + "\", interval_ms = 100, timeout_ms = 50, rise = 2, fall = 2 }\n"
           "[[listener]]\nlisten = \"127.0.0.1:0\"\n";
  }
};

}  // namespace

TEST_CASE("active health checks take a dead server out before any client meets it, and bring it back") {
  CheckedPair p;
  Backend &one = p.one, &two = p.two;
  const std::string& two_name = p.two_name;
  ConfigAgent a;
  a.start(p.config("/ok"), 1);
  REQUIRE(eventually([&] { return count(two, "/ok") >= 2; }, 5000));  // the probes reach it
  two.stop();
  CHECK(eventually([&] { return a.server_state(two_name) == "down"; }, 5000));
  for (int i = 0; i < 10; ++i) REQUIRE(get(a.port(0), "/ok?c") == 200);
  CHECK(count(one, "/ok?c") == 10);
  Backend back;
  REQUIRE_MESSAGE(back.start(8, p.two_port), back.error());
  CHECK(eventually([&] { return a.server_state(two_name) == "up"; }, 5000));
  CHECK(eventually([&] {
    get(a.port(0), "/ok?again");
    return count(back, "/ok?again") > 0;
  }, 5000));
}

// Health checks are the agent's, not each shard's: shard 0 probes, the other
// shards apply its results, so a server sees one probe per interval however
// many shards there are, and every shard takes it out and back together.
TEST_CASE("two shards: one probe per server each interval, and both shards follow the checks") {
  CheckedPair p;
  Backend &one = p.one, &two = p.two;
  const std::string& two_name = p.two_name;
  ConfigAgent a;
  a.start("workers = 2\n" + p.config("/ok?probe"), 1);
  REQUIRE(eventually([&] { return count(one, "/ok?probe") >= 1; }, 5000));
  // A window of 20 intervals: about 20 probes from one prober, 40 from two.
  const int before = count(one, "/ok?probe");
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  const int probes = count(one, "/ok?probe") - before;
  const double intervals =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / 100.0;
  INFO("probes " << probes << " in " << intervals << " intervals");
  CHECK(probes <= int(intervals * 1.3) + 1);
  CHECK(probes >= int(intervals * 0.5));
  two.stop();
  CHECK(eventually([&] { return a.shards_down(two_name) == 2; }, 5000));  // both shards, not only the prober
  Backend back;
  REQUIRE_MESSAGE(back.start(8, p.two_port), back.error());
  CHECK(eventually([&] { return a.shards_down(two_name) == 0; }, 5000));
  CHECK(a.server_state(two_name) == "up");
}

TEST_CASE("every server down: complete requests wait in the queue and are served when one returns") {
  Backend s1, s2;
  REQUIRE_MESSAGE(s1.start(8), s1.error());
  REQUIRE_MESSAGE(s2.start(8), s2.error());
  const uint16_t port1 = s1.port();
  s1.stop();
  s2.stop();
  ConfigAgent a;
  a.start("[[upstream]]\nmax_fails = 1\nfail_timeout_ms = 200\nservers = [\"tcp://127.0.0.1:" +
              std::to_string(port1) + "\", \"" + server(s2) + "\"]\n"
              "[[listener]]\nlisten = \"127.0.0.1:0\"\nqueue_timeout_ms = 20000\n",
          1);
  Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all("GET /ok?waited HTTP/1.1\r\nHost: a\r\n\r\n"));
  // The request waits (no answer yet) while both servers refuse...
  CHECK(c.recv_some(1, 700) <= 0);
  // ... and one server coming back serves it.
  Backend back;
  REQUIRE_MESSAGE(back.start(8, port1), back.error());
  rig::ReadResult r = c.read_response(15000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(count(back, "/ok?waited") == 1);
}

TEST_CASE("a bad [[upstream]] or [[listener]] table stops the agent with one line naming the key, exit 2") {
  struct Case {
    const char* toml;
    const char* key;
  };
  const Case cases[] = {
      {"[[upstream]]\nbalance = \"random\"\nservers = [\"tcp://127.0.0.1:1\"]\n", "upstream[0].balance"},
      {"[[upstream]]\nname = \"a\"\nservers = [\"tcp://127.0.0.1:1\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n"
       "upstream = \"b\"\n",
       "listener[0].upstream"},
      {"[[upstream]]\nservers = []\n", "upstream[0].servers"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.toml);
    char path[] = "/tmp/offload-topology-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path) << k.toml;
    rig::Child child;
    REQUIRE(child.start(rig::agent_path(), {"run", "-c", path, "--admin", "off"}));
    auto code = child.wait_exit(10000);
    ::unlink(path);
    REQUIRE(code);
    CHECK(*code == 2);
    std::vector<std::string> lines = child.stderr_lines();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].find(k.key) != std::string::npos);
  }
}
