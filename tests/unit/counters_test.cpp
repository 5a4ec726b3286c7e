#include <doctest/doctest.h>

#include <string>
#include <thread>
#include <vector>

#include "ops/counters.h"

using offload::Counters;

TEST_CASE("each shard writing its own Counters loses no update; the totals are their sum") {
  constexpr int kBumps = 200000;
  Counters a, b, admin;
  // Two writers at once, one Counters each: bump() is a plain load and store.
  std::thread ta([&] { for (int i = 0; i < kBumps; ++i) offload::bump(a.requests); });
  std::thread tb([&] { for (int i = 0; i < kBumps; ++i) offload::bump(b.requests); });
  ta.join();
  tb.join();
  offload::bump(a.active_clients, 3);
  offload::bump(b.active_clients, 2);
  offload::drop(b.active_clients);
  offload::bump(admin.admin_timeouts);
  Counters total;
  offload::add_counters(total, a);
  offload::add_counters(total, b);
  offload::add_counters(total, admin);
  CHECK(total.requests.load() == 2 * kBumps);
  CHECK(total.active_clients.load() == 4);  // gauges sum too
  CHECK(total.admin_timeouts.load() == 1);
}

TEST_CASE("rendered totals: the sum, and with several shards a per-shard list in JSON") {
  Counters a, b, admin;
  offload::bump(a.accepted, 5);
  offload::bump(b.accepted, 7);
  offload::bump(admin.admin_evicted);
  const std::vector<const Counters*> parts = {&a, &b, &admin};
  const std::string text = offload::render_totals(parts, 2, offload::StatsFormat::kText);
  CHECK(text.find("accepted                12\n") != std::string::npos);
  const std::string json = offload::render_totals(parts, 2, offload::StatsFormat::kJson);
  CHECK(json.rfind("{\"accepted\":12,", 0) == 0);
  CHECK(json.find(",\"shards\":[{\"accepted\":5,") != std::string::npos);
  CHECK(json.find("},{\"accepted\":7,") != std::string::npos);
  CHECK(json.substr(json.size() - 4) == "}]}\n");
  // One shard: the same flat object as before shards existed.
  const std::string one = offload::render_totals({&a, &admin}, 1, offload::StatsFormat::kJson);
  CHECK(one.find("shards") == std::string::npos);
  CHECK(one.rfind("{\"accepted\":5,", 0) == 0);
  const std::string prom = offload::render_totals(parts, 2, offload::StatsFormat::kPrometheus);
  CHECK(prom.find("offload_accepted 12\n") != std::string::npos);
  CHECK(prom.find("offload_admin_evicted 1\n") != std::string::npos);
}
