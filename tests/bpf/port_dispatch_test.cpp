// PortDispatch (bpf/sk_dispatch.bpf.c): one listening socket serves a port range. In a
// network namespace of the test's own (only its lo), so no port of the host is touched.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dispatch/port_dispatch.h"

using offload::DispatchRange;
using offload::PortDispatch;

namespace {

void enter_private_netns() {
  static bool entered = false;
  if (entered) return;
  REQUIRE(::unshare(CLONE_NEWNET) == 0);
  REQUIRE(std::system("ip link set lo up") == 0);
  entered = true;
}

sockaddr_storage loopback(int family, uint16_t port) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    a->sin6_addr = in6addr_loopback;
  }
  return ss;
}

socklen_t length(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

int listener(int family, uint16_t port) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  sockaddr_storage ss = loopback(family, port);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&ss), length(ss)) == 0);
  REQUIRE(::listen(fd, 64) == 0);
  return fd;
}

// 0 when a connection to `port` is made, else its errno (ECONNREFUSED: nobody listens).
int connect_to(int family, uint16_t port, int* out_fd = nullptr) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_storage ss = loopback(family, port);
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), length(ss)) == 0 ? 0 : errno;
  if (rc == 0 && out_fd != nullptr) *out_fd = fd;
  else ::close(fd);
  return rc;
}

// Accepts one connection from `fd` (waiting at most a second) and returns the local port
// it was made to: the port the client dialled, not the listener's.
uint16_t accepted_port(int fd) {
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 1000) == 1);
  int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
  REQUIRE(c >= 0);
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  REQUIRE(::getsockname(c, reinterpret_cast<sockaddr*>(&local), &len) == 0);
  ::close(c);
  return local.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port)
                                    : ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port);
}

DispatchRange range(int family, uint16_t first, uint16_t last, int fd) {
  DispatchRange r;
  r.address = loopback(family, 0);
  r.port_first = first;
  r.port_last = last;
  r.fd = fd;
  return r;
}

}  // namespace

TEST_CASE("one socket serves every port of its range, and the connection keeps the port dialled") {
  enter_private_netns();
  for (int family : {AF_INET, AF_INET6}) {
    CAPTURE(family);
    const int fd = listener(family, 9100);
    std::string error;
    auto d = PortDispatch::start({range(family, 9100, 9199, fd)}, error);
    REQUIRE_MESSAGE(d != nullptr, error);
    for (uint16_t port : {uint16_t(9100), uint16_t(9101), uint16_t(9150), uint16_t(9199)}) {
      CAPTURE(port);
      int client = -1;
      REQUIRE(connect_to(family, port, &client) == 0);
      CHECK(accepted_port(fd) == port);
      ::close(client);
    }
    // Just outside the range, nobody listens.
    CHECK(connect_to(family, 9099) == ECONNREFUSED);
    CHECK(connect_to(family, 9200) == ECONNREFUSED);
    CHECK(d->connections(0) >= 4);
    // Gone with its owner: the range's other ports refuse again; the bound one serves on.
    d.reset();
    CHECK(connect_to(family, 9150) == ECONNREFUSED);
    int client = -1;
    REQUIRE(connect_to(family, 9100, &client) == 0);
    CHECK(accepted_port(fd) == 9100);
    ::close(client);
    ::close(fd);
  }
}

TEST_CASE("several ranges, each to its own socket; a range whose socket closed refuses") {
  enter_private_netns();
  const int a = listener(AF_INET, 9300);
  const int b = listener(AF_INET, 9400);
  std::string error;
  auto d = PortDispatch::start({range(AF_INET, 9300, 9309, a), range(AF_INET, 9400, 9409, b)}, error);
  REQUIRE_MESSAGE(d != nullptr, error);
  int c1 = -1, c2 = -1;
  REQUIRE(connect_to(AF_INET, 9305, &c1) == 0);
  REQUIRE(connect_to(AF_INET, 9407, &c2) == 0);
  CHECK(accepted_port(a) == 9305);
  CHECK(accepted_port(b) == 9407);
  ::close(c1);
  ::close(c2);
  // The kernel takes a closed socket out of the map: no connection is steered to it.
  ::close(b);
  CHECK(connect_to(AF_INET, 9405) == ECONNREFUSED);
  REQUIRE(connect_to(AF_INET, 9301, &c1) == 0);
  CHECK(accepted_port(a) == 9301);
  ::close(c1);
  ::close(a);
}

TEST_CASE("a range's address must match: 127.0.0.1's range does not take 127.0.0.2") {
  enter_private_netns();
  const int fd = listener(AF_INET, 9500);
  std::string error;
  auto d = PortDispatch::start({range(AF_INET, 9500, 9509, fd)}, error);
  REQUIRE_MESSAGE(d != nullptr, error);
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in other{};
  other.sin_family = AF_INET;
  other.sin_port = htons(9503);
  other.sin_addr.s_addr = htonl(0x7f000002);
  CHECK(::connect(s, reinterpret_cast<sockaddr*>(&other), sizeof other) != 0);
  CHECK(errno == ECONNREFUSED);
  ::close(s);
  ::close(fd);
}

TEST_CASE("no ranges, or too many, is refused with a reason") {
  std::string error;
  CHECK(PortDispatch::start({}, error) == nullptr);
  CHECK(error.find("port ranges") != std::string::npos);
}
