// Timeouts without a scan of all connections.
//
// Every list has one fixed duration, so a timer armed later always expires
// later: one FIFO list per kind of timeout is already sorted by deadline.
// Arming is a push to the tail, disarming an O(1) unlink, and expiry pops
// from the head while the head is due. The clock is passed in, so tests drive
// time themselves.
#pragma once

#include <cstdint>

#include "loop/check.h"
#include "loop/list.h"

namespace offload {

class TimerList;

struct Timer {
  using Handler = void (*)(void* component, void* object, Timer& timer);
  ListNode node;
  uint64_t deadline_ms = 0;
  TimerList* list = nullptr;  // the list it is armed on (or was, last)
  Handler handler = nullptr;  // what its expiry calls, set once with bind()
  void* component = nullptr;
  void* object = nullptr;
  bool armed() const { return node.linked(); }
  void fire() { handler(component, object, *this); }
};

// Makes `t` call component->*Method(object, timer) when it expires.
template <auto Method, typename Component, typename Object>
void bind(Timer& t, Component* component, Object* object) {
  t.component = component;
  t.object = object;
  t.handler = [](void* comp, void* obj, Timer& timer) {
    (static_cast<Component*>(comp)->*Method)(static_cast<Object*>(obj), timer);
  };
}

// Makes `t` call component->*Method() when it expires (a component's own timer).
template <auto Method, typename Component>
void bind(Timer& t, Component* component) {
  t.component = component;
  t.object = nullptr;
  t.handler = [](void* comp, void*, Timer&) { (static_cast<Component*>(comp)->*Method)(); };
}

class TimerList {
 public:
  explicit TimerList(uint64_t duration_ms = 0, uint8_t kind = 0) : duration_ms_(duration_ms), kind_(kind) {}
  TimerList(const TimerList&) = delete;
  TimerList& operator=(const TimerList&) = delete;

  void set_duration(uint64_t duration_ms) { duration_ms_ = duration_ms; }
  void set_kind(uint8_t kind) { kind_ = kind; }
  uint64_t duration_ms() const { return duration_ms_; }
  // The owner's name for this kind of timeout (its handler tells kinds apart).
  uint8_t kind() const { return kind_; }

  // Arms `t` here, taking it off whatever list it was on.
  void arm(Timer* t, uint64_t now_ms) {
    if (t->armed()) t->list->list_.remove(t);
    t->deadline_ms = now_ms + duration_ms_;
    t->list = this;
    list_.push_back(t);
  }

  void disarm(Timer* t) {
    if (!t->armed()) return;
    OFFLOAD_ASSERT(t->list == this);
    list_.remove(t);
  }

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
  uint8_t kind_;
  List<Timer, &Timer::node> list_;
};

// Disarms `t` wherever it is armed.
inline void disarm(Timer& t) {
  if (t.armed()) t.list->disarm(&t);
}

}  // namespace offload
