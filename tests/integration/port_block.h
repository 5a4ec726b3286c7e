// A block of consecutive free loopback ports for the port-range tests (with
// sk_lookup, port_range_test.cpp; bound port by port, port_range_bind_test.cpp).
#pragma once

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <vector>

namespace rig {

// A socket bound to 127.0.0.x:port (host order), listening; -1 if the port is taken.
inline int listen_on(uint32_t host, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(host);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// `ports` consecutive ports free on 127.0.0.1 (for the agent) and on
// 127.0.0.2 (for the servers), at a random base below the ephemeral range;
// the 127.0.0.2 sockets are returned listening, the others closed.
inline uint16_t free_port_block(int ports, std::vector<int>& server_fds) {
  std::mt19937 random(std::random_device{}());
  for (int attempt = 0; attempt < 200; ++attempt) {
    const uint16_t first = uint16_t(20000 + random() % 10000);
    std::vector<int> probe, servers;
    bool ok = true;
    for (int k = 0; k < ports && ok; ++k) {
      const int a = listen_on(0x7f000001, uint16_t(first + k));
      const int s = listen_on(0x7f000002, uint16_t(first + k));
      if (a >= 0) probe.push_back(a);
      if (s >= 0) servers.push_back(s);
      ok = a >= 0 && s >= 0;
    }
    for (int fd : probe) ::close(fd);
    if (ok) {
      server_fds = servers;
      return first;
    }
    for (int fd : servers) ::close(fd);
  }
  FAIL("no free block of ports in 200 tries");
  return 0;
}

// The same block, for a test that needs no servers on 127.0.0.2: none is
// left open.
inline uint16_t free_port_block(int ports) {
  std::vector<int> servers;
  const uint16_t first = free_port_block(ports, servers);
  for (int fd : servers) ::close(fd);
  return first;
}

}  // namespace rig
