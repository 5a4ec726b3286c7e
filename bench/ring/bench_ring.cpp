// The bus against the kernel's transports, in one run: one-way messages per
// second and round-trip latency for 64 B, 1 KiB and 64 KiB messages over
//   Ring      one SPSC ring pair (ring_queue.h), spin-then-sleep doorbells
//   Bus       the whole bus: RingAgent -> liboffload-server worker -> back
//             (request and response records, index, handler)
//   Unix      a Unix-domain stream socketpair
//   Tcp       loopback TCP with TCP_NODELAY
// The peer runs on its own thread; with two or more CPUs the bench thread is
// pinned to CPU 0 and the peer to CPU 1.
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "agent_driver.h"
#include "offload/ring_queue.h"
#include "offload/server.h"

namespace {

using offload::ring::Consumer;
using offload::ring::Producer;
using offload::ring::Record;

constexpr uint32_t kRingBytes = 1 << 20;

void pin(int cpu) {
  if (std::thread::hardware_concurrency() < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// ---- the ring ------------------------------------------------------------------

struct RingPair {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  struct One {
    std::unique_ptr<uint8_t, Free> mem;
    int bell_consumer, bell_producer;
    Producer prod;
    Consumer cons;
    One() {
      size_t bytes = sizeof(offload_ring_ctrl) + kRingBytes;
      mem.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
      std::memset(mem.get(), 0, bytes);
      bell_consumer = eventfd(0, EFD_NONBLOCK);
      bell_producer = eventfd(0, EFD_NONBLOCK);
      auto* ctrl = reinterpret_cast<offload_ring_ctrl*>(mem.get());
      prod.init(ctrl, mem.get() + sizeof(offload_ring_ctrl), kRingBytes, bell_consumer);
      cons.init(ctrl, mem.get() + sizeof(offload_ring_ctrl), kRingBytes, bell_producer);
    }
    ~One() {
      close(bell_consumer);
      close(bell_producer);
    }
  };
  One ab, ba;  // a -> b, b -> a
};

void sleep_on(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 100) > 0) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = read(fd, &v, sizeof v);
  }
}

void ring_send(RingPair::One& r, const char* msg, uint32_t len) {
  for (;;) {
    if (uint8_t* p = r.prod.try_reserve(len)) {
      std::memcpy(p, msg, len);
      r.prod.commit(OFFLOAD_REC_REQUEST, 0, len);
      return;
    }
    if (r.prod.prepare_wait(len)) sleep_on(r.bell_producer);
    r.prod.end_wait();
  }
}

// Receives one record into `out`; spins `spin_iters` polls before sleeping.
// False when `stop` is set.
bool ring_recv(RingPair::One& r, char* out, const std::atomic<bool>& stop) {
  for (int spins = 0;; ++spins) {
    Record rec;
    if (r.cons.peek(&rec) == 1) {
      std::memcpy(out, rec.payload, rec.payload_len);
      r.cons.release();
      return true;
    }
    if (stop.load(std::memory_order_relaxed)) return false;
    if (spins < 20000) continue;
    if (r.cons.prepare_wait()) sleep_on(r.bell_consumer);
    r.cons.end_wait();
    spins = 0;
  }
}

void BM_Ring_OneWay(benchmark::State& state) {
  auto len = static_cast<uint32_t>(state.range(0));
  RingPair rp;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> got{0};
  std::thread peer([&] {
    pin(1);
    std::vector<char> buf(len);
    while (ring_recv(rp.ab, buf.data(), stop)) got.fetch_add(1, std::memory_order_relaxed);
  });
  pin(0);
  std::vector<char> msg(len, 'm');
  uint64_t sent = 0;
  for (auto _ : state) {
    ring_send(rp.ab, msg.data(), len);
    ++sent;
  }
  while (got.load() < sent) std::this_thread::yield();
  stop = true;
  peer.join();
  state.SetItemsProcessed(static_cast<int64_t>(sent));
  state.SetBytesProcessed(static_cast<int64_t>(sent * len));
}

void BM_Ring_RoundTrip(benchmark::State& state) {
  auto len = static_cast<uint32_t>(state.range(0));
  RingPair rp;
  std::atomic<bool> stop{false};
  std::thread peer([&] {
    pin(1);
    std::vector<char> buf(len);
    while (ring_recv(rp.ab, buf.data(), stop)) ring_send(rp.ba, buf.data(), len);
  });
  pin(0);
  std::vector<char> msg(len, 'm'), back(len);
  for (auto _ : state) {
    ring_send(rp.ab, msg.data(), len);
    ring_recv(rp.ba, back.data(), stop);
  }
  stop = true;
  peer.join();
  state.SetItemsProcessed(state.iterations());
}

// ---- the whole bus: RingAgent <-> liboffload-server ---------------------------

void BM_Bus_RoundTrip(benchmark::State& state) {
  auto len = static_cast<size_t>(state.range(0));
  std::string name = offload::test::unique_name("bench");
  offload::ring::RingAgentOptions o;
  o.name = name;
  o.channels_max = 1;
  o.ring_bytes = kRingBytes;
  offload::test::AgentDriver d(o);
  offload::ServerOptions so;
  so.spin_us = 200;
  offload::Server srv(name, so);
  std::thread server([&] {
    pin(1);
    srv.serve([](const offload::Request& q, offload::Response& r) { r.write(q.body()); }, 1);
  });
  pin(0);
  if (!d.wait_attached()) {
    state.SkipWithError("server did not attach");
  }
  std::string head = "POST /echo HTTP/1.1\r\nHost: b\r\n\r\n";
  std::string body(len, 'b');
  offload::ring::RequestOut req;
  req.head = head;
  req.body = body;
  req.method = OFFLOAD_METHOD_POST;
  req.method_text = {0, 4};
  req.target = {5, 5};
  uint64_t id = 0;
  for (auto _ : state) {
    if (!d.agent->attached()) break;
    req.id = ++id;
    while (d.agent->try_send_request(0, req) != offload::ring::RingAgent::Send::kOk) d.pump(0);
    size_t got = 0;
    for (bool end = false; !end;) {
      offload::ring::ResponsePiece p;
      int rc = d.agent->poll_response(0, &p);
      if (rc < 0) {
        state.SkipWithError("channel failed");
        break;
      }
      if (rc == 0) {
        d.agent->on_doorbell(0);  // busy-poll: the agent's loop would spin here too
        continue;
      }
      got += p.body.size();
      end = p.end;
      d.agent->release_response(0);
    }
    benchmark::DoNotOptimize(got);
  }
  srv.stop();
  server.join();
  state.SetItemsProcessed(state.iterations());
}

// ---- kernel sockets ------------------------------------------------------------

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_all(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void tcp_pair(int fds[2]) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen) != 0)
    throw std::runtime_error("loopback listen failed");
  fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fds[0], reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect failed");
  fds[1] = accept(l, nullptr, nullptr);
  close(l);
  int one = 1;
  for (int i = 0; i < 2; ++i) setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void socket_pair(bool tcp, int fds[2]) {
  if (tcp) {
    tcp_pair(fds);
  } else if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw std::runtime_error("socketpair failed");
  }
}

void sock_one_way(benchmark::State& state, bool tcp) {
  auto len = static_cast<size_t>(state.range(0));
  int fds[2];
  socket_pair(tcp, fds);
  std::atomic<uint64_t> got{0};
  std::thread peer([&] {
    pin(1);
    std::vector<char> buf(256 * 1024);
    ssize_t r;
    while ((r = read(fds[1], buf.data(), buf.size())) > 0) got.fetch_add(static_cast<uint64_t>(r));
  });
  pin(0);
  std::vector<char> msg(len, 'm');
  uint64_t sent = 0;
  for (auto _ : state) {
    write_all(fds[0], msg.data(), len);
    ++sent;
  }
  while (got.load() < sent * len) std::this_thread::yield();
  shutdown(fds[0], SHUT_WR);
  peer.join();
  close(fds[0]);
  close(fds[1]);
  state.SetItemsProcessed(static_cast<int64_t>(sent));
  state.SetBytesProcessed(static_cast<int64_t>(sent * len));
}

void sock_round_trip(benchmark::State& state, bool tcp) {
  auto len = static_cast<size_t>(state.range(0));
  int fds[2];
  socket_pair(tcp, fds);
  std::thread peer([&] {
    pin(1);
    std::vector<char> buf(len);
    while (read_all(fds[1], buf.data(), len) && write_all(fds[1], buf.data(), len)) {
    }
  });
  pin(0);
  std::vector<char> msg(len, 'm'), back(len);
  for (auto _ : state) {
    write_all(fds[0], msg.data(), len);
    read_all(fds[0], back.data(), len);
  }
  shutdown(fds[0], SHUT_WR);
  peer.join();
  close(fds[0]);
  close(fds[1]);
  state.SetItemsProcessed(state.iterations());
}

void BM_Unix_OneWay(benchmark::State& s) { sock_one_way(s, false); }
void BM_Tcp_OneWay(benchmark::State& s) { sock_one_way(s, true); }
void BM_Unix_RoundTrip(benchmark::State& s) { sock_round_trip(s, false); }
void BM_Tcp_RoundTrip(benchmark::State& s) { sock_round_trip(s, true); }

void sizes(benchmark::internal::Benchmark* b) { b->Arg(64)->Arg(1024)->Arg(65536)->UseRealTime(); }

BENCHMARK(BM_Ring_OneWay)->Apply(sizes);
BENCHMARK(BM_Unix_OneWay)->Apply(sizes);
BENCHMARK(BM_Tcp_OneWay)->Apply(sizes);
BENCHMARK(BM_Ring_RoundTrip)->Apply(sizes);
BENCHMARK(BM_Bus_RoundTrip)->Apply(sizes);
BENCHMARK(BM_Unix_RoundTrip)->Apply(sizes);
BENCHMARK(BM_Tcp_RoundTrip)->Apply(sizes);

}  // namespace

BENCHMARK_MAIN();
