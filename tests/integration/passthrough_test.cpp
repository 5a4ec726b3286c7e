// The pass-through proxy (`proxy = "passthrough"`), tried as its users would:
// raw TCP servers in this process (an echo server, one that speaks first,
// ones that half-close or reset), clients on loopback, bytes checked end to
// end, and the agent's counters.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "rig.h"

using rig::ConfigAgent;

namespace {

// A deterministic byte stream and a running checksum of it, so gigabytes
// can be checked without being kept.
struct Stream {
  explicit Stream(uint64_t seed) : state(seed | 1) {}
  uint64_t state;
  void fill(char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      p[i] = char(state);
    }
  }
};

struct Checksum {
  uint64_t h = 1469598103934665603ull;
  uint64_t bytes = 0;
  void add(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ uint8_t(p[i])) * 1099511628211ull;
    bytes += n;
  }
  bool operator==(const Checksum& o) const { return h == o.h && bytes == o.bytes; }
};

int listen_loopback(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 512) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_loopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void set_timeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Reads until EOF (0), a timeout or an error (-1, errno kept); the bytes go to `got`.
int read_to_eof(int fd, std::string& got) {
  char buf[65536];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r == 0) return 0;
    if (r < 0) return -1;
    got.append(buf, size_t(r));
  }
}

void reset_close(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

// A TCP server on loopback: each connection runs `serve(fd)` on a thread of
// its own; the fd is closed after it returns (unless it returns -1: closed
// by the handler).
class TcpServer {
 public:
  using Handler = std::function<void(int fd)>;
  explicit TcpServer(Handler serve) : serve_(std::move(serve)) {
    fd_ = listen_loopback(port_);
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~TcpServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    for (auto& t : workers_) t.join();
  }
  uint16_t port() const { return port_; }
  std::string url() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

 private:
  void accept_loop() {
    while (!stop_) {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (stop_) return;
        continue;
      }
      set_timeouts(c, 30000);
      workers_.emplace_back([this, c] { serve_(c); });
    }
  }
  Handler serve_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> workers_;
};

// Echoes every byte; at the client's EOF, sends `tail` and closes.
TcpServer::Handler echo(std::string tail = "") {
  return [tail](int fd) {
    char buf[65536];
    for (;;) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      if (!send_all(fd, buf, size_t(r))) break;
    }
    send_all(fd, tail.data(), tail.size());
    ::close(fd);
  };
}

// Answers an upgrade request (its head goes to `seen`) with 101, then speaks
// the new protocol: an echo.
TcpServer::Handler switch_to_echo(std::function<void(const std::string&)> seen = nullptr) {
  return [seen](int fd) {
    std::string in;
    char buf[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      in.append(buf, size_t(r));
    }
    if (seen) seen(in);
    const std::string ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: chat\r\nConnection: Upgrade\r\n\r\n";
    send_all(fd, ok.data(), ok.size());
    echo()(fd);
  };
}

// The agent closed `fd` (a FIN, within its 10 s receive bound) without
// sending it anything; closes it here too.
bool closed_without_a_byte(int fd) {
  std::string got;
  const bool closed = read_to_eof(fd, got) == 0;
  ::close(fd);
  return closed && got.empty();
}

std::string config(const std::string& server, const std::string& extra = "") {
  return extra + "[[upstream]]\nname = \"app\"\nservers = [\"" + server +
         "\"]\n[[listener]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\nproxy = \"passthrough\"\nupstream = \"app\"\n";
}

int64_t stat(ConfigAgent& a, const std::string& name) {
  auto flat = rig::flatten_stats(a.stats());
  auto it = flat.find(name);
  return it == flat.end() ? -1 : it->second;
}

// Sends `bytes` of a stream and reads the echo at the same time (poll), so
// neither side waits on the other; true when the echo matched.
bool echo_exchange(uint16_t port, uint64_t bytes, uint64_t seed, std::string* why) {
  int fd = connect_loopback(port);
  if (fd < 0) {
    *why = "connect failed";
    return false;
  }
  Stream out(seed);
  Checksum sent, got;
  std::vector<char> chunk(256 * 1024), in(256 * 1024);
  uint64_t to_send = bytes;
  size_t have = 0, off = 0;
  bool shut = false;
  for (;;) {
    pollfd p{fd, short(POLLIN | (shut ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, 30000) <= 0) {
      *why = "stalled";
      break;
    }
    if ((p.revents & POLLOUT) && !shut) {
      if (off == have && to_send > 0) {
        have = size_t(std::min<uint64_t>(chunk.size(), to_send));
        out.fill(chunk.data(), have);
        sent.add(chunk.data(), have);
        to_send -= have;
        off = 0;
      }
      ssize_t w = ::send(fd, chunk.data() + off, have - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) off += size_t(w);
      if (off == have && to_send == 0) {
        ::shutdown(fd, SHUT_WR);
        shut = true;
      }
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = ::recv(fd, in.data(), in.size(), MSG_DONTWAIT);
      if (r == 0) break;
      if (r < 0 && errno != EAGAIN) {
        *why = std::string("recv: ") + std::strerror(errno);
        break;
      }
      if (r > 0) got.add(in.data(), size_t(r));
    }
  }
  ::close(fd);
  if (!(got == sent) && why->empty())
    *why = "echo differs: " + std::to_string(got.bytes) + " of " + std::to_string(sent.bytes) + " bytes back";
  return got == sent;
}

uint64_t rss_kb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  return 0;
}

}  // namespace

// A sanitized build moves bytes several times slower: a quarter of the bulk
// keeps the sanitizer pass within CI's time.
#if defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kBulkBytes = 256ull << 20;
#else
constexpr uint64_t kBulkBytes = 1ull << 30;
#endif

TEST_CASE("passthrough: 1 GiB each way through the agent, byte-exact") {
  TcpServer server(echo());
  ConfigAgent a;
  a.start(config(server.url()), 1);
  std::string why;
  const uint64_t bytes = kBulkBytes;
  CHECK_MESSAGE(echo_exchange(a.port(0), bytes, 42, &why), why);
  CHECK(stat(a, "tunnel_bytes_up") == int64_t(bytes));
  CHECK(stat(a, "tunnel_bytes_down") == int64_t(bytes));
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
  TcpServer server([](int fd) {
    char buf[16];
    (void)::recv(fd, buf, sizeof buf, 0);
    reset_close(fd);
  });
  ConfigAgent a;
  a.start(config(server.url()), 1);
  int fd = connect_loopback(a.port(0));
  REQUIRE(fd >= 0);
  set_timeouts(fd, 10000);
  REQUIRE(send_all(fd, "x", 1));
  char buf[16];
  ssize_t r = ::recv(fd, buf, sizeof buf, 0);
  CHECK(r < 0);
  CHECK(errno == ECONNRESET);
  ::close(fd);
  CHECK(stat(a, "tunnel_resets") == 1);
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
