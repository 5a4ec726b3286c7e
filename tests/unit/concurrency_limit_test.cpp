// The adaptive upstream limit, driven by synthetic samples: a model server
// with a fixed number of workers that rejects (yields) any connection beyond
// them, and one that takes every connection it is given.
#include "upstream/concurrency_limit.h"

#include <doctest/doctest.h>

using offload::ConcurrencyLimit;

namespace {

ConcurrencyLimit::Settings settings(uint32_t initial, uint32_t min, uint32_t max) {
  ConcurrencyLimit::Settings s;
  s.initial = initial;
  s.min = min;
  s.max = max;
  s.probe_after = 16;
  s.probe_after_max = 1024;
  return s;
}

// A saturated run against a server of `workers` workers: every response
// finds requests waiting; a limit above the worker count is rejected on the
// next response. Returns the number of connections the pool opened for
// probes (each probe is one new connection).
uint32_t run_against(ConcurrencyLimit& l, uint32_t workers, uint32_t responses) {
  uint32_t probes = 0;
  for (uint32_t i = 0; i < responses; ++i) {
    const uint32_t before = l.limit();
    if (before > workers) {
      l.on_rejected();
      continue;
    }
    l.on_response(true);
    if (l.limit() > before) {
      ++probes;
      if (l.limit() <= workers) l.on_new_answered();  // a free worker took the new connection
    }
  }
  return probes;
}

}  // namespace

TEST_CASE("a fixed limit never moves") {
  ConcurrencyLimit l(settings(8, 8, 8));
  CHECK(l.fixed());
  for (int i = 0; i < 1000; ++i) l.on_response(true);
  l.on_rejected();
  l.on_stall(2);
  CHECK(l.limit() == 8);
}

TEST_CASE("the initial limit is held within min and max") {
  CHECK(ConcurrencyLimit(settings(0, 1, 64)).limit() == 1);
  CHECK(ConcurrencyLimit(settings(100, 1, 64)).limit() == 64);
  CHECK(ConcurrencyLimit(settings(4, 1, 64)).limit() == 4);
}

TEST_CASE("without demand the limit does not grow") {
  ConcurrencyLimit l(settings(2, 1, 64));
  for (int i = 0; i < 10000; ++i) l.on_response(false);
  CHECK(l.limit() == 2);
}

TEST_CASE("under demand a server that keeps pace is grown into, up to max") {
  ConcurrencyLimit l(settings(1, 1, 10));
  // One probe per 16 responses, each confirmed: 9 probes reach 10.
  for (int i = 0; i < 16; ++i) l.on_response(true);
  CHECK(l.limit() == 2);
  CHECK(l.probing());
  l.on_new_answered();
  uint32_t probes = run_against(l, 1000, 100000);
  CHECK(l.limit() == 10);
  CHECK(probes == 8);
  CHECK(l.probe_after() == 16);  // every probe held: the wait never grew
}

TEST_CASE("a probe the server rejects is undone and the next one waits twice as long") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  l.on_rejected();
  CHECK(l.limit() == 4);
  CHECK_FALSE(l.probing());
  CHECK(l.probe_after() == 32);
  for (int i = 0; i < 31; ++i) l.on_response(true);
  CHECK(l.limit() == 4);
  l.on_response(true);
  CHECK(l.limit() == 5);
}

TEST_CASE("against 4 yielding workers the limit settles at 4 and probes get rare") {
  ConcurrencyLimit l(settings(4, 1, 64));
  const uint32_t probes = run_against(l, 4, 100000);
  CHECK(l.limit() <= 5);
  CHECK(l.limit() >= 4);
  // Doubling from 16 up to 1024: 7 probes, then one per 1024 responses.
  CHECK(probes <= 7 + 100000 / 1024 + 1);
  CHECK(l.probe_after() == 1024);
}

TEST_CASE("starting too high, rejections bring the limit down to the worker count") {
  ConcurrencyLimit l(settings(16, 1, 64));
  run_against(l, 4, 12);
  CHECK(l.limit() == 4);
}

TEST_CASE("a stall brings the limit down to the connections the server serves, never below min") {
  ConcurrencyLimit l(settings(16, 2, 64));
  l.on_stall(4);
  CHECK(l.limit() == 4);
  l.on_stall(9);  // never up
  CHECK(l.limit() == 4);
  l.on_stall(0);
  CHECK(l.limit() == 2);
  l.on_rejected();
  CHECK(l.limit() == 2);
}

TEST_CASE("a stalled probe fails like a rejected one") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  l.on_stall(4);
  CHECK(l.limit() == 4);
  CHECK(l.probe_after() == 32);
}

TEST_CASE("a probe that survives its confirmation window resets the wait") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  l.on_rejected();  // failed: the wait doubles
  REQUIRE(l.probe_after() == 32);
  for (int i = 0; i < 32; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  REQUIRE(l.probing());
  for (uint32_t i = 0; i < 4 * 5; ++i) l.on_response(false);
  CHECK(l.probing());  // the window counts from the new connection's first answer
  l.on_new_answered();
  for (uint32_t i = 0; i < 4 * 5; ++i) l.on_response(false);
  CHECK_FALSE(l.probing());
  CHECK(l.probe_after() == 16);
  CHECK(l.limit() == 5);
}

TEST_CASE("several workers making room for one probe are one rejection, not several") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  l.on_rejected();
  l.on_rejected();  // a second worker saw the probe waiting too
  CHECK(l.limit() == 4);
  // After the settling rounds a rejection is news again.
  for (int i = 0; i < 4 * 4; ++i) l.on_response(false);
  l.on_rejected();
  CHECK(l.limit() == 3);
}

TEST_CASE("growing back below the refused level is quick; to it, backed off") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  l.on_rejected();  // 5 refused: the wait for 5 is now 32
  for (int i = 0; i < 16; ++i) l.on_response(false);  // settle
  l.on_rejected();  // a connection lost later (4 was never confirmed): 3
  REQUIRE(l.limit() == 3);
  for (int i = 0; i < 16; ++i) l.on_response(true);
  CHECK(l.limit() == 4);  // back to a level the server took: the plain wait
  l.on_new_answered();
  for (int i = 0; i < 4 * 4; ++i) l.on_response(false);  // confirmed
  REQUIRE_FALSE(l.probing());
  for (int i = 0; i < 31; ++i) l.on_response(true);
  CHECK(l.limit() == 4);
  l.on_response(true);
  CHECK(l.limit() == 5);  // the refused level: the doubled wait
}

TEST_CASE("a close during a probe fails it; a close with nothing waiting otherwise is not a rejection") {
  ConcurrencyLimit l(settings(4, 1, 64));
  l.on_server_close(false);  // e.g. the server's own request count per connection
  CHECK(l.limit() == 4);
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  l.on_server_close(false);  // the probe was answered just before the close was read
  CHECK(l.limit() == 4);
  CHECK(l.probe_after() == 32);
}

TEST_CASE("at a confirmed level, a lone rejection is a race; repeated ones shrink") {
  ConcurrencyLimit l(settings(3, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 4);
  l.on_new_answered();
  for (int i = 0; i < 4 * 4; ++i) l.on_response(false);  // confirmed at 4
  REQUIRE_FALSE(l.probing());
  l.on_rejected();
  CHECK(l.limit() == 4);
  l.on_rejected();
  l.on_rejected();
  CHECK(l.limit() == 4);
  l.on_rejected();  // the fourth: the server really has fewer now
  CHECK(l.limit() == 3);
  l.on_rejected();  // 3 is below a confirmed level: races again
  CHECK(l.limit() == 3);
}

TEST_CASE("no second probe while one is unconfirmed") {
  ConcurrencyLimit l(settings(4, 1, 64));
  for (int i = 0; i < 16; ++i) l.on_response(true);
  REQUIRE(l.limit() == 5);
  // Its connection is not answered (a server that leaves it queued): demand
  // goes on, the limit stays, until the stall is seen.
  for (int i = 0; i < 1000; ++i) l.on_response(true);
  CHECK(l.limit() == 5);
  l.on_stall(4);
  CHECK(l.limit() == 4);
}

TEST_CASE("constrained once the server refused or stalled a connection") {
  ConcurrencyLimit l(settings(64, 1, 64));
  for (int i = 0; i < 100; ++i) l.on_response(true);
  CHECK_FALSE(l.constrained());
  l.on_server_close(false);  // a lifetime close says nothing
  CHECK_FALSE(l.constrained());
  l.on_stall(4);
  CHECK(l.constrained());
  CHECK(l.limit() == 4);
}
