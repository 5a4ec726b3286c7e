// Timeouts without a scan of all connections.
//
// Every timeout kind has one fixed duration from the configuration, so a
// timer armed later always expires later: one FIFO list per kind is already
// sorted by deadline. Arming is a push to the tail, disarming an O(1) unlink,
// and expiry pops from the head while the head is due. The clock is passed in,
// so tests drive time themselves.
#pragma once

#include <cstdint>

#include "loop/list.h"

namespace offload {

struct Timer {
  ListNode node;
  uint64_t deadline_ms = 0;
  uint8_t kind = 0;  // which TimerList holds it (the owner's enum)
  bool armed() const { return node.linked(); }
};

class TimerList {
 public:
  explicit TimerList(uint64_t duration_ms = 0) : duration_ms_(duration_ms) {}

  void set_duration(uint64_t duration_ms) { duration_ms_ = duration_ms; }
  uint64_t duration_ms() const { return duration_ms_; }

  void arm(Timer* t, uint64_t now_ms) {
    list_.remove_if_linked(t);
    t->deadline_ms = now_ms + duration_ms_;
    list_.push_back(t);
  }

  void disarm(Timer* t) { list_.remove_if_linked(t); }

  // The next timer due at `now_ms`, unlinked, or null.
  Timer* pop_expired(uint64_t now_ms) {
    Timer* t = list_.front();
    if (t == nullptr || t->deadline_ms > now_ms) return nullptr;
    list_.remove(t);
    return t;
  }

  // Deadline of the earliest timer, or UINT64_MAX when empty.
  uint64_t next_deadline_ms() const {
    Timer* t = list_.front();
    return t ? t->deadline_ms : UINT64_MAX;
  }

  size_t size() const { return list_.size(); }

 private:
  uint64_t duration_ms_;
  List<Timer, &Timer::node> list_;
};

}  // namespace offload
