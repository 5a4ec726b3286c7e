// offload-demo-server: a tiny application server for demos and benchmarks.
//
//   offload-demo-server --listen ADDR:PORT [--workers N] [--root DIR]
//       plain HTTP/1.1, N blocking worker threads (see demo_http.h)
//   offload-demo-server --ring NAME [--workers N] [--root DIR] [--agent-uid UID]
//       serves the offload agent over the shared-memory ring (liboffload-server)
//
// Once ready it prints "offload-demo-server: listening on ADDR:PORT" (or
// "... attached to ring NAME") on stderr. SIGTERM or SIGINT print the counters
// as one line on stderr and exit 0. Bad flags print one line and exit 2.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "demo_content.h"
#include "demo_http.h"
#include "demo_ring.h"

namespace {

using offload::demo::Counters;

struct Flags {
  std::string listen;
  std::string ring;
  std::string root;
  unsigned workers = 4;
  unsigned spin_us = 0;
  int64_t agent_uid = -1;
};

double seconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; }

void print_counters(const Counters& c) {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  double user = seconds(ru.ru_utime), sys = seconds(ru.ru_stime);
  std::fprintf(stderr,
               "offload-demo-server: requests=%llu connections=%llu cpu_user_s=%.3f "
               "cpu_sys_s=%.3f cpu_s=%.3f\n",
               static_cast<unsigned long long>(c.requests.load()),
               static_cast<unsigned long long>(c.connections.load()), user, sys, user + sys);
  std::fflush(stderr);
}

void worker_loop(int listen_fd, int root_fd, Counters* counters) {
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
        if (errno == EMFILE || errno == ENFILE) ::usleep(10'000);
        continue;
      }
      return;  // the listener is gone: shutting down
    }
    counters->connections.fetch_add(1, std::memory_order_relaxed);
    offload::demo::serve_connection(fd, root_fd, *counters);
    ::close(fd);
  }
}

// Blocks the termination signals in every thread; main waits for them.
sigset_t block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return set;
}

[[noreturn]] void wait_and_exit(const sigset_t& set, const Counters& counters) {
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  print_counters(counters);
  std::_Exit(0);  // workers may be blocked in accept/recv or mid-handler
}

int run_listen(const Flags& f, int root_fd, Counters& counters, const sigset_t& set) {
  std::string bound;
  int lfd = offload::demo::listen_on(f.listen, 1024, &bound);
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < f.workers; ++i) workers.emplace_back(worker_loop, lfd, root_fd, &counters);
  std::fprintf(stderr, "offload-demo-server: listening on %s\n", bound.c_str());
  std::fflush(stderr);
  wait_and_exit(set, counters);
}

int run_ring(const Flags& f, int root_fd, Counters& counters, const sigset_t& set) {
  offload::demo::RingMode ring(f.ring, f.workers, f.spin_us, root_fd, counters);
  ring.set_agent_uid(f.agent_uid);
  std::thread serving([&ring] { ring.run(); });
  serving.detach();
  wait_and_exit(set, counters);
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"offload-demo-server: a small application server for the offload demo"};
  auto* listen = app.add_option("--listen", f.listen, "serve plain HTTP/1.1 on ADDR:PORT");
  auto* ring = app.add_option("--ring", f.ring, "serve the agent's shared-memory ring NAME");
  listen->excludes(ring);
  app.add_option("--workers", f.workers, "worker threads (ring: one channel each)")
      ->check(CLI::Range(1u, 1024u));
  app.add_option("--root", f.root, "directory whose files are served")->check(CLI::ExistingDirectory);
  app.add_option("--spin-us", f.spin_us, "ring: busy-poll budget before sleeping, microseconds")
      ->check(CLI::Range(0u, 1'000'000u));
  app.add_option("--agent-uid", f.agent_uid,
                 "ring: the uid the agent must run as (default: ours; root is always accepted)")
      ->check(CLI::Range(int64_t{0}, int64_t{UINT32_MAX - 1}));
  try {
    app.parse(argc, argv);
    if (f.listen.empty() == f.ring.empty()) throw CLI::ValidationError("exactly one of --listen or --ring is required");
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "offload-demo-server: %s\n", e.what());
    return 2;
  }
  sigset_t set = block_signals();
  Counters counters;
  try {
    int root_fd = offload::demo::open_root(f.root);
    if (!f.listen.empty()) return run_listen(f, root_fd, counters, set);
    return run_ring(f, root_fd, counters, set);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "offload-demo-server: %s\n", e.what());
    return 2;
  }
}
