// Pieces of the pass-through tests shared by both modes' executables
// (passthrough_test.cpp, splice_test.cpp): a deterministic byte stream and
// its checksum, loopback sockets, threaded TCP servers, the agent's config.
#pragma once

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
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "rig.h"

// Which mode the agent is asked for: the integration executable runs the
// cases in user space, the splice executable (root) with the kernel splice.
#ifndef PASSTHROUGH_SPLICE
#define PASSTHROUGH_SPLICE "user"
#endif

namespace tunnel {

using rig::ConfigAgent;

inline const std::string kSpliceLine = std::string("splice = \"") + PASSTHROUGH_SPLICE + "\"\n";

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

inline int listen_loopback(uint16_t& port, int backlog = 512) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, backlog) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

inline int connect_loopback(uint16_t port) {
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

inline void set_timeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

inline bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Reads until EOF (0), a timeout or an error (-1, errno kept); the bytes go to `got`.
inline int read_to_eof(int fd, std::string& got) {
  char buf[65536];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r == 0) return 0;
    if (r < 0) return -1;
    got.append(buf, size_t(r));
  }
}

inline void reset_close(int fd) {
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
inline TcpServer::Handler echo(std::string tail = "") {
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

// Reads what comes first, then resets the connection.
inline TcpServer::Handler reset_after_first_read() {
  return [](int fd) {
    char buf[16];
    (void)::recv(fd, buf, sizeof buf, 0);
    reset_close(fd);
  };
}

// Sends a byte through the agent's `port` to a reset_after_first_read()
// server: true when the client sees the reset.
inline bool client_sees_reset(uint16_t port) {
  int fd = connect_loopback(port);
  if (fd < 0) return false;
  set_timeouts(fd, 10000);
  char buf[16];
  const bool reset = send_all(fd, "x", 1) && ::recv(fd, buf, sizeof buf, 0) < 0 && errno == ECONNRESET;
  ::close(fd);
  return reset;
}

// Answers an upgrade request (its head goes to `seen`) with 101, then speaks
// the new protocol: an echo.
inline TcpServer::Handler switch_to_echo(std::function<void(const std::string&)> seen = nullptr) {
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
inline bool closed_without_a_byte(int fd) {
  std::string got;
  const bool closed = read_to_eof(fd, got) == 0;
  ::close(fd);
  return closed && got.empty();
}

inline std::string config(const std::string& server, const std::string& extra = "") {
  return kSpliceLine + extra + "[[upstream]]\nname = \"app\"\nservers = [\"" + server +
         "\"]\n[[listener]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\nproxy = \"passthrough\"\nupstream = \"app\"\n";
}

inline int64_t stat(ConfigAgent& a, const std::string& name) {
  auto flat = rig::flatten_stats(a.stats());
  auto it = flat.find(name);
  return it == flat.end() ? -1 : it->second;
}

// Sends `bytes` of a stream and reads the echo at the same time (poll), so
// neither side waits on the other; true when the echo matched.
inline bool echo_exchange(uint16_t port, uint64_t bytes, uint64_t seed, std::string* why) {
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

inline uint64_t rss_kb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  return 0;
}


}  // namespace tunnel
