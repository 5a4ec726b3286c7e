// The loop on its own: completions reach their handlers, timers fire in
// deadline order on a test clock, and slab objects are made once.
#include <doctest/doctest.h>

#include <unistd.h>

#include <string>
#include <vector>

#include "loop/loop.h"
#include "loop/slab.h"

using offload::Completion;
using offload::Loop;
using offload::Slab;
using offload::TestClock;
using offload::Timer;
using offload::TimerList;

namespace {

struct Thing {
  int id = 0;
  Completion done;
  Timer timer;
};

// A component that records what reaches it.
struct Recorder {
  std::vector<std::string> events;
  void on_done(Thing* t, const io_uring_cqe& cqe) {
    events.push_back("done " + std::to_string(t->id) + " " + std::to_string(cqe.res));
  }
  void on_timer(Thing* t, Timer& timer) {
    events.push_back("timer " + std::to_string(t->id) + " kind " + std::to_string(timer.list->kind()));
  }
  void on_own(const io_uring_cqe& cqe) { events.push_back("own " + std::to_string(cqe.res)); }
};

// Turns until `n` events are in (bounded: a lost completion fails the test).
void turn_until(Loop& loop, Recorder& r, size_t n) {
  for (int i = 0; i < 50 && r.events.size() < n; ++i) loop.turn(loop.now_ms() + 100);
  REQUIRE(r.events.size() == n);
}

}  // namespace

TEST_CASE("loop: each completion goes to the handler and object it was bound to") {
  TestClock clock;
  Loop loop(clock, 8, 16);
  Recorder r;
  Thing a, b;
  a.id = 1;
  b.id = 2;
  offload::bind<&Recorder::on_done>(a.done, &r, &a);
  offload::bind<&Recorder::on_done>(b.done, &r, &b);
  Completion own;
  offload::bind<&Recorder::on_own>(own, &r);
  io_uring_prep_nop(loop.sqe(b.done));
  io_uring_prep_nop(loop.sqe(a.done));
  io_uring_prep_nop(loop.sqe(own));
  io_uring_prep_nop(loop.sqe_unwatched());  // dropped: nobody is told
  turn_until(loop, r, 3);
  CHECK(r.events == std::vector<std::string>{"done 2 0", "done 1 0", "own 0"});
}

TEST_CASE("loop: a cancel reaches both the cancelled operation and the cancel's own completion") {
  TestClock clock;
  Loop loop(clock, 8, 16);
  Recorder r;
  Thing reader, canceller;
  reader.id = 1;
  canceller.id = 2;
  offload::bind<&Recorder::on_done>(reader.done, &r, &reader);
  offload::bind<&Recorder::on_done>(canceller.done, &r, &canceller);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  char buf[8];
  io_uring_prep_read(loop.sqe(reader.done), fds[0], buf, sizeof buf, 0);  // nothing to read: waits
  loop.turn(loop.now_ms());  // submitted; nothing completes
  CHECK(r.events.empty());
  loop.cancel(reader.done, &canceller.done);
  turn_until(loop, r, 2);
  std::sort(r.events.begin(), r.events.end());
  CHECK(r.events == std::vector<std::string>{"done 1 " + std::to_string(-ECANCELED), "done 2 0"});
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("loop: timers fire on the test clock, in deadline order, not a millisecond early") {
  TestClock clock(5000);
  Loop loop(clock, 8, 16);
  Recorder r;
  TimerList slow(300, 7), fast(100, 3);
  loop.add_timers(slow);
  loop.add_timers(fast);
  Thing a, b, c;
  a.id = 1;
  b.id = 2;
  c.id = 3;
  for (Thing* t : {&a, &b, &c}) offload::bind<&Recorder::on_timer>(t->timer, &r, t);
  loop.arm(a.timer, slow);  // due at 5300
  loop.arm(b.timer, fast);  // due at 5100
  loop.arm(c.timer, fast);
  CHECK(loop.next_deadline_ms() == 5100);
  loop.arm(c.timer, slow);  // moved: now due at 5300 on the slow list, after a
  clock.advance(99);
  loop.refresh_clock();
  CHECK(loop.expire() == 0);
  clock.advance(1);
  loop.refresh_clock();
  CHECK(loop.expire() == 1);
  CHECK(r.events == std::vector<std::string>{"timer 2 kind 3"});
  offload::disarm(a.timer);
  clock.advance(1000);
  loop.refresh_clock();
  CHECK(loop.expire() == 1);
  CHECK(r.events.back() == "timer 3 kind 7");
  CHECK(loop.next_deadline_ms() == UINT64_MAX);
}

TEST_CASE("loop: turn() waits no longer than the next deadline on the clock it was given") {
  TestClock clock;
  Loop loop(clock, 8, 16);
  Recorder r;
  TimerList list(10);
  loop.add_timers(list);
  Thing a;
  offload::bind<&Recorder::on_timer>(a.timer, &r, &a);
  loop.arm(a.timer, list);
  // The test clock stands still: the turn times out (a real 10 ms) without firing.
  loop.turn();
  CHECK(r.events.empty());
  clock.advance(10);
  loop.turn();
  CHECK(r.events.size() == 1);
}

TEST_CASE("slab: objects are made on first use only, reused, and bounded by the capacity") {
  int made = 0;
  Slab<Thing> slab(3, [&made](void* at) {
    ++made;
    return new (at) Thing();
  }, 3);
  Thing* a = slab.get();
  Thing* b = slab.get();
  CHECK(made == 2);
  slab.put(a);
  CHECK(slab.get() == a);  // the free one lowest in the storage
  CHECK(made == 2);
  Thing* c = slab.get();
  CHECK(made == 3);
  CHECK(slab.get() == nullptr);  // all three in use
  CHECK(slab.in_use() == 3);
  slab.put(b);
  slab.put(c);
  slab.put(a);
  CHECK(slab.in_use() == 0);
  CHECK(slab.made() == 3);
}

namespace {
struct Big {
  static int alive;
  char bytes[1000];
  Big() { ++alive; }
  ~Big() { --alive; }
};
int Big::alive = 0;
}  // namespace

TEST_CASE("slab: past keep_free, freed objects are destroyed and made again when needed") {
  {
    Slab<Big> slab(100, [](void* at) { return new (at) Big(); }, 2);
    std::vector<Big*> all;
    for (int i = 0; i < 100; ++i) all.push_back(slab.get());
    CHECK(slab.get() == nullptr);
    CHECK(Big::alive == 100);
    for (Big* b : all) slab.put(b);
    CHECK(slab.in_use() == 0);
    CHECK(Big::alive == 2);  // two kept for reuse, the rest destroyed
    CHECK(slab.constructed() == 2);
    CHECK(slab.made() == 100);  // the high-water mark stays
    for (int i = 0; i < 100; ++i) REQUIRE(slab.get() != nullptr);  // all 100 again, within the same storage
    CHECK(Big::alive == 100);
    CHECK(slab.get() == nullptr);
  }
  CHECK(Big::alive == 0);  // the slab's end destroys what is constructed
}
