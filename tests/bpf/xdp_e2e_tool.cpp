// Small network actors for the XDP guard's end-to-end test and benchmark. Every loop is
// bounded by a count and a deadline.
//   serve PORT SECONDS READY_FILE       accept (and close) on [::]:PORT; writes READY_FILE when
//                                       listening; prints the number of accepted connections
//   connect SRC DST PORT TIMEOUT_MS     one TCP connect from SRC; exit 0 when it is accepted
//   connect-many SRC DST PORT N SECONDS N sequential connects; prints successes and seconds
//   synflood SRC DST PORT COUNT MS      COUNT raw IPv4 SYNs from SRC, spread over MS ms
//                                       (MS=0: as fast as possible); prints how many were sent
//   ethflood IFACE DSTMAC SRC DST PORT COUNT SECONDS
//                                       the same SYN frame through a packet socket, batched,
//                                       bypassing the qdisc; prints packets sent and seconds
//   hammer SRC DST PORT CLIENTS SECONDS CLIENTS connections at a time, each closed (RST) as
//                                       soon as it is up, then replaced; prints the count
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <sys/epoll.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <algorithm>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

struct Address {
  sockaddr_storage storage{};
  socklen_t len = 0;
};

bool parse_address(const char* text, uint16_t port, Address& out) {
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    out.len = sizeof(*v4);
    return true;
  }
  if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    out.len = sizeof(*v6);
    return true;
  }
  std::fprintf(stderr, "bad address %s\n", text);
  return false;
}

int serve(uint16_t port, int seconds, const char* ready_file) {
  const int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
  const int off = 0, on = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in6 any{};
  any.sin6_family = AF_INET6;
  any.sin6_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0 || listen(fd, 4096) != 0) {
    std::perror("serve: bind/listen");
    return 1;
  }
  if (FILE* ready = std::fopen(ready_file, "w")) std::fclose(ready);
  long accepted = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    for (int i = 0; i < 1024; ++i) {
      const int c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK);
      if (c < 0) break;
      ++accepted;
      close(c);
    }
  }
  std::printf("%ld\n", accepted);
  return 0;
}

// 0: connected; 1: refused, timed out or unreachable.
int connect_once(const char* src, const char* dst, uint16_t port, int timeout_ms, bool quiet) {
  Address from, to;
  if (!parse_address(src, 0, from) || !parse_address(dst, port, to)) return 2;
  const int fd = socket(to.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (bind(fd, reinterpret_cast<sockaddr*>(&from.storage), from.len) != 0) {
    std::perror("connect: bind");
    close(fd);
    return 2;
  }
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&to.storage), to.len);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = poll(&p, 1, timeout_ms) == 1 ? 0 : -1;
    int err = rc == 0 ? 0 : ETIMEDOUT;
    socklen_t len = sizeof(err);
    if (rc == 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    rc = err == 0 ? 0 : -1;
    errno = err;
  }
  if (rc != 0 && !quiet) std::printf("connect %s -> %s:%u: %s\n", src, dst, port, std::strerror(errno));
  close(fd);
  return rc == 0 ? 0 : 1;
}

int connect_many(const char* src, const char* dst, uint16_t port, long n, int seconds) {
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(seconds);
  long ok = 0, done = 0;
  for (; done < n && Clock::now() < deadline; ++done) ok += connect_once(src, dst, port, 1000, true) == 0;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%ld %ld %.3f\n", ok, done, elapsed);
  return 0;
}

uint16_t checksum(const void* data, size_t len, uint32_t sum = 0) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i + 1 < len; i += 2) sum += uint32_t(bytes[i] << 8 | bytes[i + 1]);
  if (len & 1) sum += uint32_t(bytes[len - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(uint16_t(~sum));
}

struct SynPacket {
  iphdr ip;
  tcphdr tcp;
};

void make_syn(SynPacket& p, in_addr src, in_addr dst, uint16_t sport, uint16_t dport) {
  std::memset(&p, 0, sizeof(p));
  p.ip.version = 4;
  p.ip.ihl = 5;
  p.ip.ttl = 64;
  p.ip.protocol = IPPROTO_TCP;
  p.ip.tot_len = htons(sizeof(p));
  p.ip.saddr = src.s_addr;
  p.ip.daddr = dst.s_addr;
  p.ip.check = checksum(&p.ip, sizeof(p.ip));
  p.tcp.source = htons(sport);
  p.tcp.dest = htons(dport);
  p.tcp.seq = htonl(uint32_t(sport) * 7919u);
  p.tcp.doff = 5;
  p.tcp.syn = 1;
  p.tcp.window = htons(64240);
  struct {
    uint32_t src, dst;
    uint8_t zero, proto;
    uint16_t len;
  } pseudo{src.s_addr, dst.s_addr, 0, IPPROTO_TCP, htons(sizeof(tcphdr))};
  uint32_t sum = 0;
  const auto* words = reinterpret_cast<const uint8_t*>(&pseudo);
  for (size_t i = 0; i < sizeof(pseudo); i += 2) sum += uint32_t(words[i] << 8 | words[i + 1]);
  p.tcp.check = checksum(&p.tcp, sizeof(p.tcp), sum);
}

int synflood(const char* src_text, const char* dst_text, uint16_t port, long count, int ms) {
  in_addr src{}, dst{};
  if (inet_pton(AF_INET, src_text, &src) != 1 || inet_pton(AF_INET, dst_text, &dst) != 1) {
    std::fprintf(stderr, "synflood: IPv4 addresses only\n");
    return 2;
  }
  const int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
  if (fd < 0) {
    std::perror("synflood: raw socket");
    return 1;
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr = dst;
  const auto start = Clock::now();
  const auto hard_deadline = start + std::chrono::milliseconds(ms + 5000);
  long sent = 0;
  SynPacket packet;
  for (long i = 0; i < count && Clock::now() < hard_deadline; ++i) {
    if (ms > 0) {  // spread evenly: packet i leaves at i * ms / count
      const auto due = start + std::chrono::microseconds(i * ms * 1000 / count);
      std::this_thread::sleep_until(due);
    }
    make_syn(packet, src, dst, uint16_t(10000 + i % 50000), port);
    if (sendto(fd, &packet, sizeof(packet), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) ==
        ssize_t(sizeof(packet))) {
      ++sent;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%ld %.3f\n", sent, elapsed);
  close(fd);
  return 0;
}

bool parse_mac(const char* text, uint8_t mac[6]) {
  unsigned v[6];
  if (std::sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) mac[i] = uint8_t(v[i]);
  return true;
}

int ethflood(const char* ifname, const char* mac_text, const char* src_text, const char* dst_text,
             uint16_t port, long count, int seconds) {
  ether_header eth{};
  SynPacket syn;
  in_addr src{}, dst{};
  const int ifindex = int(if_nametoindex(ifname));
  if (!parse_mac(mac_text, eth.ether_dhost) || inet_pton(AF_INET, src_text, &src) != 1 ||
      inet_pton(AF_INET, dst_text, &dst) != 1 || ifindex == 0) {
    std::fprintf(stderr, "ethflood: bad interface, MAC or IPv4 address\n");
    return 2;
  }
  eth.ether_shost[0] = 0x02;
  eth.ether_type = htons(ETHERTYPE_IP);
  make_syn(syn, src, dst, 12345, port);
  uint8_t frame[sizeof(eth) + sizeof(syn)];
  std::memcpy(frame, &eth, sizeof(eth));
  std::memcpy(frame + sizeof(eth), &syn, sizeof(syn));
  const int fd = socket(AF_PACKET, SOCK_RAW, 0);
  const int on = 1;
  setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &on, sizeof(on));
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = ifindex;
  to.sll_halen = 6;
  std::memcpy(to.sll_addr, eth.ether_dhost, 6);
  constexpr int kBatch = 256;
  iovec iov{frame, sizeof(frame)};
  mmsghdr msgs[kBatch] = {};
  for (auto& m : msgs) {
    m.msg_hdr.msg_name = &to;
    m.msg_hdr.msg_namelen = sizeof(to);
    m.msg_hdr.msg_iov = &iov;
    m.msg_hdr.msg_iovlen = 1;
  }
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(seconds);
  long sent = 0;
  while (sent < count && Clock::now() < deadline) {
    const int n = sendmmsg(fd, msgs, unsigned(std::min<long>(kBatch, count - sent)), 0);
    if (n > 0) sent += n;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%ld %.3f\n", sent, elapsed);
  close(fd);
  return 0;
}

// Keeps `clients` connects in flight; each one that completes is reset and replaced.
int hammer(const char* src, const char* dst, uint16_t port, int clients, int seconds) {
  Address from, to;
  if (!parse_address(src, 0, from) || !parse_address(dst, port, to)) return 2;
  const int ep = epoll_create1(0);
  long done = 0, failed = 0;
  auto start_one = [&] {
    const int fd = socket(to.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    const linger reset{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    bind(fd, reinterpret_cast<sockaddr*>(&from.storage), from.len);
    connect(fd, reinterpret_cast<sockaddr*>(&to.storage), to.len);
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  for (int i = 0; i < clients; ++i) start_one();
  const auto begin = Clock::now();
  const auto deadline = begin + std::chrono::seconds(seconds);
  epoll_event events[256];
  while (Clock::now() < deadline) {
    const int n = epoll_wait(ep, events, 256, 100);
    for (int i = 0; i < n; ++i) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(events[i].data.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      err == 0 ? ++done : ++failed;
      close(events[i].data.fd);
      start_one();
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();
  std::printf("%ld %ld %.3f\n", done, failed, elapsed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "serve" && argc == 5) return serve(uint16_t(std::atoi(argv[2])), std::atoi(argv[3]), argv[4]);
  if (cmd == "connect" && argc == 6) {
    return connect_once(argv[2], argv[3], uint16_t(std::atoi(argv[4])), std::atoi(argv[5]), false);
  }
  if (cmd == "connect-many" && argc == 7) {
    return connect_many(argv[2], argv[3], uint16_t(std::atoi(argv[4])), std::atol(argv[5]),
                        std::atoi(argv[6]));
  }
  if (cmd == "synflood" && argc == 7) {
    return synflood(argv[2], argv[3], uint16_t(std::atoi(argv[4])), std::atol(argv[5]),
                    std::atoi(argv[6]));
  }
  if (cmd == "ethflood" && argc == 9) {
    return ethflood(argv[2], argv[3], argv[4], argv[5], uint16_t(std::atoi(argv[6])),
                    std::atol(argv[7]), std::atoi(argv[8]));
  }
  if (cmd == "hammer" && argc == 7) {
    return hammer(argv[2], argv[3], uint16_t(std::atoi(argv[4])), std::atoi(argv[5]),
                  std::atoi(argv[6]));
  }
  std::fprintf(stderr, "usage: see the comment at the top of xdp_e2e_tool.cpp\n");
  return 2;
}
