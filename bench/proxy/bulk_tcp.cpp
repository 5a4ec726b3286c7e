// Byte movers for the pass-through benchmark (figures, not a test):
//   bulk_tcp serve PORT           sink: reads each connection to its end, then
//                                 answers one byte and closes; echoes instead
//                                 when the first byte is 'e' (for churn)
//   bulk_tcp send PORT BYTES      one connection: BYTES out, then waits for the
//                                 server's byte; prints "seconds GB/s"
//   bulk_tcp churn PORT SECONDS   short connections one after another (connect,
//                                 one byte each way, close) for SECONDS; prints
//                                 "connections per second"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

int dial(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void serve_one(int fd) {
  std::vector<char> buf(1 << 20);
  ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
  if (r > 0 && buf[0] == 'e') {  // churn: echo what comes
    do {
      if (::send(fd, buf.data(), size_t(r), MSG_NOSIGNAL) != r) break;
      r = ::recv(fd, buf.data(), buf.size(), 0);
    } while (r > 0);
  } else {
    while (r > 0) r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r == 0) (void)!::send(fd, "k", 1, MSG_NOSIGNAL);
  }
  ::close(fd);
}

int serve(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = loopback(port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 1024) != 0) {
    std::perror("bind");
    return 1;
  }
  std::fprintf(stderr, "bulk_tcp: listening on 127.0.0.1:%u\n", port);
  for (;;) {
    int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) std::thread(serve_one, c).detach();
  }
}

int send_bulk(uint16_t port, uint64_t bytes) {
  int fd = dial(port);
  std::vector<char> buf(1 << 20, 'x');
  const auto t0 = Clock::now();
  for (uint64_t left = bytes; left > 0;) {
    ssize_t w = ::send(fd, buf.data(), size_t(std::min<uint64_t>(buf.size(), left)), MSG_NOSIGNAL);
    if (w <= 0) {
      std::perror("send");
      return 1;
    }
    left -= uint64_t(w);
  }
  ::shutdown(fd, SHUT_WR);
  char k;
  if (::recv(fd, &k, 1, 0) != 1) {
    std::fprintf(stderr, "bulk_tcp: no answer at the end\n");
    return 1;
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("%.3f %.3f\n", s, double(bytes) / s / 1e9);
  ::close(fd);
  return 0;
}

int churn(uint16_t port, double seconds) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  uint64_t n = 0;
  const auto t0 = Clock::now();
  while (Clock::now() < end && n < 10000000) {
    int fd = dial(port);
    char c = 'e';
    if (::send(fd, &c, 1, MSG_NOSIGNAL) != 1 || ::recv(fd, &c, 1, 0) != 1) {
      std::fprintf(stderr, "bulk_tcp: churn connection %llu failed\n", static_cast<unsigned long long>(n));
      return 1;
    }
    ::close(fd);
    ++n;
  }
  std::printf("%.0f\n", double(n) / std::chrono::duration<double>(Clock::now() - t0).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "serve") == 0) return serve(uint16_t(std::atoi(argv[2])));
  if (argc >= 4 && std::strcmp(argv[1], "send") == 0)
    return send_bulk(uint16_t(std::atoi(argv[2])), std::strtoull(argv[3], nullptr, 10));
  if (argc >= 4 && std::strcmp(argv[1], "churn") == 0) return churn(uint16_t(std::atoi(argv[2])), std::atof(argv[3]));
  std::fprintf(stderr, "usage: bulk_tcp serve PORT | send PORT BYTES | churn PORT SECONDS\n");
  return 2;
}
