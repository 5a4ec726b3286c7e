// What choosing a server costs: pick() alone, per policy, over 4 and 64
// servers. Servers hold a few requests each (preset, 0..3), so
// least-outstanding compares real loads instead of one long tie.
// source-hash runs twice: equal weights (integer compare) and unequal
// weights (one logarithm per server).
//
//   build/bench/upstream/bench_balancer [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <vector>

#include "upstream/balancer.h"

namespace {

using offload::BalancePolicy;
using offload::Balancer;
using offload::HealthSpec;
using offload::ServerSpec;

Balancer make(BalancePolicy policy, size_t n, bool weighted) {
  std::vector<ServerSpec> servers;
  for (size_t i = 0; i < n; ++i) {
    servers.push_back(ServerSpec{weighted ? static_cast<uint32_t>(1 + i % 5) : 1u, 0, 0});
  }
  Balancer b(policy, HealthSpec{}, servers);
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = 0; k < (i * 7) % 4; ++k) b.started(i);
  }
  return b;
}

void run(benchmark::State& state, BalancePolicy policy, bool weighted) {
  Balancer b = make(policy, static_cast<size_t>(state.range(0)), weighted);
  uint64_t source = 0;
  for (auto _ : state) {
    int i = b.pick(1000, source++);
    benchmark::DoNotOptimize(i);
  }
  state.counters["ns/pick"] = benchmark::Counter(
      static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_LeastOutstanding(benchmark::State& s) { run(s, BalancePolicy::kLeastOutstanding, true); }
void BM_RoundRobin(benchmark::State& s) { run(s, BalancePolicy::kRoundRobin, true); }
void BM_SourceHashEqual(benchmark::State& s) { run(s, BalancePolicy::kSourceHash, false); }
void BM_SourceHashWeighted(benchmark::State& s) { run(s, BalancePolicy::kSourceHash, true); }

BENCHMARK(BM_LeastOutstanding)->Arg(4)->Arg(64);
BENCHMARK(BM_RoundRobin)->Arg(4)->Arg(64);
BENCHMARK(BM_SourceHashEqual)->Arg(4)->Arg(64);
BENCHMARK(BM_SourceHashWeighted)->Arg(4)->Arg(64);

}  // namespace

BENCHMARK_MAIN();
