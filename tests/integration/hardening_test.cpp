// Regression tests for the hardening issue: each case is a symptom seen from
// outside (a hang, a crash, a stall), driven against the real agent in front
// of the recording backend, and fails on the code that had the defect.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "rig.h"

using rig::Backend;
using rig::Client;
using rig::Proxy;
using rig::ProxyOptions;

namespace {

void start_pair(Backend& b, Proxy& p, int workers, const ProxyOptions& o) {
  REQUIRE_MESSAGE(b.start(workers), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), o), p.error());
}

}  // namespace

TEST_CASE("an empty-bodied POST and PUT (Content-Length: 0) reach the backend and are answered") {
  Backend b;
  Proxy p;
  start_pair(b, p, 4, {});
  for (const char* method : {"POST", "PUT"}) {
    CAPTURE(method);
    Client c;
    REQUIRE_MESSAGE(c.connect(p.port()), c.error());
    std::string target = std::string("/ok?empty-") + method;
    REQUIRE(c.send_all(std::string(method) + " " + target + " HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"));
    rig::ReadResult r = c.read_response(5000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK(r.response->status == 200);
    auto rec = b.record();
    REQUIRE(rec);
    const rig::RecordedRequest* got = rec->find(target);
    REQUIRE(got != nullptr);
    CHECK(got->method == method);
    CHECK(got->complete);
    CHECK(got->body_bytes == 0);
    CHECK(got->raw.find("Content-Length: 0\r\n") != std::string::npos);
    // The connection goes on: a second request on it is answered too.
    REQUIRE(c.send_all(rig::get_request("/ok")));
    rig::ReadResult r2 = c.read_response(5000);
    REQUIRE_MESSAGE(r2, r2.error);
    CHECK(r2.response->status == 200);
  }
}
