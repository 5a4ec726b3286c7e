// The agent under a service manager: systemd's Type=notify protocol seen
// from the manager's side, a Unix datagram socket named in NOTIFY_SOCKET.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "rig.h"

namespace {

// The manager's end: a datagram socket bound to a fresh path.
class NotifySocket {
 public:
  NotifySocket() {
    char dir[] = "/tmp/offload-notify-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    dir_ = dir;
    path_ = dir_ + "/notify";
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    REQUIRE(path_.size() < sizeof addr.sun_path);
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~NotifySocket() {
    ::close(fd_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  // The next message, or "" when none comes within `timeout_ms`.
  std::string next(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) != 1) return "";
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, size_t(n)) : "";
  }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

bool has_line(const std::string& message, const std::string& line) {
  return ("\n" + message + "\n").find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("systemd: READY=1 once the agent listens, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 when SIGTERM starts the drain") {
#ifndef OFFLOAD_HAVE_SYSTEMD
#ifdef OFFLOAD_REQUIRE_ALL_TESTS
  FAIL("built without libsystemd (Debian libsystemd-dev; ci/deps.sh installs it)");
#else
  MESSAGE("SKIP: built without libsystemd (Debian libsystemd-dev; ci/deps.sh installs it)");
#endif
  return;
#endif
  rig::Backend b;
  REQUIRE_MESSAGE(b.start(4), b.error());
  NotifySocket manager;
  const uint16_t port = rig::unused_port();
  rig::Child agent;
  // The child inherits the variable; the rest of the suite runs without it.
  ::setenv("NOTIFY_SOCKET", manager.path().c_str(), 1);
  const bool started =
      agent.start(rig::agent_path(), {"run", "--listen", "127.0.0.1:" + std::to_string(port), "--upstream",
                                      "tcp://127.0.0.1:" + std::to_string(b.port()), "--admin", "127.0.0.1:0"});
  ::unsetenv("NOTIFY_SOCKET");
  REQUIRE_MESSAGE(started, agent.error());

  const std::string ready = manager.next(15000);
  CAPTURE(agent.stderr_text());
  REQUIRE_MESSAGE(has_line(ready, "READY=1"), "got: '", ready, "'");
  // Ready means serving: the port takes a request at once, and the agent
  // has said where it listens.
  rig::Client c;
  REQUIRE(c.connect(port, 3000));
  REQUIRE(c.send_all(rig::get_request("/ok?ready")));
  auto r = c.read_response(5000);
  REQUIRE_MESSAGE(r, r.error);
  CHECK(r.response->status == 200);
  CHECK(agent.wait_for_line("offload-agent: listening on 127.0.0.1:" + std::to_string(port), 0));
  CHECK(manager.next(0).empty());  // nothing else yet

  // A reload (SIGHUP): RELOADING=1 with the monotonic time, then READY=1.
  agent.signal(SIGHUP);
  const std::string reloading = manager.next(10000);
  CHECK_MESSAGE(has_line(reloading, "RELOADING=1"), "got: '", reloading, "'");
  CHECK_MESSAGE(reloading.find("\nMONOTONIC_USEC=") != std::string::npos, "got: '", reloading, "'");
  const std::string ready_again = manager.next(10000);
  CHECK_MESSAGE(has_line(ready_again, "READY=1"), "got: '", ready_again, "'");

  agent.signal(SIGTERM);
  const std::string stopping = manager.next(10000);
  CHECK_MESSAGE(has_line(stopping, "STOPPING=1"), "got: '", stopping, "'");
  CHECK(agent.wait_exit(15000) == 0);
}

// A binary upgrade under systemd: the new process (SIGUSR2's child, so in
// the unit) must say MAINPID= itself before the old one says STOPPING=1 and
// exits, or the manager would take the old one's exit for the service's.
TEST_CASE("systemd: on a binary upgrade the new agent sends MAINPID= itself and READY=1 before the old one's STOPPING=1") {
#ifndef OFFLOAD_HAVE_SYSTEMD
#ifdef OFFLOAD_REQUIRE_ALL_TESTS
  FAIL("built without libsystemd (Debian libsystemd-dev; ci/deps.sh installs it)");
#else
  MESSAGE("SKIP: built without libsystemd (Debian libsystemd-dev; ci/deps.sh installs it)");
#endif
  return;
#endif
  rig::Backend b;
  REQUIRE_MESSAGE(b.start(4), b.error());
  NotifySocket manager;
  const std::string takeover = manager.path() + ".takeover";
  rig::Child agent;
  ::setenv("NOTIFY_SOCKET", manager.path().c_str(), 1);
  const bool started = agent.start(rig::agent_path(), {"run", "--listen", "127.0.0.1:0", "--upstream",
                                                       "tcp://127.0.0.1:" + std::to_string(b.port()), "--admin",
                                                       "off", "--takeover-socket", takeover});
  ::unsetenv("NOTIFY_SOCKET");
  REQUIRE_MESSAGE(started, agent.error());
  CAPTURE(agent.stderr_text());
  REQUIRE(has_line(manager.next(15000), "READY=1"));
  agent.signal(SIGUSR2);
  auto line = agent.wait_for_line("binary upgrade (SIGUSR2): started ", 10000);
  REQUIRE(line);
  const std::string pid = line->substr(line->rfind(' ') + 1);
  const std::string as_main = manager.next(15000);
  CHECK_MESSAGE(has_line(as_main, "MAINPID=" + pid), "got: '", as_main, "'");
  CHECK_MESSAGE(has_line(as_main, "READY=1"), "got: '", as_main, "'");
  const std::string stopping = manager.next(10000);
  CHECK_MESSAGE(has_line(stopping, "STOPPING=1"), "got: '", stopping, "'");
  CHECK(agent.wait_exit(15000) == 0);
  // The new agent, by the pid the old one gave: it drains on SIGTERM as any agent does.
  ::kill(pid_t(std::stol(pid)), SIGTERM);
  std::string last;
  for (int i = 0; i < 50 && !has_line(last, "STOPPING=1"); ++i) last = manager.next(100);
  CHECK_MESSAGE(has_line(last, "STOPPING=1"), "got: '", last, "'");
  ::unlink(takeover.c_str());
}
