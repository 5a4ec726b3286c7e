// Port-range listeners through sk_lookup (root: in offload-splice-tests, a
// SKIP elsewhere): one socket serves "127.0.0.1:FIRST-LAST", and with
// upstream_port = "same" each connection reaches the server on the port the
// client dialled.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "port_block.h"
#include "splice_rig.h"

namespace {

constexpr int kPorts = 4;

// Each server says which port it was reached on, then closes.
struct PortServers {
  std::vector<int> fds;
  std::vector<std::thread> threads;
  explicit PortServers(std::vector<int> listening, uint16_t first) : fds(std::move(listening)) {
    for (size_t k = 0; k < fds.size(); ++k)
      threads.emplace_back([fd = fds[k], port = first + k] {
        for (;;) {
          int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) return;
          const std::string hello = "port " + std::to_string(port) + "\n";
          tunnel::send_all(c, hello.data(), hello.size());
          ::close(c);
        }
      });
  }
  ~PortServers() {
    for (int fd : fds) ::shutdown(fd, SHUT_RDWR);
    for (auto& t : threads) t.join();
    for (int fd : fds) ::close(fd);
  }
};

// A connection to the agent's `port` reaches the PortServer of that port.
void check_reaches_server_on(uint16_t port) {
  CAPTURE(port);
  int fd = tunnel::connect_loopback(port);
  REQUIRE(fd >= 0);
  tunnel::set_timeouts(fd, 5000);
  std::string got;
  tunnel::read_to_eof(fd, got);
  ::close(fd);
  CHECK(got == "port " + std::to_string(port) + "\n");
}

std::string range_config(uint16_t first, const std::string& extra = "") {
  return "admin = \"off\"\n[[upstream]]\nname = \"ports\"\nservers = [\"tcp://127.0.0.2:9\"]\n"
         "[[listener]]\nlisten = \"127.0.0.1:" + std::to_string(first) + "-" + std::to_string(first + kPorts - 1) +
         "\"\nproxy = \"passthrough\"\nupstream = \"ports\"\nupstream_port = \"same\"\n" + extra;
}

}  // namespace

TEST_CASE("port range: one listener serves every port of its range, each reaching the server on the port dialled") {
  std::vector<int> listening;
  const uint16_t first = rig::free_port_block(kPorts, listening);
  PortServers servers(listening, first);
  tunnel::ConfigAgent a;
  a.start(range_config(first), 1);
  CHECK(a.child().stderr_text().find("through sk_lookup, one socket per shard") != std::string::npos);
  for (int round = 0; round < 2; ++round)
    for (int k = kPorts - 1; k >= 0; --k) check_reaches_server_on(uint16_t(first + k));
  // Just past the range nobody listens.
  CHECK(tunnel::connect_loopback(uint16_t(first + kPorts)) < 0);
}

TEST_CASE("port range: port_range_mode = \"sk_lookup\" with --no-bpf does not start, and says why in one line") {
  std::vector<int> listening;
  const uint16_t first = rig::free_port_block(kPorts, listening);
  for (int fd : listening) ::close(fd);
  char path[] = "/tmp/offload-range-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << "port_range_mode = \"sk_lookup\"\n" + range_config(first);
  rig::Child agent;
  REQUIRE(agent.start(rig::agent_path(), {"run", "-c", path, "--no-bpf"}));
  auto code = agent.wait_exit(10000);
  ::unlink(path);
  REQUIRE(code.has_value());
  CHECK(*code == 2);
  CHECK(agent.stderr_text().find("offload-agent: port_range_mode: 'sk_lookup' cannot be had with --no-bpf (expected "
                                 "auto or bind with --no-bpf)\n") != std::string::npos);
  CHECK(agent.stderr_text().find("listening on") == std::string::npos);
}

TEST_CASE("port range: with sk_lookup there, port_range_mode = \"bind\" still binds each port, and each serves") {
  std::vector<int> listening;
  const uint16_t first = rig::free_port_block(kPorts, listening);
  PortServers servers(listening, first);
  tunnel::ConfigAgent a;
  a.start("port_range_mode = \"bind\"\n" + range_config(first), 1);
  CHECK(a.child().stderr_text().find("bound one by one, 4 sockets per shard (port_range_mode = \"bind\")") !=
        std::string::npos);
  for (int k = 0; k < kPorts; ++k) check_reaches_server_on(uint16_t(first + k));
}
