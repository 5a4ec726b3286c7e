// Binary upgrade (`run --takeover PATH` against takeover_socket = PATH): the
// new process serves the running one's listening sockets, the old one
// drains and exits 0, and no client sees a refusal or a reset; a takeover
// that cannot happen says so in one line.
#include <doctest/doctest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "config_agent.h"
#include "load_clients.h"
#include "rig.h"

using rig::Backend;
using rig::Child;
using rig::Client;
using rig::ConfigAgent;

namespace {

std::string server(const Backend& b) { return "tcp://127.0.0.1:" + std::to_string(b.port()); }

// A directory of its own for the takeover socket; removed with what is left in it.
struct SocketDir {
  std::string dir;
  SocketDir() {
    char path[] = "/tmp/offload-upgrade-XXXXXX";
    REQUIRE(::mkdtemp(path) != nullptr);
    dir = path;
  }
  ~SocketDir() {
    ::unlink(socket().c_str());
    ::rmdir(dir.c_str());
  }
  std::string socket() const { return dir + "/takeover.sock"; }
};

// One GET on a fresh connection; the status, or 0.
int get(uint16_t port, const std::string& target) {
  Client c;
  if (!c.connect(port)) return 0;
  if (!c.send_all("GET " + target + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) return 0;
  rig::ReadResult r = c.read_response(5000);
  return r ? r.response->status : 0;
}

uint16_t port_after(const std::string& line) { return uint16_t(std::stoi(line.substr(line.rfind(':') + 1))); }

size_t lines_with(Child& agent, const std::string& needle) {
  size_t n = 0;
  for (const std::string& line : agent.stderr_lines()) n += line.find(needle) != std::string::npos;
  return n;
}

// The second agent, from the same file: `run -c FILE --admin 127.0.0.1:0 --takeover PATH` and more.
bool start_new(Child& c, const std::string& file, const std::string& path, std::vector<std::string> more = {}) {
  std::vector<std::string> args = {"run", "-c", file, "--admin", "127.0.0.1:0", "--takeover", path};
  args.insert(args.end(), more.begin(), more.end());
  return c.start(rig::agent_path(), args);
}

std::string config(const Backend& b, const SocketDir& d, int workers) {
  return "workers = " + std::to_string(workers) + "\npersistent = 1\ntakeover_socket = \"" + d.socket() +
         "\"\n[[upstream]]\nservers = [\"" + server(b) + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
}

}  // namespace

TEST_CASE("binary upgrade under keep-alive and new-connection load: no request lost, the old agent exits 0, the port stays") {
  Backend b;
  REQUIRE_MESSAGE(b.start(128), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 2), 1);
  const uint16_t port = a.port(0);
  REQUIRE(get(port, "/ok?before") == 200);

  rig::Tally t;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) clients.emplace_back(rig::keepalive_client, port, i, std::cref(stop), std::ref(t));
  for (int i = 0; i < 2; ++i) clients.emplace_back(rig::fresh_client, port, i, std::cref(stop), std::ref(t));
  rig::sleep_ms(1000);
  const uint64_t before = t.ok.load();

  // The file is the same: port 0 as configured matches the old socket of port 0.
  Child next;
  REQUIRE(start_new(next, a.file(), d.socket()));
  auto took = next.wait_for_line("stopped accepting and drains", 15000);
  CHECK_MESSAGE(took, next.stderr_text());
  auto old_exit = a.child().wait_exit(20000);
  CHECK_MESSAGE(old_exit, "the old agent did not exit: ", a.child().stderr_text());
  if (old_exit) CHECK(*old_exit == 0);
  rig::sleep_ms(1000);  // load on the new agent alone
  stop = true;
  for (auto& th : clients) th.join();

  std::string failures;
  for (const std::string& f : t.failures) failures += f + "\n";
  CHECK_MESSAGE(t.failures.empty(), failures);
  CHECK(before > 0);
  CHECK(t.ok.load() > before);
  MESSAGE("requests answered: ", t.ok.load(), " (", before, " before the upgrade began), kept-alive connections ",
          "closed by the old agent: ", t.closes.load());
  // The old agent handed over every socket (2 shards, and the admin's) and drained.
  CHECK(lines_with(next, "takeover: from agent pid " + std::to_string(a.child().pid())) == 1);
  CHECK(lines_with(next, "3 sockets taken over, 0 closed") == 1);
  CHECK(lines_with(a.child(), "takeover: the new agent serves 3 of the sockets; draining") == 1);
  // The same port (and the same admin endpoint), served by the new agent alone.
  auto listening = next.wait_for_line("offload-agent: listening on ", 0);
  REQUIRE(listening);
  CHECK(port_after(*listening) == port);
  auto admin = next.wait_for_line("offload-agent: admin on ", 0);
  REQUIRE(admin);
  CHECK(port_after(*admin) == a.admin_port());
  CHECK(get(port, "/ok?after") == 200);
  CHECK(a.stats().int_or("requests", -1) >= 1);  // the admin port answers: the new agent's
  // The path is the new agent's now: a second upgrade finds it.
  struct stat st{};
  CHECK(::stat(d.socket().c_str(), &st) == 0);
  CHECK(next.stop() == 0);
}

// Each upgrade's new agent is the next one's old: the takeover socket
// passes on with the listening sockets, and a lone connection that comes as
// an old agent cancels its accepts is served (the new one re-arms its own).
TEST_CASE("five binary upgrades in a row under load: every request answered, each old agent exits 0") {
  Backend b;
  REQUIRE_MESSAGE(b.start(64), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 2), 1);
  const uint16_t port = a.port(0);
  rig::Tally t;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) clients.emplace_back(rig::keepalive_client, port, i, std::cref(stop), std::ref(t));
  for (int i = 0; i < 2; ++i) clients.emplace_back(rig::fresh_client, port, i, std::cref(stop), std::ref(t));
  std::vector<std::unique_ptr<Child>> agents;
  Child* old = &a.child();
  for (int i = 0; i < 5; ++i) {
    rig::sleep_ms(300);
    agents.push_back(std::make_unique<Child>());
    Child& next = *agents.back();
    REQUIRE(start_new(next, a.file(), d.socket()));
    REQUIRE_MESSAGE(next.wait_for_line("stopped accepting and drains", 15000), "upgrade ", i, ": ",
                    next.stderr_text());
    auto code = old->wait_exit(20000);
    REQUIRE_MESSAGE(code, "upgrade ", i, ": the old agent did not exit");
    CHECK(*code == 0);
    old = &next;
  }
  rig::sleep_ms(300);
  stop = true;
  for (auto& th : clients) th.join();
  std::string failures;
  for (const std::string& f : t.failures) failures += f + "\n";
  CHECK_MESSAGE(t.failures.empty(), failures);
  CHECK(t.ok > 0);
  CHECK(get(port, "/ok?last") == 200);
  CHECK(old->stop() == 0);
}

// The old agent's accept waits on each socket with the new one's, and the
// kernel wakes one of them per connection: one woken just as the old accept
// is cancelled must not leave the connection unserved. Lone clients one
// after the other across each upgrade, with nothing else to wake anyone.
TEST_CASE("binary upgrade: a connection that comes just as the old agent stops accepting is served") {
  Backend b;
  REQUIRE_MESSAGE(b.start(64), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 1), 1);
  std::vector<std::unique_ptr<Child>> agents;
  Child* old = &a.child();
  for (int i = 0; i < 8; ++i) {
    agents.push_back(std::make_unique<Child>());
    Child& next = *agents.back();
    REQUIRE(start_new(next, a.file(), d.socket()));
    // Until the takeover is done, then 50 more: the old agent's cancel lands around then.
    int after = 0;
    for (int k = 0; k < 5000 && after < 50; ++k) {
      if (after > 0 || next.wait_for_line("stopped accepting and drains", 0)) ++after;
      Client c;
      REQUIRE(c.connect(a.port(0)));
      REQUIRE(c.send_all(rig::get_request("/ok?lone")));
      rig::ReadResult r = c.read_response(5000);
      REQUIRE_MESSAGE(r, "upgrade ", i, " client ", k, ": ", r.error);
      CHECK(r.response->status == 200);
    }
    REQUIRE_MESSAGE(after == 50, next.stderr_text());
    auto code = old->wait_exit(20000);
    REQUIRE(code);
    CHECK(*code == 0);
    old = &next;
  }
  CHECK(old->stop() == 0);
}

TEST_CASE("takeover: a path nobody serves says so in one line, and the agent binds fresh") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;  // empty: no socket in it
  Child c;
  REQUIRE(c.start(rig::agent_path(), {"run", "--listen", "127.0.0.1:0", "--upstream", server(b), "--admin", "off",
                                      "--takeover", d.socket()}));
  auto listening = c.wait_for_line("offload-agent: listening on ", 15000);
  REQUIRE_MESSAGE(listening, c.stderr_text());
  CHECK(lines_with(c, "takeover") == 1);
  CHECK(lines_with(c, "offload-agent: takeover: no agent at " + d.socket() +
                          " (No such file or directory); binding the listeners fresh") == 1);
  CHECK(get(port_after(*listening), "/ok") == 200);
  CHECK(c.stop() == 0);
}

TEST_CASE("takeover: fewer shards than the running agent is refused in one line (exit 2); the old agent serves on") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 2), 1);
  Child next;
  REQUIRE(start_new(next, a.file(), d.socket(), {"--workers", "1"}));
  auto code = next.wait_exit(15000);
  REQUIRE(code);
  CHECK(*code == 2);
  const std::vector<std::string> said = next.stderr_lines();
  REQUIRE(said.size() == 1);
  CHECK(said[0] == "offload-agent: takeover: workers: 1 is fewer than the running agent's 2 shards (their other "
                   "sockets would be closed with the connections queued on them; set workers = 2 or more, or stop "
                   "and start)");
  CHECK(a.child().wait_for_line("takeover: the new agent left before taking over; serving on", 5000));
  CHECK(a.child().running());
  CHECK(get(a.port(0), "/ok?still") == 200);
  // The old agent still offers its sockets: a takeover that fits succeeds.
  Child fits;
  REQUIRE(start_new(fits, a.file(), d.socket()));
  CHECK_MESSAGE(fits.wait_for_line("stopped accepting and drains", 15000), fits.stderr_text());
  auto old_exit = a.child().wait_exit(20000);
  REQUIRE(old_exit);
  CHECK(*old_exit == 0);
  CHECK(get(a.port(0), "/ok?new") == 200);
  CHECK(fits.stop() == 0);
}

TEST_CASE("takeover: more shards than the running agent takes its sockets and opens the rest on the same port") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 1), 1);
  Child next;
  REQUIRE(start_new(next, a.file(), d.socket(), {"--workers", "3"}));
  CHECK_MESSAGE(next.wait_for_line("stopped accepting and drains", 15000), next.stderr_text());
  CHECK(lines_with(next, "2 sockets taken over, 0 closed (not in this configuration), 2 to open") == 1);
  auto old_exit = a.child().wait_exit(20000);
  REQUIRE(old_exit);
  CHECK(*old_exit == 0);
  auto listening = next.wait_for_line("offload-agent: listening on ", 0);
  REQUIRE(listening);
  CHECK(port_after(*listening) == a.port(0));
  for (int i = 0; i < 20; ++i) CHECK(get(a.port(0), "/ok?" + std::to_string(i)) == 200);
  CHECK(next.stop() == 0);
}

TEST_CASE("takeover: while a new agent holds the sockets the old one refuses a reload; once it leaves, a reload applies") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 2), 1);
  // A "new agent" that takes the offer and never says drain.
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", d.socket().c_str());
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string last;
  for (int i = 0; i < 16 && last != "end"; ++i) {
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    REQUIRE(n > 0);
    last.assign(buf, size_t(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      int got = -1;
      std::memcpy(&got, CMSG_DATA(c), sizeof got);
      ::close(got);  // a real new agent would serve it
    }
    if (i == 0) CHECK(last.starts_with("offload-takeover version=1 pid="));
  }
  REQUIRE(last == "end");
  a.child().signal(SIGHUP);
  CHECK_MESSAGE(a.child().wait_for_line("reload failed, the running configuration stays: a new agent has taken the "
                                        "listening sockets (binary upgrade under way)", 10000),
                a.child().stderr_text());
  CHECK(get(a.port(0), "/ok?during") == 200);
  ::close(fd);  // gone before saying drain: the old agent serves on, and reloads again
  CHECK(a.child().wait_for_line("takeover: the new agent left before taking over; serving on", 5000));
  a.child().signal(SIGHUP);
  CHECK_MESSAGE(a.child().wait_for_line("reloaded: generation 2", 10000), a.child().stderr_text());
  CHECK_MESSAGE(get(a.port(0), "/ok?after") == 200, a.child().stderr_text());
}

namespace {

// Gone, or a zombie nobody has reaped yet (its parent, the old agent, exited).
bool gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return true;
  const size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z';
}

}  // namespace

TEST_CASE("SIGUSR2 starts the agent's own binary with --takeover: the old one exits 0, the new one serves the port") {
  Backend b;
  REQUIRE_MESSAGE(b.start(16), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 2), 1);
  a.child().signal(SIGUSR2);
  auto started = a.child().wait_for_line("binary upgrade (SIGUSR2): started ", 10000);
  REQUIRE_MESSAGE(started, a.child().stderr_text());
  const pid_t next = pid_t(std::stol(started->substr(started->rfind(' ') + 1)));
  REQUIRE(next > 0);
  // The new process writes to the same stderr: its lines are in the old one's capture.
  CHECK_MESSAGE(a.child().wait_for_line("stopped accepting and drains", 15000), a.child().stderr_text());
  auto code = a.child().wait_exit(20000);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(get(a.port(0), "/ok?after-usr2") == 200);
  ::kill(next, SIGTERM);
  bool ended = false;
  for (int i = 0; i < 1000 && !(ended = gone(next)); ++i) rig::sleep_ms(10);
  CHECK(ended);
}

TEST_CASE("SIGUSR2 without takeover_socket says why in one line and the agent serves on") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  ConfigAgent a;
  a.start("[[upstream]]\nservers = [\"" + server(b) + "\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n", 1);
  a.child().signal(SIGUSR2);
  CHECK(a.child().wait_for_line("binary upgrade (SIGUSR2): not started: takeover_socket is not set", 5000));
  CHECK(a.child().running());
  CHECK(get(a.port(0), "/ok") == 200);
}

TEST_CASE("SIGUSR2 when the binary's path is gone says so in one line and the agent serves on") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;
  // The agent run from a copy, which is then removed: its path at start-up names nothing.
  const std::string copy = d.dir + "/offload-agent";
  {
    std::ifstream in(rig::agent_path(), std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
  }
  REQUIRE(::chmod(copy.c_str(), 0700) == 0);
  Child c;
  REQUIRE(c.start(copy, {"run", "--listen", "127.0.0.1:0", "--upstream", server(b), "--admin", "off",
                         "--takeover-socket", d.socket()}));
  auto listening = c.wait_for_line("offload-agent: listening on ", 15000);
  REQUIRE_MESSAGE(listening, c.stderr_text());
  REQUIRE(::unlink(copy.c_str()) == 0);
  c.signal(SIGUSR2);
  CHECK_MESSAGE(c.wait_for_line("binary upgrade (SIGUSR2): not started: exec " + copy + ": No such file or directory",
                                5000),
                c.stderr_text());
  CHECK(c.running());
  CHECK(get(port_after(*listening), "/ok") == 200);
  CHECK(c.stop() == 0);
}

TEST_CASE("takeover: while the old agent drains, the admin endpoint (the same socket) is the new agent's alone") {
  Backend b;
  REQUIRE_MESSAGE(b.start(8), b.error());
  SocketDir d;
  ConfigAgent a;
  a.start(config(b, d, 1), 1);
  // An idle kept-alive client holds the old agent in its drain (up to drain_timeout_ms, 10 s).
  Client idle;
  REQUIRE(idle.connect(a.port(0)));
  REQUIRE(idle.send_all(rig::get_request("/ok?idle")));
  REQUIRE(idle.read_response(5000));
  Child next;
  REQUIRE(start_new(next, a.file(), d.socket()));
  REQUIRE_MESSAGE(next.wait_for_line("stopped accepting and drains", 15000), next.stderr_text());
  // POST /reload: the new agent applies it (200); the old one, draining, would refuse (400).
  for (int i = 0; i < 10; ++i) {
    REQUIRE(a.child().running());
    Client c;
    REQUIRE(c.connect(a.admin_port()));
    REQUIRE(c.send_all("POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"));
    rig::ReadResult r = c.read_response(30000);
    REQUIRE_MESSAGE(r, r.error);
    CHECK_MESSAGE(r.response->status == 200, "reload ", i, ": ", r.response->body);
  }
  CHECK(next.wait_for_line("reloaded: generation 11,", 5000));
  idle.close();
  auto code = a.child().wait_exit(20000);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(next.stop() == 0);
}
