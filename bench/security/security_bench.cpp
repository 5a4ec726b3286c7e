// What the security rules of bench/proxy/security_cost.py cost the agent's
// loop, part by part, on one core: 1,000 deny prefixes (IPv4 and IPv6, many
// lengths, none covering the sources), a per-source connection limit and
// request rate, and a bearer token on every request head.
//
//   build/bench/security/bench_security [--benchmark_filter=...]
//
// BM_Accept: a connection's screen at accept and its release at close (the
// prefixes, the source table; one shard, so the table's lock is never
// contended). BM_Request: a complete head's checks (the rate, the token).
// BM_AcceptTwoShards: the accept screen while a second thread does the same
// on the same table, as two shards would. Every benchmark cycles through
// 256 loopback sources. Nothing here is the kernel's: the getpeername() that
// an active screen adds per connection is not counted.
#include <benchmark/benchmark.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "http/http_parser.h"
#include "ops/config.h"
#include "security/request_policy.h"
#include "security/screen.h"

namespace {

using offload::IpAddress;
using offload::Prefix;
using offload::Screen;
using offload::SourceRules;
using offload::Verdict;

constexpr const char* kToken = "bench-token-0123456789abcdef";

// The same shape as security_cost.py's prefixes: 70 % IPv4 of lengths 8 to
// 32 off loopback, 30 % IPv6 in 2001:db8::/32 of lengths 32 to 128.
std::vector<Prefix> deny_prefixes(size_t n) {
  std::mt19937 rnd(7);
  std::vector<Prefix> out;
  const uint8_t firsts[] = {10, 100, 172, 192, 198, 203, 45, 81, 91, 185};
  const unsigned v4_lengths[] = {8, 12, 16, 20, 24, 28, 32};
  const unsigned v6_lengths[] = {32, 48, 56, 64, 128};
  while (out.size() < n) {
    Prefix p;
    if (rnd() % 10 < 7) {
      uint8_t raw[4] = {firsts[rnd() % 10], uint8_t(rnd()), uint8_t(rnd()), uint8_t(rnd())};
      p.bits = uint8_t(96 + v4_lengths[rnd() % 7]);
      p.address = IpAddress::from_v4(raw).masked(p.bits);
    } else {
      uint8_t raw[16] = {0x20, 0x01, 0x0d, 0xb8};
      for (int i = 4; i < 16; ++i) raw[i] = uint8_t(rnd());
      p.bits = uint8_t(v6_lengths[rnd() % 5]);
      p.address = IpAddress::from_v6(raw).masked(p.bits);
    }
    out.push_back(p);
  }
  return out;
}

std::vector<IpAddress> sources() {
  std::vector<IpAddress> out;
  for (int i = 0; i < 256; ++i) {
    uint8_t raw[4] = {127, 0, 1, uint8_t(i)};
    out.push_back(IpAddress::from_v4(raw));
  }
  return out;
}

SourceRules limits() {
  SourceRules r;
  r.max_connections = 1000;
  r.rate = {1000000, 1000000};  // never refuses: every request takes the whole path
  return r;
}

void BM_Accept(benchmark::State& state) {
  Screen screen(deny_prefixes(1000), {}, limits());
  const std::vector<IpAddress> from = sources();
  size_t i = 0;
  for (auto _ : state) {
    const IpAddress& a = from[i++ % from.size()];
    if (screen.admit(a, 0) != Verdict::kAccept) state.SkipWithError("refused");
    screen.release(a);
  }
}
BENCHMARK(BM_Accept);

// Two shards' screens on one shared table, the second hammering it from
// another thread: the lock's cost when it is contended (worse than two
// shards serving requests would make it, since they do more than screen).
void BM_AcceptTwoShards(benchmark::State& state) {
  offload::Config config;
  config.max_clients_per_source = 1000;
  config.rate_limit = 1000000;
  config.rate_burst = 1000000;
  config.sources = offload::share_sources(config, nullptr);
  Screen mine(config, offload::source_rules(config)), other(config, offload::source_rules(config));
  const std::vector<IpAddress> from = sources();
  std::atomic<bool> stop{false};
  std::thread rival([&] {
    for (size_t k = 0; !stop.load(std::memory_order_relaxed); ++k) {
      const IpAddress& a = from[(k * 7) % from.size()];
      if (other.admit(a, 0) == Verdict::kAccept) other.release(a);
    }
  });
  size_t i = 0;
  for (auto _ : state) {
    const IpAddress& a = from[i++ % from.size()];
    if (mine.admit(a, 0) == Verdict::kAccept) mine.release(a);
  }
  stop.store(true);
  rival.join();
}
BENCHMARK(BM_AcceptTwoShards)->UseRealTime();

void BM_Request(benchmark::State& state) {
  Screen screen(deny_prefixes(1000), {}, limits());
  offload::ListenerSecurity sec;
  sec.auth = offload::ListenerSecurity::Auth::kBearer;
  sec.header = "Authorization";
  sec.tokens = {kToken};
  const offload::RequestPolicy policy(sec);
  const std::string msg = std::string("GET /size/100 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n") +
                          "Authorization: Bearer " + kToken + "\r\n\r\n";
  offload::http::Parser parser(offload::http::Parser::Kind::kRequest, offload::http::Limits{});
  if (parser.parse_head(msg) != offload::http::Result::kComplete) state.SkipWithError("head did not parse");
  const std::vector<IpAddress> from = sources();
  for (const IpAddress& a : from) (void)screen.admit(a, 0);  // connected, as at a request
  size_t i = 0;
  for (auto _ : state) {
    if (screen.check_rate(from[i++ % from.size()], 0) != 0) state.SkipWithError("rate limited");
    if (policy.check(parser.head(), msg) != offload::Refusal::kNone) state.SkipWithError("refused");
  }
}
BENCHMARK(BM_Request);

}  // namespace

BENCHMARK_MAIN();
