#include <doctest/doctest.h>

#include "loop/timer_list.h"

using offload::Timer;
using offload::TimerList;

TEST_CASE("timer list: expires in deadline order, only when due") {
  TimerList list(100);
  Timer a, b, c;
  list.arm(&a, 0);
  list.arm(&b, 10);
  list.arm(&c, 20);
  CHECK(list.next_deadline_ms() == 100);
  CHECK(list.pop_expired(99) == nullptr);
  CHECK(list.pop_expired(100) == &a);
  CHECK(list.pop_expired(100) == nullptr);
  CHECK(list.pop_expired(1000) == &b);
  CHECK(list.pop_expired(1000) == &c);
  CHECK(list.next_deadline_ms() == UINT64_MAX);
}

TEST_CASE("timer list: re-arming moves a timer to the back with a new deadline") {
  TimerList list(50);
  Timer a, b;
  list.arm(&a, 0);
  list.arm(&b, 10);
  list.arm(&a, 30);  // progress on a: its deadline moves to 80
  CHECK(list.size() == 2);
  CHECK(list.pop_expired(60) == &b);
  CHECK(list.pop_expired(79) == nullptr);
  CHECK(list.pop_expired(80) == &a);
}

TEST_CASE("timer list: a disarmed timer never fires") {
  TimerList list(5);
  Timer a, b;
  list.arm(&a, 0);
  list.arm(&b, 0);
  list.disarm(&a);
  CHECK_FALSE(a.armed());
  list.disarm(&a);  // twice is harmless
  CHECK(list.pop_expired(10) == &b);
  CHECK(list.pop_expired(10) == nullptr);
}
