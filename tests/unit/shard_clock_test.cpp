// The shard's timeouts driven by a test clock: a client and a server on
// loopback, the shard turned step by step in this thread, and time moved by
// the test alone, so each timeout is checked at its exact boundary with no
// waiting for wall-clock time.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/listener.h"
#include "shard.h"

using offload::Config;
using offload::Counters;
using offload::Shard;
using offload::TestClock;

namespace {

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

void send_text(int fd, const std::string& s) { REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size())); }

// What the socket has for us now, without waiting; "<eof>" once closed.
std::string take(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, size_t(n));
      continue;
    }
    if (n == 0) out += "<eof>";
    return out;
  }
}

// Everything a client has received so far, read without waiting.
struct Received {
  int fd;
  std::string text;
  bool eof = false;
  const std::string& poll() {
    if (!eof) {
      text += take(fd);
      if (text.size() >= 5 && text.compare(text.size() - 5, 5, "<eof>") == 0) {
        text.resize(text.size() - 5);
        eof = true;
      }
    }
    return text;
  }
};

// A server that accepts and answers each request it has read in full (one
// 200 with a small body), or with `silent`, reads and never answers.
struct StepServer {
  int listen_fd = -1;
  uint16_t port = 0;
  bool silent = false;
  std::vector<int> conns;
  std::vector<std::string> pending;
  int requests = 0;

  StepServer() {
    offload::SocketAddress a = offload::parse_socket_address("test", "127.0.0.1:0");
    listen_fd = offload::open_listener(a, 64);
    port = offload::local_port(listen_fd);
    ::fcntl(listen_fd, F_SETFL, O_NONBLOCK);
  }
  ~StepServer() {
    for (int fd : conns) ::close(fd);
    ::close(listen_fd);
  }
  void step() {
    for (int fd; (fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) {
      conns.push_back(fd);
      pending.emplace_back();
    }
    for (size_t i = 0; i < conns.size(); ++i) {
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(conns[i], buf, sizeof buf, 0)) > 0) pending[i].append(buf, size_t(n));
      size_t end;
      while ((end = pending[i].find("\r\n\r\n")) != std::string::npos) {
        pending[i].erase(0, end + 4);
        ++requests;
        if (!silent) send_text(conns[i], "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      }
    }
  }
};

// Real time a turn may wait for a completion: enough for loopback I/O to land.
constexpr uint64_t kTurnWaitMs = 20;

struct Rig {
  TestClock clock;
  Config config;
  Counters counters;
  StepServer server;
  int listen_fd = -1;
  uint16_t port = 0;
  std::unique_ptr<Shard> shard;

  explicit Rig(bool silent_server = false) {
    server.silent = silent_server;
    config.max_clients = 16;
    config.max_upstream = 2;
    config.persistent = 0;
    config.header_timeout_ms = 10000;
    config.body_timeout_ms = 3000;
    config.keepalive_timeout_ms = 5000;
    config.response_timeout_ms = 7000;
    config.upstream = offload::parse_upstream("upstream", "tcp://127.0.0.1:" + std::to_string(server.port));
    offload::validate(config);
    listen_fd = offload::open_listener(offload::parse_socket_address("listen", "127.0.0.1:0"), 64);
    port = offload::local_port(listen_fd);
    shard = std::make_unique<Shard>(config, offload::ShardSockets{{listen_fd}}, counters, nullptr, nullptr, clock);
    shard->start();
  }
  ~Rig() {
    shard.reset();
    ::close(listen_fd);
  }
  // Turns the shard (and the server) until `done` holds; bounded.
  template <typename Done>
  void turn_until(Done done) {
    for (int i = 0; i < 1000 && !done(); ++i) {
      shard->turn(kTurnWaitMs);
      server.step();
    }
    REQUIRE(done());
  }
  // A few turns with the clock standing still: whatever is in flight lands.
  void settle() {
    for (int i = 0; i < 5; ++i) {
      shard->turn(kTurnWaitMs);
      server.step();
    }
  }
  // Lets what is in flight land first, so every timer is armed at the time
  // the test expects, then moves the clock.
  void advance(uint64_t ms) {
    settle();
    clock.advance(ms);
    settle();
  }
  uint64_t value(const std::atomic<uint64_t>& c) const { return c.load(); }
};

}  // namespace

TEST_CASE("shard on a test clock: a partial head gets 408 at header_timeout_ms, not a millisecond before") {
  Rig rig;
  int c = connect_to(rig.port);
  send_text(c, "GET / HTTP/1.1\r\nHost: a\r\n");
  rig.turn_until([&] { return rig.value(rig.counters.bytes_in) > 0; });
  rig.advance(rig.config.header_timeout_ms - 1);
  CHECK(take(c).empty());
  CHECK(rig.value(rig.counters.timeouts_header) == 0);
  rig.settle();
  rig.clock.advance(1);
  Received got{c};
  rig.turn_until([&] { return got.poll(), got.eof; });
  CHECK(got.text.rfind("HTTP/1.1 408", 0) == 0);
  CHECK(rig.value(rig.counters.timeouts_header) == 1);
  ::close(c);
}

TEST_CASE("shard on a test clock: a connection that never sends is closed at header_timeout_ms without a response") {
  Rig rig;
  int c = connect_to(rig.port);
  rig.turn_until([&] { return rig.value(rig.counters.accepted) == 1; });
  rig.advance(rig.config.header_timeout_ms - 1);
  CHECK(take(c).empty());
  rig.settle();
  rig.clock.advance(1);
  Received got{c};
  rig.turn_until([&] { return got.poll(), got.eof; });
  CHECK(got.text.empty());
  ::close(c);
}

TEST_CASE("shard on a test clock: a body that stops gets 408 at body_timeout_ms after its last bytes") {
  Rig rig;
  int c = connect_to(rig.port);
  send_text(c, "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n123");
  rig.turn_until([&] { return rig.value(rig.counters.bytes_in) > 0; });
  rig.advance(rig.config.body_timeout_ms - 1);
  send_text(c, "45");  // progress: the body timer starts again
  const uint64_t before = rig.value(rig.counters.bytes_in);
  rig.turn_until([&] { return rig.value(rig.counters.bytes_in) == before + 2; });
  rig.advance(rig.config.body_timeout_ms - 1);
  CHECK(take(c).empty());
  rig.settle();
  rig.clock.advance(1);
  Received got{c};
  rig.turn_until([&] { return got.poll(), got.eof; });
  CHECK(got.text.rfind("HTTP/1.1 408", 0) == 0);
  CHECK(rig.value(rig.counters.timeouts_body) == 1);
  CHECK(rig.server.requests == 0);  // an incomplete request never reaches the server
  ::close(c);
}

TEST_CASE("shard on a test clock: an idle keep-alive connection closes at keepalive_timeout_ms after its response") {
  Rig rig;
  int c = connect_to(rig.port);
  send_text(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  Received got{c};
  rig.turn_until([&] { return got.poll().find("\r\n\r\nok") != std::string::npos; });
  CHECK(got.text.rfind("HTTP/1.1 200", 0) == 0);
  rig.advance(rig.config.keepalive_timeout_ms - 1);
  CHECK(got.poll().size() == got.text.size());
  CHECK_FALSE(got.eof);  // still open
  rig.settle();
  rig.clock.advance(1);
  rig.turn_until([&] { return got.poll(), got.eof; });
  CHECK(rig.value(rig.counters.timeouts_keepalive) == 1);
  ::close(c);
}

TEST_CASE("shard on a test clock: a server that never answers costs the client a 504 at response_timeout_ms") {
  Rig rig(/*silent_server=*/true);
  int c = connect_to(rig.port);
  send_text(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  rig.turn_until([&] { return rig.server.requests == 1; });
  rig.advance(rig.config.response_timeout_ms - 1);
  CHECK(take(c).empty());
  rig.settle();
  rig.clock.advance(1);
  Received got{c};
  rig.turn_until([&] { return got.poll().find("\r\n\r\n") != std::string::npos; });
  CHECK(got.text.rfind("HTTP/1.1 504", 0) == 0);
  CHECK(rig.value(rig.counters.timeouts_response) == 1);
  ::close(c);
}

// A reload's old shard: the socket it hands over stays open (its queue is
// the next generation's), a kept-alive client is not closed while idle (a
// request may be on its way) but after its next response, which says
// close; then the shard has nothing left and ends.
TEST_CASE("shard retired by a reload: the handed-over socket stays listening, an idle client closes after its next response") {
  Rig rig;
  int c = connect_to(rig.port);
  send_text(c, "GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
  Received got{c};
  rig.turn_until([&] { return got.poll().find("\r\n\r\nok") != std::string::npos; });
  CHECK(got.text.find("Connection: close") == std::string::npos);
  got.text.clear();

  rig.shard->request_retire({rig.listen_fd});
  rig.advance(1000);
  got.poll();
  CHECK_FALSE(got.eof);  // idle, but open
  int queued = connect_to(rig.port);  // the socket still listens: the backlog takes it
  send_text(c, "GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
  rig.turn_until([&] { return got.poll(), got.eof; });
  CHECK(got.text.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(got.text.find("Connection: close") != std::string::npos);
  CHECK(got.text.find("\r\n\r\nok") != std::string::npos);
  // Nothing open once the client has gone: the shard's run ends (the
  // queued client waits for the next generation).
  ::close(c);
  bool running = true;
  for (int i = 0; i < 100 && running; ++i) running = rig.shard->turn(kTurnWaitMs);
  CHECK_FALSE(running);
  CHECK(rig.value(rig.counters.accepted) == 1);
  ::close(queued);
}

TEST_CASE("shard retired by a reload: a socket not handed over is shut, its port refuses") {
  Rig rig;
  rig.shard->request_retire({});
  rig.settle();
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(rig.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0);
  ::close(fd);
}
