// The access log of a running agent: one line per request with what the
// client and the server did, JSON that a JSON reader takes, a termination
// state for each way an exchange ends, logrotate's rename and SIGUSR1, and
// a log nobody reads that never stops the serving.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/offload-it-access-XXXXXX";
    REQUIRE(::mkdtemp(t) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

// The log's lines once there are at least `n` (the shard hands its buffer
// over within 100 ms); whatever there is after the bound.
std::vector<std::string> wait_lines(const std::string& path, size_t n, int timeout_ms = 5000) {
  const int64_t deadline = rig::now_ms() + timeout_ms;
  for (;;) {
    auto lines = read_lines(path);
    if (lines.size() >= n || rig::now_ms() >= deadline) return lines;
    rig::sleep_ms(20);
  }
}

void start(Backend& b, Proxy& p, ProxyOptions o) {
  REQUIRE_MESSAGE(b.start(8), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), o), p.error());
}

// The bytes of one request and its response over a connection of its own.
struct Exchange {
  std::string request;
  rig::ReadResult result;
  size_t received = 0;  // bytes the client got
};

Exchange exchange(uint16_t port, const std::string& request) {
  Exchange x;
  x.request = request;
  Client c;
  REQUIRE(c.connect(port));
  REQUIRE(c.send_all(request));
  x.result = c.read_response(5000);
  return x;
}

// /usr/bin/python3 reads every line as strict UTF-8 JSON; "" or its complaint.
std::string python_json_check(const std::string& path) {
  const std::string cmd =
      "/usr/bin/python3 -c 'import json,sys\n"
      "for i, l in enumerate(open(sys.argv[1], \"rb\").read().split(b\"\\n\")[:-1]):\n"
      "    o = json.loads(l.decode(\"utf-8\"))\n"
      "    assert isinstance(o, dict), i\n' " +
      path + " 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  std::string out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int status = ::pclose(f);
  return status == 0 ? "" : "python3 json: " + out;
}

const rig::Json* find_line(const std::vector<rig::Json>& lines, const std::string& target) {
  for (const auto& j : lines)
    if (j.str_or("target", "") == target) return &j;
  return nullptr;
}

}  // namespace

TEST_CASE("access log (combined): N requests give N lines with their method, target, status and bytes") {
  TempDir dir;
  const std::string log = dir.path + "/access.log";
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.extra_flags = {"--access-log", log};
  start(b, p, o);
  if (!p.is_agent()) return;

  constexpr int kRequests = 20;
  Client c;
  REQUIRE(c.connect(p.port()));
  std::vector<size_t> request_bytes;
  for (int i = 0; i < kRequests; ++i) {
    const std::string method = i % 2 == 0 ? "GET" : "POST";
    std::string req = method + " /size/" + std::to_string(i * 10) + "?n=" + std::to_string(i) +
                      " HTTP/1.1\r\nHost: t\r\nUser-Agent: it/" + std::to_string(i) + "\r\nReferer: http://ref/" +
                      std::to_string(i) + "\r\n";
    req += method == "POST" ? "Content-Length: 3\r\n\r\nabc" : "\r\n";
    request_bytes.push_back(req.size());
    REQUIRE(c.send_all(req));
    auto r = c.read_response();
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->body.size() == size_t(i * 10));
  }
  auto lines = wait_lines(log, kRequests);
  REQUIRE(lines.size() == kRequests);
  // One combined line, every field in place (the long line is the format).
  const std::regex re(
      R"re(^127\.0\.0\.1 - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "(\w+) (\S+) HTTP/1\.1" (\d{3}) (\d+) "([^"]*)" "([^"]*)" rt=\d+\.\d{3} qt=\d+\.\d{3} uct=\d+\.\d{3} urt=\d+\.\d{3} ups=tcp://127\.0\.0\.1:(\d+) rx=(\d+) tx=(\d+) lst="[^"]+" end=done$)re");
  for (int i = 0; i < kRequests; ++i) {
    INFO("line " << i << ": " << lines[size_t(i)]);
    std::smatch m;
    REQUIRE(std::regex_match(lines[size_t(i)], m, re));
    CHECK(m[1] == (i % 2 == 0 ? "GET" : "POST"));
    CHECK(m[2] == "/size/" + std::to_string(i * 10) + "?n=" + std::to_string(i));
    CHECK(m[3] == "200");
    CHECK(std::stoul(m[4]) == size_t(i * 10));
    CHECK(m[5] == "http://ref/" + std::to_string(i));
    CHECK(m[6] == "it/" + std::to_string(i));
    CHECK(std::stoul(m[7]) == b.port());
    CHECK(std::stoul(m[8]) == request_bytes[size_t(i)]);
    CHECK(std::stoul(m[9]) > size_t(i * 10));  // the head and the body
  }
  CHECK(p.stat("access_log_dropped") == 0);
}

TEST_CASE("access log (json): valid JSON from hostile bytes, and a termination state for each way it ends") {
  TempDir dir;
  const std::string log = dir.path + "/access.json";
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.response_timeout_ms = 300;
  o.header_bytes_max = "2k";
  o.extra_flags = {"--access-log", log, "--access-log-format", "json"};
  start(b, p, o);
  if (!p.is_agent()) return;

  // Bytes a JSON line must survive: quotes, a backslash, a tab, invalid UTF-8.
  auto ok = exchange(p.port(), rig::get_request("/ok", "User-Agent: a\"b\\c\td\xff\xfe\xc3(\r\n"));
  REQUIRE(ok.result);
  CHECK(ok.result.response->status == 200);
  const std::string script = rig::hex("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope");
  auto not_found = exchange(p.port(), rig::get_request("/nf", "X-Script: " + script + "\r\n"));
  REQUIRE(not_found.result);
  CHECK(not_found.result.response->status == 404);
  auto reset = exchange(p.port(), rig::get_request("/close"));
  REQUIRE(reset.result);
  CHECK(reset.result.response->status == 502);
  auto silent = exchange(p.port(), rig::get_request("/silent"));
  REQUIRE(silent.result);
  CHECK(silent.result.response->status == 504);
  auto bad = exchange(p.port(), "GARBAGE\x01 /x HTTP/1.1\r\n\r\n");
  REQUIRE(bad.result);
  CHECK(bad.result.response->status == 400);
  auto big = exchange(p.port(), rig::get_request("/big", "X-Big: " + std::string(4000, 'b') + "\r\n"));
  REQUIRE(big.result);
  CHECK(big.result.response->status == 431);
  {
    // The client resets its connection while the server takes its time.
    Client c;
    REQUIRE(c.connect(p.port()));
    REQUIRE(c.send_all(rig::get_request("/sleep/2000")));
    REQUIRE(b.wait_record([](const rig::Record& r) { return r.find("/sleep/2000") != nullptr; }, 5000));
    linger l{1, 0};
    REQUIRE(::setsockopt(c.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
    c.close();
  }

  auto lines = wait_lines(log, 7);
  REQUIRE(lines.size() == 7);
  CHECK(python_json_check(log) == "");
  std::vector<rig::Json> parsed;
  for (const auto& l : lines) {
    std::string error;
    auto j = rig::Json::parse(l, &error);
    REQUIRE_MESSAGE(j, error << ": " << l);
    parsed.push_back(*j);
  }
  struct Want {
    const char* target;
    int status;
    const char* end;
  };
  for (const Want& w : {Want{"/ok", 200, "done"}, Want{"/nf", 404, "done"}, Want{"/close", 502, "upstream_reset"},
                        Want{"/silent", 504, "timeout_response"}, Want{"/x", 400, "parse_error"},
                        Want{"/big", 431, "parse_error"}, Want{"/sleep/2000", 0, "client_abort_waiting"}}) {
    INFO(std::string(w.target));
    const rig::Json* j = find_line(parsed, w.target);
    REQUIRE(j != nullptr);
    CHECK(j->int_or("status", -1) == w.status);
    CHECK(j->str_or("termination", "") == w.end);
    CHECK(j->str_or("remote_addr", "") == "127.0.0.1");
  }
  const rig::Json* j = find_line(parsed, "/ok");
  CHECK(j->str_or("method", "") == "GET");
  CHECK(j->int_or("body_bytes_sent", -1) == int64_t(ok.result.response->body.size()));
  CHECK(j->int_or("bytes_received", -1) == int64_t(ok.request.size()));
  CHECK(j->str_or("upstream", "") == "tcp://127.0.0.1:" + std::to_string(b.port()));
  // The agent's own 400 had no upstream: its times and server are null.
  const rig::Json* e = find_line(parsed, "/x");
  REQUIRE(e->get("upstream") != nullptr);
  CHECK(e->get("upstream")->type == rig::Json::Type::kNull);
  CHECK(e->get("upstream_response_time")->type == rig::Json::Type::kNull);
  CHECK(find_line(parsed, "/nf")->int_or("body_bytes_sent", -1) == 4);
}

TEST_CASE("access log: after a rename and SIGUSR1 the next lines go to a new file at the path") {
  TempDir dir;
  const std::string log = dir.path + "/access.log";
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.extra_flags = {"--access-log", log};
  start(b, p, o);
  if (!p.is_agent()) return;
  for (const char* t : {"/ok?1", "/ok?2", "/ok?3"}) REQUIRE(rig::http_get(p.port(), t));
  REQUIRE(wait_lines(log, 3).size() == 3);
  REQUIRE(std::rename(log.c_str(), (log + ".1").c_str()) == 0);
  p.child().signal(SIGUSR1);
  // The reopen creates the file: from then on, lines land there.
  const int64_t deadline = rig::now_ms() + 5000;
  while (!std::filesystem::exists(log) && rig::now_ms() < deadline) rig::sleep_ms(10);
  REQUIRE(std::filesystem::exists(log));
  for (const char* t : {"/ok?4", "/ok?5"}) REQUIRE(rig::http_get(p.port(), t));
  auto fresh = wait_lines(log, 2);
  REQUIRE(fresh.size() == 2);
  CHECK(fresh[0].find("/ok?4") != std::string::npos);
  CHECK(fresh[1].find("/ok?5") != std::string::npos);
  auto old = read_lines(log + ".1");
  CHECK(old.size() == 3);
  CHECK(p.child().running());
}

TEST_CASE("access log: a FIFO nobody reads: every request is served and every line counted as dropped") {
  TempDir dir;
  const std::string fifo = dir.path + "/access.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  Backend b;
  Proxy p;
  ProxyOptions o;
  o.extra_flags = {"--access-log", fifo};
  start(b, p, o);
  if (!p.is_agent()) return;
  constexpr int kRequests = 30;
  Client c;
  REQUIRE(c.connect(p.port()));
  for (int i = 0; i < kRequests; ++i) {
    REQUIRE(c.send_all(rig::get_request("/ok")));
    auto r = c.read_response();
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
  }
  const int64_t deadline = rig::now_ms() + 5000;
  while (p.stat("access_log_dropped") < kRequests && rig::now_ms() < deadline) rig::sleep_ms(20);
  CHECK(p.stat("access_log_dropped") == kRequests);
  auto metrics = rig::http_get(p.admin_port(), "/metrics");
  REQUIRE(metrics);
  CHECK(metrics.response->body.find("offload_access_log_dropped_total " + std::to_string(kRequests)) !=
        std::string::npos);
}
