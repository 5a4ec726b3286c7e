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
  CHECK(prom.find("offload_connections_accepted_total 12\n") != std::string::npos);
  CHECK(prom.find("offload_admin_closed_total{reason=\"evicted\"} 1\n") != std::string::npos);
}

TEST_CASE("Prometheus text: HELP and TYPE once per family, the members of a family told apart by a label") {
  Counters c;
  offload::bump(c.responses_2xx, 3);
  offload::bump(c.responses_5xx);
  offload::bump(c.active_clients, 2);
  const std::string prom = offload::render_counters(c, offload::StatsFormat::kPrometheus);
  CHECK(prom.find("# TYPE offload_responses_total counter\n") != std::string::npos);
  CHECK(prom.find("# TYPE offload_responses_total", prom.find("# TYPE offload_responses_total") + 1) ==
        std::string::npos);
  CHECK(prom.find("offload_responses_total{code=\"2xx\"} 3\n") != std::string::npos);
  CHECK(prom.find("offload_responses_total{code=\"5xx\"} 1\n") != std::string::npos);
  CHECK(prom.find("# TYPE offload_connections_active gauge\noffload_connections_active 2\n") != std::string::npos);
  CHECK(prom.find("offload_build_info{version=\"") != std::string::npos);
  CHECK(prom.find("offload_responses_2xx") == std::string::npos);  // the /stats names stay in /stats
}

TEST_CASE("a histogram: each observation in the first bucket whose bound it does not pass, cumulative when rendered") {
  offload::Histogram a, b;
  a.observe(0);      // le 0.001
  a.observe(1);      // le 0.001: a bound is inclusive
  a.observe(2);      // le 0.002
  a.observe(300);    // le 0.5
  b.observe(10000);  // le 10
  b.observe(10001);  // +Inf only
  offload::Histogram total;
  a.add_to(total);
  b.add_to(total);
  CHECK(total.count() == 6);
  CHECK(total.sum_ms.load() == 20304);
  const std::string text = offload::render_histogram("offload_x_seconds", "help", total);
  CHECK(text.rfind("# HELP offload_x_seconds help\n# TYPE offload_x_seconds histogram\n", 0) == 0);
  CHECK(text.find("offload_x_seconds_bucket{le=\"0.001\"} 2\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_bucket{le=\"0.002\"} 3\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_bucket{le=\"0.25\"} 3\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_bucket{le=\"0.5\"} 4\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_bucket{le=\"10\"} 5\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_bucket{le=\"+Inf\"} 6\n") != std::string::npos);
  CHECK(text.find("offload_x_seconds_sum 20.304\noffload_x_seconds_count 6\n") != std::string::npos);
}

TEST_CASE("the shards' histograms sum like their counters") {
  Counters a, b;
  a.request_duration.observe(5);
  b.request_duration.observe(7);
  b.queue_wait.observe(1);
  Counters total;
  offload::add_counters(total, a);
  offload::add_counters(total, b);
  CHECK(total.request_duration.count() == 2);
  CHECK(total.request_duration.sum_ms.load() == 12);
  CHECK(total.queue_wait.count() == 1);
  CHECK(total.upstream_response.count() == 0);
}
