// The access log's lines (both formats, escaping, bounds) and its writer
// thread (order, reopen after a rename, the bound on what waits for it).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "http/http_parser.h"
#include "ops/access_log.h"

using offload::AccessEntry;
using offload::AccessFormat;
using offload::AccessLogWriter;
using offload::AccessRecord;
using offload::Termination;

namespace {

AccessEntry sample() {
  AccessEntry e;
  e.remote = "127.0.0.1";
  e.method = "GET";
  e.target = "/a?b=c";
  e.protocol = "HTTP/1.1";
  e.status = 200;
  e.body_bytes = 5;
  e.referer = "http://r/";
  e.user_agent = "ua/1";
  e.upstream = "tcp://127.0.0.1:8000";
  e.listener = "web";
  e.received = 80;
  e.sent = 120;
  e.total_ms = 1234;
  e.queue_ms = 0;
  e.connect_ms = 2;
  e.upstream_ms = 1230;
  e.end = Termination::kDone;
  return e;
}

std::string line(AccessFormat f, const AccessEntry& e) {
  std::string out;
  offload::format_access_line(
      f, e, f == AccessFormat::kJson ? "2026-12-01T17:55:00+00:00" : "[01/Dec/2026:17:55:00 +0000]", out);
  return out;
}

std::string json_escaped(std::string_view in) {
  std::string out;
  offload::escape_json(in, out);
  return out;
}

std::string combined_escaped(std::string_view in) {
  std::string out;
  offload::escape_combined(in, out);
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string temp_dir() {
  char dir[] = "/tmp/offload-access-log-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  return dir;
}

// Waits (bounded) until the writer has written `n` lines.
bool wait_written(const AccessLogWriter& w, uint64_t n) {
  for (int i = 0; i < 2000 && w.written() < n; ++i) ::usleep(1000);
  return w.written() >= n;
}

}  // namespace

TEST_CASE("combined: nginx's fields, then times in seconds, upstream, bytes, listener and termination") {
  CHECK(line(AccessFormat::kCombined, sample()) ==
        "127.0.0.1 - [01/Dec/2026:17:55:00 +0000] \"GET /a?b=c HTTP/1.1\" 200 5 \"http://r/\" \"ua/1\" "
        "rt=1.234 qt=0.000 uct=0.002 urt=1.230 ups=tcp://127.0.0.1:8000 rx=80 tx=120 lst=\"web\" end=done\n");
  AccessEntry e = sample();
  e.referer = e.user_agent = e.upstream = {};
  e.queue_ms = e.connect_ms = e.upstream_ms = -1;
  e.status = 400;
  e.end = Termination::kParseError;
  CHECK(line(AccessFormat::kCombined, e) ==
        "127.0.0.1 - [01/Dec/2026:17:55:00 +0000] \"GET /a?b=c HTTP/1.1\" 400 5 \"-\" \"-\" "
        "rt=1.234 qt=- uct=- urt=- ups=- rx=80 tx=120 lst=\"web\" end=parse_error\n");
}

TEST_CASE("combined: quotes, backslashes, control and non-ASCII bytes are \\xHH, so a line stays one line") {
  CHECK(combined_escaped("a\"b\\c") == "a\\x22b\\x5Cc");
  CHECK(combined_escaped(std::string("x\r\ny\0z\x7f\xff", 8)) == "x\\x0D\\x0Ay\\x00z\\x7F\\xFF");
  AccessEntry e = sample();
  e.user_agent = "evil\n127.0.0.1 - fake";
  const std::string l = line(AccessFormat::kCombined, e);
  CHECK(l.find('\n') == l.size() - 1);
}

TEST_CASE("json: one object per line, numbers as numbers, absent times and upstream as null") {
  CHECK(line(AccessFormat::kJson, sample()) ==
        "{\"time\":\"2026-12-01T17:55:00+00:00\",\"remote_addr\":\"127.0.0.1\",\"method\":\"GET\","
        "\"target\":\"/a?b=c\",\"protocol\":\"HTTP/1.1\",\"status\":200,\"body_bytes_sent\":5,"
        "\"referer\":\"http://r/\",\"user_agent\":\"ua/1\",\"request_time\":1.234,\"queue_time\":0.000,"
        "\"upstream_connect_time\":0.002,\"upstream_response_time\":1.230,\"upstream\":\"tcp://127.0.0.1:8000\","
        "\"bytes_received\":80,\"bytes_sent\":120,\"listener\":\"web\",\"termination\":\"done\"}\n");
  AccessEntry e = sample();
  e.upstream = {};
  e.queue_ms = e.connect_ms = e.upstream_ms = -1;
  const std::string l = line(AccessFormat::kJson, e);
  CHECK(l.find("\"queue_time\":null,\"upstream_connect_time\":null,\"upstream_response_time\":null,"
               "\"upstream\":null") != std::string::npos);
}

TEST_CASE("json: escapes quotes and control bytes, keeps valid UTF-8, replaces each invalid byte with U+FFFD") {
  CHECK(json_escaped("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(json_escaped(std::string("\n\r\t\0\x01\x1f\x7f", 7)) == "\\n\\r\\t\\u0000\\u0001\\u001f\\u007f");
  CHECK(json_escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(json_escaped("\xff") == "\\ufffd");
  CHECK(json_escaped("\xc3") == "\\ufffd");                 // cut short
  CHECK(json_escaped("\xc0\xaf") == "\\ufffd\\ufffd");      // overlong '/'
  CHECK(json_escaped("\xed\xa0\x80") == "\\ufffd\\ufffd\\ufffd");  // a surrogate
  CHECK(json_escaped("\xf4\x90\x80\x80") == "\\ufffd\\ufffd\\ufffd\\ufffd");  // past U+10FFFF
  CHECK(json_escaped("a\xe2\x82z") == "a\\ufffd\\ufffdz");
}

TEST_CASE("values copied from a request are bounded: the rest is cut and marked") {
  std::string to;
  offload::copy_bounded(to, "short", 10);
  CHECK(to == "short");
  offload::copy_bounded(to, std::string(5000, 'a'), 10);
  CHECK(to == std::string(10, 'a') + "...");

  const std::string head = "GET /" + std::string(4000, 'x') + " HTTP/1.1\r\nHost: h\r\nUser-Agent: " +
                           std::string(3000, 'u') + "\r\nreferer: r\r\n\r\n";
  offload::http::Limits limits;
  limits.header_bytes_max = 64 * 1024;
  offload::http::Parser parser(offload::http::Parser::Kind::kRequest, limits);
  REQUIRE(parser.parse_head(head) == offload::http::Result::kComplete);
  AccessRecord r;
  r.capture(parser.head(), head);
  CHECK(r.method == "GET");
  CHECK(r.protocol == "HTTP/1.1");
  CHECK(r.target.size() == offload::kAccessTargetMax + 3);
  CHECK(r.target.starts_with("/xxx"));
  CHECK(r.user_agent.size() == offload::kAccessFieldMax + 3);
  CHECK(r.referer == "r");  // field names in any case
}

TEST_CASE("a head the parser refused: its first line as far as it came") {
  AccessRecord r;
  r.capture_raw("GET /x HTTP/1.1\r\nHost");
  CHECK(r.method == "GET");
  CHECK(r.target == "/x");
  CHECK(r.protocol == "HTTP/1.1");
  r.reset();
  r.capture_raw("GARBAGE\r\n");
  CHECK(r.method == "GARBAGE");
  CHECK(r.target.empty());
  r.reset();
  r.capture_raw(std::string(5000, 'M'));
  CHECK(r.method.size() == offload::kAccessMethodMax + 3);
}

TEST_CASE("the first cause of an exchange's end is kept") {
  AccessRecord r;
  r.end_with(Termination::kTimeoutResponse);
  r.end_with(Termination::kUpstreamError);
  CHECK(r.end == Termination::kTimeoutResponse);
  CHECK(offload::termination_name(r.end) == "timeout_response");
  r.reset();
  CHECK(r.end == Termination::kUnset);
}

TEST_CASE("writer: lines in order to the file; after a rename and reopen(), the next go to a new file") {
  const std::string dir = temp_dir();
  const std::string path = dir + "/access.log";
  std::atomic<uint64_t> dropped{0};
  {
    AccessLogWriter w(path);
    std::string buf = "one\ntwo\n";
    REQUIRE(w.submit(buf, 2, &dropped));
    CHECK(buf.empty());
    buf = "three\n";
    REQUIRE(w.submit(buf, 1, &dropped));
    REQUIRE(wait_written(w, 3));
    REQUIRE(std::rename(path.c_str(), (path + ".1").c_str()) == 0);
    w.reopen();
    buf = "four\n";
    REQUIRE(w.submit(buf, 1, &dropped));
    REQUIRE(wait_written(w, 4));
  }
  CHECK(slurp(path + ".1") == "one\ntwo\nthree\n");
  CHECK(slurp(path) == "four\n");
  CHECK(dropped.load() == 0);
  std::remove((path + ".1").c_str());
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("writer: a path that cannot be opened fails at once, naming it") {
  CHECK_THROWS_WITH(AccessLogWriter("/nonexistent-dir/access.log"),
                    doctest::Contains("access_log: cannot open '/nonexistent-dir/access.log'"));
}

TEST_CASE("writer: a FIFO with no reader: buffers are taken and their lines counted as dropped") {
  const std::string dir = temp_dir();
  const std::string path = dir + "/fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  std::atomic<uint64_t> dropped{0};
  {
    AccessLogWriter w(path);  // no reader: not an error
    std::string buf = "a\nb\nc\n";
    REQUIRE(w.submit(buf, 3, &dropped));
    for (int i = 0; i < 2000 && dropped.load() < 3; ++i) ::usleep(1000);
  }
  CHECK(dropped.load() == 3);
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("writer: a reader that reads nothing fills the bound; then submit refuses and nothing blocks") {
  const std::string dir = temp_dir();
  const std::string path = dir + "/fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  const int reader = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(reader >= 0);
  std::atomic<uint64_t> dropped{0};
  constexpr size_t kBound = 256 * 1024;
  const std::string chunk(16 * 1024 - 1, 'x');
  int refused = 0;
  {
    AccessLogWriter w(path, kBound);
    // The pipe takes 64 KiB, the queue kBound: far fewer than 100 chunks.
    for (int i = 0; i < 100; ++i) {
      std::string buf = chunk + "\n";
      if (!w.submit(buf, 1, &dropped)) ++refused;
    }
    CHECK(refused > 50);
    // Ending waits at most about a second for a reader that never reads;
    // what it could not write is counted.
  }
  // Every line was written (the pipe holds four), refused, or dropped.
  CHECK(dropped.load() + uint64_t(refused) >= 96);
  CHECK(dropped.load() + uint64_t(refused) <= 100);
  ::close(reader);
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("writer: a full disk (/dev/full): the write fails, its lines are counted as dropped") {
  std::atomic<uint64_t> dropped{0};
  {
    AccessLogWriter w("/dev/full");
    std::string buf = "a\nb\n";
    REQUIRE(w.submit(buf, 2, &dropped));
    for (int i = 0; i < 2000 && dropped.load() < 2; ++i) ::usleep(1000);
  }
  CHECK(dropped.load() == 2);
}
