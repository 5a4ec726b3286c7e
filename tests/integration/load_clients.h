// Steady load for tests of handovers (reload, binary upgrade): clients that
// check every response, kept-alive ones and ones that open a connection per
// request, each loop bounded.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "rig.h"

namespace rig {

inline std::string echo_request(const std::string& body, bool close) {
  return "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         (close ? "Connection: close\r\n" : "") + "\r\n" + body;
}

// What the load saw: every request checked, failures described.
struct Tally {
  std::mutex mutex;
  std::vector<std::string> failures;
  std::atomic<uint64_t> ok{0};
  std::atomic<uint64_t> closes{0};  // kept-alive connections the agent ended with Connection: close
  void fail(std::string why) {
    std::lock_guard lock(mutex);
    if (failures.size() < 20) failures.push_back(std::move(why));
    else failures.back() = "... and more";
  }
};

// A kept-alive client: request after request on one connection; after a
// response with Connection: close (an old generation's), a new connection.
inline void keepalive_client(uint16_t port, int id, const std::atomic<bool>& stop, Tally& t) {
  Client c;
  bool open = false;
  for (int i = 0; i < 100000 && !stop.load(); ++i) {
    if (!open && !(open = c.connect(port))) return t.fail("client " + std::to_string(id) + ": connect: " + c.error());
    const std::string body = "keepalive-" + std::to_string(id) + "-" + std::to_string(i);
    if (!c.send_all(echo_request(body, false))) return t.fail("client " + std::to_string(id) + ": send: " + c.error());
    rig::ReadResult r = c.read_response(10000);
    if (!r) return t.fail("client " + std::to_string(id) + " request " + std::to_string(i) + ": " + r.error +
                          (r.closed ? " (closed)" : ""));
    if (r.response->status != 200 || r.response->body != body)
      return t.fail("client " + std::to_string(id) + ": status " + std::to_string(r.response->status) + " body '" +
                    r.response->body.substr(0, 40) + "'");
    ++t.ok;
    if (r.response->closes()) {
      ++t.closes;
      // The agent closes after its response: the close is clean (EOF, no reset).
      std::string rest;
      if (!c.wait_closed(5000, &rest) || !rest.empty())
        return t.fail("client " + std::to_string(id) + ": not a clean close after Connection: close");
      c.close();
      open = false;
    }
  }
}

// A client that opens a new connection for each request.
inline void fresh_client(uint16_t port, int id, const std::atomic<bool>& stop, Tally& t) {
  for (int i = 0; i < 100000 && !stop.load(); ++i) {
    Client c;
    if (!c.connect(port)) return t.fail("fresh " + std::to_string(id) + ": connect: " + c.error());
    const std::string body = "fresh-" + std::to_string(id) + "-" + std::to_string(i);
    if (!c.send_all(echo_request(body, true))) return t.fail("fresh " + std::to_string(id) + ": send: " + c.error());
    rig::ReadResult r = c.read_response(10000);
    if (!r) return t.fail("fresh " + std::to_string(id) + " request " + std::to_string(i) + ": " + r.error);
    if (r.response->status != 200 || r.response->body != body)
      return t.fail("fresh " + std::to_string(id) + ": status " + std::to_string(r.response->status));
    ++t.ok;
  }
}

}  // namespace rig
