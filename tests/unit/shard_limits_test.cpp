#include <doctest/doctest.h>

#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "ops/config.h"
#include "ops/shard_limits.h"

using offload::Config;
using offload::ConfigError;

namespace {

// The CPUs this process may run on, lowest first.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  std::vector<int> out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

std::string validate_error(Config c) {
  try {
    offload::validate(c);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string file_error(const std::string& toml) {
  char path[] = "/tmp/offload-shards-test-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << toml;
  std::string what;
  try {
    Config c;
    offload::load_config_file(path, c);
    offload::validate(c);
  } catch (const ConfigError& e) {
    what = e.what();
  }
  std::remove(path);
  return what;
}

}  // namespace

TEST_CASE("the agent-wide limits are divided among shards and add up to the whole") {
  Config c;
  c.workers = 3;
  c.max_clients = 10001;
  c.max_upstream = 8;
  c.persistent = 4;
  c.buffer_memory_max = (512ull << 20) + 1;
  c.spill_total_max = 10;
  offload::validate(c);
  uint64_t clients = 0, upstream = 0, persistent = 0, memory = 0, spill = 0;
  for (uint32_t i = 0; i < 3; ++i) {
    Config s = offload::shard_share(c, i);
    clients += s.max_clients;
    upstream += s.max_upstream;
    persistent += s.persistent;
    memory += s.buffer_memory_max;
    spill += s.spill_total_max;
    CHECK(s.persistent <= s.max_upstream);
    CHECK(s.max_upstream >= 1);
    CHECK(s.workers == 3);                   // a shard knows how many share the process
    CHECK(s.header_timeout_ms == c.header_timeout_ms);  // the rest applies as written
  }
  CHECK(clients == 10001);
  CHECK(upstream == 8);
  CHECK(persistent == 4);
  CHECK(memory == (512ull << 20) + 1);
  CHECK(spill == 10);
  // Even: the first shards take the remainder, one each.
  CHECK(offload::shard_share(c, 0).max_upstream == 3);
  CHECK(offload::shard_share(c, 1).max_upstream == 3);
  CHECK(offload::shard_share(c, 2).max_upstream == 2);
  CHECK(offload::shard_share(c, 0).persistent == 2);
  CHECK(offload::shard_share(c, 2).persistent == 1);
}

TEST_CASE("one shard gets the whole of every limit") {
  Config c;
  offload::validate(c);
  CHECK(c.workers == 1);
  CHECK(c.cpus.empty());
  Config s = offload::shard_share(c, 0);
  CHECK(s.max_clients == c.max_clients);
  CHECK(s.max_upstream == c.max_upstream);
  CHECK(s.persistent == c.persistent);
  CHECK(s.buffer_memory_max == c.buffer_memory_max);
  CHECK(s.spill_total_max == c.spill_total_max);
  CHECK(s.cpu == -1);
}

TEST_CASE("cpus sets the number of shards and pins each to its own CPU; cpu = K is cpus = [K]") {
  const std::vector<int> cpus = allowed_cpus();
  REQUIRE(!cpus.empty());
  Config c;
  c.cpus = cpus;
  offload::validate(c);
  CHECK(c.workers == cpus.size());
  for (uint32_t i = 0; i < c.workers; ++i) CHECK(offload::shard_share(c, i).cpu == cpus[i]);

  Config one;
  one.cpu = cpus.back();
  offload::validate(one);
  CHECK(one.workers == 1);
  CHECK(one.cpus == std::vector<int>{cpus.back()});
  offload::validate(one);  // validating twice is harmless

  Config both;
  both.workers = uint32_t(cpus.size());
  both.cpus = cpus;
  CHECK(validate_error(both).empty());
}

TEST_CASE("shard settings that contradict each other name the key") {
  const std::vector<int> cpus = allowed_cpus();
  Config c;
  c.workers = uint32_t(cpus.size()) + 1;
  c.cpus = cpus;
  CHECK(validate_error(c).rfind("workers: bad value '" + std::to_string(cpus.size() + 1) + "'", 0) == 0);

  Config outside;
  outside.cpus = {CPU_SETSIZE - 1};  // not among this process's CPUs on any machine these tests run on
  CHECK(validate_error(outside).rfind("cpus: bad value", 0) == 0);
  Config outside_one;
  outside_one.cpu = CPU_SETSIZE - 1;
  CHECK(validate_error(outside_one).rfind("cpu: bad value", 0) == 0);

  Config twice;
  twice.cpus = {cpus.front(), cpus.front()};
  CHECK(validate_error(twice).find("distinct") != std::string::npos);

  Config upstream;
  upstream.workers = 4;
  upstream.max_upstream = 3;
  upstream.persistent = 1;
  CHECK(validate_error(upstream).rfind("max_upstream: bad value '3' (expected at least one per shard (4))", 0) == 0);

  Config clients;
  clients.workers = 2;
  clients.max_clients = 1;
  CHECK(validate_error(clients).rfind("max_clients: bad value '1'", 0) == 0);

  // The bus's channels are divided among the shards (upstream/ring_hub.h).
  Config ring;
  ring.workers = 2;
  ring.upstream = offload::parse_upstream("upstream", "shm:app");
  CHECK(validate_error(ring).empty());

  Config memory;
  memory.workers = 4;
  memory.buffer_memory_max = 1 << 20;
  memory.response_buffer = 512 * 1024;
  CHECK(validate_error(memory).rfind("response_buffer: bad value '524288' (expected at most buffer_memory_max / workers", 0) == 0);

  Config cpu_and_cpus;
  cpu_and_cpus.cpu = cpus.front();
  cpu_and_cpus.cpus = cpus;
  if (cpus.size() > 1) CHECK(validate_error(cpu_and_cpus).rfind("cpu: bad value", 0) == 0);
}

TEST_CASE("workers and cpus from a TOML file, and the --cpus list") {
  CHECK(file_error("workers = 2\n").empty());
  CHECK(file_error("workers = 0\n").rfind("workers: bad value '0'", 0) == 0);
  CHECK(file_error("cpus = \"1,2\"\n").rfind("cpus: bad value", 0) == 0);
  CHECK(file_error("cpus = [-1]\n").rfind("cpus: bad value '-1'", 0) == 0);
  CHECK(file_error("cpus = [0]\nworkers = 2\n").rfind("workers: bad value '2'", 0) == 0);
  CHECK(offload::parse_cpu_list("--cpus", "1,2") == std::vector<int>{1, 2});
  CHECK(offload::parse_cpu_list("--cpus", "3") == std::vector<int>{3});
  CHECK_THROWS_AS(offload::parse_cpu_list("--cpus", "1,,2"), ConfigError);
  CHECK_THROWS_AS(offload::parse_cpu_list("--cpus", "1,a"), ConfigError);
  CHECK_THROWS_AS(offload::parse_cpu_list("--cpus", ""), ConfigError);
}
