// Upgrade and CONNECT on an HTTP listener, as clients use them: a server
// that refuses an upgrade (its answer reaches the client as HTTP, and the
// client's connection serves on through the pool), one that switches after
// interim answers, and CONNECT to the listener's connect_targets (200 and a
// tunnel, 403 for a target not listed, 502 for a closed port).
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config_agent.h"
#include "rig.h"
#include "splice_rig.h"

using namespace tunnel;

namespace {

const std::string kUpgrade = "GET /room HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: chat\r\n\r\n";

// What the server saw, per connection kind.
struct Seen {
  std::atomic<int> upgrades{0};       // upgrade requests
  std::atomic<int> plain{0};          // other requests
  std::atomic<int> after_refusal{0};  // requests on a connection after its refused upgrade (must stay 0)
  std::atomic<int> refused_closed{0}; // refused connections the agent then closed
};

// An HTTP/1.1 keep-alive server: a request with an Upgrade field gets
// `refusal` (and with `close_after` the connection is closed, the body ran
// to the close); any other gets 200 "ok". Requests have no body here.
TcpServer::Handler refuse_upgrades(std::string refusal, Seen& seen, bool close_after = false) {
  return [refusal, &seen, close_after](int fd) {
    std::string in;
    bool refused = false;
    char buf[4096];
    for (;;) {
      size_t end = 0;
      while ((end = in.find("\r\n\r\n")) == std::string::npos) {
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r <= 0) {
          if (refused && r == 0) ++seen.refused_closed;
          ::close(fd);
          return;
        }
        in.append(buf, size_t(r));
      }
      const std::string head = in.substr(0, end + 4);
      in.erase(0, end + 4);
      if (refused) ++seen.after_refusal;
      if (head.find("\r\nUpgrade: ") != std::string::npos) {
        ++seen.upgrades;
        refused = true;
        send_all(fd, refusal.data(), refusal.size());
        if (close_after) {
          ::close(fd);
          return;
        }
      } else {
        ++seen.plain;
        static const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        send_all(fd, ok.data(), ok.size());
      }
    }
  };
}

std::string http_config(const std::string& server, const std::string& listener_extra = "") {
  return "[[upstream]]\nservers = [\"" + server + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n" + listener_extra;
}

// Waits (bounded) until `n` holds `want`.
bool wait_for(const std::atomic<int>& n, int want) {
  for (int i = 0; i < 250 && n.load() != want; ++i) rig::sleep_ms(20);
  return n.load() == want;
}

// The client's next request on the same connection, served by the pool.
void next_request_is_served(rig::Client& c) {
  REQUIRE(c.send_all("GET /next HTTP/1.1\r\nHost: a\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "ok");
}

struct Refusal {
  const char* what;
  std::string answer;
  int status;
  std::string body;
};

// A port nothing listens on (bound, then closed).
uint16_t closed_port() {
  uint16_t port = 0;
  ::close(listen_loopback(port));
  return port;
}

// Sends a CONNECT for `target` and reads the answer's head (what came after
// it stays in `rest`).
std::string connect_head(int fd, const std::string& target, const std::string& early, std::string& rest) {
  const std::string req = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n" + early;
  if (!send_all(fd, req.data(), req.size())) return "";
  std::string got;
  while (got.find("\r\n\r\n") == std::string::npos) {
    char buf[4096];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0) return got;
    got.append(buf, size_t(r));
  }
  rest = got.substr(got.find("\r\n\r\n") + 4);
  return got.substr(0, got.find("\r\n\r\n") + 4);
}

}  // namespace

TEST_CASE("upgrade: a refused upgrade's answer reaches the client as HTTP, and the connection serves on") {
  const Refusal refusals[] = {
      {"426 with a length", "HTTP/1.1 426 Upgrade Required\r\nUpgrade: chat\r\nContent-Length: 9\r\n\r\nno thanks",
       426, "no thanks"},
      {"400 chunked", "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbad \r\n7\r\nrequest\r\n0\r\n\r\n",
       400, "bad request"},
      {"200 with a body", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nplain old web", 200,
       "plain old web"},
      {"404 with no body", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404, ""},
  };
  for (const Refusal& refusal : refusals) {
    CAPTURE(refusal.what);
    Seen seen;
    TcpServer server(refuse_upgrades(refusal.answer, seen));
    ConfigAgent a;
    a.start(http_config(server.url()), 1);
    rig::Client c;
    REQUIRE(c.connect(a.port(0)));
    REQUIRE(c.send_all(kUpgrade));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == refusal.status);
    CHECK(r.response->body == refusal.body);
    CHECK_FALSE(r.response->closes());
    // The same connection's next request goes to the server over the pool,
    // twice; the refused upgrade's connection was closed, never reused.
    next_request_is_served(c);
    next_request_is_served(c);
    CHECK(wait_for(seen.refused_closed, 1));
    CHECK(seen.upgrades == 1);
    CHECK(seen.plain == 2);
    CHECK(seen.after_refusal == 0);
    CHECK(stat(a, "upgrades") == 1);
    CHECK(stat(a, "upgrades_refused") == 1);
    CHECK(stat(a, "upgrades_switched") == 0);
  }
}

TEST_CASE("access log: a refused upgrade's tunnel and a CONNECT's each have a line saying how they ended") {
  Seen seen;
  TcpServer server(refuse_upgrades("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n", seen));
  TcpServer target(echo());
  const std::string listed = "127.0.0.1:" + std::to_string(target.port());
  char dir[] = "/tmp/offload-it-upgrade-log-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string log = std::string(dir) + "/access.log";
  ConfigAgent a;
  a.start("access_log = \"" + log + "\"\naccess_log_format = \"json\"\n" +
              http_config(server.url(), "connect_targets = [\"" + listed + "\"]\n"),
          1);
  {
    rig::Client c;
    REQUIRE(c.connect(a.port(0)));
    REQUIRE(c.send_all(kUpgrade));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 426);
  }
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  std::string rest;
  REQUIRE(connect_head(fd, listed, "", rest) == "HTTP/1.1 200 Connection Established\r\n\r\n");
  REQUIRE(send_all(fd, "twenty bytes, echoed", 20));
  ::shutdown(fd, SHUT_WR);
  CHECK(read_to_eof(fd, rest) == 0);
  ::close(fd);
  // Lines: the upgrade request's, its tunnel's, the CONNECT tunnel's (and
  // the CONNECT request's own).
  std::vector<rig::Json> tunnels;
  for (int i = 0; i < 250 && tunnels.size() < 2; ++i) {
    rig::sleep_ms(20);
    tunnels.clear();
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      auto j = rig::Json::parse(line);
      REQUIRE_MESSAGE(j, line);
      const std::string m = j->str_or("method", "");
      if (m == "UPGRADED" || (m == "CONNECT" && j->str_or("termination", "") != "upgraded")) tunnels.push_back(*j);
    }
  }
  REQUIRE(tunnels.size() == 2);
  const rig::Json& refused = tunnels[0].str_or("method", "") == "UPGRADED" ? tunnels[0] : tunnels[1];
  const rig::Json& connect = &refused == &tunnels[0] ? tunnels[1] : tunnels[0];
  CHECK(refused.int_or("status", 0) == 426);
  CHECK(refused.str_or("termination", "") == "upgrade_refused");
  CHECK(connect.str_or("target", "") == listed);
  CHECK(connect.int_or("status", 0) == 200);
  CHECK(connect.int_or("bytes_received", 0) == 20);
  CHECK(connect.str_or("termination", "") == "tunnel_done");
  std::filesystem::remove_all(dir);
}

TEST_CASE("upgrade: interim answers before a refusal: a 103 is passed on, a 100 is not") {
  Seen seen;
  TcpServer server(refuse_upgrades("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                                   "HTTP/1.1 426 Upgrade Required\r\nUpgrade: chat\r\nContent-Length: 4\r\n\r\nnope",
                                   seen));
  ConfigAgent a;
  a.start(http_config(server.url()), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all(kUpgrade));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->interim == std::vector<int>{103});
  CHECK(r.response->status == 426);
  CHECK(r.response->body == "nope");
  next_request_is_served(c);
  CHECK(seen.after_refusal == 0);
}

TEST_CASE("upgrade: a refusal whose body runs to the close is delivered whole, then the client is closed") {
  Seen seen;
  TcpServer server(refuse_upgrades("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nnot you, not here",
                                   seen, true));
  ConfigAgent a;
  a.start(http_config(server.url()), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all(kUpgrade));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 403);
  CHECK(r.response->body == "not you, not here");
  CHECK(r.response->closes());  // the agent cannot frame it for another request
  CHECK(c.wait_closed(5000));
}

TEST_CASE("upgrade: a request that says close is closed after its refusal") {
  Seen seen;
  TcpServer server(refuse_upgrades("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno", seen));
  ConfigAgent a;
  a.start(http_config(server.url()), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all("GET /room HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: chat\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 426);
  CHECK(r.response->body == "no");
  CHECK(r.response->closes());
  CHECK(c.wait_closed(5000));
}

TEST_CASE("upgrade: a 100 then a 101 switches, and the 100 is not passed on") {
  TcpServer server([](int fd) {
    std::string in;
    char buf[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      in.append(buf, size_t(r));
    }
    const std::string answer = "HTTP/1.1 100 Continue\r\n\r\n"
                               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: chat\r\nConnection: Upgrade\r\n\r\nhello";
    send_all(fd, answer.data(), answer.size());
    echo()(fd);
  });
  ConfigAgent a;
  a.start(http_config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  REQUIRE(send_all(fd, kUpgrade.data(), kUpgrade.size()));
  std::string got;
  while (got.find("hello") == std::string::npos) {
    char buf[4096];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    REQUIRE(r > 0);
    got.append(buf, size_t(r));
  }
  CHECK(got.rfind("HTTP/1.1 101 ", 0) == 0);
  CHECK(got.size() == got.find("\r\n\r\n") + 4 + 5);  // the 101, then the new protocol's first bytes
  REQUIRE(send_all(fd, "echo me", 7));
  ::shutdown(fd, SHUT_WR);
  std::string rest;
  CHECK(read_to_eof(fd, rest) == 0);
  CHECK(rest == "echo me");
  ::close(fd);
  CHECK(stat(a, "upgrades_switched") == 1);
  CHECK(stat(a, "upgrades_refused") == 0);
}

TEST_CASE("upgrade: a server that cannot be reached is the gateway's 502, not a silent close") {
  ConfigAgent a;
  a.start(http_config("tcp://127.0.0.1:" + std::to_string(closed_port())), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all(kUpgrade));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 502);
  CHECK(stat(a, "upgrades") == 1);
}

TEST_CASE("CONNECT to a listed target: 200, then bytes both ways, the early ones too") {
  TcpServer target(echo());
  rig::Backend web;
  REQUIRE_MESSAGE(web.start(8), web.error());
  const std::string listed = "127.0.0.1:" + std::to_string(target.port());
  ConfigAgent a;
  a.start(http_config("tcp://127.0.0.1:" + std::to_string(web.port()),
                      "connect_targets = [\"" + listed + "\", \"[::1]:22\"]\n"),
          1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  // What a client sends right behind its CONNECT goes to the target first.
  std::string rest;
  const std::string head = connect_head(fd, listed, "early ", rest);
  CHECK(head == "HTTP/1.1 200 Connection Established\r\n\r\n");
  REQUIRE(send_all(fd, "and late bytes", 14));
  ::shutdown(fd, SHUT_WR);
  CHECK(read_to_eof(fd, rest) == 0);
  CHECK(rest == "early and late bytes");
  ::close(fd);
  CHECK(stat(a, "connect_established") == 1);
  CHECK(stat(a, "tunnel_bytes_up") == 20);
  CHECK(a.listener_stat(0, "tunnel_bytes_up") == 20);  // the early bytes too
  // The web group never saw the CONNECT.
  auto rec = web.record();
  REQUIRE(rec);
  CHECK(rec->all_requests().empty());
}

TEST_CASE("CONNECT: a target not listed gets 403, a closed port 502, and the listener serves on") {
  TcpServer target(echo());
  rig::Backend web;
  REQUIRE_MESSAGE(web.start(8), web.error());
  const uint16_t closed = closed_port();
  ConfigAgent a;
  a.start(http_config("tcp://127.0.0.1:" + std::to_string(web.port()),
                      "connect_targets = [\"127.0.0.1:" + std::to_string(target.port()) + "\", \"127.0.0.1:" +
                          std::to_string(closed) + "-" + std::to_string(closed) + "\"]\n"),
          1);
  const std::string not_listed[] = {"127.0.0.2:" + std::to_string(target.port()),
                                    "127.0.0.1:" + std::to_string(target.port() == 65535 ? 1 : target.port() + 1),
                                    "localhost:" + std::to_string(target.port())};  // a name: never resolved
  for (const std::string& t : not_listed) {
    CAPTURE(t);
    rig::Client c;
    REQUIRE(c.connect(a.port(0)));
    REQUIRE(c.send_all("CONNECT " + t + " HTTP/1.1\r\nHost: " + t + "\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 403);
  }
  CHECK(stat(a, "connect_not_listed") == 3);
  {
    rig::Client c;
    REQUIRE(c.connect(a.port(0)));
    const std::string t = "127.0.0.1:" + std::to_string(closed);
    REQUIRE(c.send_all("CONNECT " + t + " HTTP/1.1\r\nHost: " + t + "\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 502);
    CHECK(c.wait_closed(5000));
  }
  CHECK(stat(a, "connect_failed") == 1);
  CHECK(stat(a, "connect_established") == 0);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all("GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
}

TEST_CASE("upgrade: a server that never answers is the gateway's 504 after response_timeout_ms") {
  std::atomic<bool> done{false};
  TcpServer server([&done](int fd) {
    char buf[4096];
    for (int i = 0; i < 500 && !done; ++i) {  // reads, never answers (bounded: 10 s)
      if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) == 0) break;
      rig::sleep_ms(20);
    }
    ::close(fd);
  });
  ConfigAgent a;
  a.start("response_timeout_ms = 300\n" + http_config(server.url()), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all(kUpgrade));
  rig::ReadResult r = c.read_response(10000);
  done = true;
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 504);
  CHECK(stat(a, "timeouts_response") == 1);
}

TEST_CASE("CONNECT: a target that does not complete the handshake is 504 after connect_timeout_ms") {
  // A listening socket whose accept queue (backlog 0) is full drops the
  // next SYNs: a connect to it hangs until its timeout.
  uint16_t port = 0;
  const int full = listen_loopback(port, 0);
  int filler = connect_loopback(port);
  REQUIRE(filler >= 0);
  rig::Backend web;
  REQUIRE_MESSAGE(web.start(8), web.error());
  const std::string t = "127.0.0.1:" + std::to_string(port);
  ConfigAgent a;
  a.start("connect_timeout_ms = 300\n" + http_config("tcp://127.0.0.1:" + std::to_string(web.port()),
                                                     "connect_targets = [\"" + t + "\"]\n"),
          1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all("CONNECT " + t + " HTTP/1.1\r\nHost: " + t + "\r\n\r\n"));
  rig::ReadResult r = c.read_response(10000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 504);
  CHECK(stat(a, "connect_timed_out") == 1);
  ::close(filler);
  ::close(full);
}

TEST_CASE("upgrade: a connection back from a refusal still counts against max_clients_per_source, once") {
  Seen seen;
  TcpServer server(refuse_upgrades("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno", seen));
  ConfigAgent a;
  a.start("max_clients_per_source = 1\n" + http_config(server.url()), 1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all(kUpgrade));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 426);
  next_request_is_served(c);
  // Back in the HTTP proxy, it is still the source's one connection.
  int second = connect_loopback(a.port(0));
  REQUIRE(second >= 0);
  set_timeouts(second, 10000);
  CHECK(closed_without_a_byte(second));
  CHECK(stat(a, "rejected_per_source") == 1);
  // Once it ends, its place is given back exactly once: one more fits, not two.
  c.close();
  bool served = false;
  rig::Client again;
  for (int i = 0; i < 50 && !served; ++i) {
    again = rig::Client();
    served = again.connect(a.port(0)) && again.send_all("GET /x HTTP/1.1\r\nHost: a\r\n\r\n") &&
             again.recv_some(4096, 2000) > 0;
    if (!served) rig::sleep_ms(20);
  }
  REQUIRE(served);
  const int64_t rejected = stat(a, "rejected_per_source");
  int third = connect_loopback(a.port(0));
  REQUIRE(third >= 0);
  set_timeouts(third, 10000);
  CHECK(closed_without_a_byte(third));
  CHECK(stat(a, "rejected_per_source") == rejected + 1);
}

TEST_CASE("upgrade: bytes the client sent right behind its request: the next request after a refusal, the new protocol after a 101") {
  {
    Seen seen;
    TcpServer server(refuse_upgrades("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno", seen));
    ConfigAgent a;
    a.start(http_config(server.url()), 1);
    rig::Client c;
    REQUIRE(c.connect(a.port(0)));
    REQUIRE(c.send_all(kUpgrade + "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 426);
    r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(r.response->body == "ok");
    CHECK(seen.after_refusal == 0);  // it never went to the refusing connection
    CHECK(seen.plain == 1);
  }
  {
    TcpServer server(switch_to_echo());
    ConfigAgent a;
    a.start(http_config(server.url()), 1);
    int fd = connect_loopback(a.port(0));
    REQUIRE(fd >= 0);
    set_timeouts(fd, 10000);
    const std::string eager = kUpgrade + "eager bytes";
    REQUIRE(send_all(fd, eager.data(), eager.size()));
    ::shutdown(fd, SHUT_WR);
    std::string got;
    CHECK(read_to_eof(fd, got) == 0);
    ::close(fd);
    CHECK(got.rfind("HTTP/1.1 101 ", 0) == 0);
    CHECK(got.substr(got.find("\r\n\r\n") + 4) == "eager bytes");
  }
}
