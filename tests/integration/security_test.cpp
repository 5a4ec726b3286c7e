// The security screen on live requests, tried as an attacker would from
// many loopback sources (all of 127.0.0.0/8): over the request rate, without
// a token, with a wrong one, with a method or a target the listener refuses.
// The recording backend proves that no refused request reached the server.
// (No ';' in a case's name: ctest's discovery splits names there and would
// run nothing.)
#include <doctest/doctest.h>

#include <unistd.h>

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "config_agent.h"
#include "rig.h"

using rig::Backend;
using rig::Client;

namespace {

std::string temp_file(const std::string& text) {
  char path[] = "/tmp/offload-security-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << text;
  return path;
}

// The agent run with a config file; its listeners' ports in config order.
class Agent {
 public:
  ~Agent() {
    child_.stop();
    for (const auto& f : files_) ::unlink(f.c_str());
  }
  void keep_file(const std::string& path) { files_.push_back(path); }
  void start(const std::string& toml, size_t listeners) {
    files_.push_back(temp_file(toml));
    REQUIRE(child_.start(rig::agent_path(), {"run", "-c", files_.back(), "--admin", "127.0.0.1:0"}));
    auto admin = child_.wait_for_line("offload-agent: admin on ", 15000);
    REQUIRE_MESSAGE(admin, child_.stderr_text());
    admin_ = rig::port_from_line(*admin);
    for (const std::string& line : child_.stderr_lines())
      if (line.find("offload-agent: listening on ") != std::string::npos) ports_.push_back(rig::port_from_line(line));
    REQUIRE(ports_.size() == listeners);
  }
  uint16_t port(size_t i = 0) const { return ports_.at(i); }
  uint16_t admin_port() const { return admin_; }
  std::string log() const { return child_.stderr_text(); }
  rig::Json stats_doc() {
    Client c;
    REQUIRE(c.connect(admin_));
    REQUIRE(c.send_all("GET /stats?format=json HTTP/1.1\r\nHost: a\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    auto doc = rig::Json::parse(r.response->body);
    REQUIRE(doc);
    return *doc;
  }
  // A top-level counter (the shards' sum).
  int64_t stat(const std::string& name) { return rig::flatten_stats(stats_doc())[name]; }
  // A counter of listener `index` from the "listeners" array.
  int64_t listener_stat(size_t index, const std::string& name) {
    return rig::listener_counter(stats_doc(), index, name);
  }

 private:
  rig::Child child_;
  std::vector<std::string> files_;
  std::vector<uint16_t> ports_;
  uint16_t admin_ = 0;
};

std::string upstream_of(const Backend& b) {
  return "[[upstream]]\nservers = [\"tcp://127.0.0.1:" + std::to_string(b.port()) + "\"]\n";
}

// One request on a fresh connection from `source`; the response, or none.
rig::ReadResult request_from(const std::string& source, uint16_t port, const std::string& request) {
  Client c;
  c.set_source(source);
  rig::ReadResult none;
  if (!c.connect(port)) {
    none.error = c.error();
    return none;
  }
  if (!c.send_all(request)) {
    none.error = "send: " + c.error();
    return none;
  }
  return c.read_response(5000);
}

std::string get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: t\r\n" + extra + "\r\n";
}

}  // namespace

TEST_CASE("rate: a source over its burst gets 429 with Retry-After, the backend never sees those, other sources go on") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  // One token a second, three at once: a burst of 3, then 429 until a token is back.
  a.start("[security]\nrate = 1\nburst = 3\n" + upstream_of(b) + "[[listener]]\nlisten = \"127.0.0.1:0\"\n", 1);
  constexpr int kSent = 12;
  std::map<std::string, int> statuses;  // target -> status
  const int64_t started = rig::now_ms();
  int passed = 0, refused = 0;
  for (int i = 0; i < kSent; ++i) {
    std::string target = "/ok?rate-src=2&n=" + std::to_string(i);
    rig::ReadResult r = request_from("127.0.0.2", a.port(), get(target));
    REQUIRE_MESSAGE(r, r.error);
    statuses[target] = r.response->status;
    if (r.response->status == 200) {
      ++passed;
    } else {
      CHECK(r.response->status == 429);
      CHECK(r.response->header("Retry-After") == "1");  // one token a second: at most a second away
      CHECK(r.response->closes());
      ++refused;
    }
  }
  const int64_t elapsed_s = (rig::now_ms() - started) / 1000;
  // The first three always pass; beyond them only what the rate refilled meanwhile.
  for (int i = 0; i < 3; ++i) CHECK(statuses["/ok?rate-src=2&n=" + std::to_string(i)] == 200);
  CHECK(passed <= 3 + elapsed_s + 1);
  CHECK(refused >= kSent - (3 + elapsed_s + 1));
  CHECK(refused > 0);
  // Another source has a bucket of its own.
  rig::ReadResult other = request_from("127.0.0.3", a.port(), get("/ok?rate-src=3"));
  REQUIRE_MESSAGE(other, other.error);
  CHECK(other.response->status == 200);

  auto rec = b.wait_record([&](const rig::Record& r) { return r.find("/ok?rate-src=3") != nullptr; }, 3000);
  REQUIRE(rec);
  for (const auto& [target, status] : statuses) {
    INFO(target << " answered " << status);
    CHECK(rec->count(target) == (status == 200 ? 1 : 0));
  }
  CHECK(a.stat("rate_limited") == refused);
  CHECK(a.listener_stat(0, "rate_limited") == refused);
}

TEST_CASE("rate: a flood of distinct sources stays within the source table, evictions counted, a connected source kept") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start("[security]\nrate = 1\nburst = 2\nsource_table_size = 16\n" + upstream_of(b) +
              "[[listener]]\nlisten = \"127.0.0.1:0\"\n",
          1);
  // A source that keeps its connection is pinned in the table through the flood.
  Client held;
  held.set_source("127.0.9.1");
  REQUIRE(held.connect(a.port()));
  REQUIRE(held.send_all(get("/ok?held-1")));
  rig::ReadResult first = held.read_response(5000);
  REQUIRE_MESSAGE(first, first.error);
  CHECK(first.response->status == 200);
  constexpr int kSources = 200;
  for (int i = 0; i < kSources; ++i) {
    std::string source = "127.0." + std::to_string(1 + i / 250) + "." + std::to_string(1 + i % 250);
    rig::ReadResult r = request_from(source, a.port(), get("/ok?flood-" + std::to_string(i)));
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);  // each source's first request is within its burst
  }
  CHECK(a.stat("source_evictions") >= kSources - 16);
  // The held source's bucket survived: its second request passes, its third
  // is over the burst (unless a token came back in the meantime).
  REQUIRE(held.send_all(get("/ok?held-2")));
  rig::ReadResult second = held.read_response(5000);
  REQUIRE_MESSAGE(second, second.error);
  CHECK(second.response->status == 200);
}

TEST_CASE("auth: bearer and API-key listeners refuse missing and wrong tokens before the backend hears of them") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  std::string tokens = temp_file("s3cret-token-A\nsecond-token\n");
  a.keep_file(tokens);
  a.start(upstream_of(b) + "[[listener]]\nlisten = \"127.0.0.1:0\"\nsecurity = { auth = \"bearer\", token_file = \"" +
              tokens + "\" }\n[[listener]]\nlisten = \"127.0.0.1:0\"\nsecurity = { auth = \"api-key\", header = "
              "\"X-Key\", token_file = \"" + tokens + "\" }\n",
          2);
  auto status_of = [&](size_t listener, const std::string& request, rig::Response* out = nullptr) {
    rig::ReadResult r = request_from("127.0.0.4", a.port(listener), request);
    REQUIRE_MESSAGE(r, r.error);
    if (out != nullptr) *out = *r.response;
    return r.response->status;
  };
  rig::Response resp;
  CHECK(status_of(0, get("/ok?auth-none"), &resp) == 401);
  CHECK(resp.header("WWW-Authenticate") == "Bearer");
  CHECK(status_of(0, get("/ok?auth-wrong", "Authorization: Bearer s3cret-token-B\r\n"), &resp) == 401);
  CHECK(resp.header("WWW-Authenticate") == "Bearer error=\"invalid_token\"");
  CHECK(status_of(0, get("/ok?auth-short", "Authorization: Bearer s3cret\r\n")) == 401);
  CHECK(status_of(0, get("/ok?auth-basic", "Authorization: Basic czNjcmV0\r\n")) == 401);
  CHECK(status_of(0, get("/ok?auth-twice", "Authorization: Bearer s3cret-token-A\r\nAuthorization: Bearer x\r\n")) == 401);
  CHECK(status_of(0, get("/ok?auth-good", "Authorization: Bearer s3cret-token-A\r\n")) == 200);
  CHECK(status_of(0, get("/ok?auth-good2", "Authorization: Bearer second-token\r\n")) == 200);
  CHECK(status_of(1, get("/ok?key-none")) == 403);
  CHECK(status_of(1, get("/ok?key-wrong", "X-Key: second-tokeN\r\n")) == 403);
  CHECK(status_of(1, get("/ok?key-bearer", "Authorization: Bearer second-token\r\n")) == 403);
  CHECK(status_of(1, get("/ok?key-good", "X-Key: second-token\r\n")) == 200);

  auto rec = b.wait_record([&](const rig::Record& r) { return r.find("/ok?key-good") != nullptr; }, 3000);
  REQUIRE(rec);
  for (const char* t : {"/ok?auth-none", "/ok?auth-wrong", "/ok?auth-short", "/ok?auth-basic", "/ok?auth-twice", "/ok?key-none",
                        "/ok?key-wrong", "/ok?key-bearer"}) {
    INFO(t);
    CHECK(rec->count(t) == 0);
  }
  CHECK(rec->count("/ok?auth-good") == 1);
  CHECK(rec->count("/ok?auth-good2") == 1);
  CHECK(a.listener_stat(0, "auth_missing") == 2);  // none, another scheme
  CHECK(a.listener_stat(0, "auth_wrong") == 3);
  CHECK(a.listener_stat(1, "auth_missing") == 2);
  CHECK(a.listener_stat(1, "auth_wrong") == 1);
  CHECK(a.stat("auth_wrong") == 4);
}

TEST_CASE("screening: a method the listener does not allow gets 405 with Allow, a long target 414, and neither arrives") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start(upstream_of(b) + "[[listener]]\nlisten = \"127.0.0.1:0\"\n"
                           "security = { methods = [\"GET\", \"HEAD\"], target_bytes_max = 64 }\n",
          1);
  rig::ReadResult post = request_from("127.0.0.5", a.port(),
                                      "POST /ok?m-post HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody");
  REQUIRE_MESSAGE(post, post.error);
  CHECK(post.response->status == 405);
  CHECK(post.response->header("Allow") == "GET, HEAD");
  rig::ReadResult del = request_from("127.0.0.5", a.port(), "DELETE /ok?m-delete HTTP/1.1\r\nHost: t\r\n\r\n");
  REQUIRE_MESSAGE(del, del.error);
  CHECK(del.response->status == 405);
  // Exactly at the limit passes, one byte over does not.
  std::string at = "/ok?" + std::string(64 - 4, 'a');
  std::string over = "/ok?" + std::string(64 - 3, 'b');
  rig::ReadResult r_at = request_from("127.0.0.5", a.port(), get(at));
  REQUIRE_MESSAGE(r_at, r_at.error);
  CHECK(r_at.response->status == 200);
  rig::ReadResult r_over = request_from("127.0.0.5", a.port(), get(over));
  REQUIRE_MESSAGE(r_over, r_over.error);
  CHECK(r_over.response->status == 414);
  rig::ReadResult ok = request_from("127.0.0.5", a.port(), get("/ok?m-get"));
  REQUIRE_MESSAGE(ok, ok.error);
  CHECK(ok.response->status == 200);

  auto rec = b.wait_record([&](const rig::Record& r) { return r.find("/ok?m-get") != nullptr; }, 3000);
  REQUIRE(rec);
  CHECK(rec->count("/ok?m-post") == 0);
  CHECK(rec->count("/ok?m-delete") == 0);
  CHECK(rec->count(over) == 0);
  CHECK(rec->count(at) == 1);
  CHECK(a.listener_stat(0, "method_refused") == 2);
  CHECK(a.listener_stat(0, "target_too_long") == 1);
  CHECK(a.stat("method_refused") == 2);
}

// ------------------------------------------------------- the live rule set

namespace {

struct Cli {
  int code = -1;
  std::string out;  // stdout and stderr
};

// offload-agent with `args` (shell-safe), as an operator would run it.
Cli cli(const std::string& args) {
  Cli run;
  FILE* p = ::popen((rig::agent_path() + " " + args + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) run.out.append(buf, n);
  const int status = ::pclose(p);
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

size_t line_count(const std::string& text) {
  size_t n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

std::string admin_flag(const Agent& a) { return " --admin 127.0.0.1:" + std::to_string(a.admin_port()); }

// A fresh connection from `source` the agent closes without an answer
// (the request never reaches the backend).
bool refused(const std::string& source, uint16_t port, const std::string& target, bool ipv6 = false) {
  Client c;
  if (!source.empty()) c.set_source(source);
  if (!c.connect(port, 3000, 0, ipv6)) return true;  // refused before the handshake finished: as good
  c.send_all(get(target), 500);
  std::string got;
  return c.wait_closed(3000, &got) && got.empty();
}

bool served(const std::string& source, uint16_t port, const std::string& target, bool ipv6 = false) {
  Client c;
  if (!source.empty()) c.set_source(source);
  if (!c.connect(port, 3000, 0, ipv6) || !c.send_all(get(target))) return false;
  rig::ReadResult r = c.read_response(5000);
  return r && r.response->status == 200;
}

std::string listener_at(const char* address, const std::string& extra = "") {
  return std::string("[[listener]]\nlisten = \"") + address + "\"\n" + extra;
}

}  // namespace

TEST_CASE("live deny: add refuses the very next connection on every shard, others served, del lets it back, list shows the set") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start("workers = 2\n" + upstream_of(b) + listener_at("127.0.0.1:0"), 1);
  CHECK(served("127.0.0.5", a.port(), "/ok?live=before"));

  Cli add = cli("deny add 127.0.0.5" + admin_flag(a));
  INFO(add.out);
  CHECK(add.code == 0);
  CHECK(add.out.find("agent: deny 127.0.0.5/32: added\n") != std::string::npos);
  CHECK(add.out.find("guard: not attached\n") != std::string::npos);
  // At once, with no wait: each accept compares its shard's copy with the
  // live version. Several connections, so both shards' sockets get some.
  constexpr int kTries = 8;
  int refusals = 0;
  for (int i = 0; i < kTries; ++i) refusals += refused("127.0.0.5", a.port(), "/ok?live=denied&n=" + std::to_string(i));
  CHECK(refusals == kTries);
  CHECK(served("127.0.0.6", a.port(), "/ok?live=other"));
  CHECK(a.stat("rejected_screened") == kTries);

  Cli list = cli("deny list" + admin_flag(a));
  CHECK(list.code == 0);
  CHECK(list.out.find("agent: 127.0.0.5/32\n") != std::string::npos);
  Cli again = cli("deny add 127.0.0.5/32" + admin_flag(a));
  CHECK(again.code == 0);
  CHECK(again.out.find("already there (unchanged)") != std::string::npos);

  Cli del = cli("deny del 127.0.0.5" + admin_flag(a));
  INFO(del.out);
  CHECK(del.code == 0);
  CHECK(del.out.find("agent: deny 127.0.0.5/32: removed\n") != std::string::npos);
  CHECK(served("127.0.0.5", a.port(), "/ok?live=after"));
  CHECK(cli("deny list" + admin_flag(a)).out.find("127.0.0.5") == std::string::npos);

  auto rec = b.wait_record([](const rig::Record& r) { return r.find("/ok?live=after") != nullptr; }, 3000);
  REQUIRE(rec);
  CHECK(rec->find("/ok?live=before") != nullptr);
  CHECK(rec->find("/ok?live=other") != nullptr);
  for (int i = 0; i < kTries; ++i) CHECK(rec->find("/ok?live=denied&n=" + std::to_string(i)) == nullptr);
  // The sampled log names source, listener and reason.
  CHECK(a.log().find("offload-agent: security: refused 127.0.0.5 on listener 127.0.0.1:0: denied") != std::string::npos);
}

TEST_CASE("live deny: a reload keeps what was denied live, on top of the re-read file") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start(upstream_of(b) + listener_at("127.0.0.1:0"), 1);
  REQUIRE(cli("deny add 127.0.0.9" + admin_flag(a)).code == 0);
  Cli reload = cli("reload" + admin_flag(a));
  INFO(reload.out);
  REQUIRE(reload.code == 0);
  CHECK(reload.out.find("reloaded: generation 2") != std::string::npos);
  CHECK(refused("127.0.0.9", a.port(), "/ok?reload=denied"));
  CHECK(served("127.0.0.10", a.port(), "/ok?reload=other"));
  CHECK(cli("deny list" + admin_flag(a)).out.find("agent: 127.0.0.9/32\n") != std::string::npos);
  // And a del after the reload reaches the new generation's set.
  REQUIRE(cli("deny del 127.0.0.9" + admin_flag(a)).code == 0);
  CHECK(served("127.0.0.9", a.port(), "/ok?reload=after"));
  auto rec = b.wait_record([](const rig::Record& r) { return r.find("/ok?reload=after") != nullptr; }, 3000);
  REQUIRE(rec);
  CHECK(rec->find("/ok?reload=denied") == nullptr);
}

TEST_CASE("live deny on one listener: --listener changes that listener's own list only, an unknown name is refused") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start(upstream_of(b) + listener_at("127.0.0.1:0", "name = \"front\"\n") +
              listener_at("127.0.0.1:0", "name = \"back\"\n"),
          2);
  Cli add = cli("deny add 127.0.0.31 --listener front" + admin_flag(a));
  CHECK_MESSAGE(add.code == 0, add.out);
  CHECK(add.out.find("agent: deny 127.0.0.31/32 on listener front: added\n") != std::string::npos);
  CHECK(refused("127.0.0.31", a.port(0), "/ok?front=denied"));
  CHECK(served("127.0.0.31", a.port(1), "/ok?back=served"));
  CHECK(served("127.0.0.32", a.port(0), "/ok?front=other"));
  CHECK(cli("deny list --listener front" + admin_flag(a)).out == "agent: 127.0.0.31/32\n");
  CHECK(cli("deny list --listener back" + admin_flag(a)).out.empty());
  CHECK(cli("deny list" + admin_flag(a)).out.find("127.0.0.31") == std::string::npos);  // not global
  // An allow on `back` inside a global deny: longest wins on back alone.
  REQUIRE(cli("deny add 127.0.0.32/31" + admin_flag(a)).code == 0);
  REQUIRE(cli("allow add 127.0.0.33 --listener back" + admin_flag(a)).code == 0);
  CHECK(served("127.0.0.33", a.port(1), "/ok?back=allowed"));
  CHECK(refused("127.0.0.33", a.port(0), "/ok?front=denied-globally"));
  Cli unknown = cli("deny add 127.0.0.31 --listener nosuch" + admin_flag(a));
  CHECK(unknown.code == 2);
  CHECK(line_count(unknown.out) == 1);
  CHECK(unknown.out.find("listener: bad value 'nosuch' (expected the name of a listener: front, back)") !=
        std::string::npos);
  Cli del = cli("deny del 127.0.0.31 --listener front" + admin_flag(a));
  CHECK(del.out.find("agent: deny 127.0.0.31/32 on listener front: removed\n") != std::string::npos);
  CHECK(served("127.0.0.31", a.port(0), "/ok?front=after"));
  auto rec = b.wait_record([](const rig::Record& r) { return r.find("/ok?front=after") != nullptr; }, 3000);
  REQUIRE(rec);
  CHECK(rec->count("/ok?front=denied") == 0);
  CHECK(rec->count("/ok?front=denied-globally") == 0);
}

TEST_CASE("live deny: open connections and tunnels from a newly denied source are closed, or kept with deny_established = keep") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SUBCASE("close (the default)") {
    Agent a;
    a.start(upstream_of(b) + listener_at("127.0.0.1:0") + listener_at("127.0.0.1:0", "proxy = \"passthrough\"\n"), 2);
    Client denied, other, tunnel;
    denied.set_source("127.0.0.7");
    other.set_source("127.0.0.8");
    tunnel.set_source("127.0.0.7");
    REQUIRE(denied.connect(a.port(0)));
    REQUIRE(other.connect(a.port(0)));
    REQUIRE(tunnel.connect(a.port(1)));
    for (Client* c : {&denied, &other, &tunnel}) {
      REQUIRE(c->send_all(get("/ok?open")));
      rig::ReadResult r = c->read_response(5000);
      REQUIRE_MESSAGE(r, r.error);
      CHECK(r.response->status == 200);
    }
    Cli add = cli("deny add 127.0.0.7" + admin_flag(a));
    REQUIRE_MESSAGE(add.code == 0, add.out);
    CHECK(denied.wait_closed(5000));
    CHECK(tunnel.wait_closed(5000));
    REQUIRE(other.send_all(get("/ok?still")));
    rig::ReadResult r = other.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(a.stat("closed_by_rules") == 2);
  }
  SUBCASE("keep") {
    Agent a;
    a.start("[security]\ndeny_established = \"keep\"\n" + upstream_of(b) + listener_at("127.0.0.1:0"), 1);
    Client kept;
    kept.set_source("127.0.0.7");
    REQUIRE(kept.connect(a.port()));
    REQUIRE(kept.send_all(get("/ok?kept=1")));
    REQUIRE(kept.read_response(5000));
    Cli add = cli("deny add 127.0.0.0/29" + admin_flag(a));
    REQUIRE_MESSAGE(add.code == 0, add.out);
    CHECK(refused("127.0.0.7", a.port(), "/ok?kept=new"));  // new ones are refused...
    REQUIRE(kept.send_all(get("/ok?kept=2")));             // ... the open one goes on
    rig::ReadResult r = kept.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    CHECK(a.stat("closed_by_rules") == 0);
  }
}

TEST_CASE("live deny: a bad prefix on the command line, at the endpoint or in the configuration is one line and exit 2") {
  Backend b;
  REQUIRE_MESSAGE(b.start(2), b.error());
  Agent a;
  a.start(upstream_of(b) + listener_at("127.0.0.1:0"), 1);
  for (const char* bad : {"10.0.0.1/8", "nowhere/8", "::1/129", "10.0.0.0/33"}) {
    Cli run = cli(std::string("deny add ") + bad + admin_flag(a));
    INFO(bad << ": " << run.out);
    CHECK(run.code == 2);
    CHECK(line_count(run.out) == 1);
  }
  CHECK(cli("allow add 300.0.0.0/8" + admin_flag(a)).code == 2);
  CHECK(cli("deny add" + admin_flag(a)).code == 2);  // no prefix
  // The endpoint checks too (a client other than the CLI): 400, one line.
  Client c;
  REQUIRE(c.connect(a.admin_port()));
  REQUIRE(c.send_all("POST /security/deny?cidr=10.0.0.1/8 HTTP/1.1\r\nHost: a\r\n\r\n"));
  rig::ReadResult r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 400);
  CHECK(r.response->body.find("10.0.0.1/8") != std::string::npos);
  CHECK(line_count(r.response->body) == 1);
  CHECK(cli("deny list" + admin_flag(a)).out.find("10.0.0") == std::string::npos);  // nothing was added
  CHECK(served("127.0.0.2", a.port(), "/ok?after-bad"));

  // Each bad entry in a file is named by its key.
  const std::string up = upstream_of(b);
  const std::vector<std::pair<std::string, std::string>> files = {
      {"[security]\ndeny = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n" + up + listener_at("127.0.0.1:0"), "security.deny[1]"},
      {up + listener_at("127.0.0.1:0", "security = { allow = [\"fe80::/10\", \"300.1.1.1\"] }\n"),
       "listener[0].security.allow[1]"},
      {up + listener_at("127.0.0.1:0", "security = { deny = \"10.0.0.0/8\" }\n"), "listener[0].security.deny"},
      {"[security]\ndeny_established = \"sometimes\"\n" + up + listener_at("127.0.0.1:0"), "security.deny_established"},
  };
  for (const auto& [toml, key] : files) {
    const std::string path = temp_file(toml);
    a.keep_file(path);
    Cli run = cli("check -c " + path);
    INFO(toml << " -> " << run.out);
    CHECK(run.code == 2);
    CHECK(line_count(run.out) == 1);
    CHECK(run.out.find(key) != std::string::npos);
  }
}

TEST_CASE("per-listener rules: one listener's deny leaves another served, the longest prefix deciding on each") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start("[security]\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.10.0/24\"]\n" + upstream_of(b) +
              listener_at("127.0.0.1:0", "security = { allow = [\"127.0.10.7/32\"], deny = [\"127.0.9.0/24\"] }\n") +
              listener_at("127.0.0.1:0"),
          2);
  CHECK(refused("127.0.9.1", a.port(0), "/ok?pl=9-on-0"));
  CHECK(served("127.0.9.1", a.port(1), "/ok?pl=9-on-1"));
  CHECK(served("127.0.10.7", a.port(0), "/ok?pl=10.7-on-0"));    // its /32 allow beats the global /24 deny
  CHECK(refused("127.0.10.7", a.port(1), "/ok?pl=10.7-on-1"));   // not on the other listener
  CHECK(refused("127.0.10.8", a.port(0), "/ok?pl=10.8-on-0"));
  CHECK(served("127.0.8.1", a.port(0), "/ok?pl=8-on-0"));
  // A live global deny reaches both listeners; the listener's own allow still ranks above a shorter one.
  REQUIRE(cli("deny add 127.0.8.0/24" + admin_flag(a)).code == 0);
  CHECK(refused("127.0.8.1", a.port(0), "/ok?pl=8-on-0-denied"));
  CHECK(refused("127.0.8.1", a.port(1), "/ok?pl=8-on-1-denied"));
  CHECK(a.listener_stat(0, "accepted") >= 0);
  auto rec = b.wait_record([](const rig::Record& r) { return r.find("/ok?pl=8-on-0") != nullptr; }, 3000);
  REQUIRE(rec);
  for (const char* t : {"/ok?pl=9-on-0", "/ok?pl=10.7-on-1", "/ok?pl=10.8-on-0", "/ok?pl=8-on-0-denied", "/ok?pl=8-on-1-denied"})
    CHECK_MESSAGE(rec->find(t) == nullptr, t);
}

TEST_CASE("live deny over IPv6: ::/64 refuses ::1 on an IPv6 listener and leaves IPv4 sources served") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start(upstream_of(b) + listener_at("[::1]:0") + listener_at("127.0.0.1:0"), 2);
  CHECK(served("", a.port(0), "/ok?v6=before", true));
  Cli add = cli("deny add ::/64" + admin_flag(a));
  INFO(add.out);
  REQUIRE(add.code == 0);
  CHECK(add.out.find("agent: deny ::/64: added") != std::string::npos);
  CHECK(refused("", a.port(0), "/ok?v6=denied", true));
  CHECK(served("127.0.0.2", a.port(1), "/ok?v4=served"));  // an IPv4 source is not inside an IPv6 prefix
  CHECK(cli("deny del ::/64" + admin_flag(a)).code == 0);
  CHECK(served("", a.port(0), "/ok?v6=after", true));
  // A longer IPv6 prefix elsewhere does not touch ::1.
  REQUIRE(cli("deny add 0:0:0:1::/64" + admin_flag(a)).code == 0);
  CHECK(served("", a.port(0), "/ok?v6=neighbour", true));
  auto rec = b.wait_record([](const rig::Record& r) { return r.find("/ok?v6=neighbour") != nullptr; }, 3000);
  REQUIRE(rec);
  CHECK(rec->find("/ok?v6=denied") == nullptr);
}

TEST_CASE("live deny: with no agent running the command says so in one line and changes nothing") {
  const uint16_t port = rig::unused_port();
  Cli run = cli("deny add 127.0.0.5 --admin 127.0.0.1:" + std::to_string(port));
  INFO(run.out);
  CHECK(run.out.find("nothing changed: no agent running") != std::string::npos);
  CHECK(line_count(run.out) == 1);
  CHECK(run.code == 1);
}

// Per-source limits are the agent's, not a shard's: with two shards, the
// kernel spreads one source's connections over both (SO_REUSEPORT hashes
// each connection's ports), and each shard counting on its own would let
// the source have up to twice its limit.
TEST_CASE("shards: max_clients_per_source and the request rate hold for the whole agent, not each shard") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  Agent a;
  a.start("workers = 2\n[security]\nmax_clients_per_source = 3\nrate = 1\nburst = 6\n" + upstream_of(b) +
              listener_at("127.0.0.1:0"),
          1);
  // Connections held open: the first three are served, every later one is
  // closed unanswered, whichever shard it reached.
  constexpr int kHeld = 10;
  std::vector<Client> held(kHeld);
  int served_held = 0, refused_held = 0;
  for (int i = 0; i < kHeld; ++i) {
    held[i].set_source("127.0.0.21");
    if (!held[i].connect(a.port()) || !held[i].send_all(get("/ok?held=" + std::to_string(i)))) {
      ++refused_held;
      continue;
    }
    rig::ReadResult r = held[i].read_response(3000);
    if (r && r.response->status == 200)
      ++served_held;
    else
      ++refused_held;
  }
  CHECK(served_held == 3);
  CHECK(refused_held == kHeld - 3);
  CHECK(a.stat("rejected_per_source") == kHeld - 3);
  // Three requests were taken from the bucket by the held connections; with
  // a fresh connection per request (two at a time at most, within the
  // connection limit), the other three of the burst pass and the rest get
  // 429, but for what the rate refilled while they ran.
  for (Client& c : held) c.close();
  const auto start = std::chrono::steady_clock::now();
  int ok = 0, limited = 0;
  for (int i = 0; i < 12; ++i) {
    rig::ReadResult r = request_from("127.0.0.21", a.port(), get("/ok?rate=" + std::to_string(i)));
    if (!r) continue;  // refused at accept while a closed one was still counted: neither
    ok += r.response->status == 200;
    limited += r.response->status == 429;
  }
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start).count();
  CHECK(limited > 0);
  CHECK(ok <= 3 + seconds + 1);
}
