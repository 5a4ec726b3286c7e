// The pass-through proxy (`proxy = "passthrough"`), tried as its users would:
// raw TCP servers in this process (an echo server, one that speaks first,
// ones that half-close or reset), clients on loopback, bytes checked end to
// end, and the agent's counters.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "rig.h"
#include "splice_rig.h"

using namespace tunnel;

// A sanitized build moves bytes several times slower: a quarter of the bulk
// keeps the sanitizer pass within CI's time.
#if defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kBulkBytes = 256ull << 20;
#else
constexpr uint64_t kBulkBytes = 1ull << 30;
#endif

// A pass-through [[listener]] table on a free loopback port.
std::string passthrough_listener(const char* name, const char* group) {
  return std::string("[[listener]]\nname = \"") + name + "\"\nlisten = \"127.0.0.1:0\"\nproxy = \"passthrough\"\n" +
         "upstream = \"" + group + "\"\n";
}

TEST_CASE("passthrough: 1 GiB each way through the agent, byte-exact") {
  TcpServer server(echo());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  std::string why;
  const uint64_t bytes = kBulkBytes;
  CHECK_MESSAGE(echo_exchange(a.port(0), bytes, 42, &why), why);
  CHECK(stat(a, "tunnel_bytes_up") == int64_t(bytes));
  CHECK(stat(a, "tunnel_bytes_down") == int64_t(bytes));
  // The mode asked for is the mode that moved them (the kernel: nearly all).
  CHECK(stat(a, std::string("tunnels_") + PASSTHROUGH_SPLICE) == 1);
  if (std::string(PASSTHROUGH_SPLICE) == "kernel") {
    // A direction whose peer fell the budget behind goes on in user space
    // until it catches up; some of each way went through the kernel.
    CHECK(stat(a, "spliced_bytes_up") > 0);
    CHECK(stat(a, "spliced_bytes_down") > 0);
    MESSAGE("kernel bytes: up " << stat(a, "spliced_bytes_up") << ", down " << stat(a, "spliced_bytes_down")
                                << ", pauses " << stat(a, "splice_pauses"));
  } else {
    CHECK(stat(a, "spliced_bytes_up") == 0);
  }
}

TEST_CASE("passthrough: 200 concurrent pairs of random sizes all come back intact") {
  TcpServer server(echo());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  std::mt19937_64 rng(7);
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (int i = 0; i < 200; ++i) {
    sizes.push_back(rng() % (512 * 1024));
    total += sizes.back();
  }
  std::atomic<int> ok{0};
  std::vector<std::string> whys(sizes.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < sizes.size(); ++i)
    clients.emplace_back([&, i] { ok += echo_exchange(a.port(0), sizes[i], 1000 + i, &whys[i]) ? 1 : 0; });
  for (auto& t : clients) t.join();
  CHECK(ok == int(sizes.size()));
  for (const auto& w : whys)
    if (!w.empty()) MESSAGE(w);
  if (ok != int(sizes.size())) MESSAGE(a.child().stderr_text());
  CHECK(stat(a, "tunnel_bytes_up") == int64_t(total));
  CHECK(stat(a, "tunnels_accepted") == int64_t(sizes.size()));
}

TEST_CASE("passthrough: a server that speaks first (a banner) is heard before the client sends") {
  TcpServer server([](int fd) {
    send_all(fd, "SSH-2.0-test\r\n", 14);
    echo()(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 5000);
  char buf[64];
  ssize_t r = ::recv(fd, buf, sizeof buf, 0);
  REQUIRE(r == 14);
  CHECK(std::string(buf, 14) == "SSH-2.0-test\r\n");
  REQUIRE(send_all(fd, "hello", 5));
  ::shutdown(fd, SHUT_WR);
  std::string rest;
  CHECK(read_to_eof(fd, rest) == 0);
  CHECK(rest == "hello");
  ::close(fd);
}

TEST_CASE("passthrough: the client's half-close reaches the server, which still answers") {
  // The server answers only once it has seen the client's end: without the
  // FIN passed on, it would wait for ever.
  TcpServer server(echo("bye after your end"));
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  REQUIRE(send_all(fd, "request", 7));
  ::shutdown(fd, SHUT_WR);
  std::string got;
  CHECK(read_to_eof(fd, got) == 0);
  CHECK(got == "requestbye after your end");
  ::close(fd);
  CHECK(stat(a, "tunnel_half_closes") == 2);
}

TEST_CASE("passthrough: the server's half-close reaches the client, which still sends") {
  std::atomic<uint64_t> received{0};
  std::atomic<bool> saw_eof{false};
  TcpServer server([&](int fd) {
    send_all(fd, "done talking", 12);
    ::shutdown(fd, SHUT_WR);
    char buf[65536];
    for (;;) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0) {
        saw_eof = r == 0;
        break;
      }
      received += uint64_t(r);
    }
    ::close(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  std::string got;
  CHECK(read_to_eof(fd, got) == 0);  // the server's FIN came through...
  CHECK(got == "done talking");
  std::string payload(300000, 'x');
  CHECK(send_all(fd, payload.data(), payload.size()));  // ... and the other way still flows
  ::shutdown(fd, SHUT_WR);
  ::close(fd);
  for (int i = 0; i < 500 && !saw_eof; ++i) rig::sleep_ms(10);
  CHECK(saw_eof);
  CHECK(received == payload.size());
}

TEST_CASE("passthrough: a server's reset reaches the client as a reset") {
  TcpServer server(reset_after_first_read());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  CHECK(client_sees_reset(a.port(0)));
  CHECK(stat(a, "tunnel_resets") == 1);
}

TEST_CASE("passthrough: each listener counts its own tunnels, bytes, half-closes and resets") {
  TcpServer server(echo());
  TcpServer resetter(reset_after_first_read());
  ConfigAgent a;
  a.start(kSpliceLine + "[[upstream]]\nname = \"echo\"\nservers = [\"" + server.url() +
              "\"]\n[[upstream]]\nname = \"reset\"\nservers = [\"" + resetter.url() + "\"]\n" +
              passthrough_listener("bulk", "echo") + passthrough_listener("other", "reset"),
          2);
  // Listener 0: two exchanges, each ended by the client's FIN, then the server's.
  const uint64_t sizes[] = {3 << 20, 12345};
  std::string why;
  for (uint64_t n : sizes) CHECK_MESSAGE(echo_exchange(a.port(0), n, n, &why), why);
  // Listener 1: its server resets the tunnel.
  CHECK(client_sees_reset(a.port(1)));
  for (int i = 0; i < 500 && stat(a, "tunnels_active") != 0; ++i) rig::sleep_ms(10);
  const std::string mode = PASSTHROUGH_SPLICE;
  const uint64_t total = sizes[0] + sizes[1];
  // A client that sent all and its FIN before the server connection was up
  // is not established any more: its tunnel moves in user space.
  CHECK(a.listener_stat(0, "tunnels_kernel") + a.listener_stat(0, "tunnels_user") == 2);
  if (mode == "user") CHECK(a.listener_stat(0, "tunnels_kernel") == 0);
  CHECK(a.listener_stat(0, "tunnel_bytes_up") == int64_t(total));
  CHECK(a.listener_stat(0, "tunnel_bytes_down") == int64_t(total));
  CHECK(a.listener_stat(0, "tunnel_half_closes") == 4);
  CHECK(a.listener_stat(0, "tunnel_resets") == 0);
  CHECK(a.listener_stat(0, "splice_setup_failures") == 0);
  if (mode == "kernel") {
    CHECK(a.listener_stat(0, "spliced_bytes_up") > 0);
    CHECK(a.listener_stat(0, "spliced_bytes_up") <= int64_t(total));
  } else {
    CHECK(a.listener_stat(0, "spliced_bytes_up") == 0);
  }
  CHECK(a.listener_stat(1, "tunnels_kernel") + a.listener_stat(1, "tunnels_user") == 1);
  for (const char* m : {"tunnels_kernel", "tunnels_user"})
    CHECK(a.listener_stat(0, m) + a.listener_stat(1, m) == stat(a, m));
  CHECK(a.listener_stat(1, "tunnel_bytes_up") == 1);
  CHECK(a.listener_stat(1, "tunnel_bytes_down") == 0);
  CHECK(a.listener_stat(1, "tunnel_resets") == 1);
  CHECK(a.listener_stat(1, "tunnel_half_closes") == 0);
  // The agent's totals are the listeners' sums.
  CHECK(stat(a, "tunnel_bytes_up") == int64_t(total) + 1);
  CHECK(stat(a, "tunnel_resets") == 1);
}

TEST_CASE("passthrough: the access log has a line per tunnel with its bytes, its server and who ended it") {
  TcpServer server(echo());
  TcpServer resetter(reset_after_first_read());
  char dir[] = "/tmp/offload-it-tunnel-log-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string log = std::string(dir) + "/access.log";
  ConfigAgent a;
  a.start(kSpliceLine + "access_log = \"" + log + "\"\naccess_log_format = \"json\"\n[[upstream]]\nname = \"echo\"\n" +
              "servers = [\"" + server.url() + "\"]\n[[upstream]]\nname = \"reset\"\nservers = [\"" + resetter.url() +
              "\"]\n[[upstream]]\nname = \"gone\"\nservers = [\"tcp://127.0.0.1:1\"]\n" + passthrough_listener("bulk", "echo") +
              passthrough_listener("other", "reset") + passthrough_listener("nowhere", "gone"),
          3);
  std::string why;
  CHECK_MESSAGE(echo_exchange(a.port(0), 1 << 20, 5, &why), why);
  CHECK(client_sees_reset(a.port(1)));
  int fd = connect_loopback(a.port(2));  // port 1 refuses: no server for it
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  std::string rest;
  (void)read_to_eof(fd, rest);
  ::close(fd);
  std::vector<rig::Json> lines;
  for (int i = 0; i < 250 && lines.size() < 3; ++i) {
    rig::sleep_ms(20);
    lines.clear();
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      auto j = rig::Json::parse(line);
      REQUIRE_MESSAGE(j, line);
      lines.push_back(*j);
    }
  }
  REQUIRE(lines.size() == 3);
  auto line_of = [&](const std::string& listener) -> const rig::Json& {
    for (const auto& j : lines)
      if (j.str_or("listener", "") == listener) return j;
    FAIL("no line for " << listener);
    return lines[0];
  };
  const rig::Json& bulk = line_of("bulk");
  CHECK(bulk.str_or("method", "") == "TCP");
  CHECK(bulk.str_or("remote_addr", "") == "127.0.0.1");
  CHECK(bulk.int_or("status", 0) == 200);
  CHECK(bulk.int_or("bytes_received", 0) == 1 << 20);
  CHECK(bulk.int_or("bytes_sent", 0) == 1 << 20);
  CHECK(bulk.str_or("upstream", "") == server.url());
  CHECK(bulk.str_or("termination", "") == "tunnel_done");
  const rig::Json& other = line_of("other");
  CHECK(other.int_or("bytes_received", 0) == 1);
  CHECK(other.str_or("termination", "") == "tunnel_server_reset");
  const rig::Json& nowhere = line_of("nowhere");
  CHECK(nowhere.int_or("status", 0) == 502);
  CHECK(nowhere.str_or("termination", "") == "upstream_connect_error");
  std::filesystem::remove_all(dir);
}

TEST_CASE("passthrough: a tunnel still open at a drain's deadline is logged as such when the agent stops") {
  TcpServer server(echo());
  char dir[] = "/tmp/offload-it-tunnel-drain-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string log = std::string(dir) + "/access.log";
  ConfigAgent a;
  a.start(config(server.url(), "access_log = \"" + log + "\"\ndrain_timeout_ms = 300\n"), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  REQUIRE(send_all(fd, "ping", 4));
  char buf[8];
  REQUIRE(::recv(fd, buf, sizeof buf, 0) == 4);
  a.child().signal(SIGTERM);
  auto code = a.child().wait_exit(10000);
  REQUIRE(code);
  CHECK(*code == 0);
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find("\"TCP tcp\" 200 4 ") != std::string::npos);
  CHECK(lines[0].find(" rx=4 tx=4 ") != std::string::npos);
  CHECK(lines[0].find(" end=drain_deadline") != std::string::npos);
  ::close(fd);
  std::filesystem::remove_all(dir);
}

TEST_CASE("passthrough: a client's reset reaches the server as a reset") {
  std::atomic<int> server_errno{0};
  std::atomic<bool> done{false};
  TcpServer server([&](int fd) {
    char buf[16];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);  // the client's first byte
    r = ::recv(fd, buf, sizeof buf, 0);
    server_errno = r < 0 ? errno : (r == 0 ? -1 : -2);  // -1: a FIN, not a reset
    done = true;
    ::close(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  REQUIRE(send_all(fd, "x", 1));
  rig::sleep_ms(100);  // the byte reaches the server first (order of events, not a speed)
  reset_close(fd);
  for (int i = 0; i < 500 && !done; ++i) rig::sleep_ms(10);
  REQUIRE(done);
  CHECK(server_errno == ECONNRESET);
}

TEST_CASE("passthrough: a slow receiver holds the agent's memory bounded, and gets every byte") {
  const uint64_t bytes = 64ull << 20;
  TcpServer server([bytes](int fd) {
    Stream s(9);
    std::vector<char> chunk(65536);
    for (uint64_t left = bytes; left > 0;) {
      size_t n = size_t(std::min<uint64_t>(chunk.size(), left));
      s.fill(chunk.data(), n);
      if (!send_all(fd, chunk.data(), n)) break;
      left -= n;
    }
    ::close(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  const uint64_t rss0 = rss_kb(a.child().pid());
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  int small = 16384;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  set_timeouts(fd, 30000);
  Checksum got;
  std::vector<char> buf(65536);
  // About 64 KiB/s for a second: the server is far ahead of the client.
  for (int i = 0; i < 16; ++i) {
    ssize_t r = ::recv(fd, buf.data(), 4096, 0);
    REQUIRE(r > 0);
    got.add(buf.data(), size_t(r));
    rig::sleep_ms(60);
  }
  const uint64_t rss1 = rss_kb(a.child().pid());
  CHECK_MESSAGE(rss1 < rss0 + 4096, "agent RSS grew from " << rss0 << " to " << rss1 << " KiB");
  for (;;) {
    ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r <= 0) break;
    got.add(buf.data(), size_t(r));
  }
  ::close(fd);
  Stream expect(9);
  Checksum want;
  for (uint64_t left = bytes; left > 0;) {
    size_t n = size_t(std::min<uint64_t>(buf.size(), left));
    expect.fill(buf.data(), n);
    want.add(buf.data(), n);
    left -= n;
  }
  CHECK(got == want);
}

TEST_CASE("passthrough: a tunnel with nothing moving is closed at its listener's tunnel_timeout_ms") {
  std::atomic<bool> server_saw_end{false};
  TcpServer server([&](int fd) {
    char buf[16];
    server_saw_end = ::recv(fd, buf, sizeof buf, 0) == 0;  // the agent's FIN, after the timeout
    ::close(fd);
  });
  ConfigAgent a;
  std::string toml = config(server.url());
  toml += "tunnel_timeout_ms = 300\n";  // in the listener table, the last one
  a.start(toml, 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  std::string got;
  CHECK(read_to_eof(fd, got) == 0);  // closed by the agent, not by the 10 s bound here
  ::close(fd);
  CHECK(stat(a, "timeouts_tunnel") == 1);
  for (int i = 0; i < 500 && !server_saw_end; ++i) rig::sleep_ms(10);
  CHECK(server_saw_end);
}

TEST_CASE("passthrough: no server up: the client is closed and the failure counted, the agent serves on") {
  uint16_t dead_port = 0;
  int dead = listen_loopback(dead_port);
  ::close(dead);  // nothing listens there now
  ConfigAgent a;
  a.start(config("tcp://127.0.0.1:" + std::to_string(dead_port)), 1);
  for (int i = 0; i < 3; ++i) {
    int fd = connect_loopback(a.port(0));
    REQUIRE(fd >= 0);
    set_timeouts(fd, 10000);
    CHECK(closed_without_a_byte(fd));
  }
  CHECK(stat(a, "tunnel_connect_failures") == 3);
  CHECK(a.child().running());
}

TEST_CASE("passthrough and http listeners side by side in one agent, each doing its own job") {
  TcpServer raw(echo());
  rig::Backend web;
  REQUIRE_MESSAGE(web.start(8), web.error());
  ConfigAgent a;
  a.start("[[upstream]]\nname = \"raw\"\nservers = [\"" + raw.url() +
              "\"]\n[[upstream]]\nname = \"web\"\nservers = [\"tcp://127.0.0.1:" + std::to_string(web.port()) +
              "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\nproxy = \"passthrough\"\nupstream = \"raw\"\n"
              "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"web\"\n",
          2);
  std::string why;
  CHECK_MESSAGE(echo_exchange(a.port(0), 100000, 3, &why), why);
  rig::Client c;
  REQUIRE(c.connect(a.port(1)));
  REQUIRE(c.send_all("GET /ok?web HTTP/1.1\r\nHost: a\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  auto rec = web.record();
  REQUIRE(rec);
  CHECK(rec->count("/ok?web") == 1);
}

// HTTP listeners' upgrades move in user space in either mode: run once.
#ifndef PASSTHROUGH_KERNEL_EXECUTABLE
TEST_CASE("upgrade: an HTTP listener passes an Upgrade request on, then moves the bytes of the new protocol") {
  std::string head_seen;
  std::atomic<bool> served{false};
  TcpServer server(switch_to_echo([&](const std::string& head) {
    head_seen = head;
    served = true;
  }));
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"" + server.url() + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n", 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  const std::string req = "GET /room HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: chat\r\n\r\n";
  REQUIRE(send_all(fd, req.data(), req.size()));
  std::string got;
  while (got.find("\r\n\r\n") == std::string::npos) {
    char buf[4096];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    REQUIRE(r > 0);
    got.append(buf, size_t(r));
  }
  CHECK(got.rfind("HTTP/1.1 101 ", 0) == 0);
  REQUIRE(send_all(fd, "raw bytes, not HTTP", 19));
  ::shutdown(fd, SHUT_WR);
  std::string rest = got.substr(got.find("\r\n\r\n") + 4);
  CHECK(read_to_eof(fd, rest) == 0);
  CHECK(rest == "raw bytes, not HTTP");
  ::close(fd);
  REQUIRE(served);
  // The upgrade was asked of the server, with the agent's forwarding fields.
  CHECK(head_seen.find("Upgrade: chat\r\n") != std::string::npos);
  CHECK(head_seen.find("Connection: upgrade\r\n") != std::string::npos);
  CHECK(head_seen.find("X-Forwarded-For: 127.0.0.1\r\n") != std::string::npos);
  CHECK(stat(a, "upgrades") == 1);
  CHECK(stat(a, "upgrades_switched") == 1);
}

TEST_CASE("upgrade: an upgraded connection still counts against max_clients_per_source until it ends") {
  TcpServer server(switch_to_echo());
  ConfigAgent a;
  a.start("max_clients_per_source = 1\n[[upstream]]\nservers = [\"" + server.url() +
              "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  int tunnel = connect_loopback(a.port(0));
  REQUIRE(tunnel >= 0);
  set_timeouts(tunnel, 10000);
  const std::string req = "GET /room HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: chat\r\n\r\n";
  REQUIRE(send_all(tunnel, req.data(), req.size()));
  char buf[4096];
  REQUIRE(::recv(tunnel, buf, sizeof buf, 0) > 0);  // the 101: the tunnel is up
  // A second connection from the same source is over the limit.
  int second = connect_loopback(a.port(0));
  REQUIRE(second >= 0);
  set_timeouts(second, 10000);
  CHECK(closed_without_a_byte(second));
  CHECK(stat(a, "rejected_per_source") == 1);
  // Once the tunnel ends, the source may connect again.
  ::shutdown(tunnel, SHUT_WR);
  std::string rest;
  CHECK(read_to_eof(tunnel, rest) == 0);
  ::close(tunnel);
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    rig::Client c;
    served = c.connect(a.port(0)) && c.send_all("GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: chat\r\n\r\n") &&
             c.recv_some(4096, 2000) > 0;
    if (!served) rig::sleep_ms(20);
  }
  CHECK(served);
}

TEST_CASE("CONNECT gets 405 with Allow, counted, and never reaches the server") {
  rig::Backend web;
  REQUIRE_MESSAGE(web.start(8), web.error());
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"tcp://127.0.0.1:" + std::to_string(web.port()) +
              "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  rig::Client c;
  REQUIRE(c.connect(a.port(0)));
  REQUIRE(c.send_all("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 405);
  CHECK(r.response->header("allow").find("GET") != std::string::npos);
  CHECK(stat(a, "method_refused") == 1);
  auto rec = web.record();
  REQUIRE(rec);
  CHECK(rec->all_requests().empty());
}
#endif  // PASSTHROUGH_KERNEL_EXECUTABLE
