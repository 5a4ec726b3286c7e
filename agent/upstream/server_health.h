// The health of one upstream server: up, down, or probing.
//
// Passive health watches live traffic. After `max_fails` consecutive connect
// failures or resets the server is down for `fail_timeout_ms`; then it is
// probing: one live request at a time may go to it (half-open). That
// request's success brings it up, its failure takes it down for another
// fail_timeout. max_fails = 0 turns passive health off.
//
// Active health is a checker that probes the server on its own schedule
// (report_probe). `fall` consecutive bad probes take an up server down,
// `rise` consecutive good ones bring a down server up.
//
// How the two combine when active health is on (HAProxy's `rise`/`fall` with
// `observe layer4` and `on-error mark-down`): live failures still take the
// server down after max_fails, because traffic sees trouble sooner than a
// probe every interval. But a down server then returns only through `rise`
// good probes, never by trying a live request on it: once a checker exists,
// clients are not used as probes. So with active health on there is no
// probing state, and the fail_timeout timer does not apply.
//
// Time is passed in; the state at a moment is derived from it (a down server
// turns probing at its deadline without anyone touching it).
#pragma once

#include <cstdint>

namespace offload {

struct HealthSpec {
  uint32_t max_fails = 1;         // consecutive live failures; 0 = passive off
  uint64_t fail_timeout_ms = 10'000;
  bool active = false;            // a checker calls report_probe
  uint32_t rise = 2;              // good probes that bring a down server up
  uint32_t fall = 3;              // bad probes that take an up server down
};

enum class HealthState : uint8_t { kUp, kDown, kProbing };

const char* health_state_name(HealthState state);

class ServerHealth {
 public:
  // Until a checker or a deadline says otherwise.
  static constexpr uint64_t kHeld = UINT64_MAX;

  // Inline: pick() asks these of every server.
  HealthState state(uint64_t now_ms) const {
    if (!down_) return HealthState::kUp;
    if (down_until_ms_ != kHeld && now_ms >= down_until_ms_) return HealthState::kProbing;
    return HealthState::kDown;
  }

  // May a new request go to this server now? Up, or probing with no probe
  // request out yet.
  bool can_take(uint64_t now_ms) const {
    if (!down_) return true;
    return !probe_out_ && state(now_ms) == HealthState::kProbing;
  }

  // A request was handed to this server; when probing it is the probe.
  void on_pick(uint64_t now_ms) {
    if (state(now_ms) == HealthState::kProbing) probe_out_ = true;
  }
  // No request is outstanding any more, so no probe can be out.
  void on_idle() { probe_out_ = false; }

  // Each returns true when the report made a down server available again.
  bool on_failure(const HealthSpec& spec, uint64_t now_ms);
  bool on_success(const HealthSpec& spec, uint64_t now_ms);
  bool on_probe(const HealthSpec& spec, bool ok, uint64_t now_ms);

  // When a down server turns probing; kHeld when it waits for probes, and 0
  // when it is not down.
  uint64_t down_until_ms() const { return down_ ? down_until_ms_ : 0; }
  uint32_t consecutive_failures() const { return fails_; }
  uint64_t downs_total() const { return downs_total_; }

 private:
  void go_down(const HealthSpec& spec, uint64_t now_ms);
  void go_up();

  bool down_ = false;
  bool probe_out_ = false;       // the one half-open request is in flight
  uint64_t down_until_ms_ = 0;   // when down_: probing from then, or kHeld
  uint32_t fails_ = 0;           // consecutive live failures
  uint32_t good_probes_ = 0;     // consecutive, for rise
  uint32_t bad_probes_ = 0;      // consecutive, for fall
  uint64_t downs_total_ = 0;
};

}  // namespace offload
