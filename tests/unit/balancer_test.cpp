#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "upstream/balancer.h"

using offload::BalancePolicy;
using offload::Balancer;
using offload::HealthSpec;
using offload::HealthState;
using offload::ServerSpec;

namespace {

std::vector<ServerSpec> weights(std::initializer_list<uint32_t> ws) {
  std::vector<ServerSpec> out;
  for (uint32_t w : ws) out.push_back(ServerSpec{w, 0, 0});
  return out;
}

// Health that never takes a server out, for the distribution tests.
HealthSpec no_health() {
  HealthSpec h;
  h.max_fails = 0;
  return h;
}

HealthSpec passive(uint32_t max_fails, uint64_t fail_timeout_ms) {
  HealthSpec h;
  h.max_fails = max_fails;
  h.fail_timeout_ms = fail_timeout_ms;
  return h;
}

HealthSpec active(uint32_t rise, uint32_t fall, uint32_t max_fails = 0) {
  HealthSpec h;
  h.max_fails = max_fails;
  h.fail_timeout_ms = 1000;
  h.active = true;
  h.rise = rise;
  h.fall = fall;
  return h;
}

// Pick and finish at once: every request is over before the next one, so
// outstanding stays 0 and only the policy decides.
std::vector<int> counts_idle(Balancer& b, int picks, uint64_t now = 0) {
  std::vector<int> counts(b.size(), 0);
  for (int k = 0; k < picks; ++k) {
    int i = b.pick(now);
    REQUIRE(i >= 0);
    b.started(static_cast<size_t>(i));
    b.finished(static_cast<size_t>(i));
    ++counts[static_cast<size_t>(i)];
  }
  return counts;
}

// Runs `f` in a child process; true when it aborts (an OFFLOAD_ASSERT).
template <typename F>
bool aborts(F f) {
  std::fflush(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // doctest's crash handler would carry on
    if (std::freopen("/dev/null", "w", stderr) == nullptr) _exit(3);
    f();
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

// Takes server i down through passive health: max_fails failures.
void fail_times(Balancer& b, size_t i, uint32_t n, uint64_t now) {
  for (uint32_t k = 0; k < n; ++k) b.report_failure(i, now);
}

}  // namespace

// ---- round-robin ----------------------------------------------------------

TEST_CASE("balancer round-robin: equal weights take turns, exact counts") {
  Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1, 1}));
  int last = -1;
  for (int k = 0; k < 30; ++k) {
    int i = b.pick(0);
    CHECK(i != last);
    last = i;
  }
  std::vector<int> counts = counts_idle(b, 3000);
  CHECK(counts == std::vector<int>{1000, 1000, 1000});
}

TEST_CASE("balancer round-robin: weights 5,1,1 are spread, not five in a row") {
  Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({5, 1, 1}));
  // The first cycle is nginx's smooth sequence: a a b a c a a.
  std::vector<int> first;
  for (int k = 0; k < 7; ++k) first.push_back(b.pick(0));
  CHECK(first == std::vector<int>{0, 0, 1, 0, 2, 0, 0});
  // Every cycle of 7 picks holds exactly 5, 1, 1, and the heavy server never
  // gets its 5 in a row (the longest run, 4, spans two cycles: a a | a a).
  int run = 0, max_run = 0;
  for (int cycle = 0; cycle < 1000; ++cycle) {
    std::array<int, 3> counts{};
    for (int k = 0; k < 7; ++k) {
      int i = b.pick(0);
      REQUIRE(i >= 0);
      ++counts[static_cast<size_t>(i)];
      run = i == 0 ? run + 1 : 0;
      if (run > max_run) max_run = run;
    }
    REQUIRE(counts == std::array<int, 3>{5, 1, 1});
  }
  CHECK(max_run == 4);
  CHECK(b.stats(0, 0).picks_total == 5005);
  CHECK(b.stats(1, 0).picks_total == 1001);
  CHECK(b.stats(2, 0).picks_total == 1001);
}

TEST_CASE("balancer round-robin: a down server is skipped, the rest share") {
  Balancer b(BalancePolicy::kRoundRobin, passive(1, 1000), weights({1, 1, 1}));
  b.report_failure(1, 0);
  std::vector<int> counts = counts_idle(b, 1000);
  CHECK(counts == std::vector<int>{500, 0, 500});
}

// ---- least-outstanding ----------------------------------------------------

TEST_CASE("balancer least-outstanding: idle servers share by weight") {
  Balancer even(BalancePolicy::kLeastOutstanding, no_health(), weights({1, 1, 1}));
  CHECK(counts_idle(even, 3000) == std::vector<int>{1000, 1000, 1000});
  Balancer weighted(BalancePolicy::kLeastOutstanding, no_health(), weights({5, 1, 1}));
  CHECK(counts_idle(weighted, 7000) == std::vector<int>{5000, 1000, 1000});
}

TEST_CASE("balancer least-outstanding: each pick goes to the least loaded per weight") {
  Balancer b(BalancePolicy::kLeastOutstanding, no_health(), weights({1, 1, 1}));
  // Servers 0 and 1 already hold 3 and 1 requests.
  for (int k = 0; k < 3; ++k) b.started(0);
  b.started(1);
  CHECK(b.pick(0) == 2);
  b.started(2);
  for (int k = 0; k < 31; ++k) {
    uint32_t least = UINT32_MAX;
    for (size_t s = 0; s < 3; ++s) least = std::min(least, b.stats(s, 0).outstanding);
    int i = b.pick(0);
    REQUIRE(i >= 0);
    REQUIRE(b.stats(static_cast<size_t>(i), 0).outstanding == least);
    b.started(static_cast<size_t>(i));
  }
  // 4 held + 32 picks = 36: 12 each.
  for (size_t s = 0; s < 3; ++s) CHECK(b.stats(s, 0).outstanding == 12);
}

TEST_CASE("balancer least-outstanding: held requests follow the weights exactly") {
  Balancer b(BalancePolicy::kLeastOutstanding, no_health(), weights({2, 1}));
  for (int k = 0; k < 30; ++k) {
    int i = b.pick(0);
    REQUIRE(i >= 0);
    b.started(static_cast<size_t>(i));
  }
  CHECK(b.stats(0, 0).outstanding == 20);
  CHECK(b.stats(1, 0).outstanding == 10);
  // A finished request on server 1 makes it the least loaded (9/1 < 20/2).
  b.finished(1);
  CHECK(b.pick(0) == 1);
}

TEST_CASE("balancer least-outstanding: ties rotate among the equal servers") {
  Balancer b(BalancePolicy::kLeastOutstanding, no_health(), weights({1, 1, 1, 1}));
  b.started(0);  // server 0 is busier; 1, 2, 3 tie
  std::array<int, 4> counts{};
  for (int k = 0; k < 300; ++k) {
    int i = b.pick(0);
    REQUIRE(i >= 1);
    ++counts[static_cast<size_t>(i)];
  }
  CHECK(counts == std::array<int, 4>{0, 100, 100, 100});
}

// ---- caps -----------------------------------------------------------------

TEST_CASE("balancer: max_outstanding caps a server, 0 means no cap") {
  for (BalancePolicy policy : {BalancePolicy::kLeastOutstanding, BalancePolicy::kRoundRobin,
                               BalancePolicy::kSourceHash}) {
    CAPTURE(static_cast<int>(policy));
    std::vector<ServerSpec> servers{{1, 2, 0}, {1, 1, 0}};
    Balancer b(policy, no_health(), servers);
    for (int k = 0; k < 3; ++k) {
      int i = b.pick(0, 42);
      REQUIRE(i >= 0);
      b.started(static_cast<size_t>(i));
    }
    CHECK(b.stats(0, 0).outstanding == 2);
    CHECK(b.stats(1, 0).outstanding == 1);
    CHECK(b.pick(0, 42) == -1);
    CHECK_FALSE(b.any_available(0));
    CHECK(b.next_change_ms(0) == UINT64_MAX);  // a full server waits for finished, not time
    b.finished(1);
    CHECK(b.any_available(0));
    CHECK(b.pick(0, 42) == 1);
  }
  Balancer uncapped(BalancePolicy::kRoundRobin, no_health(), weights({1}));
  for (int k = 0; k < 10000; ++k) {
    REQUIRE(uncapped.pick(0) == 0);
    uncapped.started(0);
  }
  CHECK(uncapped.stats(0, 0).outstanding == 10000);
}

// ---- source-hash ----------------------------------------------------------

TEST_CASE("balancer source-hash: a source stays on its server; equal weights spread evenly") {
  Balancer b(BalancePolicy::kSourceHash, no_health(), weights({1, 1, 1, 1}));
  const int n = 40000;
  std::vector<int> first(n);
  std::array<int, 4> counts{};
  for (int s = 0; s < n; ++s) {
    first[static_cast<size_t>(s)] = b.pick(0, static_cast<uint64_t>(s));
    ++counts[static_cast<size_t>(first[static_cast<size_t>(s)])];
  }
  for (int round = 0; round < 3; ++round) {
    for (int s = 0; s < n; ++s) REQUIRE(b.pick(0, static_cast<uint64_t>(s)) == first[static_cast<size_t>(s)]);
  }
  for (int c : counts) {
    CHECK(c > n / 4 * 9 / 10);  // within 10% of 10,000
    CHECK(c < n / 4 * 11 / 10);
  }
}

TEST_CASE("balancer source-hash: weights 5,1,1 give shares near 5/7, 1/7, 1/7") {
  Balancer b(BalancePolicy::kSourceHash, no_health(), weights({5, 1, 1}));
  const int n = 70000;
  std::array<int, 3> counts{};
  for (int s = 0; s < n; ++s) ++counts[static_cast<size_t>(b.pick(0, static_cast<uint64_t>(s)))];
  MESSAGE("source-hash 5:1:1 over 70000 sources: ", counts[0], " ", counts[1], " ", counts[2]);
  CHECK(counts[0] > 47500);
  CHECK(counts[0] < 52500);
  CHECK(counts[1] > 9000);
  CHECK(counts[1] < 11000);
  CHECK(counts[2] > 9000);
  CHECK(counts[2] < 11000);
}

TEST_CASE("balancer source-hash: one of 4 servers down moves only its sources, and back") {
  for (auto ws : {std::vector<uint32_t>{1, 1, 1, 1}, std::vector<uint32_t>{3, 1, 2, 1}}) {
    std::vector<ServerSpec> servers;
    for (uint32_t w : ws) servers.push_back(ServerSpec{w, 0, 0});
    Balancer b(BalancePolicy::kSourceHash, passive(1, 1000), servers);
    const int n = 20000;
    std::vector<int> before(n);
    for (int s = 0; s < n; ++s) before[static_cast<size_t>(s)] = b.pick(0, static_cast<uint64_t>(s));

    b.report_failure(2, 0);  // server 2 goes down
    int moved = 0, held_by_2 = 0;
    for (int s = 0; s < n; ++s) {
      int now_on = b.pick(1, static_cast<uint64_t>(s));
      int was_on = before[static_cast<size_t>(s)];
      REQUIRE(now_on != 2);
      if (was_on == 2) ++held_by_2;
      if (now_on != was_on) {
        ++moved;
        REQUIRE(was_on == 2);  // nobody else's source moves
      }
    }
    double fraction = static_cast<double>(moved) / n;
    double share_of_2 = static_cast<double>(ws[2]) / (ws[0] + ws[1] + ws[2] + ws[3]);
    MESSAGE("source-hash, weights ", ws[0], ",", ws[1], ",", ws[2], ",", ws[3],
            ": server 2 down moved ", fraction, " of sources (its weight share ", share_of_2, ")");
    CHECK(moved == held_by_2);
    CHECK(fraction > share_of_2 * 0.9);
    CHECK(fraction < share_of_2 * 1.1);

    // Probing after fail_timeout, the probe succeeds: every source is home again.
    uint64_t source_of_2 = 0;
    while (before[source_of_2] != 2) ++source_of_2;
    REQUIRE(b.pick(1000, source_of_2) == 2);
    b.started(2);
    CHECK(b.report_success(2, 1000));
    b.finished(2);
    for (int s = 0; s < n; ++s) {
      REQUIRE(b.pick(1001, static_cast<uint64_t>(s)) == before[static_cast<size_t>(s)]);
    }
  }
}

TEST_CASE("balancer source-hash: a full server's sources overflow and come back") {
  std::vector<ServerSpec> servers{{1, 1, 0}, {1, 1, 0}, {1, 1, 0}};
  Balancer b(BalancePolicy::kSourceHash, no_health(), servers);
  int home = b.pick(0, 7);
  b.started(static_cast<size_t>(home));
  int overflow = b.pick(0, 7);
  CHECK(overflow >= 0);
  CHECK(overflow != home);
  b.finished(static_cast<size_t>(home));
  CHECK(b.pick(0, 7) == home);
}

TEST_CASE("balancer source-hash: hash_key keeps sources when servers are reordered") {
  std::vector<ServerSpec> forward{{1, 0, 101}, {1, 0, 202}, {1, 0, 303}, {1, 0, 404}};
  std::vector<ServerSpec> reverse(forward.rbegin(), forward.rend());
  Balancer a(BalancePolicy::kSourceHash, no_health(), forward);
  Balancer r(BalancePolicy::kSourceHash, no_health(), reverse);
  for (uint64_t s = 0; s < 5000; ++s) {
    int i = a.pick(0, s);
    int j = r.pick(0, s);
    REQUIRE(forward[static_cast<size_t>(i)].hash_key == reverse[static_cast<size_t>(j)].hash_key);
  }
}

// ---- passive health -------------------------------------------------------

TEST_CASE("balancer passive: down after exactly max_fails consecutive failures") {
  Balancer b(BalancePolicy::kRoundRobin, passive(3, 1000), weights({1, 1}));
  fail_times(b, 0, 2, 100);
  CHECK(b.stats(0, 100).state == HealthState::kUp);
  CHECK(b.stats(0, 100).consecutive_failures == 2);
  CHECK(counts_idle(b, 10, 100) == std::vector<int>{5, 5});
  b.report_failure(0, 100);
  CHECK(b.stats(0, 100).state == HealthState::kDown);
  CHECK(std::string(b.stats(0, 100).state_name) == "down");
  CHECK(b.stats(0, 100).failures_total == 3);
  CHECK(b.stats(0, 100).downs_total == 1);
  CHECK(counts_idle(b, 10, 100) == std::vector<int>{0, 10});
}

TEST_CASE("balancer passive: a success in between resets the count") {
  Balancer b(BalancePolicy::kRoundRobin, passive(3, 1000), weights({1, 1}));
  fail_times(b, 0, 2, 0);
  b.report_success(0, 0);
  CHECK(b.stats(0, 0).consecutive_failures == 0);
  fail_times(b, 0, 2, 0);
  CHECK(b.stats(0, 0).state == HealthState::kUp);
  b.report_failure(0, 0);
  CHECK(b.stats(0, 0).state == HealthState::kDown);
}

TEST_CASE("balancer passive: max_fails = 0 never takes a server out") {
  Balancer b(BalancePolicy::kRoundRobin, passive(0, 1000), weights({1}));
  fail_times(b, 0, 1000, 0);
  CHECK(b.stats(0, 0).state == HealthState::kUp);
  CHECK(b.stats(0, 0).failures_total == 1000);
  CHECK(b.pick(0) == 0);
}

TEST_CASE("balancer passive: probing at fail_timeout, one request at a time, up on success") {
  Balancer b(BalancePolicy::kRoundRobin, passive(2, 1000), weights({1, 1}));
  fail_times(b, 0, 2, 5000);  // down until 6000
  CHECK(b.next_change_ms(5000) == 6000);
  CHECK(b.next_change_ms(5999) == 6000);
  CHECK(b.stats(0, 5999).state == HealthState::kDown);
  CHECK(counts_idle(b, 10, 5999) == std::vector<int>{0, 10});

  CHECK(b.stats(0, 6000).state == HealthState::kProbing);
  CHECK(std::string(b.stats(0, 6000).state_name) == "probing");
  CHECK(b.next_change_ms(6000) == UINT64_MAX);
  // Server 1 holds requests; 20 picks hand server 0 exactly one: the probe.
  std::array<int, 2> counts{};
  for (int k = 0; k < 20; ++k) {
    int i = b.pick(6000);
    REQUIRE(i >= 0);
    b.started(static_cast<size_t>(i));
    ++counts[static_cast<size_t>(i)];
  }
  CHECK(counts == std::array<int, 2>{1, 19});

  CHECK(b.report_success(0, 6010));  // the probe answered: available again
  CHECK(b.stats(0, 6010).state == HealthState::kUp);
  CHECK(b.stats(0, 6010).consecutive_failures == 0);
  CHECK(counts_idle(b, 10, 6010) == std::vector<int>{5, 5});
}

TEST_CASE("balancer passive: a failed probe means down for another fail_timeout") {
  Balancer b(BalancePolicy::kRoundRobin, passive(2, 1000), weights({1}));
  fail_times(b, 0, 2, 0);
  CHECK(b.pick(999) == -1);
  CHECK(b.pick(1000) == 0);
  b.started(0);
  CHECK(b.pick(1000) == -1);  // the probe is out
  CHECK_FALSE(b.report_failure(0, 1500));  // one failure is enough while probing
  b.finished(0);
  CHECK(b.stats(0, 1500).state == HealthState::kDown);
  CHECK(b.stats(0, 1500).downs_total == 2);
  CHECK(b.next_change_ms(1500) == 2500);
  CHECK(b.pick(2499) == -1);
  CHECK(b.pick(2500) == 0);
}

TEST_CASE("balancer passive: a late failure while down does not push the deadline out") {
  Balancer b(BalancePolicy::kRoundRobin, passive(1, 1000), weights({1}));
  b.started(0);  // sent while up
  b.started(0);
  b.report_failure(0, 0);  // down until 1000
  b.report_failure(0, 500);  // the other request fails late
  b.finished(0);
  b.finished(0);
  CHECK(b.next_change_ms(500) == 1000);
  CHECK(b.stats(0, 500).failures_total == 2);
  CHECK_FALSE(b.report_success(0, 600));  // a late success does not cut the wait short
  CHECK(b.pick(999) == -1);
  CHECK(b.pick(1000) == 0);
}

TEST_CASE("balancer passive: an unreported probe is released when its request ends") {
  Balancer b(BalancePolicy::kRoundRobin, passive(1, 1000), weights({1}));
  b.report_failure(0, 0);
  CHECK(b.pick(1000) == 0);
  b.started(0);
  CHECK(b.pick(1000) == -1);
  b.finished(0);  // e.g. the client left before the connect finished
  CHECK(b.pick(1000) == 0);
}

// ---- active health --------------------------------------------------------

TEST_CASE("balancer active: fall bad probes take a server down, rise good ones bring it up") {
  Balancer b(BalancePolicy::kRoundRobin, active(2, 3), weights({1, 1}));
  b.report_probe(0, false, 0);
  b.report_probe(0, false, 0);
  CHECK(b.stats(0, 0).state == HealthState::kUp);  // fall - 1 is not enough
  b.report_probe(0, true, 0);  // a good probe resets the run
  b.report_probe(0, false, 0);
  b.report_probe(0, false, 0);
  CHECK(b.stats(0, 0).state == HealthState::kUp);
  b.report_probe(0, false, 0);
  CHECK(b.stats(0, 0).state == HealthState::kDown);

  // Taken down by the checker: only probes bring it back, never time.
  CHECK(b.next_change_ms(0) == UINT64_MAX);
  CHECK(b.stats(0, 1'000'000).state == HealthState::kDown);
  CHECK(counts_idle(b, 10, 1'000'000) == std::vector<int>{0, 10});

  CHECK_FALSE(b.report_probe(0, true, 1'000'000));  // rise - 1
  CHECK_FALSE(b.report_probe(0, false, 1'000'000));  // a bad one resets the run
  CHECK_FALSE(b.report_probe(0, true, 1'000'000));
  CHECK(b.stats(0, 1'000'000).state == HealthState::kDown);
  CHECK(b.report_probe(0, true, 1'000'000));
  CHECK(b.stats(0, 1'000'000).state == HealthState::kUp);
  CHECK(counts_idle(b, 10, 1'000'000) == std::vector<int>{5, 5});
}

TEST_CASE("balancer active + passive: traffic takes a server out, only probes bring it back") {
  Balancer b(BalancePolicy::kRoundRobin, active(2, 3, /*max_fails=*/2), weights({1, 1}));
  fail_times(b, 0, 2, 0);
  CHECK(b.stats(0, 0).state == HealthState::kDown);
  CHECK(b.next_change_ms(0) == UINT64_MAX);
  // Past fail_timeout there is no probing by live traffic.
  CHECK(b.stats(0, 5000).state == HealthState::kDown);
  CHECK(counts_idle(b, 10, 5000) == std::vector<int>{0, 10});
  CHECK_FALSE(b.report_success(0, 5000));  // a late live answer is not a probe
  b.report_probe(0, true, 5000);
  CHECK(b.report_probe(0, true, 5000));
  CHECK(b.stats(0, 5000).state == HealthState::kUp);
}

// ---- all down -------------------------------------------------------------

TEST_CASE("balancer: all down gives -1, and next_change_ms says when one turns probing") {
  Balancer b(BalancePolicy::kLeastOutstanding, passive(1, 1000), weights({1, 1, 1}));
  b.report_failure(0, 100);  // probing at 1100
  b.report_failure(1, 50);   // probing at 1050
  b.report_failure(2, 300);  // probing at 1300
  CHECK(b.pick(300) == -1);
  CHECK_FALSE(b.any_available(300));
  CHECK(b.next_change_ms(300) == 1050);
  CHECK(b.pick(1049) == -1);
  CHECK_FALSE(b.any_available(1049));
  CHECK(b.any_available(1050));
  CHECK(b.next_change_ms(1050) == 1100);
  CHECK(b.pick(1050) == 1);
  b.started(1);
  CHECK(b.pick(1050) == -1);  // 1's probe is out, the others still down
  CHECK(b.next_change_ms(1050) == 1100);
  CHECK(b.next_change_ms(1300) == UINT64_MAX);
  CHECK(b.pick(1300) >= 0);
}

// ---- stats and assertions -------------------------------------------------

TEST_CASE("balancer: stats count picks, failures and outstanding per server") {
  Balancer b(BalancePolicy::kRoundRobin, passive(5, 1000), weights({1, 1}));
  CHECK(counts_idle(b, 6) == std::vector<int>{3, 3});
  b.started(1);
  b.report_failure(1, 0);
  b.report_failure(1, 0);
  auto s = b.stats(1, 0);
  CHECK(std::string(s.state_name) == "up");
  CHECK(s.picks_total == 3);
  CHECK(s.failures_total == 2);
  CHECK(s.consecutive_failures == 2);
  CHECK(s.outstanding == 1);
  CHECK(s.downs_total == 0);
}

TEST_CASE("balancer: bad indexes and underflow abort") {
  CHECK(aborts([] {
    Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1}));
    b.finished(0);
  }));
  CHECK(aborts([] {
    Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1}));
    b.started(2);
  }));
  CHECK(aborts([] {
    Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1}));
    b.report_failure(static_cast<size_t>(-1), 0);
  }));
  CHECK(aborts([] {
    Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1}));
    b.report_probe(0, true, 0);  // no checker configured
  }));
  CHECK(aborts([] { Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 0})); }));
  CHECK(aborts([] { Balancer b(BalancePolicy::kRoundRobin, no_health(), {}); }));
  CHECK_FALSE(aborts([] {
    Balancer b(BalancePolicy::kRoundRobin, no_health(), weights({1, 1}));
    b.started(1);
    b.finished(1);
  }));
}
