#include "admin.h"

#include "listener.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace offload {

AdminServer::AdminServer(const SocketAddress& address, const Counters& counters) : counters_(counters) {
  fd_ = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 ||
      ::listen(fd_, 16) != 0) {
    std::string why = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    throw ConfigError(fmt::format("admin: cannot listen on '{}': {}", address.text, why));
  }
}

AdminServer::~AdminServer() {
  stop_ = true;
  ::shutdown(fd_, SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
  ::close(fd_);
}

void AdminServer::start() { thread_ = std::thread([this] { serve(); }); }

std::string AdminServer::bound_address() const { return local_address(fd_); }

void AdminServer::serve() {
  while (!stop_) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stop_ || errno == EINVAL) return;
      continue;
    }
    answer(fd);
    ::close(fd);
  }
}

void AdminServer::answer(int fd) {
  // One short request per connection, read with a bound on size and time.
  char req[2048];
  size_t got = 0;
  while (got < sizeof req - 1) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return;
    ssize_t n = ::recv(fd, req + got, sizeof req - 1 - got, 0);
    if (n <= 0) return;
    got += size_t(n);
    req[got] = 0;
    if (std::strstr(req, "\r\n\r\n") || std::strstr(req, "\n\n")) break;
  }
  std::string_view line(req, got);
  line = line.substr(0, line.find('\n'));
  std::string status = "200 OK", type = "text/plain", body;
  if (line.rfind("GET /stats?format=json ", 0) == 0) {
    body = render_counters(counters_, StatsFormat::kJson);
    type = "application/json";
  } else if (line.rfind("GET /stats ", 0) == 0) {
    body = render_counters(counters_, StatsFormat::kText);
  } else if (line.rfind("GET /metrics ", 0) == 0) {
    body = render_counters(counters_, StatsFormat::kPrometheus);
    type = "text/plain; version=0.0.4";
  } else {
    status = "404 Not Found";
    body = "try /stats, /stats?format=json or /metrics\n";
  }
  std::string resp = fmt::format("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                                 status, type, body.size(), body);
  size_t off = 0;
  while (off < resp.size()) {
    ssize_t n = ::send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += size_t(n);
  }
}

std::string fetch_admin(const SocketAddress& address, const std::string& path) {
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::strerror(errno));
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error(fmt::format("cannot reach the agent's admin endpoint {}: {}", address.text, why));
  }
  std::string req = fmt::format("GET {} HTTP/1.1\r\nHost: offload\r\nConnection: close\r\n\r\n", path);
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, size_t(n));
  }
  ::close(fd);
  auto body = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos)
    throw std::runtime_error(fmt::format("unexpected answer from {}", address.text));
  return resp.substr(body + 4);
}

}  // namespace offload
