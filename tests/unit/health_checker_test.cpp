// The active health checker on a test clock: real probe connections to test
// servers on loopback, the loop turned step by step in this thread, and time
// moved by the test alone, so every interval and timeout is checked at its
// exact boundary with no waiting for wall-clock time.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loop/loop.h"
#include "ops/config.h"
#include "proxy/listener.h"
#include "upstream/health_checker.h"

using offload::HealthChecker;
using offload::HealthCheckSettings;
using offload::Loop;
using offload::ProbeOutcome;
using offload::ProbeTarget;
using offload::SocketAddress;
using offload::TestClock;

namespace {

SocketAddress tcp(uint16_t port) {
  return offload::parse_socket_address("test", "127.0.0.1:" + std::to_string(port));
}

// A server stepped by the test: it accepts, reads each connection's request
// head, then sends `reply` one chunk per step and, with close_after_reply,
// ends its side. No reply: it reads and never answers.
struct ProbeServer {
  struct Conn {
    int fd = -1;
    std::string in;
    bool head = false;      // the whole request head is in
    size_t next_chunk = 0;  // of the reply
    bool peer_closed = false;
  };
  int listen_fd = -1;
  uint16_t port = 0;
  std::vector<std::string> reply;
  bool close_after_reply = true;
  std::vector<Conn> conns;
  std::vector<std::string> requests;  // each request head received

  explicit ProbeServer(std::vector<std::string> reply_chunks, const SocketAddress& at = tcp(0))
      : reply(std::move(reply_chunks)) {
    listen_fd = offload::open_listener(at, 64);
    if (at.family() != AF_UNIX) port = offload::local_port(listen_fd);
    ::fcntl(listen_fd, F_SETFL, O_NONBLOCK);
  }
  ~ProbeServer() {
    for (Conn& c : conns) ::close(c.fd);
    ::close(listen_fd);
  }
  void step() {
    for (int fd; (fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) conns.push_back(Conn{fd});
    for (Conn& c : conns) {
      char buf[4096];
      while (!c.peer_closed) {
        const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n > 0) c.in.append(buf, size_t(n));
        else if (n == 0 || errno != EAGAIN) c.peer_closed = true;  // an end of file or a reset
        else break;
      }
      size_t end = c.in.find("\r\n\r\n");
      if (!c.head && end != std::string::npos) {
        c.head = true;
        requests.push_back(c.in.substr(0, end + 4));
      }
      if (!c.head || c.next_chunk >= reply.size() || c.peer_closed) continue;
      const std::string& chunk = reply[c.next_chunk++];
      ::send(c.fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (c.next_chunk == reply.size() && close_after_reply) ::shutdown(c.fd, SHUT_WR);
    }
  }
  size_t closed_by_peer() const {
    size_t n = 0;
    for (const Conn& c : conns) n += c.peer_closed;
    return n;
  }
};

// Real time a turn may wait for a completion: enough for loopback I/O to land.
constexpr uint64_t kTurnWaitMs = 20;

struct Rig {
  TestClock clock{5000};
  Loop loop{clock, 64, 256};
  std::vector<std::unique_ptr<ProbeServer>> servers;
  std::vector<std::pair<size_t, bool>> results;  // what the callback got, in order
  std::unique_ptr<HealthChecker> checker;

  ProbeServer& serve(std::vector<std::string> reply, const SocketAddress& at = tcp(0)) {
    servers.push_back(std::make_unique<ProbeServer>(std::move(reply), at));
    return *servers.back();
  }
  void check(std::vector<ProbeTarget> targets, HealthCheckSettings settings) {
    checker = std::make_unique<HealthChecker>(loop, std::move(targets), std::move(settings),
                                              [this](size_t i, bool ok) { results.emplace_back(i, ok); });
  }
  // Probes every server, with the usual Host.
  void check_all(HealthCheckSettings settings) {
    std::vector<ProbeTarget> targets;
    for (auto& s : servers) targets.push_back({tcp(s->port), "backend"});
    check(std::move(targets), std::move(settings));
  }
  ~Rig() {
    if (!checker) return;
    checker->stop();
    // Not turn_until(): a REQUIRE must not throw out of a destructor.
    for (int i = 0; i < 500 && !checker->idle(); ++i) step();
    CHECK(checker->idle());
  }

  void step() {
    loop.turn(UINT64_MAX, kTurnWaitMs);
    for (auto& s : servers) s->step();
  }
  template <typename Done>
  void turn_until(Done done) {
    for (int i = 0; i < 500 && !done(); ++i) step();
    REQUIRE(done());
  }
  // A few turns with the clock standing still: whatever is in flight lands.
  void settle() {
    for (int i = 0; i < 5; ++i) step();
  }
  // Moves the clock and lets the timers that are due fire.
  void advance(uint64_t ms) {
    settle();
    clock.advance(ms);
    settle();
  }
  const offload::ProbeCounters& counters(size_t i) const { return checker->counters(i); }
};

HealthCheckSettings settings(uint32_t interval_ms = 10000, uint32_t timeout_ms = 1000, std::string path = "/health") {
  HealthCheckSettings s;
  s.path = std::move(path);
  s.interval_ms = interval_ms;
  s.timeout_ms = timeout_ms;
  return s;
}

const std::string k200 = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

}  // namespace

TEST_CASE("status line: whole 2xx..5xx lines parse, prefixes need more, anything else is refused") {
  using offload::kStatusLineIncomplete;
  using offload::kStatusLineInvalid;
  using offload::parse_status_line;
  CHECK(parse_status_line("HTTP/1.1 200 OK\r\n") == 200);
  CHECK(parse_status_line("HTTP/1.0 302 Found\r\nLocation: /\r\n") == 302);
  CHECK(parse_status_line("HTTP/1.1 503 \r\n") == 503);
  CHECK(parse_status_line("HTTP/1.1 204\r\n") == 204);
  CHECK(parse_status_line("HTTP/1.1 200 Fine\tthanks\r\n") == 200);
  // Every proper prefix of a line is "more, please", never a verdict.
  const std::string line = "HTTP/1.1 200 OK\r\n";
  for (size_t n = 0; n < line.size(); ++n) CHECK(parse_status_line(line.substr(0, n)) == kStatusLineIncomplete);
  for (const char* bad :
       {"SSH-2.0-OpenSSH\r\n", "http/1.1 200 OK\r\n", "HTTP/2 200\r\n", "HTTP/1.1 20x OK\r\n", "HTTP/1.1  200 OK\r\n",
        "HTTP/1.1 2000 OK\r\n", "HTTP/1.1 200 OK\n", "HTTP/1.1 200 O\x01K\r\n", "HTTP/1.1 200\r\r",
        "HTTP/1.1 099 Low\r\n", "\r\n"})
    CHECK_MESSAGE(parse_status_line(bad) == kStatusLineInvalid, bad);
  // Garbage is refused at its first wrong byte, without waiting for more.
  CHECK(parse_status_line("S") == kStatusLineInvalid);
  CHECK(parse_status_line("HTTP/1.1 2x") == kStatusLineInvalid);
}

TEST_CASE("health check: the path and host are checked for the request they go into") {
  CHECK(offload::health_path_problem("/health") == nullptr);
  CHECK(offload::health_path_problem("/a?b=c") == nullptr);
  CHECK(offload::health_path_problem("") != nullptr);
  CHECK(offload::health_path_problem("health") != nullptr);
  CHECK(offload::health_path_problem("/a b") != nullptr);
  CHECK(offload::health_path_problem("/a\r\nX: y") != nullptr);
  CHECK(offload::health_host_problem("app.internal:8000") == nullptr);
  CHECK(offload::health_host_problem("") != nullptr);
  CHECK(offload::health_host_problem("a\r\nX: y") != nullptr);
}

TEST_CASE("health check: a 200 is ok, and the probe's socket is closed after it") {
  Rig rig;
  ProbeServer& s = rig.serve({k200});
  rig.check_all(settings());
  rig.checker->start();
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.results[0] == std::pair<size_t, bool>{0, true});
  CHECK(rig.counters(0).sent == 1);
  CHECK(rig.counters(0).ok == 1);
  CHECK(rig.counters(0).failed == 0);
  CHECK(rig.counters(0).last == ProbeOutcome::kOk);
  CHECK(rig.counters(0).last_status == 200);
  rig.turn_until([&] { return rig.checker->idle() && s.closed_by_peer() == 1; });
}

TEST_CASE("health check: each server's result goes to its own index; 503 is not ok, 301 is") {
  Rig rig;
  rig.serve({"HTTP/1.1 200 OK\r\n\r\n"});
  rig.serve({"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"});
  rig.serve({"HTTP/1.0 301 Moved Permanently\r\nLocation: /x\r\n\r\n"});
  rig.check_all(settings());
  rig.checker->start();
  rig.turn_until([&] { return rig.results.size() == 3; });
  std::sort(rig.results.begin(), rig.results.end());
  CHECK(rig.results == std::vector<std::pair<size_t, bool>>{{0, true}, {1, false}, {2, true}});
  CHECK(rig.counters(1).failed == 1);
  CHECK(rig.counters(1).ok == 0);
  CHECK(rig.counters(1).last == ProbeOutcome::kStatus);
  CHECK(rig.counters(1).last_status == 503);
  CHECK(rig.counters(2).last_status == 301);
}

TEST_CASE("health check: a refused connect is not ok") {
  Rig rig;
  // Bound, not listening: the port is ours, and a connect to it is refused.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  SocketAddress any = tcp(0);
  REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&any.storage), any.length) == 0);
  const uint16_t port = offload::local_port(fd);
  rig.check({{tcp(port), "backend"}}, settings());
  rig.checker->start();
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.results[0] == std::pair<size_t, bool>{0, false});
  CHECK(rig.counters(0).failed == 1);
  CHECK(rig.counters(0).timed_out == 0);
  CHECK(rig.counters(0).last == ProbeOutcome::kConnect);
  CHECK(rig.counters(0).last_errno == ECONNREFUSED);
  rig.turn_until([&] { return rig.checker->idle(); });
  ::close(fd);
}

TEST_CASE("health check: a server that never answers is not ok exactly at timeout_ms") {
  Rig rig;
  ProbeServer& s = rig.serve({});  // reads, never answers
  rig.check_all(settings(10000, 700));
  rig.checker->start();
  rig.turn_until([&] { return s.requests.size() == 1; });
  rig.advance(699);
  CHECK(rig.results.empty());
  CHECK(rig.counters(0).timed_out == 0);
  CHECK(s.closed_by_peer() == 0);
  rig.clock.advance(1);
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.loop.now_ms() == 5000 + 700);
  CHECK(rig.results[0] == std::pair<size_t, bool>{0, false});
  CHECK(rig.counters(0).timed_out == 1);
  CHECK(rig.counters(0).failed == 0);
  CHECK(rig.counters(0).last == ProbeOutcome::kTimeout);
  // The socket is closed once its cancelled receive is in.
  rig.turn_until([&] { return rig.checker->idle() && s.closed_by_peer() == 1; });
}

TEST_CASE("health check: a connect that never completes is bounded by the timeout too") {
  Rig rig;
  // A listener with a full backlog and SYN retries: the probe's connect
  // hangs until the timeout. A backlog of 0 takes one connection; fill it.
  SocketAddress any = tcp(0);
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::bind(lfd, reinterpret_cast<const sockaddr*>(&any.storage), any.length) == 0);
  REQUIRE(::listen(lfd, 0) == 0);
  const uint16_t port = offload::local_port(lfd);
  std::vector<int> fillers;
  for (int i = 0; i < 4; ++i) {
    int f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    SocketAddress to = tcp(port);
    ::connect(f, reinterpret_cast<const sockaddr*>(&to.storage), to.length);
    fillers.push_back(f);
  }
  rig.check({{tcp(port), "backend"}}, settings(10000, 300));
  rig.checker->start();
  rig.advance(299);
  REQUIRE(rig.results.empty());
  rig.clock.advance(1);
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.results[0] == std::pair<size_t, bool>{0, false});
  CHECK(rig.counters(0).last == ProbeOutcome::kTimeout);
  rig.turn_until([&] { return rig.checker->idle(); });
  for (int f : fillers) ::close(f);
  ::close(lfd);
}

TEST_CASE("health check: garbage, an early end of file and an endless status line are not ok") {
  struct Case {
    std::vector<std::string> reply;
    ProbeOutcome outcome;
  };
  const Case cases[] = {
      {{"SSH-2.0-OpenSSH_9.2\r\n"}, ProbeOutcome::kGarbage},
      {{"HTTP/1.1 20"}, ProbeOutcome::kEof},  // then the server closes
      {{}, ProbeOutcome::kEof},               // closes without a byte
      {{"HTTP/1.1 200 " + std::string(HealthChecker::kStatusLineMax, 'x')}, ProbeOutcome::kGarbage},
  };
  for (const Case& c : cases) {
    Rig rig;
    ProbeServer& s = rig.serve(c.reply);
    if (c.reply.empty()) s.reply = {""};  // an empty chunk: just the close
    rig.check_all(settings());
    rig.checker->start();
    rig.turn_until([&] { return rig.results.size() == 1; });
    CHECK(rig.results[0] == std::pair<size_t, bool>{0, false});
    CHECK(rig.counters(0).failed == 1);
    CHECK(rig.counters(0).last == c.outcome);
  }
}

TEST_CASE("health check: a status line in pieces is read with one receive at a time") {
  Rig rig;
  rig.serve({"HTTP/1.1 2", "04 No", " Content\r", "\n\r\n"});
  rig.check_all(settings());
  rig.checker->start();
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.results[0] == std::pair<size_t, bool>{0, true});
  CHECK(rig.counters(0).last_status == 204);
}

TEST_CASE("health check: the request carries the configured path and Host") {
  Rig rig;
  ProbeServer& s = rig.serve({k200});
  rig.check({{tcp(s.port), "api.internal:8000"}}, settings(10000, 1000, "/healthz?deep=1"));
  rig.checker->start();
  rig.turn_until([&] { return rig.results.size() == 1; });
  REQUIRE(s.requests.size() == 1);
  const std::string expected =
      "GET /healthz?deep=1 HTTP/1.1\r\nHost: api.internal:8000\r\nConnection: close\r\n"
      "User-Agent: offload-health\r\n\r\n";
  CHECK(s.requests[0] == expected);
  CHECK(rig.checker->request(0) == expected);
}

TEST_CASE("health check: a Unix-socket server is probed the same way") {
  const std::string path = "/tmp/offload-health-test-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  {
    Rig rig;
    const SocketAddress at = offload::parse_upstream("test", "unix:" + path).address;
    ProbeServer& s = rig.serve({k200}, at);
    rig.check({{at, "localhost"}}, settings());
    rig.checker->start();
    rig.turn_until([&] { return rig.results.size() == 1; });
    CHECK(rig.results[0] == std::pair<size_t, bool>{0, true});
    CHECK(s.requests.size() == 1);
  }
  ::unlink(path.c_str());
}

TEST_CASE("health check: probes repeat every interval_ms, none before it") {
  Rig rig;
  ProbeServer& s = rig.serve({k200});
  rig.check_all(settings(1000, 300));
  rig.checker->start();  // the first round at once
  rig.turn_until([&] { return rig.results.size() == 1; });
  CHECK(rig.counters(0).sent == 1);
  for (uint64_t round = 2; round <= 4; ++round) {
    rig.advance(999);
    CHECK(rig.counters(0).sent == round - 1);
    CHECK(s.conns.size() == round - 1);
    rig.clock.advance(1);
    rig.turn_until([&] { return rig.results.size() == round; });
    CHECK(rig.counters(0).sent == round);
    CHECK(rig.counters(0).ok == round);
    CHECK(s.requests.size() == round);
  }
  CHECK(rig.counters(0).skipped == 0);
}

TEST_CASE("health check: a probe still running at the next interval is not doubled; that interval is counted") {
  Rig rig;
  ProbeServer& s = rig.serve({});  // never answers
  rig.check_all(settings(1000, 2500));
  rig.checker->start();  // t = 0: a probe
  rig.turn_until([&] { return s.requests.size() == 1; });
  rig.advance(1000);  // t = 1000: still running
  CHECK(rig.counters(0).sent == 1);
  CHECK(rig.counters(0).skipped == 1);
  rig.advance(1000);  // t = 2000
  CHECK(rig.counters(0).skipped == 2);
  CHECK(s.conns.size() == 1);
  CHECK(rig.results.empty());
  rig.advance(500);  // t = 2500: the timeout
  REQUIRE(rig.results.size() == 1);
  CHECK(rig.counters(0).timed_out == 1);
  rig.turn_until([&] { return rig.checker->idle(); });
  rig.advance(500);  // t = 3000: the next round probes again
  CHECK(rig.counters(0).sent == 2);
  CHECK(rig.counters(0).skipped == 2);
  rig.turn_until([&] { return s.conns.size() == 2; });
}

TEST_CASE("health check: stop() ends a running probe without a result and closes its socket") {
  Rig rig;
  ProbeServer& s = rig.serve({});
  rig.check_all(settings(1000, 5000));
  rig.checker->start();
  rig.turn_until([&] { return s.requests.size() == 1; });
  rig.checker->stop();
  CHECK_FALSE(rig.checker->started());
  rig.turn_until([&] { return rig.checker->idle() && s.closed_by_peer() == 1; });
  rig.advance(10000);  // no more rounds, no timeout either
  CHECK(rig.results.empty());
  CHECK(rig.counters(0).sent == 1);
  CHECK(rig.counters(0).timed_out == 0);
  CHECK(rig.loop.next_deadline_ms() == UINT64_MAX);
}
