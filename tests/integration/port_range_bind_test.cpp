// Port-range listeners bound port by port (port_range_mode = "bind", and
// "auto" under --no-bpf): no privilege needed. Every port of the range
// answers through its one listener, upstream_port = "same" reaches the
// server on the port dialled, a range the open-file limit cannot hold is
// refused before it starts, and a reload hands every port's socket over.
// The same ranges through sk_lookup (root) are in port_range_test.cpp.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "port_block.h"
#include "rig.h"

using rig::Backend;
using rig::ConfigAgent;

namespace {

constexpr int kPorts = 8;

// Each server says which address and port it was reached on, then closes.
struct PortServers {
  std::vector<int> fds;
  std::vector<std::thread> threads;
  explicit PortServers(std::vector<int> listening) : fds(std::move(listening)) {
    for (int fd : fds)
      threads.emplace_back([fd] {
        for (int i = 0; i < 100000; ++i) {
          const int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) return;
          sockaddr_in local{};
          socklen_t len = sizeof local;
          ::getsockname(c, reinterpret_cast<sockaddr*>(&local), &len);
          char host[INET_ADDRSTRLEN] = "?";
          inet_ntop(AF_INET, &local.sin_addr, host, sizeof host);
          const std::string hello = std::string(host) + ":" + std::to_string(ntohs(local.sin_port)) + "\n";
          (void)!::send(c, hello.data(), hello.size(), MSG_NOSIGNAL);
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

// What a pass-through connection to 127.0.0.1:port hears before its close.
std::string heard_on(uint16_t port) {
  rig::Client c;
  if (!c.connect(port)) return "connect: " + c.error();
  std::string got;
  if (!c.wait_closed(5000, &got)) return "not closed within 5 s: '" + got + "'";
  return got;
}

// A GET on a fresh connection to `port`: its status, or 0.
int get_status(uint16_t port) {
  rig::ReadResult r = rig::http_get(port, "/ok");
  return r ? r.response->status : 0;
}

std::string range_text(uint16_t first) {
  return "127.0.0.1:" + std::to_string(first) + "-" + std::to_string(first + kPorts - 1);
}

std::string http_range(uint16_t first, const Backend& b, const std::string& extra = "") {
  return "port_range_mode = \"bind\"\nworkers = 2\n" + extra + "[[upstream]]\nname = \"app\"\nservers = [\"tcp://127.0.0.1:" +
         std::to_string(b.port()) + "\"]\n[[listener]]\nname = \"web\"\nlisten = \"" + range_text(first) +
         "\"\nupstream = \"app\"\n";
}

std::string passthrough_range(uint16_t first, const std::string& mode_line) {
  return mode_line + "[[upstream]]\nname = \"ports\"\nservers = [\"tcp://127.0.0.2:9\"]\n[[listener]]\nname = \"raw\"\n"
         "listen = \"" + range_text(first) + "\"\nproxy = \"passthrough\"\nupstream = \"ports\"\nupstream_port = \"same\"\n";
}

int64_t accepted_by(ConfigAgent& a, const std::string& name) {
  rig::Json doc = a.stats();
  const rig::Json* listeners = doc.get("listeners");
  REQUIRE(listeners != nullptr);
  for (const rig::Json& l : listeners->array)
    if (l.str_or("name", "") == name) return l.int_or("accepted", -1);
  return -1;
}

size_t lines_with(const rig::Child& c, const std::string& needle) {
  size_t n = 0;
  for (const std::string& line : c.stderr_lines()) n += line.find(needle) != std::string::npos;
  return n;
}

}  // namespace

TEST_CASE("port range bound port by port: every port of an HTTP range answers, counted by its one listener") {
  const uint16_t first = rig::free_port_block(kPorts);
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  ConfigAgent a;
  a.start(http_range(first, b), 1);
  CHECK(lines_with(a.child(), "listener web: ports " + std::to_string(first) + "-" + std::to_string(first + kPorts - 1) +
                                  " bound one by one, 8 sockets per shard (port_range_mode = \"bind\")") == 1);
  CHECK(lines_with(a.child(), "listening on " + range_text(first)) == 1);
  for (int round = 0; round < 2; ++round)
    for (int k = 0; k < kPorts; ++k) {
      CAPTURE(first + k);
      CHECK(get_status(uint16_t(first + k)) == 200);
    }
  CHECK(accepted_by(a, "web") == 2 * kPorts);
  // Just past the range nobody listens.
  rig::Client past;
  CHECK_FALSE(past.connect(uint16_t(first + kPorts), 1000));
}

TEST_CASE("port range bound port by port: upstream_port = \"same\" reaches the server on the port dialled") {
  std::vector<int> listening;
  const uint16_t first = rig::free_port_block(kPorts, listening);
  PortServers servers(listening);
  ConfigAgent a;
  a.start(passthrough_range(first, "port_range_mode = \"bind\"\n"), 1);
  CHECK(lines_with(a.child(), "listener raw: ports " + std::to_string(first) + "-" +
                                  std::to_string(first + kPorts - 1) + " bound one by one") == 1);
  for (int round = 0; round < 2; ++round)
    for (int k = kPorts - 1; k >= 0; --k) {
      const uint16_t port = uint16_t(first + k);
      CAPTURE(port);
      CHECK(heard_on(port) == "127.0.0.2:" + std::to_string(port) + "\n");
    }
  CHECK(accepted_by(a, "raw") == 2 * kPorts);
}

TEST_CASE("port range: auto under --no-bpf binds each port and says --no-bpf is why") {
  std::vector<int> listening;
  const uint16_t first = rig::free_port_block(kPorts, listening);
  PortServers servers(listening);
  char path[] = "/tmp/offload-range-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << "admin = \"off\"\n" + passthrough_range(first, "port_range_mode = \"auto\"\n");
  rig::Child agent;
  REQUIRE(agent.start(rig::agent_path(), {"run", "-c", path, "--no-bpf"}));
  auto line = agent.wait_for_line("offload-agent: listening on ", 15000);
  ::unlink(path);
  REQUIRE_MESSAGE(line, agent.stderr_text());
  CHECK(lines_with(agent, "listener raw: ports " + std::to_string(first) + "-" + std::to_string(first + kPorts - 1) +
                              " bound one by one, 8 sockets per shard (--no-bpf)") == 1);
  CHECK(heard_on(uint16_t(first + 3)) == "127.0.0.2:" + std::to_string(first + 3) + "\n");
  CHECK(agent.stop() == 0);
}

TEST_CASE("port range: more ports than the open-file limit can hold is refused in one line, before serving") {
  const uint16_t first = rig::free_port_block(kPorts);
  // 200 ports x 2 shards under a limit of 64: refused at the count, so only the
  // first port needs to be free.
  char path[] = "/tmp/offload-range-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << "admin = \"off\"\nport_range_mode = \"bind\"\nworkers = 2\n[[listener]]\nname = \"big\"\n"
                         "listen = \"127.0.0.1:" + std::to_string(first) + "-" + std::to_string(first + 199) + "\"\n";
  rig::Child agent;
  REQUIRE(agent.start("/usr/bin/prlimit", {"--nofile=64:64", "--", rig::agent_path(), "run", "-c", path}));
  auto code = agent.wait_exit(15000);
  ::unlink(path);
  REQUIRE(code.has_value());
  CHECK(*code == 2);
  const std::string said = agent.stderr_text();
  CAPTURE(said);
  CHECK(lines_with(agent, "offload-agent: listener big: ports bound one by one (200 ports x 2 shards) need 398 more "
                          "descriptors, and the open-file limit is 64") == 1);
  CHECK(lines_with(agent, "listening on") == 0);
}

TEST_CASE("port range bound port by port: a reload hands every port's socket over, each port serving throughout") {
  const uint16_t first = rig::free_port_block(kPorts);
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  ConfigAgent a;
  a.start(http_range(first, b), 1);
  // Fresh connections to each port in turn while the agent reloads.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::vector<std::string> failures;
  std::thread client([&] {
    for (int i = 0; i < 100000 && !stop.load(); ++i) {
      const uint16_t port = uint16_t(first + i % kPorts);
      rig::ReadResult r = rig::http_get(port, "/ok");
      if (r && r.response->status == 200) ++ok;
      else if (failures.size() < 10)
        failures.push_back(std::to_string(port) + ": " + (r ? std::to_string(r.response->status) : r.error));
    }
  });
  for (int reload = 1; reload <= 3; ++reload) {
    // A limit changes; the range stays, so its sockets are handed over.
    a.rewrite(http_range(first, b, "header_count_max = " + std::to_string(50 + reload) + "\n"));
    a.child().signal(SIGHUP);
    REQUIRE_MESSAGE(a.child().wait_for_line("reloaded: generation " + std::to_string(reload + 1), 10000),
                    a.child().stderr_text());
  }
  const int before = ok.load();
  for (int i = 0; i < 1000 && ok.load() < before + 4 * kPorts; ++i) rig::sleep_ms(5);
  stop = true;
  client.join();
  std::string failed;
  for (const std::string& f : failures) failed += f + "; ";
  CHECK_MESSAGE(failures.empty(), failed);
  CHECK(ok.load() >= before + 4 * kPorts);
  // Handed over, not opened again: no reload listened anew, and each one
  // said how the range is served.
  CHECK(lines_with(a.child(), ", listening on") == 0);
  CHECK(lines_with(a.child(), "bound one by one, 8 sockets per shard (as the running generation had them)") == 3);
  for (int k = 0; k < kPorts; ++k) {
    CAPTURE(first + k);
    CHECK(get_status(uint16_t(first + k)) == 200);
  }
}

TEST_CASE("port range bound port by port: a binary upgrade is refused in one line, and the old agent serves on") {
  std::vector<int> server_fds;
  const uint16_t first = rig::free_port_block(kPorts, server_fds);
  for (int fd : server_fds) ::close(fd);
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  char dir[] = "/tmp/offload-it-range-takeover-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/takeover.sock";
  ConfigAgent a;
  a.start(http_range(first, b, "takeover_socket = \"" + path + "\"\n"), 1);
  REQUIRE(get_status(uint16_t(first + kPorts - 1)) == 200);
  rig::Child next;
  REQUIRE(next.start(rig::agent_path(), {"run", "-c", a.file(), "--admin", "off", "--takeover", path}));
  auto code = next.wait_exit(15000);
  REQUIRE(code);
  CHECK(*code != 0);
  const std::string said = next.stderr_text();
  CHECK_MESSAGE(said.find("listener web: a range bound port by port cannot be handed over yet") != std::string::npos,
                said);
  CHECK(a.child().running());
  for (int k = 0; k < kPorts; ++k) CHECK(get_status(uint16_t(first + k)) == 200);
  a.child().stop();
  ::unlink(path.c_str());
  ::rmdir(dir);
}
