// Ordinary requests, byte for byte as curl, browsers and HTTP libraries send
// them, each through the agent to the recording backend: what the backend
// received (method, target, body, framing, the fields that must pass) and
// what the client got. Then a few with the real curl binary.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "cases.h"
#include "rig.h"

using cases::start_pair;
using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

constexpr int kWait = 10000;
constexpr size_t kBodyKept = 256 * 1024;  // the backend's record keeps this much of a body

struct Ordinary {
  const char* name;
  std::string request;  // "{host}" stands for 127.0.0.1:PORT
  // What the backend must receive.
  std::string method, target, body;
  std::vector<std::string> forwarded_lines;  // "Name: value" lines the forwarded head must hold
  // What the client must get.
  int status = 200;
  std::string response_body;
  bool closes = false;
  bool head = false;           // a HEAD request: no body in the response
  bool wait_continue = false;  // send the head, wait for 100 Continue, then the body
};

std::string replace_host(std::string s, const std::string& host) {
  for (size_t at = s.find("{host}"); at != std::string::npos; at = s.find("{host}", at + host.size()))
    s.replace(at, 6, host);
  return s;
}

const std::string kCookie =
    "Cookie: session=4f2a9c1e7b3d4e8f9a0b1c2d3e4f5a6b; _ga=GA1.1.1234567890.1700000000; "
    "_ga_ABCDEF1234=GS1.1.1700000000.1.1.1700000100.0.0.0; prefs=%7B%22theme%22%3A%22dark%22%2C%22lang%22%3A%22en%22%7D; "
    "csrftoken=Xy12Zw34Ab56Cd78Ef90Gh12Ij34Kl56Mn78Op90Qr12St34";

std::vector<Ordinary> ordinary_requests() {
  const std::string form = "name=J%C3%BCrgen+M%C3%BCller&email=j%40example.test&agree=on";
  const std::string json = "{\"id\":42,\"tags\":[\"a\",\"b\"],\"nested\":{\"ok\":true,\"note\":\"caf\\u00e9\"}}";
  const std::string py_json = "{\"key\": \"value\", \"n\": 1}";
  const std::string multipart =
      "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n"
      "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"file\"; "
      "filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile contents\nline 2\n\r\n"
      "------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n";
  const std::string upload = "0123456789abcdefhello, chunked upload";
  const std::string big_upload = rig::pattern_string(300000);
  std::vector<Ordinary> v;
  {
    Ordinary o{"curl GET"};
    o.request = "GET /size/1000?curl HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    o.method = "GET", o.target = "/size/1000?curl";
    o.forwarded_lines = {"User-Agent: curl/7.88.1", "Accept: */*", "Host: {host}"};
    o.response_body = rig::pattern_string(1000);
    v.push_back(o);
  }
  {
    Ordinary o{"curl -d (form-urlencoded POST)"};
    o.request = "POST /echo?curl-form HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Content-Length: " + std::to_string(form.size()) +
                "\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n" + form;
    o.method = "POST", o.target = "/echo?curl-form", o.body = form;
    o.forwarded_lines = {"Content-Type: application/x-www-form-urlencoded"};
    o.response_body = form;
    v.push_back(o);
  }
  {
    Ordinary o{"curl -X PUT with JSON"};
    o.request = "PUT /echo?curl-json HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Content-Type: application/json\r\nContent-Length: " + std::to_string(json.size()) + "\r\n\r\n" + json;
    o.method = "PUT", o.target = "/echo?curl-json", o.body = json;
    o.forwarded_lines = {"Content-Type: application/json"};
    o.response_body = json;
    v.push_back(o);
  }
  {
    Ordinary o{"curl -d '' (POST with Content-Length: 0)"};
    o.request = "POST /echo?empty-post HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Content-Length: 0\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n";
    o.method = "POST", o.target = "/echo?empty-post";
    v.push_back(o);
  }
  {
    Ordinary o{"curl -T - (chunked PUT upload)"};
    o.request = "PUT /echo?chunked-upload HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n15\r\nhello, chunked upload\r\n0\r\n\r\n";
    o.method = "PUT", o.target = "/echo?chunked-upload", o.body = upload;
    o.response_body = upload;
    v.push_back(o);
  }
  {
    Ordinary o{"curl -I (HEAD)"};
    o.request = "HEAD /size/321?curl-head HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    o.method = "HEAD", o.target = "/size/321?curl-head";
    o.head = true;
    v.push_back(o);
  }
  {
    Ordinary o{"curl -X DELETE"};
    o.request = "DELETE /echo?delete=7 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    o.method = "DELETE", o.target = "/echo?delete=7";
    v.push_back(o);
  }
  {
    Ordinary o{"browser CORS preflight (OPTIONS)"};
    o.request = "OPTIONS /echo?preflight HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\nAccept: */*\r\n"
                "Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type,x-token\r\n"
                "Origin: http://app.example.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\nSec-Fetch-Mode: cors\r\n"
                "Sec-Fetch-Site: same-site\r\nSec-Fetch-Dest: empty\r\nReferer: http://app.example.test/\r\n"
                "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n";
    o.method = "OPTIONS", o.target = "/echo?preflight";
    o.forwarded_lines = {"Access-Control-Request-Method: PUT", "Origin: http://app.example.test"};
    v.push_back(o);
  }
  {
    Ordinary o{"OPTIONS * (asterisk-form)"};
    o.request = "OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n";
    o.method = "OPTIONS", o.target = "*";
    o.status = 404, o.response_body = "not found\n";  // the backend has no "*"
    v.push_back(o);
  }
  {
    Ordinary o{"browser GET of a page, with cookies and conditionals"};
    o.request =
        "GET /ok?page=1&q=caf%C3%A9+au+lait HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
        "Cache-Control: max-age=0\r\n"
        "sec-ch-ua: \"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"\r\n"
        "sec-ch-ua-mobile: ?0\r\nsec-ch-ua-platform: \"Linux\"\r\nUpgrade-Insecure-Requests: 1\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36\r\n"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
        "application/signed-exchange;v=b3;q=0.7\r\n"
        "Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\n"
        "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9,de;q=0.8,fr;q=0.7\r\n" +
        kCookie + "\r\nIf-None-Match: W/\"5e15153d-120f\"\r\nIf-Modified-Since: Tue, 07 Nov 2023 10:21:47 GMT\r\n\r\n";
    o.method = "GET", o.target = "/ok?page=1&q=caf%C3%A9+au+lait";
    o.forwarded_lines = {kCookie, "sec-ch-ua-platform: \"Linux\"", "Upgrade-Insecure-Requests: 1",
                         "If-None-Match: W/\"5e15153d-120f\"", "Accept-Language: en-US,en;q=0.9,de;q=0.8,fr;q=0.7"};
    o.response_body = "ok\n";
    v.push_back(o);
  }
  {
    Ordinary o{"browser multipart/form-data upload"};
    o.request = "POST /echo?multipart HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\nContent-Length: " +
                std::to_string(multipart.size()) +
                "\r\nContent-Type: multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW\r\n"
                "Origin: http://{host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 "
                "Firefox/121.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
                "Referer: http://{host}/form\r\n" + kCookie + "\r\n\r\n" + multipart;
    o.method = "POST", o.target = "/echo?multipart", o.body = multipart;
    o.forwarded_lines = {"Content-Type: multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW"};
    o.response_body = multipart;
    v.push_back(o);
  }
  {
    Ordinary o{"Python requests GET (keep-alive, gzip)"};
    o.request = "GET /size/50?requests HTTP/1.1\r\nHost: {host}\r\nUser-Agent: python-requests/2.31.0\r\n"
                "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n";
    o.method = "GET", o.target = "/size/50?requests";
    o.forwarded_lines = {"Accept-Encoding: gzip, deflate", "User-Agent: python-requests/2.31.0"};
    o.response_body = rig::pattern_string(50);
    v.push_back(o);
  }
  {
    Ordinary o{"Python requests POST json="};
    o.request = "POST /echo?requests-json HTTP/1.1\r\nHost: {host}\r\nUser-Agent: python-requests/2.31.0\r\n"
                "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nContent-Length: " +
                std::to_string(py_json.size()) + "\r\nContent-Type: application/json\r\n\r\n" + py_json;
    o.method = "POST", o.target = "/echo?requests-json", o.body = py_json;
    o.response_body = py_json;
    v.push_back(o);
  }
  {
    Ordinary o{"Python urllib GET (Connection: close)"};
    o.request = "GET /ok?urllib HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: {host}\r\n"
                "User-Agent: Python-urllib/3.11\r\nConnection: close\r\n\r\n";
    o.method = "GET", o.target = "/ok?urllib";
    o.forwarded_lines = {"Accept-Encoding: identity"};
    o.response_body = "ok\n";
    o.closes = true;
    v.push_back(o);
  }
  {
    Ordinary o{"Node fetch (lower-case field names)"};
    o.request = "GET /ok?node HTTP/1.1\r\nhost: {host}\r\nconnection: keep-alive\r\naccept: */*\r\n"
                "accept-language: *\r\nsec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\n\r\n";
    o.method = "GET", o.target = "/ok?node";
    o.forwarded_lines = {"host: {host}", "user-agent: node", "sec-fetch-mode: cors"};
    o.response_body = "ok\n";
    v.push_back(o);
  }
  {
    Ordinary o{"Go net/http PATCH"};
    const std::string patch = "{\"name\":\"new\"}";
    o.request = "PATCH /echo?go HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: " +
                std::to_string(patch.size()) +
                "\r\nContent-Type: application/merge-patch+json\r\nAccept-Encoding: gzip\r\n\r\n" + patch;
    o.method = "PATCH", o.target = "/echo?go", o.body = patch;
    o.response_body = patch;
    v.push_back(o);
  }
  {
    Ordinary o{"an absolute-form target (as sent to a proxy)"};
    o.request = "GET http://example.test/ok?absolute HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\n"
                "Accept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n";
    o.method = "GET", o.target = "/ok?absolute";
    o.forwarded_lines = {"Host: example.test"};
    o.response_body = "ok\n";
    v.push_back(o);
  }
  {
    Ordinary o{"curl upload with Expect: 100-continue"};
    o.request = "POST /echo?expect-upload HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                "Content-Length: " + std::to_string(big_upload.size()) +
                "\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\n" + big_upload;
    o.method = "POST", o.target = "/echo?expect-upload", o.body = big_upload;
    o.response_body = big_upload;
    o.wait_continue = true;
    v.push_back(o);
  }
  return v;
}

// Sends `o` on `c` and checks the client's side. False if the connection is no longer usable.
bool run_ordinary(Client& c, const Ordinary& o, const std::string& host) {
  std::string req = replace_host(o.request, host);
  size_t head_end = req.find("\r\n\r\n") + 4;
  if (o.wait_continue) {
    REQUIRE(c.send_all(std::string_view(req).substr(0, head_end)));
    // The interim response alone comes first, on the raw bytes.
    const std::string want = "HTTP/1.1 100 Continue\r\n\r\n";
    const int64_t deadline = rig::now_ms() + kWait;
    while (c.buffer().size() < want.size() && rig::now_ms() < deadline) {
      int n = c.recv_some(want.size() - c.buffer().size(), 100);
      if (n == 0 || n == -2) break;
    }
    CHECK(c.buffer() == want);
    c.buffer().clear();
    REQUIRE(c.send_all(std::string_view(req).substr(head_end)));
  } else {
    REQUIRE(c.send_all(req));
  }
  auto r = c.read_response(kWait, o.head);
  CHECK_MESSAGE(r, r.error);
  if (!r) return false;
  CHECK(r.response->status == o.status);
  CHECK_SAME_BYTES(r.response->body, o.response_body);
  CHECK(r.response->interim.empty());
  CHECK(r.response->closes() == o.closes);
  if (o.head) CHECK(r.response->header("Content-Length") == "321");
  return !r.response->closes();
}

void check_backend(const rig::Record& rec, const Ordinary& o, const std::string& host) {
  const auto* q = rec.find(o.target);
  CHECK_MESSAGE(q, "the backend did not receive " << o.target);
  if (q == nullptr) return;  // the other cases still run
  INFO("forwarded: " << q->raw.substr(0, q->raw.find("\r\n\r\n") + 4));
  CHECK(q->complete);
  CHECK(q->method == o.method);
  CHECK(q->version == "HTTP/1.1");
  CHECK_SAME_BYTES(q->body, o.body.substr(0, kBodyKept));
  CHECK(q->body_bytes == o.body.size());
  std::string head = q->raw.substr(0, q->raw.find("\r\n\r\n") + 2);
  for (const auto& line : o.forwarded_lines) {
    std::string want = "\r\n" + replace_host(line, host) + "\r\n";
    CHECK_MESSAGE(head.find(want) != std::string::npos, "missing: " << want);
  }
  // One framing, the agent's own: a body goes with its length, never chunked.
  CHECK(head.find("Transfer-Encoding") == std::string::npos);
  CHECK(head.find("Expect:") == std::string::npos);
  if (!o.body.empty()) CHECK(head.find("\r\nContent-Length: " + std::to_string(o.body.size()) + "\r\n") != std::string::npos);
}

}  // namespace

TEST_CASE("ordinary requests from curl, browsers and HTTP libraries, each on its own connection") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  const std::string host = "127.0.0.1:" + std::to_string(p.port());
  for (const auto& o : ordinary_requests()) {
    std::string name = o.name;
    CAPTURE(name);
    Client c;
    REQUIRE(c.connect(p.port()));
    if (run_ordinary(c, o, host)) {
      // The connection stays usable after it.
      REQUIRE(c.send_all(rig::get_request("/size/3?after")));
      auto next = c.read_response(kWait);
      CHECK_MESSAGE(next, next.error);
      if (next) CHECK(next.response->body == rig::pattern_string(3));
    }
    auto rec = b.record();
    REQUIRE(rec);
    check_backend(*rec, o, host);
    REQUIRE(b.reset());
  }
}

TEST_CASE("ordinary requests one after another on one keep-alive connection") {
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  const std::string host = "127.0.0.1:" + std::to_string(p.port());
  Client c;
  REQUIRE(c.connect(p.port()));
  int sent = 0;
  for (const auto& o : ordinary_requests()) {
    if (o.closes) continue;
    std::string name = o.name;
    CAPTURE(name);
    if (!run_ordinary(c, o, host)) {
      // Broken: carry on over a new connection so the other cases still run.
      REQUIRE(c.connect(p.port()));
    }
    ++sent;
  }
  auto rec = b.record();
  REQUIRE(rec);
  for (const auto& o : ordinary_requests()) {
    if (o.closes) continue;
    std::string name = o.name;
    CAPTURE(name);
    check_backend(*rec, o, host);
  }
  CHECK(sent >= 15);
  if (p.is_agent()) CHECK(p.stat("accepted") == 1);
}

// ------------------------------------------------------------ the real curl

namespace {

bool have_curl() { return ::access("/usr/bin/curl", X_OK) == 0; }

struct CurlRun {
  int code = -1;
  std::string output;  // stdout (the body, or headers with -I), then "\nstatus=NNN\n"
};

// Runs curl with `args` and the URL; its stdout is read through stderr (the
// rig captures stderr).
CurlRun curl(const std::vector<std::string>& args, const std::string& url, const std::string& stdin_text = "") {
  // $0 is what goes to curl's standard input.
  const std::string script = "printf '%s' \"$0\" | curl -s -S --max-time 20 -w '\\nstatus=%{http_code}\\n' \"$@\" 1>&2";
  std::vector<std::string> argv = {"-c", script, stdin_text};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(url);
  rig::Child child;
  CurlRun run;
  if (!child.start("/bin/sh", argv)) return run;
  auto code = child.wait_exit(30000);
  if (!code) child.stop(1000);
  run.code = code.value_or(-1);
  run.output = child.stderr_text();
  return run;
}

}  // namespace

TEST_CASE("the real curl through the agent: GET, -d, PUT JSON, -T - upload, -I, --http1.0, DELETE, Expect") {
  if (!have_curl()) {
    MESSAGE("SKIP: no /usr/bin/curl");
    return;
  }
  Backend b;
  Proxy p;
  start_pair(b, p, 8, {});
  const std::string base = "http://127.0.0.1:" + std::to_string(p.port());
  {
    auto r = curl({}, base + "/size/100000?real-curl");
    CHECK(r.code == 0);
    CHECK_SAME_BYTES(r.output, rig::pattern_string(100000) + "\nstatus=200\n");
  }
  {
    auto r = curl({"-d", "a=1&b=two"}, base + "/echo?real-form");
    CHECK(r.code == 0);
    CHECK(r.output == "a=1&b=two\nstatus=200\n");
  }
  {
    auto r = curl({"-X", "PUT", "-H", "Content-Type: application/json", "--data", "{\"a\":[1,2,3]}"},
                  base + "/echo?real-json");
    CHECK(r.code == 0);
    CHECK(r.output == "{\"a\":[1,2,3]}\nstatus=200\n");
  }
  {
    auto r = curl({"-T", "-"}, base + "/echo?real-upload", "streamed upload body");
    CHECK(r.code == 0);
    CHECK(r.output == "streamed upload body\nstatus=200\n");
  }
  {
    auto r = curl({"-I"}, base + "/size/321?real-head");
    CHECK(r.code == 0);
    CHECK(r.output.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(r.output.find("Content-Length: 321\r\n") != std::string::npos);
    CHECK(r.output.find("\nstatus=200\n") != std::string::npos);
  }
  {
    auto r = curl({"--http1.0"}, base + "/chunked/5000?real-http10");
    CHECK(r.code == 0);
    CHECK_SAME_BYTES(r.output, rig::pattern_string(5000) + "\nstatus=200\n");
  }
  {
    auto r = curl({"-X", "DELETE"}, base + "/echo?real-delete");
    CHECK(r.code == 0);
    CHECK(r.output == "\nstatus=200\n");
  }
  {
    char path[] = "/tmp/offload-it-curl-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    const std::string body = rig::pattern_string(2u << 20);
    REQUIRE(::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()));
    ::close(fd);
    // curl waits up to 1 s for the 100 Continue before sending the body anyway.
    auto r = curl({"-H", "Expect: 100-continue", "--data-binary", std::string("@") + path, "-o", "/dev/null"},
                  base + "/echo?real-expect");
    ::unlink(path);
    CHECK(r.code == 0);
    CHECK(r.output == "\nstatus=200\n");
  }
  auto rec = b.record();
  REQUIRE(rec);
  struct Want {
    const char* target;
    const char* method;
    std::string body;
  };
  for (const Want& w : {Want{"/size/100000?real-curl", "GET", ""}, Want{"/echo?real-form", "POST", "a=1&b=two"},
                        Want{"/echo?real-json", "PUT", "{\"a\":[1,2,3]}"},
                        Want{"/echo?real-upload", "PUT", "streamed upload body"},
                        Want{"/size/321?real-head", "HEAD", ""}, Want{"/chunked/5000?real-http10", "GET", ""},
                        Want{"/echo?real-delete", "DELETE", ""},
                        Want{"/echo?real-expect", "POST", rig::pattern_string(2u << 20)}}) {
    CAPTURE(w.target);
    const auto* q = rec->find(w.target);
    REQUIRE(q);
    CHECK(q->method == w.method);
    CHECK(q->complete);
    CHECK_SAME_BYTES(q->body, w.body.substr(0, kBodyKept));
    CHECK(q->body_bytes == w.body.size());
  }
}
