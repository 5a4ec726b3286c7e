#include "ops/reload.h"

#include <cstring>
#include <string_view>

#include <fmt/format.h>

namespace offload {

namespace {

[[noreturn]] void needs_restart(const char* key, const std::string& running, const std::string& next) {
  throw ConfigError(fmt::format("{}: '{}' differs from the running '{}' (a reload cannot change it; restart the agent)",
                                key, next, running));
}

std::string cpu_list(const Config& c) { return c.cpus.empty() ? "none" : fmt::format("{}", fmt::join(c.cpus, ",")); }

bool has_bus(const Config& c) {
  for (const GroupConfig& g : c.groups)
    if (g.is_bus()) return true;
  return false;
}

}  // namespace

void check_reloadable(const Config& running, const Config& next) {
  if (next.workers != running.workers)
    needs_restart("workers", std::to_string(running.workers), std::to_string(next.workers));
  if (next.cpus != running.cpus) needs_restart("cpus", cpu_list(running), cpu_list(next));
  if (next.admin != running.admin) needs_restart("admin", running.admin, next.admin);
  if (next.takeover_socket != running.takeover_socket)
    needs_restart("takeover_socket", running.takeover_socket, next.takeover_socket);
  if (next.xdp_iface != running.xdp_iface) needs_restart("xdp_iface", running.xdp_iface, next.xdp_iface);
  if (next.xdp_mode != running.xdp_mode) needs_restart("xdp_mode", running.xdp_mode, next.xdp_mode);
  if (next.xdp_syn_rate != running.xdp_syn_rate)
    needs_restart("xdp_syn_rate", std::to_string(running.xdp_syn_rate), std::to_string(next.xdp_syn_rate));
  if (next.xdp_syn_burst != running.xdp_syn_burst)
    needs_restart("xdp_syn_burst", std::to_string(running.xdp_syn_burst), std::to_string(next.xdp_syn_burst));
  if (next.splice != running.splice) needs_restart("splice", running.splice, next.splice);
  if (next.port_range_mode != running.port_range_mode)
    needs_restart("port_range_mode", running.port_range_mode, next.port_range_mode);
  if (has_bus(running) || has_bus(next))
    throw ConfigError("upstream: an shm: group cannot be reloaded yet (its bus socket is one generation's; restart the agent)");
}

bool same_address(const SocketAddress& a, const SocketAddress& b) {
  return a.length == b.length && std::memcmp(&a.storage, &b.storage, a.length) == 0;
}

Handover plan_handover(const Config& running, const AgentSockets& running_fds, const Config& next) {
  Handover h;
  h.fds.assign(running_fds.size(), ShardSockets(next.listeners.size()));
  std::vector<bool> taken(running.listeners.size(), false);  // each socket goes to one listener
  for (size_t j = 0; j < next.listeners.size(); ++j) {
    for (size_t i = 0; i < running.listeners.size(); ++i) {
      const ListenerConfig& was = running.listeners[i];
      const ListenerConfig& is = next.listeners[j];
      // A port range is one listener: the same range, or not the same
      // sockets. All of them go over (one per port when it was bound port
      // by port): dropping one would drop the connections in its queue.
      if (taken[i] || !same_address(was.address, is.address) || was.port_last != is.port_last) continue;
      taken[i] = true;
      for (size_t s = 0; s < running_fds.size(); ++s) {
        h.fds[s][j] = running_fds[s][i];
        h.kept.insert(h.kept.end(), running_fds[s][i].begin(), running_fds[s][i].end());
      }
      break;
    }
  }
  return h;
}

void add_cumulative(Counters& total, const Counters& part) {
#define OFFLOAD_ADD_TOTAL(name, family, label, help) \
  if (std::string_view(family).ends_with("_total")) bump(total.name, part.name.load(std::memory_order_relaxed));
  OFFLOAD_COUNTERS(OFFLOAD_ADD_TOTAL)
#undef OFFLOAD_ADD_TOTAL
#define OFFLOAD_ADD_HISTOGRAM(name, family, help) part.name.add_to(total.name);
  OFFLOAD_HISTOGRAMS(OFFLOAD_ADD_HISTOGRAM)
#undef OFFLOAD_ADD_HISTOGRAM
}

}  // namespace offload
