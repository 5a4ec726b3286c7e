// The kernel splice's pitfalls, one case each (the agent with splice =
// "kernel", as root): bytes that came before the sockets were in the map, a
// server that speaks first, a slow receiver against the kernel's redirect
// backlog, the pinned maps after the pairs close and after a SIGKILL, and
// --no-bpf. The common pass-through cases run in this executable too
// (passthrough_test.cpp built with PASSTHROUGH_SPLICE="kernel").
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "splice_rig.h"

using namespace tunnel;

namespace {

// "... maps pinned in /sys/fs/bpf/offload/splice-PID, ..." from the agent's log.
std::string pin_dir_of(rig::Child& agent) {
  auto line = agent.wait_for_line("maps pinned in ", 5000);
  REQUIRE_MESSAGE(line, agent.stderr_text());
  std::string dir = line->substr(line->find("maps pinned in ") + 15);
  return dir.substr(0, dir.find(','));
}

// The entries of a pinned map, as bpftool lists them (-1: bpftool failed).
int entries(const std::string& pin) {
  std::string cmd = "bpftool -j map dump pinned " + pin + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (::pclose(p) != 0) return -1;
  auto doc = rig::Json::parse(out);
  return doc && doc->type == rig::Json::Type::kArray ? int(doc->array.size()) : -1;
}

const char* const kMaps[] = {"splice_socks", "splice_peers", "splice_flows", "splice_ctl"};

// Waits (bounded) until the agent has no tunnel open.
bool no_tunnels(ConfigAgent& a) {
  for (int i = 0; i < 500; ++i) {
    if (stat(a, "tunnels_active") == 0) return true;
    rig::sleep_ms(10);
  }
  return false;
}

}  // namespace

TEST_CASE("splice: bytes the client sends before its socket is in the map arrive, in order") {
  TcpServer server(echo());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  // At once: these land on the agent's socket before it has even connected
  // to the server, so before the insertion.
  std::string early(64 * 1024, '\0');
  Stream(5).fill(early.data(), early.size());
  REQUIRE(send_all(fd, early.data(), early.size()));
  rig::sleep_ms(100);  // the pair is in the maps by now: what follows is redirected
  std::string late(4 << 20, '\0');
  Stream(6).fill(late.data(), late.size());
  std::string got;
  std::thread reader([&] { read_to_eof(fd, got); });
  REQUIRE(send_all(fd, late.data(), late.size()));
  ::shutdown(fd, SHUT_WR);
  reader.join();
  ::close(fd);
  CHECK(rig::difference(got, early + late) == "");
  CHECK(stat(a, "tunnels_kernel") == 1);
  // The early bytes go through user space (or, when the kernel judges what
  // was queued at the insertion itself, are redirected first); the rest
  // through the kernel.
  CHECK(stat(a, "tunnel_bytes_up") == int64_t(early.size() + late.size()));
  CHECK(stat(a, "spliced_bytes_up") >= int64_t(late.size()));
  MESSAGE("up: " << stat(a, "tunnel_bytes_up") - stat(a, "spliced_bytes_up") << " bytes in user space");
}

TEST_CASE("splice: a server's banner sent as the connection opens reaches the client before the echo") {
  std::string banner(256 * 1024, '\0');
  Stream(8).fill(banner.data(), banner.size());
  TcpServer server([&banner](int fd) {
    send_all(fd, banner.data(), banner.size());
    echo()(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  std::string got;
  while (got.size() < banner.size()) {
    char buf[65536];
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, banner.size() - got.size()), 0);
    REQUIRE(r > 0);
    got.append(buf, size_t(r));
  }
  CHECK(rig::difference(got, banner) == "");
  REQUIRE(send_all(fd, "hello", 5));
  ::shutdown(fd, SHUT_WR);
  std::string rest;
  CHECK(read_to_eof(fd, rest) == 0);
  CHECK(rest == "hello");
  ::close(fd);
  CHECK(stat(a, "tunnels_kernel") == 1);
}

// The sender writes as fast as it can for 3 s while the client reads 64 KiB/s.
// Without a bound the kernel would take the sender's bytes as fast as it
// sends (a redirect backlog charged to no socket). With it, what the sender
// got accepted less what the receiver read is at most the kernel's budget
// (32 MiB) plus the buffering of the two loopback connections on the way
// (each: send and receive buffers at their maxima) plus the agent's 64 KiB
// block. Then the receiver reads fast: every byte, in order.
TEST_CASE("splice: a slow receiver keeps what the sender got accepted within the budget and the buffers") {
  const uint64_t bound = (32ull << 20) + 2 * rig::loopback_buffering_max() + (64 << 10);
  std::atomic<uint64_t> read_so_far{0};
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> gap_at_stop{0};
  std::atomic<bool> stop{false};
  TcpServer server([&](int fd) {
    Stream s(11);
    std::vector<char> chunk(65536);
    const int64_t until = rig::now_ms() + 3000;
    while (rig::now_ms() < until && !stop) {
      s.fill(chunk.data(), chunk.size());
      size_t off = 0;
      while (off < chunk.size() && rig::now_ms() < until) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        ssize_t w = ::send(fd, chunk.data() + off, chunk.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
          off += size_t(w);
          accepted += uint64_t(w);
        }
        if (w < 0 && errno != EAGAIN) return;
        // Far past the bound: the test has failed; stop before memory does.
        if (accepted - read_so_far > 4 * bound) stop = true;
      }
      if (off < chunk.size()) {  // the last chunk in part: the stream ends there
        gap_at_stop = accepted - read_so_far;
        ::shutdown(fd, SHUT_WR);
        ::close(fd);
        return;
      }
    }
    gap_at_stop = accepted - read_so_far;
    ::close(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 30000);
  Checksum got;
  std::vector<char> buf(65536);
  const int64_t slow_until = rig::now_ms() + 3000;
  while (rig::now_ms() < slow_until) {  // 4 KiB every 62 ms: 64 KiB/s
    ssize_t r = ::recv(fd, buf.data(), 4096, 0);
    REQUIRE(r > 0);
    got.add(buf.data(), size_t(r));
    read_so_far += uint64_t(r);
    rig::sleep_ms(62);
  }
  for (;;) {
    ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r <= 0) break;
    got.add(buf.data(), size_t(r));
    read_so_far += uint64_t(r);
  }
  ::close(fd);
  MESSAGE("accepted " << accepted.load() << " bytes, gap at the end of the slow phase " << gap_at_stop.load()
                      << ", bound " << bound);
  CHECK(gap_at_stop.load() <= bound);
  CHECK(!stop.load());
  // Every byte the sender got accepted arrived, in order.
  Stream expect(11);
  Checksum want;
  for (uint64_t left = accepted; left > 0;) {
    size_t n = size_t(std::min<uint64_t>(buf.size(), left));
    expect.fill(buf.data(), n);
    want.add(buf.data(), n);
    left -= n;
  }
  CHECK(got.bytes == accepted.load());
  CHECK(got == want);
  REQUIRE(no_tunnels(a));
  CHECK(stat(a, "splice_pauses") >= 1);  // the budget is what held it
}

TEST_CASE("splice: the pinned maps hold each live pair's entries and are empty once every pair has closed") {
  TcpServer server(echo());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  const std::string dir = pin_dir_of(a.child());
  // One pair held open: two sockets, two peers, two flows, two controls.
  int held = connect_loopback(a.port(0));
  REQUIRE(held >= 0);
  set_timeouts(held, 10000);
  REQUIRE(send_all(held, "x", 1));
  char c;
  REQUIRE(::recv(held, &c, 1, 0) == 1);
  for (const char* m : kMaps) CHECK_MESSAGE(entries(dir + "/" + m) == 2, m);
  // Fifty more at once, closed cleanly; then the held one.
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 50; ++i)
    clients.emplace_back([&, i] {
      std::string why;
      ok += echo_exchange(a.port(0), 100000 + uint64_t(i) * 1000, 300 + uint64_t(i), &why) ? 1 : 0;
    });
  for (auto& t : clients) t.join();
  CHECK(ok == 50);
  ::shutdown(held, SHUT_WR);
  std::string rest;
  CHECK(read_to_eof(held, rest) == 0);
  ::close(held);
  REQUIRE(no_tunnels(a));
  for (const char* m : kMaps) CHECK_MESSAGE(entries(dir + "/" + m) == 0, m);
  // A client that had sent everything and its FIN before its server
  // connection was up is no longer established: it goes on in user space.
  CHECK(stat(a, "tunnels_kernel") + stat(a, "tunnels_user") == 51);
  CHECK(stat(a, "tunnels_kernel") >= 1);
  CHECK(stat(a, "splice_setup_failures") == 0);
}

TEST_CASE("splice: a SIGKILLed agent's pins are removed by the next start, which starts with empty maps") {
  TcpServer server(echo());
  std::string stale;
  pid_t first_pid = 0;
  {
    ConfigAgent a;
    a.start(config(server.url()), 1);
    stale = pin_dir_of(a.child());
    first_pid = a.child().pid();
    std::vector<int> fds;
    for (int i = 0; i < 3; ++i) {
      int fd = connect_loopback(a.port(0));
      REQUIRE(fd >= 0);
      set_timeouts(fd, 10000);
      REQUIRE(send_all(fd, "x", 1));
      char c;
      REQUIRE(::recv(fd, &c, 1, 0) == 1);
      fds.push_back(fd);
    }
    CHECK(entries(stale + "/splice_peers") == 6);
    a.child().signal(SIGKILL);
    a.child().wait_exit(5000);
    for (int fd : fds) ::close(fd);
    // What the crash left: the pins, with the dead pairs' entries.
    CHECK(std::filesystem::exists(stale));
    CHECK(entries(stale + "/splice_peers") == 6);
  }
  ConfigAgent b;
  b.start(config(server.url()), 1);
  const std::string dir = pin_dir_of(b.child());
  CHECK(b.child().wait_for_line("removed the stale pins of agent " + std::to_string(first_pid), 1000));
  CHECK_FALSE(std::filesystem::exists(stale));
  for (const char* m : kMaps) CHECK_MESSAGE(entries(dir + "/" + m) == 0, m);
  std::string why;
  CHECK_MESSAGE(echo_exchange(b.port(0), 1 << 20, 77, &why), why);
}

TEST_CASE("splice: --no-bpf (or splice = \"user\") moves the bytes in user space, and says so") {
  TcpServer server(echo());
  char path[] = "/tmp/offload-splice-XXXXXX";
  int tmp = ::mkstemp(path);
  REQUIRE(tmp >= 0);
  ::close(tmp);
  // The file asks for the kernel: the flag wins.
  std::ofstream(path) << config(server.url());
  rig::Child agent;
  REQUIRE(agent.start(rig::agent_path(), {"run", "-c", path, "--admin", "off", "--no-bpf"}));
  auto line = agent.wait_for_line("offload-agent: listening on ", 10000);
  REQUIRE_MESSAGE(line, agent.stderr_text());
  CHECK(agent.wait_for_line("pass-through: user space (--no-bpf)", 1000));
  CHECK(agent.wait_for_line("proxy passthrough (user space)", 1000));
  std::string why;
  CHECK_MESSAGE(echo_exchange(rig::port_from_line(*line), 1 << 20, 78, &why), why);
  agent.stop();
  ::unlink(path);
}
