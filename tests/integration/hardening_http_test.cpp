// Hardening of the HTTP paths and the admin endpoint, end to end with the
// real agent:
//  - the framing the agent relies on survives any Connection option, in both
//    directions (an upstream "Connection: content-length" once left a
//    keep-alive client with no way to find the end of the body);
//  - an absolute-form target's authority is held to the Host rule, and it
//    replaces a differing Host;
//  - the admin endpoint serves many connections at once, each with a total
//    deadline, and never holds up the agent's exit.
// Agent-only: nginx has no admin endpoint and frames differently.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

bool agent_only() {
  if (rig::proxy_kind() == "agent") return true;
  MESSAGE("agent-only case: skipped for ", rig::proxy_kind());
  return false;
}

void start_pair(Backend& b, Proxy& p, const ProxyOptions& o = {}) {
  REQUIRE_MESSAGE(b.start(8), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), o), p.error());
}

// ------------------------------------------------------ a canned upstream

// An upstream that answers each request (head only, no body) with the bytes
// mapped to its target, on keep-alive connections. For responses the
// recording backend cannot make: framing fields named in Connection.
class CannedUpstream {
 public:
  explicit CannedUpstream(std::map<std::string, std::string> answers) : answers_(std::move(answers)) {}
  ~CannedUpstream() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& t : workers_) t.join();
    if (fd_ >= 0) ::close(fd_);
  }

  bool start() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 64) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return false;
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
    return true;
  }
  uint16_t port() const { return port_; }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::lock_guard<std::mutex> lock(mutex_);
      if (workers_.size() >= 32) {  // bounded: the agent needs a few at most
        ::close(c);
        continue;
      }
      workers_.emplace_back([this, c] { serve(c); });
    }
  }

  void serve(int fd) {
    std::string in;
    char buf[4096];
    const int64_t give_up = rig::now_ms() + 60000;
    while (!stop_ && rig::now_ms() < give_up) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      in.append(buf, size_t(n));
      size_t end;
      while ((end = in.find("\r\n\r\n")) != std::string::npos) {
        const size_t sp = in.find(' ');
        const std::string target = in.substr(sp + 1, in.find(' ', sp + 1) - sp - 1);
        in.erase(0, end + 4);
        auto it = answers_.find(target);
        const std::string& answer = it != answers_.end() ? it->second : answers_.at("default");
        (void)!::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
      }
    }
    ::close(fd);
  }

  std::map<std::string, std::string> answers_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::thread acceptor_;
  std::vector<std::thread> workers_;
};

// ------------------------------------------------------ a dripping client

// A connection that sends `bytes` one at a time, `interval_ms` apart, from
// its own thread, until stopped, sent out, or the peer is gone.
class Dripper {
 public:
  ~Dripper() { stop(); }
  bool start(uint16_t port, std::string bytes, int interval_ms) {
    if (!client_.connect(port, 3000)) return false;
    bytes_ = std::move(bytes);
    thread_ = std::thread([this, interval_ms] {
      for (char b : bytes_) {
        if (stop_ || ::send(client_.fd(), &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) return;
        ++sent_;
        for (int waited = 0; waited < interval_ms && !stop_; waited += 10) rig::sleep_ms(10);
      }
    });
    return true;
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Waits (bounded) until `n` bytes went out.
  bool wait_sent(int n, int timeout_ms) {
    const int64_t deadline = rig::now_ms() + timeout_ms;
    while (sent_ < n && rig::now_ms() < deadline) rig::sleep_ms(10);
    return sent_ >= n;
  }
  // Still open: no EOF or reset has come (nothing is ever answered to it).
  bool open() { return client_.recv_some(1, 0) == -1; }
  Client& client() { return client_; }

 private:
  Client client_;
  std::string bytes_;
  std::atomic<bool> stop_{false};
  std::atomic<int> sent_{0};
  std::thread thread_;
};

// A request head that never ends: the admin endpoint keeps waiting for it.
std::string endless_head() { return "GET /stats HTTP/1.1\r\nHost: drip\r\nX-Drip: " + std::string(120, 'd'); }

// Runs `offload-agent stats --admin ADDR` and returns its exit code (-1: no exit in time).
int stats_command(uint16_t admin_port, int timeout_ms) {
  rig::Child stats;
  const std::string admin = "127.0.0.1:" + std::to_string(admin_port);
  if (!stats.start(rig::agent_path(), {"stats", "--admin", admin})) return -1;
  auto code = stats.wait_exit(timeout_ms);
  return code ? *code : -1;
}

}  // namespace

// --------------------------------------------- framing against Connection

TEST_CASE("an upstream Connection option naming its framing field still gives a keep-alive client a framed body") {
  if (!agent_only()) return;
  CannedUpstream up({
      {"/cl", "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"},
      {"/cl-list", "HTTP/1.1 200 OK\r\nConnection: Content-Length, Via\r\nContent-Length: 5, 5\r\n"
                   "Via: 1.1 origin\r\n\r\nhello"},
      {"/te", "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5\r\nhello\r\n0\r\n\r\n"},
      {"/all", "HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length, transfer-encoding, connection\r\n"
               "Content-Length: 5\r\n\r\nhello"},
      {"default", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"},
  });
  REQUIRE(up.start());
  Proxy p;
  REQUIRE_MESSAGE(p.start(up.port(), {}), p.error());
  Client c;
  REQUIRE(c.connect(p.port()));
  // Twice round on one connection: each response must end where its body
  // ends, or the next one is never read.
  for (int round = 0; round < 2; ++round) {
    for (const char* path : {"/cl", "/cl-list", "/te", "/all"}) {
      CAPTURE(path);
      CAPTURE(round);
      REQUIRE(c.send_all(rig::get_request(path)));
      auto r = c.read_response(4000);
      REQUIRE_MESSAGE(r, r.error);
      CHECK(r.response->status == 200);
      CHECK(r.response->body == "hello");
      CHECK_FALSE(r.response->closes());
      const bool length = r.response->has_header("content-length");
      CHECK(length != r.response->chunked);  // exactly one framing, matching what came
      if (length) CHECK(r.response->header("content-length") == "5");
    }
  }
  // An HTTP/1.0 client gets the chunked one decoded, ended by the close it is told of.
  Client old;
  REQUIRE(old.connect(p.port()));
  REQUIRE(old.send_all("GET /te HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto r = old.read_response(4000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->body == "hello");
  CHECK(r.response->closes());
  CHECK_FALSE(r.response->chunked);
}

TEST_CASE("a client Connection option naming Content-Length, Host and Transfer-Encoding keeps the request's framing and Host") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  Client c;
  REQUIRE(c.connect(p.port()));
  const std::string chunked =
      "POST /echo?chunked HTTP/1.1\r\nHost: t.test\r\nConnection: content-length, host, transfer-encoding\r\n"
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  const std::string length =
      "POST /echo?length HTTP/1.1\r\nConnection: Content-Length, Host\r\nHost: t.test\r\nContent-Length: 5\r\n\r\n"
      "world";
  REQUIRE(c.send_all(chunked));
  auto r1 = c.read_response(4000);
  REQUIRE_MESSAGE(r1, r1.error);
  CHECK(r1.response->body == "hello");
  REQUIRE(c.send_all(length));
  auto r2 = c.read_response(4000);
  REQUIRE_MESSAGE(r2, r2.error);
  CHECK(r2.response->body == "world");
  auto rec = b.record();
  REQUIRE(rec);
  for (const char* target : {"/echo?chunked", "/echo?length"}) {
    CAPTURE(target);
    const auto* q = rec->find(target);
    REQUIRE(q);
    CHECK(q->complete);
    CHECK(q->raw.find("\r\nHost: t.test\r\n") != std::string::npos);
    CHECK(q->raw.find("\r\nContent-Length: 5\r\n") != std::string::npos);
    CHECK(q->raw.find("Transfer-Encoding") == std::string::npos);
    CHECK(q->raw.find("Connection:") == std::string::npos);
    CHECK(q->body_bytes == 5);
  }
}

// --------------------------------------------------- absolute-form targets

TEST_CASE("an absolute-form target's authority is validated like Host: userinfo and junk get 400, the backend nothing") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  const char* bad_targets[] = {"http://a@b\"<x>/", "http://user@t.test/ok", "http://u:pw@t.test/ok",
                               "http://t.test:8o/ok", "http:///ok", "http://t%zz/ok", "http://[::1/ok"};
  for (const char* target : bad_targets) {
    CAPTURE(target);
    Client c;
    REQUIRE(c.connect(p.port()));
    REQUIRE(c.send_all("GET " + std::string(target) + " HTTP/1.1\r\nHost: t.test\r\n\r\n"));
    auto r = c.read_response(4000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 400);
    CHECK(r.response->closes());
  }
  // The same authority as a Host field was already refused: one rule for both.
  Client h;
  REQUIRE(h.connect(p.port()));
  REQUIRE(h.send_all("GET /ok HTTP/1.1\r\nHost: a@b\"<x>\r\n\r\n"));
  auto hr = h.read_response(4000);
  REQUIRE_MESSAGE(hr, hr.error);
  CHECK(hr.response->status == 400);
  auto rec = b.record();
  REQUIRE(rec);
  CHECK(rec->all_requests().empty());
}

TEST_CASE("an absolute-form target's authority replaces a differing Host upstream") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  Client c;
  REQUIRE(c.connect(p.port()));
  REQUIRE(c.send_all("GET http://app.test:8081/ok?abs HTTP/1.1\r\nHost: other.test\r\n\r\n"));
  auto r = c.read_response(4000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  auto rec = b.record();
  REQUIRE(rec);
  const auto* q = rec->find("/ok?abs");
  REQUIRE(q);
  CHECK(q->raw.find("\r\nHost: app.test:8081\r\n") != std::string::npos);
  CHECK(q->raw.find("other.test") == std::string::npos);
}

// ---------------------------------------------------------- admin endpoint

TEST_CASE("admin: a client dripping a byte a second does not keep /stats, /metrics or `stats` from answering") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  Dripper drip;
  REQUIRE(drip.start(p.admin_port(), endless_head(), 1000));
  REQUIRE(drip.wait_sent(2, 5000));  // the admin side has it by now
  // Generous bounds (a served request takes milliseconds), all well inside
  // the drip's own 5 s deadline: the drip is still there when they answer.
  for (const char* path : {"/stats", "/metrics", "/stats?format=json"}) {
    CAPTURE(path);
    auto r = rig::http_get(p.admin_port(), path, 2500);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
  }
  CHECK(stats_command(p.admin_port(), 2500) == 0);
  CHECK_MESSAGE(drip.open(), "the drip client was closed before the others were answered");
}

TEST_CASE("admin: a dripping client is closed at its deadline and counted") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  Dripper drip;
  REQUIRE(drip.start(p.admin_port(), endless_head(), 1000));
  std::string got;
  // The deadline is 5 s from accept; 20 s only catches a connection never closed.
  CHECK(drip.client().wait_closed(20000, &got));
  CHECK(got.empty());  // no answer to a request that never finished
  drip.stop();
  CHECK(p.stat("admin_timeouts") >= 1);
}

TEST_CASE("admin: SIGTERM on an idle agent with a dripping admin client exits promptly") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.drain_timeout_ms = 1000;
  start_pair(b, p, o);
  Dripper drip;
  REQUIRE(drip.start(p.admin_port(), endless_head(), 1000));
  REQUIRE(drip.wait_sent(2, 5000));
  p.child().signal(SIGTERM);
  // Generous: the exit takes milliseconds; this only catches the hang.
  auto code = p.child().wait_exit(10000);
  REQUIRE_MESSAGE(code, "the agent did not exit with an admin client dripping");
  CHECK(*code == 0);
}

TEST_CASE("admin: many connections at once, ten of them silent, are all answered") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  std::vector<Client> silent(10);
  for (auto& s : silent) REQUIRE(s.connect(p.admin_port()));
  constexpr int kAsking = 48;  // with the silent ones, under the 64 served at once
  std::vector<Client> asking(kAsking);
  for (auto& a : asking) REQUIRE(a.connect(p.admin_port()));
  for (auto& a : asking) REQUIRE(a.send_all(rig::get_request("/stats?format=json")));
  // One deadline for all, well inside the silent ones' own 5 s: nobody
  // waits for them.
  const int64_t deadline = rig::now_ms() + 4000;
  int answered = 0;
  for (auto& a : asking) {
    auto r = a.read_response(int(std::max<int64_t>(1, deadline - rig::now_ms())));
    if (r && r.response->status == 200 && rig::Json::parse(r.response->body)) ++answered;
  }
  CHECK(answered == kAsking);
}

TEST_CASE("admin: over 64 connections the oldest is closed to make room, and counted") {
  if (!agent_only()) return;
  Backend b;
  Proxy p;
  start_pair(b, p);
  std::vector<Client> silent(64);
  for (auto& s : silent) REQUIRE(s.connect(p.admin_port()));
  auto r = rig::http_get(p.admin_port(), "/stats", 3000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(silent.front().wait_closed(3000));  // the oldest made room
  CHECK(silent.back().recv_some(1, 0) == -1);  // the newest is still being waited for
  CHECK(p.stat("admin_evicted") >= 1);
}
