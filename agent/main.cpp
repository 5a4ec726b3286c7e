// offload-agent: the command line. Thin: it reads the configuration and
// hands it to the pieces that do the work.
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "generation.h"
#include "ops/access_log.h"
#include "ops/admin.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "ops/log.h"
#include "ops/reload.h"
#include "ops/service_notify.h"
#include "ops/shard_limits.h"
#include "ops/takeover.h"
#include "ops/version.h"
#include "proxy/listen_sockets.h"
#include "proxy/listener.h"
#include "proxy/port_ranges.h"
#include "security/live_rules.h"
#include "security/screen.h"
#include "shard.h"
#include "splice/mode.h"

#ifdef OFFLOAD_HAVE_DISPATCH
#include "dispatch/port_dispatch.h"
#endif
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
  std::string access_log;
  std::string access_log_format;
  std::string xdp_iface;
  std::string log_level;
  std::string xdp_mode;
  std::string cpus;
  std::string takeover_socket;
  std::string takeover;  // run only: take the listening sockets over from the agent at this path
  std::vector<std::string> deny;
  std::vector<std::string> allow;
  bool no_bpf = false;
  std::map<std::string, std::string> numbers;  // TOML key → flag text
};

// What each numeric setting does, its unit and its default (the same as
// docs/offload.toml; the CLI test checks each default against the built-in
// configuration). A key missing here gets no help, which that test catches.
const std::map<std::string, std::string>& number_help() {
  static const std::map<std::string, std::string> help = {
      {"cpu", "run one shard pinned to this CPU number (the same as --cpus K); default none: not pinned"},
      {"workers", "number of shards (threads, each with its own io_uring; over an shm: bus shard i serves channels "
                  "i, i + workers, ...: give the server at least this many workers); default 1 (or one per --cpus "
                  "entry)"},
      {"max_clients", "client connections open at once, agent-wide; more are closed at once; default 10000"},
      {"max_upstream",
       "connections to each server, agent-wide: a number is a fixed ceiling, auto an adaptive limit up to 64; "
       "default auto"},
      {"persistent", "upstream connections the pool's limit starts from (opened on demand); default 4"},
      {"header_bytes_max", "bytes of request line + header fields (431 beyond); k/m/g suffixes; default 16k"},
      {"header_count_max", "header fields in a request (431 beyond); default 100"},
      {"body_bytes_max", "bytes of a decoded request body (413 beyond); k/m/g suffixes; default 16m"},
      {"response_buffer", "bytes of a response kept in memory before spilling to a file; k/m/g; default 256k"},
      {"response_spill_max", "bytes of a response in its temporary file, then back-pressure; k/m/g; default 1g"},
      {"body_buffer", "bytes of a request body kept in memory, the rest in temp_dir; k/m/g; default 64k"},
      {"spill_total_max", "bytes of all temporary files together, agent-wide; k/m/g; default 4g"},
      {"buffer_memory_max", "bytes of all request and response buffers together, agent-wide; k/m/g; default 512m"},
      {"header_timeout_ms", "milliseconds to receive a whole request head (408); default 10000"},
      {"body_timeout_ms", "milliseconds between two reads of a request body (408); default 30000"},
      {"keepalive_timeout_ms", "milliseconds a client may idle between requests (then closed); default 75000"},
      {"send_timeout_ms", "milliseconds a send to a client may make no progress (then closed); default 60000"},
      {"connect_timeout_ms", "milliseconds to open an upstream connection (504); default 5000"},
      {"response_timeout_ms", "milliseconds between two reads from upstream (504); default 60000"},
      {"queue_timeout_ms", "milliseconds a complete request may wait for an upstream channel (503); default 30000"},
      {"drain_timeout_ms",
       "milliseconds SIGTERM (or a reload, for the old configuration's connections) lets requests in flight finish; "
       "default 10000"},
      {"tunnel_timeout_ms",
       "milliseconds a pass-through connection may move nothing either way (then closed); default 3600000"},
      {"half_close_timeout_ms",
       "milliseconds a pass-through connection with one side ended may move nothing (then closed); default 60000"},
      {"recv_buffers", "provided receive buffers shared by all clients (a power of two); default 256"},
      {"recv_buffer_bytes", "bytes of each provided receive buffer; k/m/g; default 4096"},
      {"ring_depth", "shm upstream: requests one ring channel carries at once; default 16"},
      {"ring_bytes", "shm upstream: bytes of each ring (a request must fit, 413 beyond); k/m/g; default 2m"},
      {"max_clients_per_source", "client connections per source (see --source-ipv4-prefix), for the whole agent; 0: no limit; default 0"},
      {"rate_limit", "requests per second per source, for the whole agent (429 with Retry-After beyond); 0: no limit; default 0"},
      {"rate_burst", "requests a source may send at once (its bucket's size); 0: --rate-limit's value; default 0"},
      {"source_table_size", "sources tracked for the per-source limits, one table for every shard (idle ones evicted); default 65536"},
      {"source_ipv4_prefix", "leading bits of an IPv4 address that make one source (32: per address); default 32"},
      {"source_ipv6_prefix", "leading bits of an IPv6 address that make one source (64: per /64); default 64"},
      {"xdp_syn_rate", "XDP guard: SYNs per second per source; 0: no limit; default 0"},
      {"xdp_syn_burst", "XDP guard: SYNs a source may send at once (its bucket); 0: the rate; default 0"},
  };
  return help;
}

void add_config_flags(CLI::App* cmd, RunFlags& f) {
  cmd->add_option("-c,--config", f.config_file,
                  "TOML configuration file (every key, with its default: docs/offload.toml); a flag wins over the "
                  "file; default none: the built-in defaults");
  cmd->add_option("--listen", f.listen,
                  "ADDR:PORT to accept clients on (repeatable; default 127.0.0.1:8080); replaces the file's "
                  "listeners, served by its first [[upstream]]");
  cmd->add_option("--upstream", f.upstream,
                  "tcp://HOST:PORT, unix:PATH or shm:NAME (default tcp://127.0.0.1:8000); with [[upstream]] "
                  "tables, replaces the servers of the one named \"default\"");
  cmd->add_option("--admin", f.admin, "ADDR:PORT of the stats endpoint, or off (default 127.0.0.1:9901)");
  cmd->add_option("--takeover-socket", f.takeover_socket,
                  "Unix socket PATH to hand the listening sockets over on, to a new binary started with "
                  "--takeover PATH (a binary upgrade); default none");
  cmd->add_option("--temp-dir", f.temp_dir,
                  "directory for the unlinked files large responses and bodies spill to; default /tmp");
  cmd->add_option("--access-log", f.access_log,
                  "one line per HTTP request and per tunnel to this file (reopened on SIGUSR1), stderr, or off; default off");
  cmd->add_option("--access-log-format", f.access_log_format,
                  "access log lines: combined (nginx's, then times, upstream, bytes, termination) or json "
                  "(one object per line); default combined");
  cmd->add_option("--deny", f.deny, "refuse clients from this CIDR prefix at accept (repeatable); default none");
  cmd->add_option("--allow", f.allow,
                  "accept clients only from these CIDR prefixes (repeatable); default none: every source");
  cmd->add_option("--xdp-iface", f.xdp_iface,
                  "attach the XDP guard to this network interface while running; default none: no guard");
  cmd->add_option("--xdp-mode", f.xdp_mode, "how the XDP guard attaches: auto, native or generic; default auto");
  cmd->add_option("--log-level", f.log_level,
                  "the agent's own lines written: error, warning, info or debug (and all above it); default info");
  cmd->add_flag("--no-bpf", f.no_bpf,
                "load no BPF program: pass-through bytes move in user space (splice = \"user\") and no XDP "
                "guard is attached; default off");
  cmd->add_option("--cpus", f.cpus,
                  "one shard per CPU listed, each pinned to its CPU: a list such as 1,2 (sets --workers); "
                  "default none: not pinned");
  for (const std::string& key : offload::number_key_names()) {
    std::string flag = "--" + key;
    for (auto& ch : flag)
      if (ch == '_') ch = '-';
    auto it = number_help().find(key);
    const std::string help = it == number_help().end() ? "" : it->second;
    const char* type = key.ends_with("_ms") ? "MS" : help.find("k/m/g") != std::string::npos ? "SIZE" : "N";
    cmd->add_option(flag, f.numbers[key], help)->type_name(type);
  }
}

// The file first, then flags on top (a flag wins), then the whole checked.
Config build_config(const RunFlags& f) {
  Config config;
  if (!f.config_file.empty()) offload::load_config_file(f.config_file, config);
  offload::apply_listen_flags(config, f.listen);
  offload::apply_upstream_flag(config, f.upstream);
  if (!f.admin.empty()) config.admin = f.admin;
  if (!f.takeover_socket.empty()) config.takeover_socket = f.takeover_socket;
  if (!f.temp_dir.empty()) config.temp_dir = f.temp_dir;
  if (!f.access_log.empty()) config.access_log = f.access_log;
  if (!f.access_log_format.empty()) config.access_log_format = f.access_log_format;
  if (!f.xdp_iface.empty()) config.xdp_iface = f.xdp_iface;
  if (!f.deny.empty()) config.deny = f.deny;
  if (!f.allow.empty()) config.allow = f.allow;
  if (!f.xdp_mode.empty()) config.xdp_mode = f.xdp_mode;
  if (!f.log_level.empty()) config.log_level = f.log_level;
  for (const auto& [key, value] : f.numbers)
    if (!value.empty()) offload::set_number_from_flag(config, key, value);
  // cpu and cpus say the same thing: the one given as a flag wins over the file.
  if (auto it = f.numbers.find("cpu"); it != f.numbers.end() && !it->second.empty()) config.cpus.clear();
  if (!f.cpus.empty()) {
    config.cpus = offload::parse_cpu_list("--cpus", f.cpus);
    config.cpu = -1;
  }
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

// The guard for the agent's lifetime: a failure is announced once and the
// agent runs on without it (its limits still hold in user space).
std::shared_ptr<void> attach_guard(const Config& config, const std::vector<int>& listen_fds, bool no_bpf) {
  if (config.xdp_iface.empty()) return nullptr;
  if (no_bpf) {
    fmt::print(stderr, "offload-agent: XDP guard not attached to {}: --no-bpf\n", config.xdp_iface);
    return nullptr;
  }
#ifdef OFFLOAD_HAVE_XDP
  offload::xdp::GuardConfig g;
  g.ifname = config.xdp_iface;
  g.mode = config.xdp_mode == "native"    ? offload::xdp::Mode::native
           : config.xdp_mode == "generic" ? offload::xdp::Mode::generic
                                          : offload::xdp::Mode::automatic;
  for (int cpu : config.cpus) g.cpus.push_back(uint32_t(cpu));  // every shard's core
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

// One listening socket per address for each shard, all bound with
// SO_REUSEPORT to the same port. Why not one listener that every shard
// accepts from: the kernel then spreads new connections over the shards'
// sockets by their 4-tuple hash, each shard accepts from its own queue, and
// there is no shared accept queue (and lock) nor a thundering herd of
// shards woken for one connection. The cost: a shard that is busy gets its
// share of new connections anyway. For a port-0 address the first bind
// picks the port and the other shards bind that same port. Only the -1
// entries of `fds` are opened (the others were handed over by a reload);
// each one opened is also added to `opened`, for the caller to close if the
// whole does not start. A binary upgrade from an agent with fewer shards
// hands over the first shards' sockets: the others are opened on their port.
// A range bound port by port gets its first port's sockets here, the rest
// from serve_port_ranges.
void open_shard_listeners(const Config& config, offload::AgentSockets& fds, std::vector<int>& opened) {
  fds.resize(config.workers, offload::ShardSockets(config.listen.size()));
  for (size_t j = 0; j < config.listen.size(); ++j) {
    offload::SocketAddress same = config.listen[j];
    for (uint32_t i = 0; i < config.workers; ++i) {
      if (fds[i][j].empty()) {
        fds[i][j].push_back(offload::open_listener(same, 4096));
        opened.push_back(fds[i][j].front());
      }
      if (i == 0) offload::set_port(same, offload::local_port(fds[0][j].front()));
    }
  }
}

void raise_fd_limit_for(const Config& config) {
  // Descriptors for the whole agent: the shards' shares add up to these.
  raise_fd_limit(config.max_clients + config.max_upstream + 64, 2 * config.max_clients + config.max_upstream + 64);
}

// Reload requests from the admin thread (POST /reload) to the signal
// thread, which does them one at a time, as SIGHUP.
struct ReloadMailbox {
  using Result = std::pair<bool, std::string>;
  std::mutex mutex;
  std::vector<std::promise<Result>> waiting;
  bool closed = false;  // the agent is stopping: no more reloads
  int fd = -1;          // eventfd: a request is waiting

  Result ask() {
    std::future<Result> answer;
    {
      std::lock_guard lock(mutex);
      if (closed) return {false, "reload: the agent is stopping"};
      waiting.emplace_back();
      answer = waiting.back().get_future();
    }
    const uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
    if (answer.wait_for(std::chrono::seconds(20)) != std::future_status::ready)
      return {false, "reload: no answer from the agent within 20 s"};
    return answer.get();
  }
  // Every request so far gets `result` (requests that came together share one reload).
  void answer_all(const Result& result) {
    std::lock_guard lock(mutex);
    for (auto& p : waiting) p.set_value(result);
    waiting.clear();
  }
};

// Port-range listeners: sk_lookup or each port bound (proxy/port_ranges.h).
std::shared_ptr<void> dispatch_ranges(const Config& config, offload::AgentSockets& fds, std::vector<int>& opened,
                                      bool no_bpf) {
  offload::SkLookupStart sk_lookup;  // empty: this build has none
#ifdef OFFLOAD_HAVE_DISPATCH
  sk_lookup = [](const std::vector<offload::DispatchRange>& ranges, std::string& error) -> std::shared_ptr<void> {
    return offload::PortDispatch::start(ranges, error);
  };
#endif
  return offload::serve_port_ranges(config, fds, opened, no_bpf, sk_lookup);
}

// How this agent was started, for SIGUSR2 to start its successor the same way.
struct Launch {
  std::string exe;                // the binary's path at start-up (a package upgrade puts the new one there)
  std::vector<std::string> args;  // argv[1..]
};

// The running agent: its generations of shards (the newest serves, older
// ones finish what they had, see ops/reload.h), the cumulative counters of
// those that ended, and the admin endpoint, which outlives them all.
class Agent {
 public:
  Agent(const RunFlags& flags, Launch launch) : flags_(flags), launch_(std::move(launch)) {}
  int run(Config config);

 private:
  void relay_signals(const sigset_t& mask);
  void on_generation_done(size_t i);
  void stop_all(bool now);
  ReloadMailbox::Result reload();
  ReloadMailbox::Result try_reload();
  void install_access_log(offload::Generation& gen, const offload::Generation* running);
  void publish_sources(const std::function<void()>& meanwhile = {});
  void on_takeover_connect();
  void on_takeover_request();
  void on_accepts_cancelled(uint64_t shards);
  void start_successor();
  void reap_children();
  bool sockets_given_out() const { return takeover_ && (takeover_->busy() || takeover_->draining()); }
  offload::Generation& current() { return *gens_.back(); }

  const RunFlags& flags_;
  const Launch launch_;
  std::vector<std::unique_ptr<offload::Generation>> gens_;  // oldest first; back() accepts
  offload::Counters ended_;  // the _total counters of generations that ended; this thread writes them
  std::unique_ptr<offload::AdminServer> admin_;
  offload::AdminServer::Mirror mirror_;  // the guard's side of a live rule change; empty: no guard
  std::shared_ptr<void> dispatch_;       // sk_lookup for the port ranges of the newest generation
  ReloadMailbox mailbox_;
  int rearm_fd_ = -1;  // a retiring shard has cancelled its accepts: the newest re-arm theirs
  bool stopping_ = false;
  // A binary upgrade's running side (ops/takeover.h), and how many shards
  // have still to cancel their accepts once the new agent serves.
  std::unique_ptr<offload::takeover::Server> takeover_;
  uint64_t takeover_cancels_ = 0;
  pid_t successor_ = -1;  // started by SIGUSR2, not yet exited
};

// SIGUSR2: this binary's path again (the new one, after a package upgrade),
// with this agent's arguments and --takeover; the rest is the takeover's.
void Agent::start_successor() {
  std::string why;
  if (!takeover_) why = "takeover_socket is not set";
  else if (stopping_) why = "this agent is stopping";
  else if (successor_ > 0) why = fmt::format("pid {}, started before, is still running", successor_);
  else if (launch_.exe.empty()) why = "the agent's own path is unknown (/proc/self/exe)";
  pid_t pid = -1;
  if (why.empty())
    pid = offload::takeover::spawn_successor(launch_.exe, launch_.args, current().config().takeover_socket, why);
  if (pid < 0) return offload::log(offload::LogLevel::kError, "binary upgrade (SIGUSR2): not started: {}", why);
  successor_ = pid;
  offload::log(offload::LogLevel::kInfo, "binary upgrade (SIGUSR2): started {} as pid {}", launch_.exe, pid);
}

// SIGCHLD: a successor that ended before taking over is said; this agent serves on.
void Agent::reap_children() {
  int status = 0;
  for (int i = 0; i < 64; ++i) {
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    if (pid != successor_) continue;
    successor_ = -1;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    offload::log(stopping_ ? offload::LogLevel::kInfo : offload::LogLevel::kError,
                 "binary upgrade: the new agent (pid {}) exited with code {}{}", pid, code,
                 stopping_ ? "" : " before taking over; serving on");
  }
}

// A new agent asks for the sockets: the newest generation's and the admin
// endpoint's. Refused while stopping (they may be shut any moment) and with
// an shm: group (one process holds the bus's socket).
void Agent::on_takeover_connect() {
  const Config& config = current().config();
  std::string refusal = stopping_ ? "this agent is stopping" : "";
  for (const offload::GroupConfig& g : config.groups)
    if (g.is_bus() && refusal.empty()) refusal = "an shm: group cannot be handed over yet (stop and start)";
  // A range bound port by port: only its first port's sockets would go, and
  // the connections queued on the others would be lost with this agent.
  for (size_t j = 0; j < config.listeners.size() && refusal.empty(); ++j)
    if (current().fds().front()[j].size() > 1)
      refusal = fmt::format("listener {}: a range bound port by port cannot be handed over yet (stop and start, or "
                            "use sk_lookup)", config.listeners[j].name);
  const std::string line = takeover_->accept_one(
      offload::takeover::offer_of(current(), admin_ ? admin_->listen_fd() : -1, config.admin), config.workers, refusal);
  if (!line.empty()) offload::log(offload::LogLevel::kInfo, "{}", line);
}

// The new agent serves: this one retires as for a reload with every socket
// it kept handed over (accepts cancelled, never the sockets shut: they are
// the new agent's too), the others shut, and exits once drained.
void Agent::on_takeover_request() {
  offload::takeover::Server::Request r = takeover_->read_request();
  if (r.kind == offload::takeover::Server::Request::Kind::kGone) {
    offload::log(offload::LogLevel::kWarning, "takeover: {}; serving on", r.why);
    return;
  }
  if (r.kind != offload::takeover::Server::Request::Kind::kDrain) return;
  stopping_ = true;
  offload::notify_stopping();
  offload::log(offload::LogLevel::kInfo, "takeover: the new agent serves {} of the sockets; draining (deadline {} ms)",
               r.kept.size(), current().config().drain_timeout_ms);
  takeover_cancels_ = 0;
  for (const auto& shard : current().fds()) {
    const std::vector<int> shard_fds = offload::flat(shard);
    takeover_cancels_ += std::any_of(shard_fds.begin(), shard_fds.end(), [&](int fd) {
      return std::find(r.kept.begin(), r.kept.end(), fd) != r.kept.end();
    });
  }
  current().retire(r.kept);
  if (admin_) admin_->stop_accepting();  // its socket is the new agent's too (or closed by it)
  takeover_->say_draining();
  if (takeover_cancels_ == 0) takeover_->say_cancelled();
}

// Each retiring shard says once that its accepts are off the handed-over
// sockets; once all have, the new agent re-arms its own (Shard::request_rearm).
void Agent::on_accepts_cancelled(uint64_t shards) {
  if (!stopping_) return current().rearm();
  if (!takeover_ || !takeover_->busy() || !takeover_->draining()) return;
  takeover_cancels_ -= std::min(takeover_cancels_, shards);
  if (takeover_cancels_ == 0) takeover_->say_cancelled();
}

// The admin endpoint renders the newest generation's shards, then those
// still draining and the sum of the ended ones (totals never go back).
void Agent::publish_sources(const std::function<void()>& meanwhile) {
  if (!admin_) {
    if (meanwhile) meanwhile();
    return;
  }
  std::vector<const offload::Counters*> parts = current().counters();
  for (size_t i = 0; i + 1 < gens_.size(); ++i)
    for (const offload::Counters* c : gens_[i]->counters()) parts.push_back(c);
  parts.push_back(&ended_);
  admin_->set_sources(parts, current().config().workers, &current().topology(), meanwhile);
}

void Agent::stop_all(bool now) {
  for (auto& g : gens_) {
    if (now) g->stop();
    else g->drain();
  }
}

// A generation's shard has ended. The newest one's shards end only when
// told to or on a fault: then the whole agent drains. An older one that has
// ended altogether is joined, its totals kept, and the sockets no other
// generation uses closed (the ones a reload removed).
void Agent::on_generation_done(size_t i) {
  offload::Generation& g = *gens_[i];
  const bool ended = g.note_done();
  if (!g.retiring() && !stopping_) {
    stopping_ = true;
    offload::notify_stopping();
    stop_all(false);
  }
  // The last one (a binary upgrade retired it) stays for run() to join:
  // the admin endpoint renders its counters until the end.
  if (!ended || !g.retiring() || gens_.size() == 1) return;
  g.join();
  std::unique_ptr<offload::Generation> gone = std::move(gens_[i]);
  gens_.erase(gens_.begin() + long(i));
  publish_sources([&] {
    for (const offload::Counters* c : gone->counters()) offload::add_cumulative(ended_, *c);
  });
  for (const auto& shard_fds : gone->fds())
    for (int fd : offload::flat(shard_fds)) {
      bool used = false;
      for (const auto& other : gens_)
        for (const auto& other_fds : other->fds())
          for (const std::vector<int>& sockets : other_fds)
            used = used || std::find(sockets.begin(), sockets.end(), fd) != sockets.end();
      if (!used) ::close(fd);
    }
}

ReloadMailbox::Result Agent::reload() {
  offload::notify_reloading();
  ReloadMailbox::Result result = try_reload();
  if (result.first) offload::set_log_level(*offload::parse_log_level(current().config().log_level));
  offload::notify_ready();
  // A refusal is an error in the journal (`journalctl -p warning` finds it).
  offload::log(result.first ? offload::LogLevel::kInfo : offload::LogLevel::kError, "{}", result.second);
  return result;
}

// The access-log writer of `gen`, installed for its shards to find: the
// running generation's when the path stays, a new one (its own thread, the
// new file opened now: a path that cannot be opened fails the start or the
// reload) when it changes, none when it is off.
void Agent::install_access_log(offload::Generation& gen, const offload::Generation* running) {
  const std::string& path = gen.config().access_log;
  std::shared_ptr<offload::AccessLogWriter> writer;
  if (running != nullptr && running->config().access_log == path) writer = running->access_log();
  else if (path != "off") writer = std::make_shared<offload::AccessLogWriter>(path);
  gen.keep_access_log(writer);
  offload::AccessLogWriter::install(writer.get());
}

// Builds and validates the whole file as `check` does; only then is anything
// touched. The new generation is started before the running one retires, so
// there is no moment without a shard accepting on a kept address.
ReloadMailbox::Result Agent::try_reload() {
  if (sockets_given_out())
    return {false, "reload failed, the running configuration stays: a new agent has taken the listening sockets "
                   "(binary upgrade under way)"};
  const offload::Generation& running = current();
  Config next;
  try {
    next = build_config(flags_);
    offload::check_reloadable(running.config(), next);
    // The file's rules, with the deny/allow changes made live since start
    // on top: a reload for another reason does not let a denied source back.
    next.live_rules = std::make_shared<offload::LiveRules>(next);
    next.live_rules->replay(*running.config().live_rules);
    next.sources = offload::share_sources(next, &running.config());
  } catch (const std::exception& e) {
    return {false, fmt::format("reload failed, the running configuration stays: {}", e.what())};
  }
  raise_fd_limit_for(next);
  offload::Handover plan = offload::plan_handover(running.config(), running.fds(), next);
  std::vector<int> opened;
  std::unique_ptr<offload::Generation> gen;
  try {
    open_shard_listeners(next, plan.fds, opened);
    // The new ranges (and sockets) first: the old program goes once it is replaced.
    std::shared_ptr<void> dispatch = dispatch_ranges(next, plan.fds, opened, flags_.no_bpf);
    gen = std::make_unique<offload::Generation>(running.number() + 1, std::move(next), plan.fds, &running.topology(),
                                                 rearm_fd_);
    install_access_log(*gen, &running);
    gen->start();
    dispatch_ = std::move(dispatch);
  } catch (const std::exception& e) {
    gen.reset();
    offload::AccessLogWriter::install(running.access_log().get());
    for (int fd : opened) ::close(fd);
    return {false, fmt::format("reload failed, the running configuration stays: {}", e.what())};
  }
  gens_.back()->retire(plan.kept);
  gens_.push_back(std::move(gen));
  publish_sources();
  if (admin_) admin_->set_rules(current().config().live_rules, mirror_);
  const size_t listeners = current().config().listeners.size();
  std::string added;
  for (size_t j = 0; j < listeners; ++j)
    if (std::find(opened.begin(), opened.end(), current().fds()[0][j].front()) != opened.end())
      added += fmt::format(", listening on {}", offload::local_address(current().fds()[0][j].front()));
  return {true, fmt::format("reloaded: generation {}, {} listener{}{}; {} older generation{} draining",
                            current().number(), listeners, listeners == 1 ? "" : "s", added, gens_.size() - 1,
                            gens_.size() == 2 ? "" : "s")};
}

// The one place signals arrive (they are blocked in every thread): SIGHUP
// reloads, SIGTERM or a first SIGINT drains every shard, a second SIGINT
// stops them at once. Returns once every generation has ended; a shard of
// the newest that ends by itself (a fault) makes the others drain.
void Agent::relay_signals(const sigset_t& mask) {
  int signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
  int sigints = 0;
  std::vector<pollfd> fds;
  while (!gens_.empty() && !(gens_.size() == 1 && current().ended())) {
    fds.clear();
    fds.push_back({signal_fd, POLLIN, 0});
    fds.push_back({mailbox_.fd, POLLIN, 0});
    fds.push_back({rearm_fd_, POLLIN, 0});
    // -1: not polled. A new agent's request only before this one drains.
    fds.push_back({takeover_ ? takeover_->listen_fd() : -1, POLLIN, 0});
    fds.push_back({takeover_ && !takeover_->draining() ? takeover_->conn_fd() : -1, POLLIN, 0});
    constexpr size_t kFirstGen = 5;
    for (const auto& g : gens_) fds.push_back({g->done_fd(), POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR
    // Last first: on_generation_done() may erase the generation it is given.
    for (size_t i = gens_.size(); i-- > 0;)
      if (fds[i + kFirstGen].revents != 0) on_generation_done(i);
    if (fds[2].revents != 0) {
      uint64_t n = 0;
      (void)!::read(rearm_fd_, &n, sizeof n);
      on_accepts_cancelled(n);
    }
    if (fds[4].revents != 0) on_takeover_request();
    if (fds[3].revents != 0) on_takeover_connect();
    if (fds[1].revents != 0) {
      uint64_t n = 0;
      (void)!::read(mailbox_.fd, &n, sizeof n);
      mailbox_.answer_all(stopping_ ? ReloadMailbox::Result{false, "reload: the agent is stopping"} : reload());
    }
    signalfd_siginfo info{};
    if (signal_fd >= 0 && fds[0].revents != 0 && ::read(signal_fd, &info, sizeof info) == sizeof info) {
      if (info.ssi_signo == SIGHUP) {
        if (!stopping_) reload();
      } else if (info.ssi_signo == SIGUSR2) {
        start_successor();
      } else if (info.ssi_signo == SIGCHLD) {
        reap_children();
      } else if (info.ssi_signo == SIGUSR1) {  // logrotate: the access log's path again
        if (offload::AccessLogWriter* log = offload::AccessLogWriter::current()) log->reopen();
      } else if (info.ssi_signo == SIGINT && ++sigints >= 2) {
        fmt::print(stderr, "offload-agent: second SIGINT, exiting now\n");
        stopping_ = true;
        stop_all(true);
      } else if (sockets_given_out()) {
        // A new agent listens on these sockets too: shutting them (a drain)
        // would stop its accepting as well. Retired instead, none shut.
        if (!stopping_) {
          std::vector<int> all;
          for (const auto& shard : current().fds()) {
            const std::vector<int> shard_fds = offload::flat(shard);
            all.insert(all.end(), shard_fds.begin(), shard_fds.end());
          }
          current().retire(all);
        }
        stopping_ = true;
        offload::notify_stopping();
      } else {
        stopping_ = true;
        offload::notify_stopping();
        stop_all(false);
      }
    }
  }
  {
    std::lock_guard lock(mailbox_.mutex);
    mailbox_.closed = true;
  }
  mailbox_.answer_all({false, "reload: the agent is stopping"});
  if (signal_fd >= 0) ::close(signal_fd);
}

// The pass-through mode, said once (with why) when a listener needs it; the
// Splicer serves every shard and outlives them.
std::unique_ptr<offload::splice::Splicer> choose_splice(const Config& config, bool no_bpf) {
  bool needed = false;
  for (const offload::ListenerConfig& l : config.listeners) needed |= l.proxy == "passthrough";
  if (!needed) return nullptr;
  offload::splice::Choice choice = offload::splice::choose(config.splice, no_bpf, config.max_clients);
  for (const std::string& note : choice.notes) fmt::print(stderr, "offload-agent: splice: {}\n", note);
  if (!choice.error.empty()) throw std::runtime_error(choice.error);
  fmt::print(stderr, "offload-agent: {}\n", choice.line);
  offload::splice::install(choice.splicer.get());
  return std::move(choice.splicer);
}

// The guard's side of the rule set: each global deny the guard can hold
// (RuleSet::guard_denies), and every later change through the admin endpoint.
offload::AdminServer::Mirror mirror_into_guard(const std::shared_ptr<void>& guard, const offload::LiveRules& rules) {
  if (!guard) return {};
#ifdef OFFLOAD_HAVE_XDP
  const std::shared_ptr<const offload::RuleSet> set = rules.current();
  const std::vector<offload::Prefix> held = set->guard_denies();
  const size_t kept_out = set->global().deny.size() - held.size();
  size_t mirrored = 0;
  for (const offload::Prefix& d : held)
    mirrored += offload::xdp::mirror_rule(true, true, offload::prefix_text(d)).starts_with("guard: added");
  for (const offload::Prefix& a : set->global().allow) (void)offload::xdp::mirror_rule(false, true, offload::prefix_text(a));
  if (!set->global().deny.empty())
    fmt::print(stderr, "offload-agent: xdp: {} deny prefixes mirrored into the guard ({} with an allow inside kept out)\n",
               mirrored, kept_out);
  return [](offload::LiveRules::List list, bool add, const std::string& cidr) {
    return offload::xdp::mirror_rule(list == offload::LiveRules::List::kDeny, add, cidr);
  };
#else
  (void)rules;
  return {};
#endif
}

int Agent::run(Config config) {
  // One rule set for every shard and the admin endpoint (which changes it
  // live); a reload makes the next one from its file and replays the live
  // changes into it.
  config.live_rules = std::make_shared<offload::LiveRules>(config);
  config.sources = offload::share_sources(config, nullptr);
  offload::set_log_level(*offload::parse_log_level(config.log_level));  // validate() checked it
  offload::set_log_priority_prefix(offload::journal_is_stderr());
  raise_fd_limit_for(config);
  // Signals are read by relay_signals() alone; block them in every thread
  // (the shards' threads inherit this mask).
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  offload::AgentSockets fds;
  std::vector<int> opened;
  // A binary upgrade: the running agent's sockets first, each where its
  // address and shard say; what is left is opened as at any start.
  offload::takeover::Start taken;
  if (!flags_.takeover.empty()) {
    taken = offload::takeover::begin(flags_.takeover, config);
    fmt::print(stderr, "offload-agent: {}\n", taken.line);
    fds = offload::takeover::as_sockets(taken.plan.fds);
  }
  open_shard_listeners(config, fds, opened);
  dispatch_ = dispatch_ranges(config, fds, opened, flags_.no_bpf);
  // Without an agent to take over from, the path is this one's from the
  // start (a bad one stops the start); after a takeover, only once the old
  // agent drains (until then it is the old one's, should this one fail).
  if (!config.takeover_socket.empty() && !taken.client)
    takeover_ = std::make_unique<offload::takeover::Server>(config.takeover_socket);
  rearm_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (rearm_fd_ < 0) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
  gens_.push_back(std::make_unique<offload::Generation>(1, std::move(config), fds, nullptr, rearm_fd_));
  const Config& first = current().config();
  mailbox_.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (mailbox_.fd < 0) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
  // One Counters per shard, each written by its shard alone; the admin
  // thread sums them when it renders. Per listener and per server: one set
  // for all shards, each add atomic.
  if (first.admin != "off") {
    // After a takeover the old agent's socket, when the address is the same.
    if (taken.plan.admin_fd >= 0)
      admin_ = std::make_unique<offload::AdminServer>(taken.plan.admin_fd, current().counters(), &current().topology());
    else
      admin_ = std::make_unique<offload::AdminServer>(offload::parse_socket_address("admin", first.admin),
                                                      current().counters(), &current().topology());
    admin_->set_reload([this] { return mailbox_.ask(); });
    publish_sources();
  }
  // Made before the shards (they find it at start) and ended after them
  // (the generation keeps it): what they handed over is written before the
  // agent exits.
  install_access_log(*gens_.back(), nullptr);
  std::shared_ptr<void> guard = attach_guard(first, offload::flat(fds.front()), flags_.no_bpf);  // every shard has the same ports
  // Chosen once for the agent's lifetime (a reload cannot change `splice`).
  std::unique_ptr<offload::splice::Splicer> splicer = choose_splice(first, flags_.no_bpf);
  mirror_ = mirror_into_guard(guard, *first.live_rules);
  if (admin_) admin_->set_rules(first.live_rules, mirror_);
  current().start();
  fmt::print(stderr, "offload-agent: {}\n", current().features());
  fmt::print(stderr, "offload-agent: {} shard{}{}\n", first.workers, first.workers == 1 ? "" : "s",
             first.cpus.empty() ? std::string() : fmt::format(" on cpus {}", fmt::join(first.cpus, ",")));
  for (const offload::GroupConfig& g : first.groups)
    for (const offload::ServerConfig& sv : g.servers)
      fmt::print(stderr, "offload-agent: upstream {} server {} (max {} connections{}, {} persistent, for all shards)\n",
                 g.name, sv.target.text, sv.max_connections, first.max_upstream_auto ? ", adaptive" : "",
                 sv.persistent);
  // One line per listener, in the order of the configuration; the address
  // is the bound one (the real port for :0).
  for (size_t i = 0; i < fds.front().size(); ++i) {
    const offload::ListenerConfig& l = first.listeners[i];
    const char* mode = l.proxy != "passthrough" ? "" : splicer ? " (kernel splice)" : " (user space)";
    fmt::print(stderr, "offload-agent: listener {}: proxy {}{}, upstream {}\n", l.name, l.proxy, mode,
               first.groups[l.group].name);
    fmt::print(stderr, "offload-agent: listening on {}{}\n", offload::local_address(fds.front()[i].front()),
               l.port_last != 0 ? fmt::format("-{}", l.port_last) : "");
  }
  if (admin_) {
    admin_->start();
    fmt::print(stderr, "offload-agent: admin on {}\n", admin_->bound_address());
  }
  std::fflush(stderr);
  // Every shard is made and its sockets listen (the kernel queues
  // connections from here on): a service manager may count the agent up.
  if (!taken.client) {
    offload::notify_ready();
  } else {
    // The unit's main process from now on, then the old agent drains; once
    // its accepts are off the shared sockets, this one's re-arm (a wake-up
    // that went to a cancelled accept is not lost, as in a reload).
    offload::notify_ready_as_main();
    fmt::print(stderr, "offload-agent: {}\n", taken.client->drain(taken.offer, taken.plan.kept));
    current().rearm();
    taken.client.reset();
    if (!first.takeover_socket.empty()) {
      try {
        takeover_ = std::make_unique<offload::takeover::Server>(first.takeover_socket);
      } catch (const std::exception& e) {  // the old agent is draining: serve on without it
        offload::log(offload::LogLevel::kError, "{}; no further takeover possible", e.what());
      }
    }
  }
  std::fflush(stderr);
  relay_signals(mask);
  // Every shard has ended, so its accepts too: the new agent waits for this.
  if (takeover_ && takeover_->busy() && takeover_->draining()) takeover_->say_cancelled();
  int code = 0;
  for (auto& g : gens_) {
    const int c = g->join();
    if (code == 0) code = c;
  }
  admin_.reset();  // before the counters it reads
  gens_.clear();
  takeover_.reset();
  ::close(mailbox_.fd);
  ::close(rearm_fd_);
  offload::splice::install(nullptr);  // every shard is gone: the maps can go
  splicer.reset();
  fmt::print(stderr, "offload-agent: stopped\n");
  return code;
}

// One line as before; with --show the same line as a TOML comment, then the
// effective configuration, so the output loads back as a file.
void check_report(const std::string& file, const Config& config, bool show) {
  std::string listen;
  for (const auto& l : config.listeners) listen += (listen.empty() ? "" : " ") + l.address.text;
  std::string upstream;
  for (const auto& g : config.groups)
    for (const auto& s : g.servers) upstream += (upstream.empty() ? "" : " ") + s.target.text;
  std::string line = fmt::format("offload-agent: {} is valid (listen {}, upstream {})", file, listen, upstream);
  if (!show) return fmt::print("{}\n", line);
  fmt::print("# {}\n{}", line, offload::format_config(config));
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

// POST /reload: the agent's own line goes to stdout (applied) or stderr (not).
int reload(const std::string& admin) {
  try {
    auto [status, body] = offload::request_admin(offload::parse_socket_address("--admin", admin), "POST", "/reload", 30);
    if (status == 200) {
      fmt::print("offload-agent: {}", body);
      return 0;
    }
    fmt::print(stderr, "offload-agent: {}", status == 404 ? "the agent at " + admin + " cannot reload\n" : body);
    return kExitBadInput;
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    fmt::print(stderr, "offload-agent: {}\n", e.what());
    return 1;
  }
}

#ifdef OFFLOAD_HAVE_XDP
// `deny` and `allow` reach the running agent here: --admin, else -c's admin, else the default.
offload::xdp::AgentReply agent_call(const std::string& admin, const std::string& config_file, const std::string& method,
                                    const std::string& target) {
  std::string address = admin;
  if (address.empty() && !config_file.empty()) {
    Config config;
    offload::load_config_file(config_file, config);
    address = config.admin;
  }
  if (address.empty()) address = "127.0.0.1:9901";
  if (address == "off") return {false, 0, "", "its admin endpoint is off"};
  const offload::SocketAddress where = offload::parse_socket_address("--admin", address);
  try {
    auto [status, body] = offload::request_admin(where, method, target, 5);
    return {true, status, body, ""};
  } catch (const std::exception& e) {
    return {false, 0, "", e.what()};
  }
}
#endif

Launch launch_of(int argc, char** argv) {
  Launch l;
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) l.exe.assign(exe, size_t(n));
  for (int i = 1; i < argc; ++i) l.args.emplace_back(argv[i]);
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"offload-agent: a connection-offload proxy (io_uring + eBPF)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("offload-agent ") + offload::kVersion,
                       "print the version and exit");
  int exit_code = 0;

  RunFlags run_flags;
  CLI::App* run_cmd = app.add_subcommand("run", "accept clients, buffer requests, forward them over a few upstream channels");
  add_config_flags(run_cmd, run_flags);
  run_cmd->add_option("-x,--takeover", run_flags.takeover,
                      "binary upgrade: take the listening sockets over from the agent serving this takeover_socket "
                      "PATH, then tell it to drain and exit (nobody there: bind fresh); default none");

  RunFlags check_flags;
  bool check_show = false;
  CLI::App* check_cmd = app.add_subcommand("check", "validate a configuration and exit");
  add_config_flags(check_cmd, check_flags);
  check_cmd->add_flag("--show", check_show,
                      "also print the effective configuration as TOML (globals, listeners, groups); default off");

  std::string stats_admin = "127.0.0.1:9901";
  bool stats_json = false;
  CLI::App* stats_cmd = app.add_subcommand("stats", "print the running agent's counters (and the XDP guard's)");
  stats_cmd->add_option("--admin", stats_admin, "the agent's admin endpoint (default 127.0.0.1:9901)");
  stats_cmd->add_flag("--json", stats_json, "print one JSON object instead of the table; default off");

  std::string reload_admin = "127.0.0.1:9901";
  CLI::App* reload_cmd = app.add_subcommand(
      "reload", "make the running agent re-read its configuration, as SIGHUP does, and say how it went");
  reload_cmd->add_option("--admin", reload_admin, "the agent's admin endpoint (default 127.0.0.1:9901)");

#ifdef OFFLOAD_HAVE_XDP
  offload::xdp::add_xdp_commands(app, exit_code, agent_call);
#endif

  try {
    app.parse(argc, argv);
    if (run_cmd->parsed()) return Agent(run_flags, launch_of(argc, argv)).run(build_config(run_flags));
    if (check_cmd->parsed()) {
      if (check_flags.config_file.empty()) throw ConfigError("check: -c FILE is required");
      Config config = build_config(check_flags);
      check_report(check_flags.config_file, config, check_show);
      return 0;
    }
    if (stats_cmd->parsed()) return stats(stats_admin, stats_json);
    if (reload_cmd->parsed()) return reload(reload_admin);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
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
