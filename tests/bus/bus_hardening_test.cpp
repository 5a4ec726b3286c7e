// The bus hardening items, end to end: a paused response must not hold other
// clients' requests (issue item 11), liboffload-server checks who it attached
// to (item 14), and interim responses pass through or are refused (item 16).
// Item 15 (copy shared memory first, then check the copy) is covered by
// tests/ring/test_ring_codec.cpp and tests/ring/test_ring_agent.cpp.
//
// Every wait is bounded; the bounds are generous and only catch hangs: the
// checks are on outcomes and their order, never on how fast something was.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bus_rig.h"
#include "offload/ring.h"
#include "offload/ring_codec.h"
#include "offload/ring_queue.h"
#include "offload/server.h"
#include "ring_region.h"

using rig::Client;

namespace {

#define REQUIRE_AGENT(agent, name, opts) REQUIRE_MESSAGE((agent).start((name), (opts)), (agent).error())
#define REQUIRE_ATTACHED(agent, n) \
  REQUIRE_MESSAGE((agent).wait_attached((n), 10000), "agent stderr:\n" << (agent).child().stderr_text())

constexpr uint64_t kBig = 64u << 20;  // far more than the agent's buffers, the socket's and the ring's

// A liboffload-server whose handlers can be held at named gates:
//   /big?gate=G   waits for G (if given), then kBig pattern bytes, length announced
//   /hold?gate=G  waits for G, then "held\n"
//   /hints        103 Early Hints with a Link field, then 200 "final\n"
//   /status-103   tries set_status(103), then writes "x"
//   otherwise     "ok\n"
class GateServer {
 public:
  GateServer(std::string name, unsigned workers) : workers_(workers), server_(std::move(name)) {}
  ~GateServer() { stop(); }

  void start() {
    thread_ = std::thread([this] {
      server_.serve([this](const offload::Request& q, offload::Response& r) { handle(q, r); }, workers_);
    });
  }
  void stop() {
    open_all();
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  void open(const std::string& gate) {
    std::lock_guard lock(mutex_);
    opened_.insert(gate);
    cv_.notify_all();
  }
  // How many handlers for `route` (the target up to '?') have started.
  int started(const std::string& route) {
    std::lock_guard lock(mutex_);
    return started_[route];
  }
  bool wait_started(const std::string& route, int n, int timeout_ms) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return started_[route] >= n; });
  }
  int set_status_refused() const { return set_status_refused_.load(); }

 private:
  void open_all() {
    std::lock_guard lock(mutex_);
    all_open_ = true;
    cv_.notify_all();
  }
  void wait_gate(std::string_view target) {
    size_t at = target.find("gate=");
    if (at == std::string_view::npos) return;
    std::string gate(target.substr(at + 5));
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return all_open_ || opened_.count(gate) > 0; });
  }

  void handle(const offload::Request& q, offload::Response& r) {
    std::string_view t = q.target();
    std::string route(t.substr(0, t.find('?')));
    {
      std::lock_guard lock(mutex_);
      ++started_[route];
      cv_.notify_all();
    }
    wait_gate(t);
    if (route == "/big") {
      r.set_content_length(kBig);
      std::string chunk(64 * 1024, '\0');
      for (uint64_t off = 0; off < kBig; off += chunk.size()) {
        rig::pattern_fill(chunk.data(), off, chunk.size());
        if (!r.write(chunk)) return;
      }
    } else if (route == "/hold") {
      r.write("held\n");
    } else if (route == "/hints") {
      r.add_header("Link", "</style.css>; rel=preload; as=style");
      if (!r.send_interim(103)) {
        r.write("interim refused\n");
        return;
      }
      r.add_header("X-Final", "yes");
      r.write("final\n");
    } else if (route == "/status-103") {
      if (!r.set_status(103)) set_status_refused_.fetch_add(1);
      r.write("x");
    } else {
      r.write("ok\n");
    }
  }

  unsigned workers_;
  offload::Server server_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::set<std::string> opened_;
  bool all_open_ = false;
  std::map<std::string, int> started_;
  std::atomic<int> set_status_refused_{0};
};

// Reads the rest of a response from `c` (bounded), for the big body.
rig::ReadResult read_all(Client& c, int timeout_ms) {
  rig::ReadResult out;
  rig::ResponseParser parser;
  const int64_t deadline = rig::now_ms() + timeout_ms;
  for (;;) {
    auto s = parser.feed(c.buffer(), false);
    if (s == rig::ResponseParser::State::kError) {
      out.error = parser.error();
      return out;
    }
    if (s == rig::ResponseParser::State::kDone) {
      out.response = std::move(parser.response());
      return out;
    }
    if (rig::now_ms() >= deadline) {
      out.error = "timed out with " + std::to_string(parser.body_received()) + " body bytes";
      return out;
    }
    int n = c.recv_some(1 << 20, 2000);
    if (n == 0 || n == -2) {
      out.error = n == 0 ? "closed early" : c.error();
      out.closed = true;
      return out;
    }
  }
}

bool wait_stat(bus::Agent& a, const std::string& name, int64_t want, int timeout_ms) {
  const int64_t deadline = rig::now_ms() + timeout_ms;
  while (a.stat(name) != want) {
    if (rig::now_ms() >= deadline) return false;
    rig::sleep_ms(10);
  }
  return true;
}

}  // namespace

// ------------------------------------------------------------------ item 11

// Two channels: a slow reader (who never reads until the end) pauses channel
// 0 with a response far larger than every buffer; channel 1 is busy with a
// held request. A small GET arriving then must not end up behind the paused
// response: it is answered on channel 1 as soon as that is free, while the
// slow reader still reads nothing.
TEST_CASE("a paused response does not hold a small GET of another client: it goes to another channel") {
  const auto name = bus::unique_name("paused");
  bus::Agent a;
  bus::AgentOptions o;
  o.max_upstream = 2;
  o.response_buffer = "65536";
  o.response_spill_max = "0";  // nowhere to put the big response but the client
  REQUIRE_AGENT(a, name, o);
  GateServer srv(name, 2);
  srv.start();
  REQUIRE_ATTACHED(a, 1);

  Client slow;
  REQUIRE(slow.connect(a.port(), 3000, 64 * 1024));
  REQUIRE(slow.send_all(rig::get_request("/big")));
  REQUIRE(srv.wait_started("/big", 1, 5000));
  Client busy;
  REQUIRE(busy.connect(a.port()));
  REQUIRE(busy.send_all(rig::get_request("/hold?gate=h")));
  REQUIRE(srv.wait_started("/hold", 1, 5000));

  // Both channels carry one request now; the small GET must not join the paused one.
  Client small;
  REQUIRE(small.connect(a.port()));
  REQUIRE(small.send_all(rig::get_request("/small")));
  auto early = small.read_response(300);
  CHECK(!early.response.has_value());  // it waits behind the held request, not answered out of turn
  srv.open("h");
  auto held = busy.read_response(10000);
  REQUIRE_MESSAGE(held, held.error);
  CHECK(held.response->body == "held\n");
  auto r = small.read_response(10000);  // bound only against a hang: today it waits for the slow reader
  REQUIRE_MESSAGE(r, r.error << "\nagent stderr:\n" << a.child().stderr_text());
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "ok\n");
  // The slow reader has not read a byte so far: it was paused all along.

  // The slow reader now reads it all: byte-exact, nothing lost to the pause.
  auto big = read_all(slow, 60000);
  REQUIRE_MESSAGE(big, big.error);
  CHECK(big.response->status == 200);
  CHECK(big.response->body.size() == kBig);
  CHECK(rig::difference(big.response->body, rig::pattern_string(kBig)).empty());
  CHECK(a.stat("upstream_bad_responses") == 0);
}

// One channel: requests that were already on it when its front response
// paused must not wait for the slow reader without a timer. The GET goes
// back to the queue (no other channel: 503 when its queue timeout ends), the
// POST (which cannot be sent twice) gets its response timeout (504).
TEST_CASE("requests queued behind a paused response keep their timeouts: GET 503 from the queue, POST 504") {
  const auto name = bus::unique_name("held");
  bus::Agent a;
  bus::AgentOptions o;
  o.max_upstream = 1;
  o.response_buffer = "65536";
  o.response_spill_max = "0";
  o.queue_timeout_ms = 1000;
  o.response_timeout_ms = 1500;
  REQUIRE_AGENT(a, name, o);
  GateServer srv(name, 1);
  srv.start();
  REQUIRE_ATTACHED(a, 1);

  Client slow;
  REQUIRE(slow.connect(a.port(), 3000, 64 * 1024));
  REQUIRE(slow.send_all(rig::get_request("/big?gate=b")));
  REQUIRE(srv.wait_started("/big", 1, 5000));
  // The channel is busy but not paused yet (nothing answered): both join it.
  Client get, post;
  REQUIRE(get.connect(a.port()));
  REQUIRE(get.send_all(rig::get_request("/g")));
  REQUIRE(post.connect(a.port()));
  REQUIRE(post.send_all("POST /p HTTP/1.1\r\nHost: bus.test\r\nContent-Length: 1\r\n\r\nx"));
  REQUIRE(wait_stat(a, "requests", 3, 5000));
  REQUIRE(wait_stat(a, "queue_length", 0, 5000));
  srv.open("b");  // the big response now fills every buffer and pauses the channel

  auto g = get.read_response(15000);
  REQUIRE_MESSAGE(g, g.error << "\nagent stderr:\n" << a.child().stderr_text());
  CHECK(g.response->status == 503);
  auto p = post.read_response(15000);
  REQUIRE_MESSAGE(p, p.error);
  CHECK(p.response->status == 504);  // all this while the slow reader read nothing
  CHECK(a.stat("timeouts_queue") == 1);
  CHECK(a.stat("timeouts_response") == 1);

  // A request arriving while the channel is paused waits in the queue, with its timer.
  auto late = rig::http_get(a.port(), "/late", 15000);
  REQUIRE_MESSAGE(late, late.error);
  CHECK(late.response->status == 503);
  CHECK(a.stat("timeouts_queue") == 2);

  auto big = read_all(slow, 60000);
  REQUIRE_MESSAGE(big, big.error);
  CHECK(big.response->status == 200);
  CHECK(big.response->body.size() == kBig);
  CHECK(rig::difference(big.response->body, rig::pattern_string(kBig)).empty());

  // The answers to /g and /p go by (dropped); the channel serves on.
  auto after = rig::http_get(a.port(), "/after", 10000);
  REQUIRE_MESSAGE(after, after.error);
  CHECK(after.response->status == 200);
  CHECK(after.response->body == "ok\n");
  CHECK(a.stat("upstream_bad_responses") == 0);
}

// A slow reader that keeps reading (so the channel moves a little several
// times a second) must not stretch the wait of a request held behind it: the
// POST still gets its 504 one response timeout after the front first paused.
TEST_CASE("a request held behind a slow reader that keeps reading still gets its response timeout") {
  const auto name = bus::unique_name("trickle");
  bus::Agent a;
  bus::AgentOptions o;
  o.max_upstream = 1;
  o.response_buffer = "65536";
  o.response_spill_max = "0";
  o.response_timeout_ms = 2000;
  REQUIRE_AGENT(a, name, o);
  GateServer srv(name, 1);
  srv.start();
  REQUIRE_ATTACHED(a, 1);

  Client slow;
  REQUIRE(slow.connect(a.port(), 3000, 64 * 1024));
  REQUIRE(slow.send_all(rig::get_request("/big?gate=t")));
  REQUIRE(srv.wait_started("/big", 1, 5000));
  Client post;
  REQUIRE(post.connect(a.port()));
  REQUIRE(post.send_all("POST /p HTTP/1.1\r\nHost: bus.test\r\nContent-Length: 1\r\n\r\nx"));
  REQUIRE(wait_stat(a, "requests", 2, 5000));
  REQUIRE(wait_stat(a, "queue_length", 0, 5000));  // on the channel, behind the big one
  srv.open("t");

  // At most 256 KiB every 50 ms (5 MiB/s): the agent's socket drains and it
  // reads on from the ring several times per response timeout, yet 64 MiB
  // takes over 12 s. Without a bound of its own the POST would be served
  // only after all of it (a 200 then).
  rig::ResponseParser parser;
  bool answered = false;
  uint64_t trickled = 0;
  const int64_t deadline = rig::now_ms() + 60000;  // against a hang only
  while (!answered && rig::now_ms() < deadline) {
    int n = slow.recv_some(256 * 1024, 50);
    if (n > 0) trickled += static_cast<uint64_t>(n);
    slow.buffer().clear();
    if (post.recv_some(4096, 0) > 0) answered = parser.feed(post.buffer(), false) == rig::ResponseParser::State::kDone;
    rig::sleep_ms(50);
  }
  REQUIRE_MESSAGE(answered, "no answer to the held POST; agent stderr:\n" << a.child().stderr_text());
  CHECK(parser.response().status == 504);
  CHECK(trickled > 0);
  CHECK(trickled < kBig);  // the slow reader was still reading
  slow.close();  // the rest of its response goes by, dropped
  auto after = rig::http_get(a.port(), "/after", 30000);
  REQUIRE_MESSAGE(after, after.error);
  CHECK(after.response->status == 200);
}

// ------------------------------------------------------------------ item 16

TEST_CASE("103 Early Hints reaches an HTTP/1.1 client before the final response, and set_status(103) is refused") {
  const auto name = bus::unique_name("hints");
  bus::Agent a;
  REQUIRE_AGENT(a, name, bus::AgentOptions{});
  GateServer srv(name, 2);
  srv.start();
  REQUIRE_ATTACHED(a, 1);

  Client c;
  REQUIRE(c.connect(a.port()));
  REQUIRE(c.send_all(rig::get_request("/hints")));
  const int64_t deadline = rig::now_ms() + 10000;
  while (c.buffer().find("final\n") == std::string::npos && rig::now_ms() < deadline) {
    if (c.recv_some(4096, 1000) <= 0 && c.buffer().find("final\n") == std::string::npos) break;
  }
  const std::string raw = c.buffer();
  INFO("raw: " << raw);
  const std::string interim = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n";
  CHECK(raw.starts_with(interim));
  std::string rest = raw.starts_with(interim) ? raw.substr(interim.size()) : raw;
  rig::ResponseParser parser;
  REQUIRE(parser.feed(rest, false) == rig::ResponseParser::State::kDone);
  CHECK(parser.response().status == 200);
  CHECK(parser.response().body == "final\n");
  CHECK(parser.response().header("X-Final") == "yes");
  CHECK(!parser.response().has_header("Link"));  // the hint's fields were the hint's only

  // HTTP/1.0 clients never get a 1xx (RFC 9110 15.2).
  Client old;
  REQUIRE(old.connect(a.port()));
  REQUIRE(old.send_all("GET /hints HTTP/1.0\r\nHost: bus.test\r\n\r\n"));
  std::string got;
  CHECK(old.wait_closed(10000, &got));
  INFO("HTTP/1.0 raw: " << got);
  CHECK(got.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(got.ends_with("\r\n\r\nfinal\n"));
  CHECK(got.find(" 103 ") == std::string::npos);

  // A 1xx as the final status would end in an empty response: refused, 500.
  auto bad = rig::http_get(a.port(), "/status-103", 10000);
  REQUIRE_MESSAGE(bad, bad.error);
  CHECK(bad.response->status == 500);
  CHECK(srv.set_status_refused() == 1);
  CHECK(a.stat("upstream_bad_responses") == 0);
}

namespace {

// A server on the raw ring API (one channel) whose answer to "/1xx-end" is a
// 103 head record flagged END (what liboffload-server sent for
// set_status(103) before), and "fine\n" otherwise.
class RawServer {
 public:
  ~RawServer() { stop(); }
  bool attach(const std::string& name) {
    sock_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr;
    socklen_t len = offload::ring::socket_address(name, &addr);
    if (::connect(sock_.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return false;
    offload_hello hello{OFFLOAD_RING_MAGIC, OFFLOAD_RING_VERSION, 1, static_cast<uint32_t>(::getpid()), 0};
    if (offload::ring::send_message(sock_.get(), &hello, sizeof hello, nullptr, 0) != 0) return false;
    pollfd p{sock_.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    offload_welcome w{};
    if (offload::ring::recv_message(sock_.get(), &w, sizeof w, &fds_, 3) != 0 || w.status != 0 || fds_.size() != 3)
      return false;
    std::string why;
    if (offload::ring::Region::map(fds_[0].release(), w, &region_, &why) != 0) return false;
    requests_.init(region_.request_ctrl(0), region_.request_data(0), region_.ring_bytes(), fds_[2].get());
    responses_.init(region_.response_ctrl(0), region_.response_data(0), region_.ring_bytes(), fds_[2].get());
    __atomic_store_n(&region_.header()->server.state, OFFLOAD_SIDE_READY, __ATOMIC_RELEASE);
    thread_ = std::thread([this] { run(); });
    return true;
  }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    uint64_t beat = 0;
    while (!stop_.load()) {
      __atomic_store_n(&region_.header()->server.heartbeat, ++beat, __ATOMIC_RELAXED);
      offload::ring::Record rec;
      if (requests_.peek(&rec) != 1) {
        rig::sleep_ms(5);
        continue;
      }
      offload::ring::RequestIn req;
      std::vector<offload::ring::Field> fields;
      if (offload::ring::decode_request(rec, &req, &fields) != nullptr) return;
      const bool interim_end = req.target == "/1xx-end";
      offload::ring::ResponseHeadOut h;
      h.id = req.id;
      h.status = interim_end ? 103 : 200;
      h.body = interim_end ? "" : "fine\n";
      h.content_length = h.body.size();
      requests_.release();
      auto len = static_cast<uint32_t>(offload::ring::response_head_payload_bytes(h));
      uint8_t* dst = responses_.try_reserve(len);
      if (dst == nullptr) return;  // a 64 KiB ring never fills in this test
      offload::ring::encode_response_head(h, dst);
      responses_.commit(OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END, len);
    }
  }

  offload::ring::Fd sock_;
  std::vector<offload::ring::Fd> fds_;
  offload::ring::Region region_;
  offload::ring::Consumer requests_;
  offload::ring::Producer responses_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

}  // namespace

// The agent's side of item 16: a 1xx head that claims to end the response
// is not a response. The client gets a 502 (before: nothing at all), and
// the channel serves on.
TEST_CASE("a 1xx head record flagged as the end of the response gets the client a 502, the channel serves on") {
  const auto name = bus::unique_name("1xx-end");
  bus::Agent a;
  bus::AgentOptions o;
  o.max_upstream = 1;
  REQUIRE_AGENT(a, name, o);
  RawServer raw;
  REQUIRE(raw.attach(name));
  REQUIRE_ATTACHED(a, 1);
  auto bad = rig::http_get(a.port(), "/1xx-end", 5000);
  REQUIRE_MESSAGE(bad, bad.error);
  CHECK(bad.response->status == 502);
  CHECK(a.stat("upstream_bad_responses") == 1);
  auto good = rig::http_get(a.port(), "/after", 5000);
  REQUIRE_MESSAGE(good, good.error);
  CHECK(good.response->status == 200);
  CHECK(good.response->body == "fine\n");
}

// ------------------------------------------------------------------ item 14

namespace {

enum class RegionKind { kSealed, kUnsealed, kShrinkOnly, kTmpFile };
enum class BellKind { kEventfd, kPipe };

// A region fd with a valid header for 1 channel of 4096-byte rings.
int make_region(RegionKind kind, uint64_t* bytes_out) {
  const uint32_t ring_bytes = OFFLOAD_RING_BYTES_MIN;
  const uint64_t bytes = sizeof(offload_region_header) + offload_ring_channel_bytes(ring_bytes);
  int fd = -1;
  if (kind == RegionKind::kTmpFile) {
    char path[] = "/tmp/offload-fake-region-XXXXXX";
    fd = ::mkstemp(path);
    ::unlink(path);
  } else {
    fd = ::memfd_create("offload-ring", MFD_CLOEXEC | (kind == RegionKind::kUnsealed ? 0 : MFD_ALLOW_SEALING));
  }
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  REQUIRE(base != MAP_FAILED);
  auto* h = static_cast<offload_region_header*>(base);
  h->magic = OFFLOAD_RING_MAGIC;
  h->version = OFFLOAD_RING_VERSION;
  h->header_bytes = sizeof(offload_region_header);
  h->channel_count = 1;
  h->ring_bytes = ring_bytes;
  h->channel_bytes = offload_ring_channel_bytes(ring_bytes);
  h->region_bytes = bytes;
  h->heartbeat_ms = OFFLOAD_RING_HEARTBEAT_MS;
  h->agent.state = OFFLOAD_SIDE_READY;
  ::munmap(base, bytes);
  if (kind == RegionKind::kSealed) REQUIRE(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
  if (kind == RegionKind::kShrinkOnly) REQUIRE(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
  *bytes_out = bytes;
  return fd;
}

// Everything a fake agent hands out, made before any fork (the child then
// makes system calls only).
struct FakeWelcome {
  FakeWelcome(RegionKind region, BellKind bells) {
    uint64_t bytes = 0;
    fds.push_back(make_region(region, &bytes));
    for (int i = 0; i < 2; ++i) {
      if (bells == BellKind::kEventfd) {
        fds.push_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      } else {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
        fds.push_back(p[0]);
        extra.push_back(p[1]);
      }
      REQUIRE(fds.back() >= 0);
    }
    w.magic = OFFLOAD_RING_MAGIC;
    w.version = OFFLOAD_RING_VERSION;
    w.status = 0;
    w.channel_count = 1;
    w.ring_bytes = OFFLOAD_RING_BYTES_MIN;
    w.region_bytes = bytes;
  }
  ~FakeWelcome() {
    for (int fd : fds) ::close(fd);
    for (int fd : extra) ::close(fd);
  }
  offload_welcome w{};
  std::vector<int> fds, extra;
};

socklen_t bus_address(const std::string& name, sockaddr_un* addr) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  std::string path = OFFLOAD_RING_SOCKET_PREFIX + name;
  std::memcpy(addr->sun_path + 1, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
}

// Serves one attach as a fake agent: listen, accept, read the hello, send
// the welcome with its fds, hold the connection until the server closes it
// (or 5 s). System calls only, so it may run in a forked child. `ready` is
// written once listening. Returns 0 when the welcome was sent.
int fake_agent(const sockaddr_un& addr, socklen_t len, const FakeWelcome& fw, int ready) {
  int l = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (l < 0 || ::bind(l, reinterpret_cast<const sockaddr*>(&addr), len) != 0 || ::listen(l, 4) != 0) return 1;
  char one = 1;
  if (::write(ready, &one, 1) != 1) return 2;
  pollfd p{l, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) return 3;
  int s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  if (s < 0) return 4;
  offload_hello hello{};
  if (::recv(s, &hello, sizeof hello, 0) != static_cast<ssize_t>(sizeof hello)) return 5;
  iovec iov{const_cast<offload_welcome*>(&fw.w), sizeof fw.w};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 3)] = {};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = CMSG_SPACE(sizeof(int) * fw.fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fw.fds.size());
  std::memcpy(CMSG_DATA(c), fw.fds.data(), sizeof(int) * fw.fds.size());
  if (::sendmsg(s, &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof fw.w)) return 6;
  pollfd q{s, POLLIN | POLLRDHUP, 0};
  ::poll(&q, 1, 5000);
  ::close(s);
  ::close(l);
  return 0;
}

// An in-process fake agent (same uid as the test) on a thread.
int attach_to_fake(offload::Server& srv, const std::string& name, RegionKind region, BellKind bells) {
  FakeWelcome fw(region, bells);
  sockaddr_un addr;
  socklen_t len = bus_address(name, &addr);
  int ready[2];
  REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  int agent_rc = -1;
  std::thread agent([&] { agent_rc = fake_agent(addr, len, fw, ready[1]); });
  char b;
  pollfd p{ready[0], POLLIN, 0};
  const bool listening = ::poll(&p, 1, 5000) == 1 && ::read(ready[0], &b, 1) == 1;
  int rc = listening ? srv.attach(1) : -ETIMEDOUT;
  srv.detach();  // whatever happened, the fake agent sees the close
  agent.join();
  ::close(ready[0]);
  ::close(ready[1]);
  CHECK(agent_rc == 0);
  return rc;
}

// A fake agent in a child that runs as nobody (uid 65534); its exit status
// goes to *status.
int attach_to_nobody(offload::Server& srv, const std::string& name, int* status) {
  FakeWelcome fw(RegionKind::kSealed, BellKind::kEventfd);
  sockaddr_un addr;
  socklen_t len = bus_address(name, &addr);
  int ready[2];
  REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    gid_t nogroup = 65534;
    if (::setgroups(1, &nogroup) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
      ::_exit(20);
    ::_exit(fake_agent(addr, len, fw, ready[1]));
  }
  char b;
  pollfd p{ready[0], POLLIN, 0};
  const bool listening = ::poll(&p, 1, 5000) == 1 && ::read(ready[0], &b, 1) == 1;
  int rc = listening ? srv.attach(1) : -ETIMEDOUT;
  srv.detach();
  ::close(ready[0]);
  ::close(ready[1]);
  REQUIRE(::waitpid(pid, status, 0) == pid);
  return rc;
}

}  // namespace

TEST_CASE("liboffload-server refuses an agent of another uid, an unsealed region and non-eventfd doorbells") {
  if (::geteuid() != 0) {
    MESSAGE("SKIP: the other-uid case needs root (setuid to nobody in a child)");
    return;
  }
  const auto name = bus::unique_name("who");
  offload::Server srv(name);

  SUBCASE("a fake agent of another uid (nobody) with a perfect welcome") {
    int status = 0;
    CHECK(attach_to_nobody(srv, name, &status) == -EPERM);
    CHECK(srv.error().find("uid 65534") != std::string::npos);
    // 5: the server hung up without even sending its hello.
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 5));
  }
  SUBCASE("the same fake agent is accepted when its uid is the configured one") {
    offload::ServerOptions so;
    so.agent_uid = 65534;
    offload::Server configured(name, so);
    int status = 0;
    CHECK(attach_to_nobody(configured, name, &status) == 0);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  SUBCASE("a region memfd without seals") {
    CHECK(attach_to_fake(srv, name, RegionKind::kUnsealed, BellKind::kEventfd) == -EPERM);
    CHECK(srv.error().find("sealed") != std::string::npos);
  }
  SUBCASE("a region memfd sealed against shrinking only") {
    CHECK(attach_to_fake(srv, name, RegionKind::kShrinkOnly, BellKind::kEventfd) == -EPERM);
    CHECK(srv.error().find("sealed against shrinking and growing") != std::string::npos);
  }
  SUBCASE("a region in a plain file") {
    CHECK(attach_to_fake(srv, name, RegionKind::kTmpFile, BellKind::kEventfd) == -EPERM);
    CHECK(srv.error().find("sealed memfd") != std::string::npos);
  }
  SUBCASE("doorbells that are pipes") {
    CHECK(attach_to_fake(srv, name, RegionKind::kSealed, BellKind::kPipe) == -EPERM);
    CHECK(srv.error().find("not an eventfd") != std::string::npos);
  }
  SUBCASE("the fake agent itself is fine when everything is right (the checks refuse only what they name)") {
    CHECK(attach_to_fake(srv, name, RegionKind::kSealed, BellKind::kEventfd) == 0);
  }
  CHECK(!srv.attached());

  // The same server object then serves the real agent.
  bus::Agent a;
  REQUIRE_AGENT(a, name, bus::AgentOptions{});
  std::thread serving([&] { srv.serve([](const offload::Request&, offload::Response& r) { r.write("real\n"); }, 2); });
  bool attached = a.wait_attached(1, 10000);
  auto r = rig::http_get(a.port(), "/x", 10000);
  srv.stop();
  serving.join();
  REQUIRE(attached);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(r.response->body == "real\n");
}
