#include "upstream/server_health.h"

namespace offload {

const char* health_state_name(HealthState state) {
  switch (state) {
    case HealthState::kUp: return "up";
    case HealthState::kDown: return "down";
    case HealthState::kProbing: return "probing";
  }
  return "?";
}

bool ServerHealth::on_failure(const HealthSpec& spec, uint64_t now_ms) {
  ++fails_;
  switch (state(now_ms)) {
    case HealthState::kUp:
      if (spec.max_fails != 0 && fails_ >= spec.max_fails) go_down(spec, now_ms);
      break;
    case HealthState::kProbing:
      go_down(spec, now_ms);  // the half-open request failed: wait again
      break;
    case HealthState::kDown:
      // A request sent before the server went down, failing late: it says
      // nothing new, and must not push the deadline out.
      break;
  }
  return false;
}

bool ServerHealth::on_success(const HealthSpec&, uint64_t now_ms) {
  fails_ = 0;
  if (state(now_ms) != HealthState::kProbing) return false;
  // Down (not yet probing): a late answer to a request sent while up; the
  // server stays out until its deadline, one rule for every way back in.
  go_up();
  return true;
}

bool ServerHealth::on_probe(const HealthSpec& spec, bool ok, uint64_t now_ms) {
  if (ok) {
    bad_probes_ = 0;
    ++good_probes_;
    if (down_ && good_probes_ >= spec.rise) {
      go_up();
      return true;
    }
    return false;
  }
  good_probes_ = 0;
  ++bad_probes_;
  if (!down_ && bad_probes_ >= spec.fall) go_down(spec, now_ms);
  return false;
}

void ServerHealth::go_down(const HealthSpec& spec, uint64_t now_ms) {
  down_ = true;
  probe_out_ = false;
  good_probes_ = 0;
  bad_probes_ = 0;
  ++downs_total_;
  if (spec.active) {
    down_until_ms_ = kHeld;  // only the checker brings it back
  } else {
    // Saturating: a huge fail_timeout means "until probes", never a wrap.
    down_until_ms_ = spec.fail_timeout_ms >= kHeld - now_ms ? kHeld
                                                            : now_ms + spec.fail_timeout_ms;
  }
}

void ServerHealth::go_up() {
  down_ = false;
  probe_out_ = false;
  fails_ = 0;
  good_probes_ = 0;
  bad_probes_ = 0;
}

}  // namespace offload
