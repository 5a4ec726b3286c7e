// The agent end against liboffload-server: round trips on several worker
// channels, streamed responses, flow control, refusals, corrupt responses,
// and a server process that dies or hangs and comes back.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent_driver.h"
#include "offload/server.h"

using offload::Request;
using offload::Response;
using offload::ring::RingAgent;
using offload::test::AgentDriver;
using offload::test::Collected;
using offload::test::unique_name;

extern char** environ;

namespace {

char pattern_at(uint64_t i) { return static_cast<char>('a' + i % 23); }

// Echoes the request's index back; /size/N streams N pattern bytes with a
// declared length, /stream/N without one, /throw throws.
void echo(const Request& q, Response& r) {
  std::string_view t = q.target();
  if (t.starts_with("/size/") || t.starts_with("/stream/")) {
    uint64_t n = std::stoull(std::string(t.substr(t.find('/', 1) + 1)));
    if (t.starts_with("/size/")) r.set_content_length(n);
    std::string chunk;
    for (uint64_t off = 0; off < n; off += chunk.size()) {
      chunk.clear();
      for (uint64_t i = off; i < n && chunk.size() < 7000; ++i) chunk.push_back(pattern_at(i));
      REQUIRE(r.write(chunk));
    }
    return;
  }
  if (t == "/throw") throw std::runtime_error("handler failed");
  r.set_status(201);
  r.add_header("X-Method", q.method());
  r.add_header("X-Target", t);
  auto h = q.header("x-test");
  r.add_header("X-Test-Echo", h ? *h : "none");
  CHECK_FALSE(r.add_header("Content-Length", "5"));  // framing is the agent's
  CHECK_FALSE(r.add_header("X-Bad", "a\r\nInjected: 1"));
  r.write("echo:");
  r.write(q.body());
}

struct ServerThread {
  ServerThread(const std::string& name, offload::Handler h, unsigned workers, offload::ServerOptions o = {})
      : srv(name, o), thread([this, h, workers] { rc = srv.serve(h, workers); }) {}
  ~ServerThread() {
    srv.stop();
    thread.join();
  }
  offload::Server srv;
  int rc = 0;
  std::thread thread;
};

offload::ring::RingAgentOptions options(const std::string& name, uint32_t ring_bytes = 64 * 1024) {
  offload::ring::RingAgentOptions o;
  o.name = name;
  o.channels_max = 8;
  o.ring_bytes = ring_bytes;
  return o;
}

std::string get(std::string_view target) { return "GET " + std::string(target) + " HTTP/1.1\r\nHost: t\r\n\r\n"; }

pid_t spawn(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
  return pid;
}

void reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace

TEST_CASE("requests round-trip on every worker channel with the agent's index") {
  std::string name = unique_name("rt");
  AgentDriver d(options(name));
  ServerThread s(name, echo, 4);
  REQUIRE(d.wait_attached());
  REQUIRE(d.agent->channel_count() == 4);
  CHECK(d.agent->generation() == 1);
  std::string head = "POST /echo?x=1 HTTP/1.1\r\nX-Test: hello there\r\nHost: t\r\n\r\n";
  auto span = [&](std::string_view what) {
    return offload_span{static_cast<uint32_t>(head.find(what)), static_cast<uint32_t>(what.size())};
  };
  std::vector<offload_field> fields{{span("X-Test"), span("hello there")}, {span("Host"), span("t\r")}};
  fields[1].value.len = 1;
  for (uint64_t id = 1; id <= 400; ++id) {
    auto ch = static_cast<uint32_t>(id % 4);
    std::string body = "body-" + std::to_string(id);
    REQUIRE(d.send(ch, id, head, body, fields) == RingAgent::Send::kOk);
    Collected c = d.collect(ch);
    REQUIRE(c.complete);
    CHECK(c.status == 201);
    CHECK(c.body == "echo:" + body);
    CHECK(c.content_length == c.body.size());
    CHECK(d.field(c, "X-Method") == "POST");
    CHECK(d.field(c, "X-Target") == "/echo?x=1");
    CHECK(d.field(c, "X-Test-Echo") == "hello there");
    CHECK(c.pieces == 1);  // small responses are one record
  }
  // Counted after the response is published: wait for the last one.
  CHECK(d.until([&] { return s.srv.requests_served() == 400; }, 2000));
}

TEST_CASE("large bodies stream in many records, paced by ring space") {
  std::string name = unique_name("big");
  AgentDriver d(options(name, 16 * 1024));
  ServerThread s(name, echo, 1);
  REQUIRE(d.wait_attached());
  SUBCASE("declared length") {
    REQUIRE(d.send(0, 1, get("/size/3000000"), "") == RingAgent::Send::kOk);
    Collected c = d.collect(0);
    REQUIRE(c.complete);
    CHECK(c.content_length == 3000000);
    REQUIRE(c.body.size() == 3000000);
    CHECK(c.pieces > 100);
    bool same = true;
    for (uint64_t i = 0; i < c.body.size() && same; ++i) same = c.body[i] == pattern_at(i);
    CHECK(same);
  }
  SUBCASE("unknown length") {
    REQUIRE(d.send(0, 1, get("/stream/300000"), "") == RingAgent::Send::kOk);
    Collected c = d.collect(0);
    REQUIRE(c.complete);
    CHECK(c.content_length == OFFLOAD_LENGTH_UNKNOWN);
    CHECK(c.body.size() == 300000);
  }
  SUBCASE("a throwing handler answers 500") {
    REQUIRE(d.send(0, 1, get("/throw"), "") == RingAgent::Send::kOk);
    Collected c = d.collect(0);
    CHECK(c.complete);
    CHECK(c.status == 500);
  }
}

TEST_CASE("a full request ring says kFull, and the doorbell tells when there is room") {
  std::string name = unique_name("full");
  AgentDriver d(options(name, 4096));
  std::atomic<bool> hold{true};
  ServerThread s(
      name,
      [&](const Request& q, Response& r) {
        while (hold.load()) std::this_thread::yield();
        r.write(q.body());
      },
      1);
  REQUIRE(d.wait_attached());
  std::string body(900, 'x');
  uint64_t sent = 0;
  while (d.send(0, sent + 1, get("/"), body) == RingAgent::Send::kOk) ++sent;
  CHECK(sent >= 3);
  CHECK(sent <= 4);
  CHECK(d.send(0, 99, get("/"), std::string(5000, 'x')) == RingAgent::Send::kTooLarge);
  hold = false;
  for (uint64_t id = 1; id <= sent; ++id) CHECK(d.collect(0).body == body);
  // Space is back: the kFull send now goes through.
  REQUIRE(d.until([&] { return d.send(0, sent + 1, get("/"), body) == RingAgent::Send::kOk; }, 5000));
  CHECK(d.collect(0).body == body);
}

TEST_CASE("a second server is refused while one is attached") {
  std::string name = unique_name("busy");
  AgentDriver d(options(name));
  ServerThread s(name, echo, 2);
  REQUIRE(d.wait_attached());
  offload::Server second(name);
  int rc = 0;
  std::thread t([&] { rc = second.attach(1); });
  d.until([&] { return false; }, 300);  // serve the agent's socket meanwhile
  t.join();
  CHECK(rc == -EBUSY);
  CHECK(d.agent->attached());
  CHECK(d.agent->last_error().find("second server") != std::string::npos);
}

TEST_CASE("the server re-attaches when the agent comes back") {
  std::string name = unique_name("agentback");
  ServerThread s(name, echo, 2);
  {
    AgentDriver d(options(name));
    REQUIRE(d.wait_attached());
  }  // the agent goes away
  AgentDriver d(options(name));
  REQUIRE(d.wait_attached());
  REQUIRE(d.send(1, 5, get("/x"), "") == RingAgent::Send::kOk);
  CHECK(d.collect(1).status == 201);
  CHECK(s.srv.attach_count() == 2);
}

TEST_CASE("server death: in flight fails at once, the agent re-attaches to a new server") {
  std::string name = unique_name("death");
  AgentDriver d(options(name));
  std::vector<std::string> cmd{OFFLOAD_DEMO_SERVER, "--ring", name, "--workers", "2"};
  pid_t pid = spawn(cmd);
  REQUIRE(d.wait_attached());
  REQUIRE(d.send(0, 1, get("/size/10"), "") == RingAgent::Send::kOk);
  CHECK(d.collect(0).body == "0123456789");

  SUBCASE("killed") {
    REQUIRE(d.send(1, 2, get("/spin/5000000"), "") == RingAgent::Send::kOk);
    d.until([] { return false; }, 100);
    ::kill(pid, SIGKILL);
    REQUIRE(d.until([&] { return d.detaches == 1; }, 20000));
    // At once: noticed by the close, not by the heartbeat going silent.
    CHECK(d.agent->last_error().find("closed") != std::string::npos);
  }
  SUBCASE("hung (stopped): the heartbeat notices") {
    ::kill(pid, SIGSTOP);
    REQUIRE(d.until([&] { return d.detaches == 1; }, 20000));
    // The ring never closed: only the silent heartbeat can have said so.
    CHECK(d.agent->last_error().find("heartbeat") != std::string::npos);
  }
  offload::ring::ResponsePiece p;
  CHECK(d.agent->poll_response(1, &p) == -EPIPE);
  CHECK(d.send(0, 3, get("/"), "") == RingAgent::Send::kDetached);
  reap(pid);

  pid = spawn(cmd);
  REQUIRE(d.wait_attached());
  CHECK(d.agent->generation() == 2);
  REQUIRE(d.send(1, 4, get("/size/3"), "") == RingAgent::Send::kOk);
  CHECK(d.collect(1).body == "012");
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("the C example serves over the ring") {
  std::string name = unique_name("c");
  AgentDriver d(options(name));
  pid_t pid = spawn({OFFLOAD_C_EXAMPLE, name});
  REQUIRE(d.wait_attached());
  std::string head = "GET /hello HTTP/1.1\r\nX-Name: ring\r\n\r\n";
  std::vector<offload_field> fields{
      {{static_cast<uint32_t>(head.find("X-Name")), 6}, {static_cast<uint32_t>(head.find("ring")), 4}}};
  REQUIRE(d.send(0, 1, head, "", fields) == RingAgent::Send::kOk);
  Collected c = d.collect(0);
  REQUIRE(c.complete);
  CHECK(c.status == 200);
  CHECK(c.body == "hello ring from C, you asked for /hello\n");
  CHECK(d.field(c, "Content-Type") == "text/plain");
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

namespace {

// A "server" that does the handshake by hand and then writes whatever it
// likes into its response rings.
struct RawServer {
  offload::ring::Fd sock;
  offload::ring::Region region;
  std::vector<offload::ring::Fd> fds;
  int attach(const std::string& name, uint32_t channels) {
    sock.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr;
    socklen_t len = offload::ring::socket_address(name, &addr);
    if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return -errno;
    offload_hello hello{OFFLOAD_RING_MAGIC, OFFLOAD_RING_VERSION, channels, 0, 0};
    offload::ring::send_message(sock.get(), &hello, sizeof hello, nullptr, 0);
    pollfd p{sock.get(), POLLIN, 0};
    if (::poll(&p, 1, 3000) != 1) return -ETIMEDOUT;
    offload_welcome w{};
    if (int rc = offload::ring::recv_message(sock.get(), &w, sizeof w, &fds, 200); rc != 0) return rc;
    std::string err;
    return offload::ring::Region::map(fds[0].release(), w, &region, &err);
  }
  // Publishes `bytes` as the next contents of channel ch's response ring.
  void publish(uint32_t ch, const std::vector<uint8_t>& bytes, uint64_t head) {
    std::memcpy(region.response_data(ch), bytes.data(), bytes.size());
    offload_store_release_u64(&region.response_ctrl(ch)->prod.head, head);
    offload::ring::ring_doorbell(fds[1 + region.channels() + ch].get());
  }
};

std::vector<uint8_t> record(uint32_t len, uint16_t type, uint16_t flags, const void* payload, size_t n) {
  std::vector<uint8_t> b(offload_rec_span(len));
  offload_rec r{len, type, flags};
  std::memcpy(b.data(), &r, sizeof r);
  std::memcpy(b.data() + 8, payload, n);
  return b;
}

}  // namespace

TEST_CASE("a corrupt response fails its channel only, with a reason") {
  std::string name = unique_name("corrupt");
  AgentDriver d(options(name));
  RawServer raw;
  int rc = 1;
  std::thread t([&] { rc = raw.attach(name, 2); });
  REQUIRE(d.wait_attached());
  t.join();
  REQUIRE(rc == 0);
  REQUIRE(d.send(0, 7, get("/"), "") == RingAgent::Send::kOk);
  offload_resp head{};
  head.id = 7;
  head.status = 200;
  head.content_length = 0;
  std::string expect;
  SUBCASE("record length past the published bytes") {
    raw.publish(0, record(4000, OFFLOAD_REC_RESPONSE_HEAD, 1, &head, sizeof head), 48);
    expect = "exceeds published";
  }
  SUBCASE("response head whose lengths do not add up") {
    head.text_len = 100000;
    raw.publish(0, record(48, OFFLOAD_REC_RESPONSE_HEAD, 1, &head, sizeof head), 48);
    expect = "do not add up";
  }
  SUBCASE("a response for a request never sent") {
    head.id = 8;
    raw.publish(0, record(40, OFFLOAD_REC_RESPONSE_HEAD, 1, &head, sizeof head), 40);
    expect = "does not match";
  }
  SUBCASE("impossible producer index") {
    raw.publish(0, {}, 1 << 20);
    expect = "producer index";
  }
  offload::ring::ResponsePiece p;
  REQUIRE(d.until([&] { return d.agent->poll_response(0, &p) == -EBADMSG; }, 3000));
  CHECK(d.agent->channel_error(0).find(expect) != std::string::npos);
  CHECK(d.agent->channel_error(0).find("ring channel 0") != std::string::npos);
  CHECK(d.send(0, 9, get("/"), "") == RingAgent::Send::kFailed);
  // The other channel and the attachment are unaffected.
  CHECK(d.agent->attached());
  CHECK(d.agent->poll_response(1, &p) == 0);
  CHECK(d.send(1, 10, get("/"), "") == RingAgent::Send::kOk);
}

namespace {

// True when `p` lies in a mapping of the bus region (a memfd named
// "offload-ring", mapped here by both the agent end and the server).
bool in_ring_mapping(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    if (line.find("offload-ring") == std::string::npos) continue;
    std::istringstream in(line);
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    in >> std::hex >> lo >> dash >> hi;
    if (addr >= lo && addr < hi) return true;
  }
  return false;
}

}  // namespace

// Issue item 15, the other direction: the server reads a request record out
// of shared memory once, so what the handler checks is what it uses, and the
// agent cannot change a request under a running handler.
TEST_CASE("the handler sees a private copy of the request, not the shared ring") {
  std::string name = unique_name("copy");
  AgentDriver d(options(name));
  std::atomic<int> in_ring{0}, handled{0};
  ServerThread s(name, [&](const Request& q, Response& r) {
    for (std::string_view v : {q.target(), q.method(), q.raw_head(), q.body()})
      if (in_ring_mapping(v.data())) in_ring.fetch_add(1);
    for (const auto& f : q.headers())
      if (in_ring_mapping(f.name.data()) || in_ring_mapping(f.value.data())) in_ring.fetch_add(1);
    handled.fetch_add(1);
    r.write("ok");
  }, 1);
  REQUIRE(d.wait_attached());
  std::string head = "POST /p HTTP/1.1\r\nHost: t\r\n\r\n";
  std::vector<offload_field> fields{{{18, 4}, {24, 1}}};
  REQUIRE(d.send(0, 1, head, "the body", fields) == RingAgent::Send::kOk);
  Collected c = d.collect(0);
  REQUIRE(c.complete);
  CHECK(c.body == "ok");
  CHECK(handled.load() == 1);
  CHECK(in_ring.load() == 0);
}
