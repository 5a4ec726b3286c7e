// ResponseSink on its own: response bytes fill memory up to response_buffer,
// go on in a spill file while the shared budget lasts, and past
// response_spill_max the server must not be read on; responses are counted.
#include <doctest/doctest.h>

#include <string>

#include "loop/loop.h"
#include "upstream/response_sink.h"

using namespace offload;

namespace {

struct SinkRig {
  TestClock clock;
  Loop loop{clock, 8, 16};
  BlockPool pool{64 * 1024, 64ull << 20, 8};
  SpillBudget budget;
  Counters counters;
  http::Limits limits;
  Exchange ex{limits};
  std::unique_ptr<ResponseSink> sink;

  explicit SinkRig(uint64_t response_buffer = 64 * 1024, uint64_t spill_max = 256 * 1024) {
    budget.files_max = 4;
    budget.bytes_max = 1ull << 30;
    ResponseSink::Settings s;
    s.response_buffer = response_buffer;
    s.response_spill_max = spill_max;
    s.temp_dir = "/tmp";
    sink = std::make_unique<ResponseSink>(loop, pool, budget, counters, s);
    ex.response_head_done = true;
  }
  ~SinkRig() {
    ex.out.clear(pool);
    spill_close(ex.spill);
  }
};

}  // namespace

TEST_CASE("response sink: memory up to response_buffer, then a spill file, then no more reading") {
  SinkRig rig;
  const std::string piece(16 * 1024, 'x');
  for (int i = 0; i < 4; ++i) REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK(rig.ex.out.bytes() == 64 * 1024);  // exactly response_buffer in memory
  CHECK(rig.ex.spill.fd < 0);
  REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK(rig.ex.spill.fd >= 0);  // the next byte went to a file
  CHECK(rig.ex.out.bytes() == 64 * 1024);
  CHECK(rig.counters.spilled_responses.load() == 1);
  CHECK(rig.sink->read_allowed(&rig.ex));
  while (rig.ex.spill.unread() < 256 * 1024) REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK_FALSE(rig.sink->read_allowed(&rig.ex));  // response_spill_max reached: back-pressure
}

TEST_CASE("response sink: with spilling off, memory alone bounds the reading") {
  SinkRig rig(64 * 1024, 0);
  const std::string piece(16 * 1024, 'y');
  for (int i = 0; i < 3; ++i) REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK(rig.sink->read_allowed(&rig.ex));
  REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK_FALSE(rig.sink->read_allowed(&rig.ex));
  CHECK(rig.ex.spill.fd < 0);
}

TEST_CASE("response sink: a spent spill budget keeps responses in memory and counts the refusal") {
  SinkRig rig;
  rig.budget.files_max = 0;
  const std::string piece(32 * 1024, 'z');
  for (int i = 0; i < 3; ++i) REQUIRE(rig.sink->append(&rig.ex, piece.data(), piece.size()));
  CHECK(rig.ex.spill.fd < 0);
  CHECK(rig.counters.spill_refused.load() >= 1);
  CHECK_FALSE(rig.sink->read_allowed(&rig.ex));  // memory is the bound now
}

TEST_CASE("response sink: the spill file is read back in order once memory drains") {
  SinkRig rig(64 * 1024);
  std::string a(64 * 1024, 'a'), b(10, 'b');
  REQUIRE(rig.sink->append(&rig.ex, a.data(), a.size()));
  REQUIRE(rig.sink->append(&rig.ex, b.data(), b.size()));
  REQUIRE(rig.ex.spill.unread() == 10);
  rig.ex.out.consume(rig.pool, a.size());  // the client took the memory part
  CHECK(rig.sink->refill(&rig.ex) == ResponseSink::Refill::kDone);
  CHECK(rig.ex.out.bytes() == 10);
  CHECK(rig.sink->refill(&rig.ex) == ResponseSink::Refill::kNothing);
}

TEST_CASE("response sink: every status is counted in its class") {
  SinkRig rig;
  for (int s : {103, 200, 204, 301, 404, 431, 500, 502, 504}) rig.sink->count(s);
  CHECK(rig.counters.responses_1xx.load() == 1);
  CHECK(rig.counters.responses_2xx.load() == 2);
  CHECK(rig.counters.responses_3xx.load() == 1);
  CHECK(rig.counters.responses_4xx.load() == 2);
  CHECK(rig.counters.responses_5xx.load() == 3);
}
