// TcpPool on its own, on a test clock: connects to loopback, the back-off
// after failures (50 ms doubling to 1 s, exactly), idle connections reused
// most-recent first, and slots freed only when every operation is in.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "proxy/listener.h"
#include "upstream/tcp_pool.h"
#include "upstream/upstream_group.h"

using namespace offload;

namespace {

// Records what the pool tells its host; connected connections go idle.
struct FakeHost : TcpPool::Host {
  std::vector<std::string> events;
  std::vector<UpstreamConn*> connected;
  void on_connected(TcpPool& pool, UpstreamConn* u) override {
    events.push_back("connected");
    connected.push_back(u);
    pool.make_idle(u);
  }
  void on_connect_failed(TcpPool&, int status) override { events.push_back("failed " + std::to_string(status)); }
  void on_freed(TcpPool&, UpstreamConn*) override { events.push_back("freed"); }
  void on_retry(TcpPool&) override { events.push_back("retry"); }
};

bool has(const std::vector<std::string>& events, const std::string& e) {
  return std::find(events.begin(), events.end(), e) != events.end();
}

struct PoolRig {
  TestClock clock;
  Loop loop{clock, 64, 128};
  Counters counters;
  ServerCounters stats;
  FakeHost host;
  UpstreamGroup group{"g", BalancePolicy::kRoundRobin, HealthSpec{}, std::vector<ServerSpec>(1)};
  http::Limits limits;
  std::unique_ptr<TcpPool> pool;

  explicit PoolRig(uint16_t port, uint32_t max = 3) {
    TcpPool::Settings s;
    s.target = parse_upstream("upstream", "tcp://127.0.0.1:" + std::to_string(port));
    s.max_connections = max;
    s.persistent = 0;
    s.connect_timeout_ms = 1000;
    pool = std::make_unique<TcpPool>(loop, counters, stats, host, group, 0, s, limits);
  }
  // Turns until `n` events are in (bounded).
  void turn_until_events(size_t n) {
    for (int i = 0; i < 200 && host.events.size() < n; ++i) loop.turn(UINT64_MAX, 20);
    REQUIRE(host.events.size() == n);
  }
  void advance(uint64_t ms) {
    clock.advance(ms);
    loop.refresh_clock();
    loop.expire();
  }
};

// A port with nothing listening: bound, never listened on, so it refuses.
struct ClosedPort {
  int fd = -1;
  uint16_t port = 0;
  ClosedPort() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~ClosedPort() { ::close(fd); }
};

}  // namespace

TEST_CASE("tcp pool: a refused connect backs off 50 ms, then 100 ms, each to the millisecond") {
  ClosedPort closed;
  PoolRig rig(closed.port);
  REQUIRE(rig.pool->open());
  rig.turn_until_events(2);  // the failure and the slot freed, in either order
  CHECK(has(rig.host.events, "failed 502"));
  CHECK(has(rig.host.events, "freed"));
  CHECK(rig.pool->backing_off());
  CHECK_FALSE(rig.pool->may_open());
  CHECK(rig.pool->unreachable());
  CHECK(rig.pool->unreachable_status() == 502);
  rig.advance(49);
  CHECK(rig.host.events.size() == 2);
  rig.advance(1);
  REQUIRE(rig.host.events.size() == 3);
  CHECK(rig.host.events[2] == "retry");
  CHECK(rig.pool->may_open());
  // A second failure doubles the delay.
  REQUIRE(rig.pool->open());
  rig.turn_until_events(5);
  rig.advance(99);
  CHECK(rig.host.events.size() == 5);
  rig.advance(1);
  CHECK(rig.host.events.back() == "retry");
  CHECK(rig.counters.upstream_connect_errors.load() == 2);
}

TEST_CASE("tcp pool: connections up to max_connections; the most recently idled one is reused first") {
  int lfd = open_listener(parse_socket_address("test", "127.0.0.1:0"), 16);
  PoolRig rig(local_port(lfd), 3);
  for (int i = 0; i < 3; ++i) REQUIRE(rig.pool->open());
  CHECK_FALSE(rig.pool->may_open());  // at max_connections
  CHECK_FALSE(rig.pool->open());
  rig.turn_until_events(3);
  CHECK(rig.pool->open_count() == 3);
  CHECK(rig.pool->connecting() == 0);
  CHECK(rig.stats.connects.load() == 3);
  CHECK(rig.stats.connections.load() == 3);
  // Idle in connect order: the last one made idle serves next.
  UpstreamConn* last = rig.host.connected.back();
  CHECK(rig.pool->take_idle() == last);
  rig.pool->make_idle(last);
  CHECK(rig.pool->take_idle() == last);
  // Closing it frees its slot (no operation is in flight on it).
  last->state = UpstreamState::kBusy;
  rig.pool->close(last);
  REQUIRE(rig.host.events.back() == "freed");
  CHECK(rig.pool->open_count() == 2);
  CHECK(rig.stats.connections.load() == 2);
  CHECK(rig.pool->may_open());
  ::close(lfd);
}

TEST_CASE("tcp pool: a connect that never completes is ended by the connect timeout and answered 504") {
  // A listener with a full backlog holds further connects unanswered.
  int lfd = open_listener(parse_socket_address("test", "127.0.0.1:0"), 0);
  const uint16_t port = local_port(lfd);
  std::vector<int> fillers;
  for (int i = 0; i < 8; ++i) {
    int f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a);
    fillers.push_back(f);
  }
  PoolRig rig(port, 1);
  REQUIRE(rig.pool->open());
  // The connect timeout is io_uring's own (a linked timeout in real time):
  // wait for it, bounded.
  for (int i = 0; i < 200 && rig.host.events.empty(); ++i) rig.loop.turn(UINT64_MAX, 20);
  for (int i = 0; i < 50 && rig.host.events.size() < 2 && !has(rig.host.events, "connected"); ++i)
    rig.loop.turn(UINT64_MAX, 20);
  if (has(rig.host.events, "connected")) {
    MESSAGE("the kernel accepted the connect despite the full backlog; nothing to time out");
  } else {
    REQUIRE(!rig.host.events.empty());
    CHECK(has(rig.host.events, "failed 504"));
    CHECK(rig.pool->unreachable_status() == 504);
  }
  for (int f : fillers) ::close(f);
  ::close(lfd);
}
