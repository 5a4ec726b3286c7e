#include "proxy/port_ranges.h"

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "ops/log.h"
#include "proxy/listener.h"

namespace offload {
namespace {

uint32_t ports_of(const ListenerConfig& l) { return uint32_t(l.port_last) - port_of(l.address) + 1; }

std::string names_of(const Config& config, const std::vector<size_t>& listeners) {
  std::string names;
  for (size_t j : listeners) names += (names.empty() ? "" : ", ") + config.listeners[j].name;
  return names;
}

// Descriptors open in this process now.
uint64_t open_descriptors() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  uint64_t n = 0;
  while (const dirent* e = ::readdir(dir)) n += e->d_name[0] != '.';
  ::closedir(dir);
  return n > 0 ? n - 1 : 0;  // not the directory's own
}

// A range already bound port by port (handed over by a reload): it stays so.
bool bound_whole(const ListenerConfig& l, const std::vector<int>& sockets) {
  return ports_of(l) > 1 && sockets.size() == ports_of(l);
}

std::vector<DispatchRange> dispatch_ranges(const Config& config, const std::vector<size_t>& listeners,
                                           const AgentSockets& fds) {
  std::vector<DispatchRange> ranges;
  for (size_t j : listeners) {
    const ListenerConfig& l = config.listeners[j];
    DispatchRange r;
    std::memcpy(&r.address, &l.address.storage, l.address.length);
    r.port_first = port_of(l.address);
    r.port_last = l.port_last;
    r.fd = fds.front()[j].front();  // the first of its SO_REUSEPORT group: the kernel spreads from there
    ranges.push_back(r);
  }
  return ranges;
}

// Why the ranges not yet decided are bound port by port; empty: sk_lookup
// serves them, `dispatch` holding it.
std::string why_bind(const Config& config, const std::vector<size_t>& undecided, const AgentSockets& fds,
                     bool no_bpf, const SkLookupStart& start, std::shared_ptr<void>& dispatch) {
  const bool required = config.port_range_mode == "sk_lookup";
  if (config.port_range_mode == "bind") return "port_range_mode = \"bind\"";
  if (no_bpf && required)
    throw ConfigError("port_range_mode: 'sk_lookup' cannot be had with --no-bpf (expected auto or bind with --no-bpf)");
  std::string why;
  if (no_bpf) {
    why = "--no-bpf";
  } else if (!start) {
    why = "this build has no sk_dispatch program (no kernel BTF at build time)";
  } else {
    dispatch = start(dispatch_ranges(config, undecided, fds), why);
    if (dispatch) return "";
  }
  if (required)
    throw std::runtime_error(fmt::format("listener {}: port_range_mode = \"sk_lookup\" and it cannot be had: {} "
                                         "(port_range_mode = \"auto\" binds each port instead)",
                                         names_of(config, undecided), why));
  return why;
}

// Every port of listener j after those it has, in every shard.
void bind_ports(const Config& config, size_t j, AgentSockets& fds, std::vector<int>& opened) {
  const ListenerConfig& l = config.listeners[j];
  const uint16_t first = port_of(l.address);
  const std::string host = l.address.text.substr(0, l.address.text.rfind(':') + 1);  // "ADDR:" as written
  for (uint32_t port = first + uint32_t(fds.front()[j].size()); port <= l.port_last; ++port) {
    SocketAddress one = l.address;
    set_port(one, uint16_t(port));
    one.text = host + std::to_string(port);
    for (ShardSockets& shard : fds) {
      const int fd = open_listener(one, 4096);
      opened.push_back(fd);
      shard[j].push_back(fd);
    }
  }
}

}  // namespace

void check_descriptors(const std::string& what, uint64_t needed) {
  rlimit rl{};
  if (needed == 0 || ::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  const uint64_t in_use = open_descriptors();
  const uint64_t want = in_use + needed + kDescriptorReserve;
  if (rl.rlim_cur < want && rl.rlim_cur < rl.rlim_max) {
    // On top of what the clients were given (raise_fd_limit), not instead of it.
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, std::max<rlim_t>(want, rl.rlim_cur + needed));
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur >= want) return;
  throw ConfigError(fmt::format("{} need {} more descriptors, and the open-file limit is {} with {} open and {} kept for "
                                "the agent and its clients (raise RLIMIT_NOFILE: ulimit -n, LimitNOFILE=; or let "
                                "sk_lookup serve the range)",
                                what, needed, uint64_t(rl.rlim_cur), in_use, kDescriptorReserve));
}

std::shared_ptr<void> serve_port_ranges(const Config& config, AgentSockets& fds, std::vector<int>& opened, bool no_bpf,
                                        const SkLookupStart& start) {
  std::vector<size_t> kept_bound, undecided;
  for (size_t j = 0; j < config.listeners.size(); ++j) {
    const ListenerConfig& l = config.listeners[j];
    if (l.port_last == 0) continue;
    (bound_whole(l, fds.front()[j]) ? kept_bound : undecided).push_back(j);
  }
  if (kept_bound.empty() && undecided.empty()) return nullptr;
  std::shared_ptr<void> dispatch;
  const std::string why = undecided.empty() ? "" : why_bind(config, undecided, fds, no_bpf, start, dispatch);
  std::vector<size_t> to_bind = kept_bound;
  if (!why.empty()) to_bind.insert(to_bind.end(), undecided.begin(), undecided.end());
  // All or nothing: the count first, then the sockets.
  uint64_t needed = 0;
  std::string detail;
  for (size_t j : to_bind) {
    const ListenerConfig& l = config.listeners[j];
    const uint64_t more = uint64_t(ports_of(l) - fds.front()[j].size()) * fds.size();
    if (more == 0) continue;
    needed += more;
    detail += fmt::format("{}{} ports x {} shard{}", detail.empty() ? "" : " + ", ports_of(l), fds.size(),
                          fds.size() == 1 ? "" : "s");
  }
  std::vector<size_t> fresh;
  for (size_t j : to_bind)
    if (ports_of(config.listeners[j]) > fds.front()[j].size()) fresh.push_back(j);
  check_descriptors(fmt::format("listener {}: ports bound one by one ({})", names_of(config, fresh), detail), needed);
  for (size_t j : fresh) bind_ports(config, j, fds, opened);
  for (size_t j = 0; j < config.listeners.size(); ++j) {
    const ListenerConfig& l = config.listeners[j];
    if (l.port_last == 0) continue;
    const bool kept = std::find(kept_bound.begin(), kept_bound.end(), j) != kept_bound.end();
    if (!kept && why.empty()) {
      log(LogLevel::kInfo, "listener {}: ports {}-{} through sk_lookup, one socket per shard", l.name,
          port_of(l.address), l.port_last);
      continue;
    }
    // auto that could not have sk_lookup is worth a warning; asking for bind is not.
    const bool fell_back = !kept && config.port_range_mode == "auto" && why != "--no-bpf";
    log(fell_back ? LogLevel::kWarning : LogLevel::kInfo,
        "listener {}: ports {}-{} bound one by one, {} sockets per shard ({})", l.name, port_of(l.address),
        l.port_last, ports_of(l), kept ? "as the running generation had them" : why);
  }
  return dispatch;
}

}  // namespace offload
