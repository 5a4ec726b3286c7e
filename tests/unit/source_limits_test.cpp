// The per-source request rate (token bucket), the grouping of sources by
// prefix, and the bounded source table, each at its boundary. Time is a
// TestClock's: the agent's loop reads the same interface.
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "ip_text.h"
#include "loop/clock.h"
#include "ops/config.h"
#include "security/screen.h"
#include "security/source_table.h"
#include "security/token_bucket.h"

using offload::IpAddress;
using unit_test::ip;
using offload::RateLimit;
using offload::Screen;
using offload::SourceRules;
using offload::SourceTable;
using offload::TestClock;
using offload::TokenBucket;
using offload::Verdict;

namespace {

IpAddress nth_v4(uint32_t n) {
  uint8_t raw[4] = {10, uint8_t(n >> 16), uint8_t(n >> 8), uint8_t(n)};
  return IpAddress::from_v4(raw);
}

SourceRules rate_rules(uint32_t rate, uint32_t burst, uint32_t table = 1024) {
  SourceRules r;
  r.rate = {rate, burst};
  r.table_size = table;
  return r;
}
}  // namespace

TEST_CASE("token bucket: exactly the burst passes, one more fails, and time refills it") {
  TestClock clock;
  const RateLimit limit{10, 5};  // 10/s: one token every 100 ms, 5 at most
  TokenBucket b;
  b.fill(limit, clock.now_ms());
  for (int i = 0; i < 5; ++i) CHECK(b.take(limit, clock.now_ms()) == 0);
  CHECK(b.take(limit, clock.now_ms()) == 100);  // one over: 100 ms to the next token
  clock.advance(99);
  CHECK(b.take(limit, clock.now_ms()) == 1);
  clock.advance(1);
  CHECK(b.take(limit, clock.now_ms()) == 0);  // exactly 100 ms later: one token
  CHECK(b.take(limit, clock.now_ms()) == 100);
  clock.advance(3600 * 1000);  // idle an hour: full again, never more than the burst
  for (int i = 0; i < 5; ++i) CHECK(b.take(limit, clock.now_ms()) == 0);
  CHECK(b.take(limit, clock.now_ms()) > 0);
}

TEST_CASE("token bucket: a slow rate's wait is the time to a whole token") {
  const RateLimit limit{1, 1};
  TokenBucket b;
  b.fill(limit, 0);
  CHECK(b.take(limit, 0) == 0);
  CHECK(b.take(limit, 0) == 1000);
  CHECK(b.take(limit, 250) == 750);
  CHECK(b.take(limit, 1000) == 0);
}

TEST_CASE("screen: the request rate is per source, from the test clock") {
  TestClock clock;
  Screen s({}, {}, rate_rules(2, 3));
  CHECK(s.active());
  CHECK(s.admit(ip("127.0.0.2"), clock.now_ms()) == Verdict::kAccept);
  CHECK(s.admit(ip("127.0.0.3"), clock.now_ms()) == Verdict::kAccept);
  for (int i = 0; i < 3; ++i) CHECK(s.check_rate(ip("127.0.0.2"), clock.now_ms()) == 0);
  CHECK(s.check_rate(ip("127.0.0.2"), clock.now_ms()) == 500);
  CHECK(s.check_rate(ip("127.0.0.3"), clock.now_ms()) == 0);  // another source: its own bucket
  clock.advance(500);
  CHECK(s.check_rate(ip("127.0.0.2"), clock.now_ms()) == 0);
  CHECK(s.check_rate(ip("127.0.0.2"), clock.now_ms()) == 500);
}

TEST_CASE("screen: IPv6 sources are grouped by /64, IPv4 by address, both configurable") {
  Screen s({}, {}, SourceRules{2, {}, 64, 32, 64});
  CHECK(s.admit(ip("2001:db8:1:2::1")) == Verdict::kAccept);
  CHECK(s.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")) == Verdict::kAccept);
  CHECK(s.admit(ip("2001:db8:1:2:abcd::9")) == Verdict::kOverSourceLimit);  // same /64
  CHECK(s.admit(ip("2001:db8:1:3::1")) == Verdict::kAccept);                // the next /64
  CHECK(s.connections_from(ip("2001:db8:1:2::77")) == 2);
  CHECK(s.admit(ip("192.0.2.1")) == Verdict::kAccept);
  CHECK(s.admit(ip("192.0.2.1")) == Verdict::kAccept);
  CHECK(s.admit(ip("192.0.2.1")) == Verdict::kOverSourceLimit);
  CHECK(s.admit(ip("192.0.2.2")) == Verdict::kAccept);  // per address
  CHECK(s.source_of(ip("2001:db8:1:2:abcd::9")) == ip("2001:db8:1:2::"));

  Screen wide({}, {}, SourceRules{1, {}, 64, 24, 48});
  CHECK(wide.admit(ip("192.0.2.1")) == Verdict::kAccept);
  CHECK(wide.admit(ip("192.0.2.200")) == Verdict::kOverSourceLimit);  // same /24
  CHECK(wide.admit(ip("192.0.3.1")) == Verdict::kAccept);
  CHECK(wide.admit(ip("2001:db8:1:ffff::1")) == Verdict::kAccept);
  CHECK(wide.admit(ip("2001:db8:1:2::1")) == Verdict::kOverSourceLimit);  // same /48
  wide.release(ip("2001:db8:1:ffff::1"));
  CHECK(wide.admit(ip("2001:db8:1:2::1")) == Verdict::kAccept);
}

TEST_CASE("source table: 100,000 distinct sources never grow it past its size; evictions counted") {
  constexpr uint32_t kSize = 4096;
  SourceTable t(kSize);
  const size_t memory = t.memory_bytes();
  CHECK(memory < size_t(kSize) * 128);
  for (uint32_t n = 0; n < 100000; ++n) {
    bool fresh = false;
    offload::SourceEntry* e = t.get(nth_v4(n), &fresh);
    REQUIRE(e != nullptr);
    REQUIRE(fresh);
    REQUIRE(t.size() <= kSize);
  }
  CHECK(t.size() == kSize);
  CHECK(t.evictions() == 100000 - kSize);
  CHECK(t.memory_bytes() == memory);
  MESSAGE("source table of " << kSize << " entries: " << memory << " bytes, the same after 100,000 sources; "
          "the default 65536: " << SourceTable(65536).memory_bytes() << " bytes");
  // The least recently used went: the last kSize are there, the one before is not.
  bool fresh = false;
  CHECK(t.find(nth_v4(100000 - kSize)) != nullptr);
  CHECK(t.find(nth_v4(100000 - kSize - 1)) == nullptr);
  t.get(nth_v4(99999), &fresh);
  CHECK_FALSE(fresh);
}

TEST_CASE("source table: a source with open connections is never evicted; full of them, new ones are refused") {
  constexpr uint32_t kSize = 64;
  SourceTable t(kSize);
  bool fresh = false;
  offload::SourceEntry* held = t.get(nth_v4(0), &fresh);
  t.connect(held);
  t.connect(held);
  for (uint32_t n = 1; n < 10000; ++n) REQUIRE(t.get(nth_v4(n), &fresh) != nullptr);
  REQUIRE(t.find(nth_v4(0)) == held);
  CHECK(held->connections == 2);
  // Pin every entry: nothing may be evicted, so a new source gets none.
  for (uint32_t n = 10000 - kSize + 1; n < 10000; ++n) t.connect(t.find(nth_v4(n)));
  CHECK(t.get(nth_v4(20000), &fresh) == nullptr);
  CHECK(t.size() == kSize);
  // One closes its last connection: that one makes room.
  t.disconnect(t.find(nth_v4(9999)));
  offload::SourceEntry* added = t.get(nth_v4(20000), &fresh);
  REQUIRE(added != nullptr);
  CHECK(fresh);
  CHECK(t.find(nth_v4(9999)) == nullptr);
  CHECK(t.find(nth_v4(0)) == held);
}

TEST_CASE("source table: the sources of one /24, or of one /16, spread over the index instead of one probe chain") {
  SourceTable t(65536);
  bool fresh = false;
  std::vector<IpAddress> added;
  for (uint32_t n = 0; n < 4096; ++n) {  // 10.0.0.0 to 10.0.15.255: the last two bytes differ
    added.push_back(nth_v4(n));
    REQUIRE(t.get(added.back(), &fresh) != nullptr);
  }
  uint32_t longest = 0, total = 0;
  for (const IpAddress& a : added) {
    const uint32_t d = t.probe_distance(a);
    longest = std::max(longest, d);
    total += d;
  }
  // At most 1/32 full: a good hash keeps almost every source in its own
  // slot (a source of each /24 sharing one slot would give 255 and more).
  CHECK(longest <= 8);
  CHECK(total <= added.size() / 4);
}

TEST_CASE("screen: a flood of sources keeps connection counts; a full table refuses, counted as its own verdict") {
  Screen s({}, {}, SourceRules{3, {5, 5}, 32, 32, 64});
  for (int i = 0; i < 3; ++i) CHECK(s.admit(nth_v4(0)) == Verdict::kAccept);
  for (uint32_t n = 1; n < 100000; ++n) {
    Verdict v = s.admit(nth_v4(n));
    if (v == Verdict::kAccept) s.release(nth_v4(n));
  }
  CHECK(s.sources_tracked() <= 32);
  CHECK(s.take_evictions() > 0);
  CHECK(s.take_evictions() == 0);  // taken: the next call counts only new ones
  CHECK(s.connections_from(nth_v4(0)) == 3);
  CHECK(s.admit(nth_v4(0)) == Verdict::kOverSourceLimit);
  // 31 more sources hold a connection each: the 33rd source finds no room.
  for (uint32_t n = 1; n < 32; ++n) REQUIRE(s.admit(nth_v4(200000 + n)) == Verdict::kAccept);
  CHECK(s.admit(nth_v4(300000)) == Verdict::kSourceTableFull);
  s.release(nth_v4(200001));
  CHECK(s.admit(nth_v4(300000)) == Verdict::kAccept);
}

namespace {

offload::Config shared_config(uint32_t per_source, uint32_t rate, uint32_t burst) {
  offload::Config c;
  c.max_clients_per_source = per_source;
  c.rate_limit = rate;
  c.rate_burst = burst;
  c.source_table_size = 64;
  c.sources = offload::share_sources(c, nullptr);
  return c;
}

}  // namespace

TEST_CASE("shared sources: two shards' screens count one source's connections and requests together") {
  TestClock clock;
  const offload::Config config = shared_config(3, 1, 4);
  REQUIRE(config.sources != nullptr);
  Screen one(config, offload::source_rules(config)), two(config, offload::source_rules(config));
  const IpAddress a = ip("127.0.0.2");
  CHECK(one.admit(a, clock.now_ms()) == Verdict::kAccept);
  CHECK(two.admit(a, clock.now_ms()) == Verdict::kAccept);
  CHECK(one.admit(a, clock.now_ms()) == Verdict::kAccept);  // exactly the limit, over two shards
  CHECK(two.admit(a, clock.now_ms()) == Verdict::kOverSourceLimit);
  CHECK(one.admit(a, clock.now_ms()) == Verdict::kOverSourceLimit);
  CHECK(one.connections_from(a) == 3);
  two.release(a);  // a connection of one shard's ends: the other may take its place
  CHECK(one.admit(a, clock.now_ms()) == Verdict::kAccept);
  // One bucket of 4 between them.
  CHECK(one.check_rate(a, clock.now_ms()) == 0);
  CHECK(two.check_rate(a, clock.now_ms()) == 0);
  CHECK(one.check_rate(a, clock.now_ms()) == 0);
  CHECK(two.check_rate(a, clock.now_ms()) == 0);
  CHECK(one.check_rate(a, clock.now_ms()) == 1000);
  CHECK(two.check_rate(a, clock.now_ms()) == 1000);
  CHECK(one.sources_tracked() == 1);
  CHECK(two.sources_tracked() == 1);
}

TEST_CASE("shared sources: a reload keeps the table when its shape is unchanged, and makes a new one otherwise") {
  const offload::Config running = shared_config(2, 0, 0);
  offload::Config same = running;
  same.max_clients_per_source = 5;  // the limits may change: the counts carry over
  same.sources = nullptr;
  CHECK(offload::share_sources(same, &running) == running.sources);
  offload::Config bigger = same;
  bigger.source_table_size = 128;
  CHECK(offload::share_sources(bigger, &running) != running.sources);
  offload::Config regrouped = same;
  regrouped.source_ipv6_prefix = 48;
  CHECK(offload::share_sources(regrouped, &running) != running.sources);
  offload::Config untracked = same;
  untracked.max_clients_per_source = 0;
  CHECK(offload::share_sources(untracked, &running) == nullptr);

  // The running screen's connection is still counted by the next one's.
  Screen old_gen(running, offload::source_rules(running));
  CHECK(old_gen.admit(ip("127.0.0.7")) == Verdict::kAccept);
  same.sources = offload::share_sources(same, &running);
  Screen new_gen(same, offload::source_rules(same));
  CHECK(new_gen.connections_from(ip("127.0.0.7")) == 1);
  old_gen.release(ip("127.0.0.7"));
  CHECK(new_gen.connections_from(ip("127.0.0.7")) == 0);
}

TEST_CASE("shared sources: two threads admitting and releasing at once never pass the limit and end at zero") {
  const offload::Config config = shared_config(4, 0, 0);
  const IpAddress a = ip("127.0.0.3");
  std::atomic<int> open{0}, most{0};
  // Each shard wants three connections at a time: six wanted, four allowed.
  auto shard = [&] {
    Screen s(config, offload::source_rules(config));
    for (int i = 0; i < 5000; ++i) {
      int held = 0;
      for (int k = 0; k < 3; ++k) {
        if (s.admit(a) != Verdict::kAccept) continue;
        ++held;
        const int now = open.fetch_add(1) + 1;
        for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
        }
      }
      for (; held > 0; --held) {
        open.fetch_sub(1);
        s.release(a);
      }
    }
  };
  std::thread t1(shard), t2(shard);
  t1.join();
  t2.join();
  CHECK(most.load() <= 4);
  CHECK(most.load() >= 3);
  Screen check(config, offload::source_rules(config));
  CHECK(check.connections_from(a) == 0);
}
