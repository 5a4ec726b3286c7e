#include "upstream/concurrency_limit.h"

#include <algorithm>

namespace offload {

ConcurrencyLimit::ConcurrencyLimit(Settings s)
    : s_(s), limit_(std::clamp(s.initial, s.min, s.max)), probe_after_(std::max<uint32_t>(s.probe_after, 1)) {
  s_.probe_after = probe_after_;
}

// Growing back to a level the server took before is cheap; growing to the
// level it refused last waits the doubled time.
uint32_t ConcurrencyLimit::wait_for_next() const {
  return refused_at_ != 0 && limit_ + 1 >= refused_at_ ? probe_after_ : s_.probe_after;
}

void ConcurrencyLimit::on_response(bool demand) {
  if (fixed()) return;
  if (settle_left_ > 0) --settle_left_;
  if (confirm_left_ > 0 && probe_answered_ && --confirm_left_ == 0) {
    good_ = std::max(good_, limit_);
    races_ = 0;
    if (limit_ >= refused_at_) {
      refused_at_ = 0;  // the server took a level it had refused: forget the back-off
      probe_after_ = s_.probe_after;
    }
  }
  // One probe at a time: a stranded probe is only seen after a while (a
  // stall), and probes stacked meanwhile would count for nothing.
  if (!demand || limit_ >= s_.max || confirm_left_ > 0) return;
  if (++demand_count_ < wait_for_next()) return;
  demand_count_ = 0;
  probe_from_ = limit_;
  probe_answered_ = false;
  ++limit_;
  // A server that cannot take the new connection says so within about one
  // round of responses (each worker finishes its request and sees the queue);
  // four rounds leave room for slow responses.
  confirm_left_ = 4 * limit_;
}

void ConcurrencyLimit::on_new_answered() {
  if (confirm_left_ > 0) probe_answered_ = true;
}

void ConcurrencyLimit::on_server_close(bool newer_waiting) {
  if (fixed() || settle_left_ > 0) return;  // the same crowding as the last one
  if (confirm_left_ > 0) {
    failed_probe();
    return;
  }
  if (!newer_waiting) return;
  // At a level the server has taken before, a close that made room for a
  // replacement connection is a race (a worker saw it queued before the idle
  // worker took it): the limit stays, unless that keeps happening.
  if (limit_ <= good_ && ++races_ < kRacesMax) return;
  races_ = 0;
  shrink_to(limit_ > s_.min ? limit_ - 1 : s_.min);
  good_ = std::min(good_, limit_);
}

void ConcurrencyLimit::on_stall(uint32_t served) {
  if (fixed()) return;
  if (confirm_left_ > 0) failed_probe();
  shrink_to(std::clamp(served, s_.min, limit_));
  good_ = std::min(good_, limit_);
}

// The probe is undone. Several workers may make room for its one connection
// at once (each saw it waiting): the rejections of the next few rounds are
// the same event, not more evidence.
void ConcurrencyLimit::failed_probe() {
  refused_at_ = limit_;
  confirm_left_ = 0;
  probe_after_ = std::min(s_.probe_after_max, probe_after_ * 2);
  shrink_to(std::max(s_.min, probe_from_));
  settle_left_ = 4 * limit_;
}

void ConcurrencyLimit::shrink_to(uint32_t n) {
  constrained_ = true;
  limit_ = n;
  demand_count_ = 0;
}

}  // namespace offload
