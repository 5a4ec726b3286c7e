// offload-agent: the command line. Thin: it reads the configuration and
// hands it to the pieces that do the work.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "ops/admin.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/listener.h"
#include "shard.h"

#ifdef OFFLOAD_HAVE_XDP
#include "xdp/xdp_cli.h"
#include "xdp/xdp_guard.h"
#endif

namespace {

using offload::Config;
using offload::ConfigError;

constexpr int kExitBadInput = 2;

struct RunFlags {
  std::string config_file;
  std::vector<std::string> listen;
  std::string upstream;
  std::string admin;
  std::string temp_dir;
  std::string xdp_iface;
  std::string xdp_mode;
  std::vector<std::string> deny;
  std::vector<std::string> allow;
  std::map<std::string, std::string> numbers;  // TOML key → flag text
};

void add_config_flags(CLI::App* cmd, RunFlags& f) {
  cmd->add_option("-c,--config", f.config_file, "TOML configuration file");
  cmd->add_option("--listen", f.listen, "ADDR:PORT to accept clients on (repeatable; default 127.0.0.1:8080)");
  cmd->add_option("--upstream", f.upstream, "tcp://HOST:PORT, unix:PATH or shm:NAME (default tcp://127.0.0.1:8000)");
  cmd->add_option("--admin", f.admin, "ADDR:PORT of the stats endpoint, or off (default 127.0.0.1:9901)");
  cmd->add_option("--temp-dir", f.temp_dir, "where large responses spill (default /tmp)");
  cmd->add_option("--deny", f.deny, "refuse clients from this CIDR prefix at accept (repeatable)");
  cmd->add_option("--allow", f.allow, "accept clients only from these CIDR prefixes (repeatable)");
  cmd->add_option("--xdp-iface", f.xdp_iface, "attach the XDP guard to this interface while running");
  cmd->add_option("--xdp-mode", f.xdp_mode, "auto, native or generic (default auto)");
  for (const std::string& key : offload::number_key_names()) {
    std::string flag = "--" + key;
    for (auto& ch : flag)
      if (ch == '_') ch = '-';
    cmd->add_option(flag, f.numbers[key], "see README: configuration");
  }
}

// The file first, then flags on top (a flag wins), then the whole checked.
Config build_config(const RunFlags& f) {
  Config config;
  if (!f.config_file.empty()) offload::load_config_file(f.config_file, config);
  if (!f.listen.empty()) {
    config.listen.clear();
    for (const auto& l : f.listen) config.listen.push_back(offload::parse_socket_address("--listen", l));
  }
  if (!f.upstream.empty()) config.upstream = offload::parse_upstream("--upstream", f.upstream);
  if (!f.admin.empty()) config.admin = f.admin;
  if (!f.temp_dir.empty()) config.temp_dir = f.temp_dir;
  if (!f.xdp_iface.empty()) config.xdp_iface = f.xdp_iface;
  if (!f.deny.empty()) config.deny = f.deny;
  if (!f.allow.empty()) config.allow = f.allow;
  if (!f.xdp_mode.empty()) config.xdp_mode = f.xdp_mode;
  for (const auto& [key, value] : f.numbers)
    if (!value.empty()) offload::set_number_from_flag(config, key, value);
  offload::validate(config);
  return config;
}

// Clients and channels need `needed` descriptors; spill files get what the
// limit leaves beyond that (up to one per client), see spill_files_max().
void raise_fd_limit(uint32_t needed, uint32_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = std::min<rlim_t>(rl.rlim_max, wanted);
  if (rl.rlim_cur < want) {
    rl.rlim_cur = want;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < needed)
    fmt::print(stderr, "offload-agent: note: open-file limit {} is below max_clients + max_upstream + 64 = {}\n",
               rl.rlim_cur, needed);
}

void pin_to_cpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0) throw ConfigError(fmt::format("cpu: bad value '{}' (expected a CPU this process may use: {})", cpu,
                                             std::strerror(rc)));
}

// The guard for the agent's lifetime: a failure is announced once and the
// agent runs on without it (its limits still hold in user space).
std::shared_ptr<void> attach_guard(const Config& config, const std::vector<int>& listen_fds) {
  if (config.xdp_iface.empty()) return nullptr;
#ifdef OFFLOAD_HAVE_XDP
  offload::xdp::GuardConfig g;
  g.ifname = config.xdp_iface;
  g.mode = config.xdp_mode == "native"    ? offload::xdp::Mode::native
           : config.xdp_mode == "generic" ? offload::xdp::Mode::generic
                                          : offload::xdp::Mode::automatic;
  if (config.cpu >= 0) g.cpus.push_back(uint32_t(config.cpu));
  for (int fd : listen_fds) g.ports.push_back(offload::local_port(fd));
  g.syn_rate = config.xdp_syn_rate;
  g.syn_burst = config.xdp_syn_burst;
  g.announce = [](std::string_view m) { fmt::print(stderr, "offload-agent: xdp: {}\n", m); };
  offload::xdp::Status status;
  std::shared_ptr<offload::xdp::Guard> guard = offload::xdp::Guard::attach(g, status);
  if (!guard) {
    fmt::print(stderr, "offload-agent: XDP guard not attached to {}: {}; running without it\n", g.ifname,
               status.message);
    return nullptr;
  }
  fmt::print(stderr, "offload-agent: XDP guard on {} ({} mode)\n", g.ifname, offload::xdp::mode_name(guard->mode()));
  return guard;
#else
  (void)listen_fds;
  fmt::print(stderr, "offload-agent: built without XDP support; xdp_iface {} ignored\n", config.xdp_iface);
  return nullptr;
#endif
}

int run(const Config& config) {
  raise_fd_limit(config.max_clients + config.max_upstream + 64, 2 * config.max_clients + config.max_upstream + 64);
  // Signals arrive through a signalfd in the loop; block them everywhere.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<int> fds;
  for (const auto& address : config.listen) fds.push_back(offload::open_listener(address, 4096));
  offload::Counters counters;
  std::unique_ptr<offload::AdminServer> admin;
  if (config.admin != "off")
    admin = std::make_unique<offload::AdminServer>(offload::parse_socket_address("admin", config.admin), counters);
  pin_to_cpu(config.cpu);
  std::shared_ptr<void> guard = attach_guard(config, fds);
  offload::Shard shard(config, fds, counters);
  fmt::print(stderr, "offload-agent: {}\n", shard.features());
  fmt::print(stderr, "offload-agent: upstream {} (max {} channels, {} persistent)\n", config.upstream.text,
             config.max_upstream, config.persistent);
  for (int fd : fds) fmt::print(stderr, "offload-agent: listening on {}\n", offload::local_address(fd));
  if (admin) {
    admin->start();
    fmt::print(stderr, "offload-agent: admin on {}\n", admin->bound_address());
  }
  std::fflush(stderr);
  int code = shard.run();
  fmt::print(stderr, "offload-agent: stopped\n");
  return code;
}

int stats(const std::string& admin, bool json) {
  std::string body;
  try {
    body = offload::fetch_admin(offload::parse_socket_address("--admin", admin),
                                json ? "/stats?format=json" : "/stats");
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
#ifdef OFFLOAD_HAVE_XDP
    // The guard's counters are readable without a running agent.
    std::string xdp = offload::xdp::stats(json);
    if (!xdp.empty() && xdp != "null") {
      fmt::print(stderr, "offload-agent: {}\n", e.what());
      fmt::print("{}", json ? fmt::format("{{\"agent\":null,\"xdp\":{}}}\n", xdp) : xdp);
      return 0;
    }
#endif
    fmt::print(stderr, "offload-agent: {}\n", e.what());
    return 1;
  }
#ifdef OFFLOAD_HAVE_XDP
  std::string xdp = offload::xdp::stats(json);
  if (json) {
    while (!body.empty() && (body.back() == '\n')) body.pop_back();
    fmt::print("{{\"agent\":{},\"xdp\":{}}}\n", body, xdp.empty() ? "null" : xdp);
  } else {
    fmt::print("{}{}", body, xdp);
  }
#else
  fmt::print("{}", body);
#endif
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"offload-agent: a connection-offload proxy (io_uring + eBPF)"};
  app.require_subcommand(1);
  int exit_code = 0;

  RunFlags run_flags;
  CLI::App* run_cmd = app.add_subcommand("run", "accept clients, buffer requests, forward them over a few upstream channels");
  add_config_flags(run_cmd, run_flags);

  RunFlags check_flags;
  CLI::App* check_cmd = app.add_subcommand("check", "validate a configuration and exit");
  add_config_flags(check_cmd, check_flags);

  std::string stats_admin = "127.0.0.1:9901";
  bool stats_json = false;
  CLI::App* stats_cmd = app.add_subcommand("stats", "print the running agent's counters (and the XDP guard's)");
  stats_cmd->add_option("--admin", stats_admin, "the agent's admin endpoint (default 127.0.0.1:9901)");
  stats_cmd->add_flag("--json", stats_json, "one JSON object");

#ifdef OFFLOAD_HAVE_XDP
  offload::xdp::add_xdp_commands(app, exit_code);
#endif

  try {
    app.parse(argc, argv);
    if (run_cmd->parsed()) return run(build_config(run_flags));
    if (check_cmd->parsed()) {
      if (check_flags.config_file.empty()) throw ConfigError("check: -c FILE is required");
      Config config = build_config(check_flags);
      fmt::print("offload-agent: {} is valid (listen {}, upstream {})\n", check_flags.config_file,
                 config.listen.front().text, config.upstream.text);
      return 0;
    }
    if (stats_cmd->parsed()) return stats(stats_admin, stats_json);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "offload-agent: {}\n", e.what());
    return kExitBadInput;
  } catch (const ConfigError& e) {
    fmt::print(stderr, "offload-agent: {}\n", e.what());
    return kExitBadInput;
  } catch (const std::exception& e) {
    fmt::print(stderr, "offload-agent: {}\n", e.what());
    return 1;
  }
  return exit_code;
}
