// A minimal event loop around RingAgent for the tests and benchmarks: it polls
// exactly the fds the agent exposes and makes exactly the calls its header
// prescribes, as the agent's io_uring loop will.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "offload/ring_agent.h"
#include "ring_region.h"

namespace offload::test {

using ring::RingAgent;

inline std::string unique_name(const char* what) {
  static std::atomic<int> n{0};
  return std::string(what) + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

struct Collected {
  int status = 0;
  uint64_t content_length = 0;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string body;
  int pieces = 0;
  bool aborted = false;
  bool complete = false;
  int error = 0;  // -EBADMSG, -EPIPE
};

class AgentDriver {
 public:
  explicit AgentDriver(ring::RingAgentOptions opts) {
    std::string err;
    agent = RingAgent::create(opts, &err);
    if (!agent) throw std::runtime_error(err);
  }

  // One poll round (up to timeout_ms). Records attach/detach events.
  void pump(int timeout_ms) {
    std::vector<pollfd> fds{{agent->listen_fd(), POLLIN, 0}};
    if (agent->peer_fd() >= 0) fds.push_back({agent->peer_fd(), POLLIN | POLLRDHUP, 0});
    size_t bells = fds.size();
    for (uint32_t ch = 0; ch < agent->channel_count(); ++ch) fds.push_back({agent->doorbell_fd(ch), POLLIN, 0});
    ::poll(fds.data(), fds.size(), timeout_ms);
    uint64_t now = ring::now_ms();
    if (fds[0].revents) note(agent->on_listen_ready(now));
    if (bells == 2 && fds[1].revents) note(agent->on_peer_ready(now));
    for (size_t i = bells; i < fds.size(); ++i)
      if (fds[i].revents && i - bells < agent->channel_count()) agent->on_doorbell(static_cast<uint32_t>(i - bells));
    if (now - last_tick_ >= 100) {
      last_tick_ = now;
      note(agent->tick(now));
    }
  }

  // Pumps until `cond` holds or `ms` passed; returns cond().
  template <typename F>
  bool until(F cond, int ms) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!cond()) {
      if (std::chrono::steady_clock::now() > end) return false;
      pump(20);
    }
    return true;
  }

  bool wait_attached(int ms = 5000) {
    return until([&] { return agent->attached(); }, ms);
  }

  RingAgent::Send send(uint32_t ch, uint64_t id, const std::string& head, std::string_view body,
                       std::vector<offload_field> fields = {}, offload_span target = {}) {
    ring::RequestOut r;
    r.id = id;
    r.head = head;
    r.body = body;
    r.method = OFFLOAD_METHOD_GET;
    size_t sp = head.find(' ');
    r.method_text = {0, static_cast<uint32_t>(sp)};
    if (target.len == 0) {
      size_t sp2 = head.find(' ', sp + 1);
      target = {static_cast<uint32_t>(sp + 1), static_cast<uint32_t>(sp2 - sp - 1)};
    }
    r.target = target;
    r.fields = fields;
    return agent->try_send_request(ch, r);
  }

  // Collects one whole response from `ch` (bounded by ms).
  Collected collect(uint32_t ch, int ms = 10000) {
    Collected c;
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!c.complete && std::chrono::steady_clock::now() < end) {
      ring::ResponsePiece p;
      int rc = agent->poll_response(ch, &p);
      if (rc < 0) {
        c.error = rc;
        return c;
      }
      if (rc == 0) {
        pump(20);
        continue;
      }
      ++c.pieces;
      if (p.kind == ring::ResponsePiece::Kind::kHead) {
        c.status = p.status;
        c.content_length = p.content_length;
        for (const auto& f : p.fields) c.fields.emplace_back(f.name, f.value);
      }
      c.aborted = p.kind == ring::ResponsePiece::Kind::kAbort;
      c.body.append(p.body);
      c.complete = p.end;
      agent->release_response(ch);
    }
    return c;
  }

  std::string field(const Collected& c, std::string_view name) {
    for (auto& [n, v] : c.fields)
      if (n == name) return v;
    return "<none>";
  }

  void note(RingAgent::Event e) {
    if (e == RingAgent::Event::kAttached) ++attaches;
    if (e == RingAgent::Event::kDetached) ++detaches;
  }

  std::unique_ptr<RingAgent> agent;
  int attaches = 0;
  int detaches = 0;

 private:
  uint64_t last_tick_ = 0;
};

}  // namespace offload::test
