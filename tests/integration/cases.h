// Helpers shared by the agent cases: starting a backend with the proxy in
// front, building requests, and checks that print where bytes differ rather
// than the bytes.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "rig.h"

#define CHECK_SAME_BYTES(got, want)                     \
  do {                                                  \
    std::string diff_ = rig::difference((got), (want)); \
    CHECK_MESSAGE(diff_.empty(), diff_);                \
  } while (0)

// Checks a counter where the proxy has counters.
#define CHECK_STAT_AT_LEAST(proxy, name, least) \
  do {                                          \
    if ((proxy).is_agent()) {                   \
      std::string stats_error;                  \
      auto stats = (proxy).stats(&stats_error); \
      REQUIRE_MESSAGE(stats, stats_error);      \
      INFO("counter " << (name));               \
      REQUIRE(stats->count(name) == 1);         \
      CHECK(stats->at(name) >= (least));        \
    }                                           \
  } while (0)

namespace cases {

// Starts a backend with `workers` threads and the proxy in front of it.
inline void start_pair(rig::Backend& b, rig::Proxy& p, int workers, const rig::ProxyOptions& o) {
  REQUIRE_MESSAGE(b.start(workers), b.error());
  REQUIRE_MESSAGE(p.start(b.port(), o), p.error());
}

inline std::string post(std::string_view path, std::string_view body, std::string_view extra = "") {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: test\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  r += extra;
  r += "\r\n";
  r += body;
  return r;
}

// A request the recording backend answers with exactly `answer` (its
// X-Script); with `close_after` the backend closes the connection after it.
inline std::string scripted(std::string_view method, std::string_view target, std::string_view answer,
                            bool close_after = false, std::string_view extra = "") {
  std::string r(method);
  r += " ";
  r += target;
  r += " HTTP/1.1\r\nHost: t\r\nX-Script: " + rig::hex(answer) + "\r\n";
  if (close_after) r += "X-Script-Then: close\r\n";
  r += extra;
  r += "\r\n";
  return r;
}

// Waits until the backend has seen `target` and the connection that carried
// it is closed; false if not within `timeout_ms`.
inline bool backend_closed_connection_of(rig::Backend& b, std::string_view target, int timeout_ms) {
  return b
      .wait_record(
          [&](const rig::Record& r) {
            const auto* c = r.connection_of(target);
            return c != nullptr && c->closed_us != 0;
          },
          timeout_ms)
      .has_value();
}

}  // namespace cases
