// The SPSC ring: order, wrap-around, full and empty, every record size,
// random traffic against a model, doorbells, and corrupt indices and records
// written by a hostile peer.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "offload/ring_queue.h"

using offload::ring::Consumer;
using offload::ring::Producer;
using offload::ring::Record;

namespace {

// One ring in private memory, both ends attached.
struct TestRing {
  explicit TestRing(uint32_t bytes = 4096, bool bells = false) : size(bytes) {
    mem.reset(static_cast<uint8_t*>(std::aligned_alloc(64, sizeof(offload_ring_ctrl) + bytes)));
    std::memset(mem.get(), 0, sizeof(offload_ring_ctrl) + bytes);
    if (bells) {
      to_consumer = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      to_producer = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }
    prod.init(ctrl(), data(), bytes, to_consumer);
    cons.init(ctrl(), data(), bytes, to_producer);
  }
  ~TestRing() {
    if (to_consumer >= 0) close(to_consumer);
    if (to_producer >= 0) close(to_producer);
  }
  offload_ring_ctrl* ctrl() { return reinterpret_cast<offload_ring_ctrl*>(mem.get()); }
  uint8_t* data() { return mem.get() + sizeof(offload_ring_ctrl); }

  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  uint32_t size;
  std::unique_ptr<uint8_t, Free> mem;
  int to_consumer = -1, to_producer = -1;
  Producer prod;
  Consumer cons;
};

uint8_t pattern(uint64_t seq, uint32_t i) { return static_cast<uint8_t>(seq * 131 + i * 7 + 1); }

bool put(Producer& p, uint64_t seq, uint32_t len) {
  uint8_t* dst = p.try_reserve(len);
  if (dst == nullptr) return false;
  for (uint32_t i = 0; i < len; ++i) dst[i] = pattern(seq, i);
  p.commit(OFFLOAD_REC_REQUEST, 0, len);
  return true;
}

// Takes one record and checks it is record `seq` of `len` bytes.
void take(Consumer& c, uint64_t seq, uint32_t len) {
  Record r;
  REQUIRE(c.peek(&r) == 1);
  REQUIRE(r.type == OFFLOAD_REC_REQUEST);
  REQUIRE(r.payload_len == len);
  for (uint32_t i = 0; i < len; ++i)
    if (r.payload[i] != pattern(seq, i)) FAIL("byte " << i << " of record " << seq << " differs");
  c.release();
}

uint64_t read_bell(int fd) {
  uint64_t v = 0;
  return read(fd, &v, sizeof v) == sizeof v ? v : 0;
}

// Writes a raw record header where the consumer will look next.
void forge(TestRing& t, uint64_t at, uint32_t len, uint16_t type, uint64_t head) {
  offload_rec rec{len, type, 0};
  std::memcpy(t.data() + (at & (t.size - 1)), &rec, sizeof rec);
  offload_store_release_u64(&t.ctrl()->prod.head, head);
}

}  // namespace

TEST_CASE("an empty ring has nothing to read") {
  TestRing t;
  Record r;
  CHECK(t.cons.peek(&r) == 0);
  CHECK(t.prod.free_bytes() == 4096);
  CHECK(t.prod.max_payload() == 4088);
}

TEST_CASE("records come out in order, and a full ring refuses until space is freed") {
  TestRing t;
  uint64_t seq = 0;
  while (put(t.prod, seq, 100)) ++seq;  // 112 bytes each: 36 fit, 64 bytes left
  CHECK(seq == 36);
  CHECK(t.prod.try_reserve(100) == nullptr);
  // The refused record padded the last 64 bytes so it can go to position 0.
  CHECK(t.prod.try_reserve(0) == nullptr);
  take(t.cons, 0, 100);
  CHECK(put(t.prod, seq, 100));  // pads the 64 bytes, lands at position 0
  CHECK(t.prod.try_reserve(0) == nullptr);
  for (uint64_t i = 1; i <= seq; ++i) take(t.cons, i, 100);
  Record r;
  CHECK(t.cons.peek(&r) == 0);
  CHECK(t.prod.free_bytes() == 4096);
}

TEST_CASE("wrap-around many times with records that do not divide the ring") {
  TestRing t;
  for (uint64_t seq = 0; seq < 5000; ++seq) {
    uint32_t len = static_cast<uint32_t>(200 + seq % 1500);
    REQUIRE(put(t.prod, seq, len));
    take(t.cons, seq, len);
  }
  CHECK(!t.cons.failed());
  CHECK(!t.prod.failed());
}

TEST_CASE("records of every size up to the ring size") {
  TestRing t;
  uint64_t seq = 0;
  // Each size once, at the varying positions the previous sizes leave.
  for (uint32_t len = 0; len <= t.prod.max_payload(); ++len, ++seq) {
    if (!put(t.prod, seq, len)) {
      // Only a pad was written (the record needs position 0): consume it.
      Record r;
      REQUIRE(t.cons.peek(&r) == 0);
      REQUIRE(put(t.prod, seq, len));
    }
    take(t.cons, seq, len);
  }
  CHECK(t.prod.try_reserve(t.prod.max_payload() + 1) == nullptr);
}

// The model: the ring as a queue of spans (records and pads) with the same
// placement rule, predicting exactly when the ring must refuse a record.
struct Model {
  struct Entry {
    int64_t seq;  // -1: pad
    uint32_t len;
    uint64_t span;
  };
  uint64_t size, head = 0, tail = 0;
  std::deque<Entry> q;

  explicit Model(uint64_t bytes) : size(bytes) {}
  bool put(int64_t seq, uint32_t len) {
    uint64_t need = offload_rec_span(len + 8);
    uint64_t contig = size - head % size;
    if (need > contig) {
      if (size - (head - tail) < contig) return false;
      q.push_back({-1, 0, contig});
      head += contig;
    }
    if (size - (head - tail) < need) return false;
    q.push_back({seq, len, need});
    head += need;
    return true;
  }
  void drop_pads() {
    while (!q.empty() && q.front().seq < 0) {
      tail += q.front().span;
      q.pop_front();
    }
  }
  bool has_record() {
    for (const Entry& e : q)
      if (e.seq >= 0) return true;
    return false;
  }
};

TEST_CASE("random sizes against a simple model") {
  TestRing t(8192);
  Model m(8192);
  std::mt19937_64 rng(12345);
  int64_t next = 0;
  for (int op = 0; op < 200000; ++op) {
    if (rng() % 2 == 0) {
      uint32_t len = static_cast<uint32_t>(rng() % 3000);
      if (rng() % 50 == 0) len = static_cast<uint32_t>(rng() % (t.prod.max_payload() + 1));
      bool expect = m.put(next, len);
      REQUIRE(put(t.prod, static_cast<uint64_t>(next), len) == expect);
      if (expect) ++next;
    } else if (m.has_record()) {
      m.drop_pads();
      Model::Entry e = m.q.front();
      m.q.pop_front();
      m.tail += e.span;
      take(t.cons, static_cast<uint64_t>(e.seq), e.len);
    } else {
      Record r;
      REQUIRE(t.cons.peek(&r) == 0);
      m.drop_pads();
    }
  }
  while (m.has_record()) {
    m.drop_pads();
    take(t.cons, static_cast<uint64_t>(m.q.front().seq), m.q.front().len);
    m.tail += m.q.front().span;
    m.q.pop_front();
  }
  Record r;
  CHECK(t.cons.peek(&r) == 0);
}

TEST_CASE("doorbells ring only for a peer that said it sleeps") {
  TestRing t(4096, true);
  SUBCASE("consumer") {
    REQUIRE(put(t.prod, 0, 10));
    CHECK(read_bell(t.to_consumer) == 0);  // nobody was waiting
    take(t.cons, 0, 10);
    CHECK(t.cons.prepare_wait());  // empty: may sleep
    REQUIRE(put(t.prod, 1, 10));
    CHECK(read_bell(t.to_consumer) == 1);
    t.cons.end_wait();
    REQUIRE(put(t.prod, 2, 10));
    CHECK(read_bell(t.to_consumer) == 0);
    CHECK(!t.cons.prepare_wait());  // data is there: must not sleep
  }
  SUBCASE("producer") {
    uint64_t seq = 0;
    while (put(t.prod, seq, 1000)) ++seq;
    CHECK(t.prod.prepare_wait(1000));
    take(t.cons, 0, 1000);
    CHECK(read_bell(t.to_producer) == 1);
    t.prod.end_wait();
    take(t.cons, 1, 1000);
    CHECK(read_bell(t.to_producer) == 0);
  }
}

TEST_CASE("two threads with sleeping doorbells lose no record and no wake-up") {
  TestRing t(4096, true);
  constexpr uint64_t kCount = 100000;
  auto wait_bell = [](int fd) {
    pollfd p{fd, POLLIN, 0};
    REQUIRE(poll(&p, 1, 5000) == 1);  // bounded: a lost wake-up fails here
    read_bell(fd);
  };
  std::thread producer([&] {
    for (uint64_t seq = 0; seq < kCount; ++seq) {
      uint32_t len = static_cast<uint32_t>(seq % 700);
      while (!put(t.prod, seq, len)) {
        if (t.prod.prepare_wait(len)) wait_bell(t.to_producer);
        t.prod.end_wait();
      }
    }
  });
  for (uint64_t seq = 0; seq < kCount; ++seq) {
    Record r;
    int got;
    while ((got = t.cons.peek(&r)) == 0) {
      if (t.cons.prepare_wait()) wait_bell(t.to_consumer);
      t.cons.end_wait();
    }
    REQUIRE(got == 1);
    REQUIRE(r.payload_len == seq % 700);
    if (r.payload_len > 0) REQUIRE(r.payload[r.payload_len - 1] == pattern(seq, r.payload_len - 1));
    t.cons.release();
  }
  producer.join();
}

TEST_CASE("corrupt indices and records fail the ring cleanly") {
  TestRing t;
  Record r;
  SUBCASE("producer index beyond the ring") {
    offload_store_release_u64(&t.ctrl()->prod.head, 4096 + 8);
    CHECK(t.cons.peek(&r) == -EBADMSG);
    CHECK(t.cons.error().find("producer index") != std::string::npos);
  }
  SUBCASE("producer index not aligned") {
    offload_store_release_u64(&t.ctrl()->prod.head, 12);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("producer index moving backwards") {
    REQUIRE(put(t.prod, 0, 8));
    REQUIRE(t.cons.peek(&r) == 1);
    t.cons.release();
    offload_store_release_u64(&t.ctrl()->prod.head, 8);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("record length below the header") {
    forge(t, 0, 4, OFFLOAD_REC_REQUEST, 8);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("record longer than what is published") {
    forge(t, 0, 64, OFFLOAD_REC_REQUEST, 32);
    CHECK(t.cons.peek(&r) == -EBADMSG);
    CHECK(t.cons.error().find("exceeds published") != std::string::npos);
  }
  SUBCASE("record crossing the end of the ring") {
    forge(t, 0, 0xfffffff0u, OFFLOAD_REC_REQUEST, 4096);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("unknown record type") {
    forge(t, 0, 16, 77, 16);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("pad that does not reach the end") {
    forge(t, 0, 16, OFFLOAD_REC_PAD, 16);
    CHECK(t.cons.peek(&r) == -EBADMSG);
  }
  SUBCASE("the failure is sticky") {
    forge(t, 0, 4, OFFLOAD_REC_REQUEST, 8);
    CHECK(t.cons.peek(&r) == -EBADMSG);
    forge(t, 0, 16, OFFLOAD_REC_REQUEST, 16);
    CHECK(t.cons.peek(&r) == -EBADMSG);
    CHECK(t.cons.failed());
  }
  SUBCASE("consumer index beyond what was published") {
    REQUIRE(put(t.prod, 0, 3000));
    offload_store_release_u64(&t.ctrl()->cons.tail, 8000);
    CHECK(t.prod.try_reserve(3000) == nullptr);
    CHECK(t.prod.failed());
    CHECK(t.prod.error().find("consumer index") != std::string::npos);
  }
}
