#include "ops/topology_stats.h"

#include <fmt/format.h>

#include <tuple>

#include "ops/config.h"

namespace offload {

std::unique_ptr<TopologyStats> TopologyStats::from(const Config& config, const TopologyStats* carry) {
  auto t = std::make_unique<TopologyStats>();
  for (const ListenerConfig& l : config.listeners) {
    std::shared_ptr<ListenerCounters> same;
    if (carry != nullptr)
      for (const auto& c : carry->listeners)
        if (c->name == l.name) same = c;
    t->listeners.push_back(same ? same : std::make_shared<ListenerCounters>());
    t->listeners.back()->name = l.name;
  }
  for (const GroupConfig& g : config.groups) {
    t->group_offsets.push_back(t->servers.size());
    for (const ServerConfig& s : g.servers) {
      std::shared_ptr<ServerCounters> same;
      if (carry != nullptr)
        for (const auto& c : carry->servers)
          if (c->group == g.name && c->name == s.target.text) same = c;
      t->servers.push_back(same ? same : std::make_shared<ServerCounters>());
      t->servers.back()->group = g.name;
      t->servers.back()->name = s.target.text;
    }
  }
  return t;
}

ServerCounters* TopologyStats::server(size_t group, size_t index) const {
  if (group >= group_offsets.size()) return nullptr;
  const size_t i = group_offsets[group] + index;
  return i < servers.size() ? servers[i].get() : nullptr;
}

namespace {

uint64_t v(const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); }

// A label value in Prometheus text: backslash, quote and newline escaped.
std::string label(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out;
}

std::string json_string(const std::string& s) { return "\"" + label(s) + "\""; }

}  // namespace

std::string render_topology(const TopologyStats& t, StatsFormat format) {
  std::string out;
  switch (format) {
    case StatsFormat::kText:
      for (const auto& l : t.listeners) {
        out += fmt::format(
            "listener {:<22} accepted {} active {} rejected {} requests {} rate_limited {} auth_missing {} "
            "auth_wrong {} method_refused {} target_too_long {}",
            l->name, v(l->accepted), v(l->active), v(l->rejected), v(l->requests), v(l->rate_limited),
            v(l->auth_missing), v(l->auth_wrong), v(l->method_refused), v(l->target_too_long));
        if (v(l->tunnels_kernel) + v(l->tunnels_user) > 0)
          out += fmt::format(
              " tunnels_kernel {} tunnels_user {} bytes_up {} bytes_down {} spliced_up {} spliced_down {} "
              "half_closes {} resets {} splice_setup_failures {}",
              v(l->tunnels_kernel), v(l->tunnels_user), v(l->user_bytes_up) + v(l->kernel_bytes_up),
              v(l->user_bytes_down) + v(l->kernel_bytes_down), v(l->kernel_bytes_up), v(l->kernel_bytes_down),
              v(l->tunnel_half_closes), v(l->tunnel_resets), v(l->splice_setup_failures));
        out += "\n";
      }
      for (const auto& s : t.servers)
        out += fmt::format("server {}/{} {} requests {} responses {} failures {} connects {} connections {}\n",
                           s->group, s->name, v(s->down) ? "down" : "up", v(s->requests), v(s->responses),
                           v(s->failures), v(s->connects), v(s->connections));
      break;
    case StatsFormat::kJson: {
      out += "\"listeners\":[";
      bool first = true;
      for (const auto& l : t.listeners) {
        out += fmt::format(
            "{}{{\"name\":{},\"accepted\":{},\"active\":{},\"rejected\":{},\"requests\":{},\"rate_limited\":{},"
            "\"auth_missing\":{},\"auth_wrong\":{},\"method_refused\":{},\"target_too_long\":{},"
            "\"tunnels_kernel\":{},\"tunnels_user\":{},\"tunnel_bytes_up\":{},\"tunnel_bytes_down\":{},"
            "\"spliced_bytes_up\":{},\"spliced_bytes_down\":{},\"tunnel_half_closes\":{},\"tunnel_resets\":{},"
            "\"splice_setup_failures\":{}}}",
            first ? "" : ",", json_string(l->name), v(l->accepted), v(l->active), v(l->rejected), v(l->requests),
            v(l->rate_limited), v(l->auth_missing), v(l->auth_wrong), v(l->method_refused), v(l->target_too_long),
            v(l->tunnels_kernel), v(l->tunnels_user), v(l->user_bytes_up) + v(l->kernel_bytes_up),
            v(l->user_bytes_down) + v(l->kernel_bytes_down), v(l->kernel_bytes_up), v(l->kernel_bytes_down),
            v(l->tunnel_half_closes), v(l->tunnel_resets), v(l->splice_setup_failures));
        first = false;
      }
      out += "],\"servers\":[";
      first = true;
      for (const auto& s : t.servers) {
        out += fmt::format(
            "{}{{\"group\":{},\"server\":{},\"state\":\"{}\",\"shards_down\":{},\"requests\":{},\"responses\":{},"
            "\"failures\":{},\"connects\":{},\"connections\":{}}}",
            first ? "" : ",", json_string(s->group), json_string(s->name), v(s->down) ? "down" : "up", v(s->down),
            v(s->requests), v(s->responses), v(s->failures), v(s->connects), v(s->connections));
        first = false;
      }
      out += "]";
      break;
    }
    case StatsFormat::kPrometheus: {
      auto family = [&](const char* name, const char* type, const char* help) {
        out += fmt::format("# HELP offload_{} {}\n# TYPE offload_{} {}\n", name, help, name, type);
      };
      auto per_listener = [&](const char* name, const char* type, const char* help,
                              const std::atomic<uint64_t> ListenerCounters::*field) {
        family(name, type, help);
        for (const auto& l : t.listeners)
          out += fmt::format("offload_{}{{listener=\"{}\"}} {}\n", name, label(l->name), v((*l).*field));
      };
      auto per_server = [&](const char* name, const char* type, const char* help,
                            const std::atomic<uint64_t> ServerCounters::*field) {
        family(name, type, help);
        for (const auto& s : t.servers)
          out += fmt::format("offload_{}{{group=\"{}\",server=\"{}\"}} {}\n", name, label(s->group), label(s->name),
                             v((*s).*field));
      };
      per_listener("listener_accepted_total", "counter", "client connections accepted", &ListenerCounters::accepted);
      per_listener("listener_active_connections", "gauge", "client connections open now", &ListenerCounters::active);
      per_listener("listener_rejected_total", "counter", "client connections refused at accept",
                   &ListenerCounters::rejected);
      per_listener("listener_requests_total", "counter", "complete requests received", &ListenerCounters::requests);
      family("listener_refused_requests_total", "counter", "requests refused before any upstream work, by reason");
      for (const auto& l : t.listeners)
        for (const auto& [reason, field] :
             {std::pair{"rate_limited", &ListenerCounters::rate_limited}, {"auth_missing", &ListenerCounters::auth_missing},
              {"auth_wrong", &ListenerCounters::auth_wrong}, {"method", &ListenerCounters::method_refused},
              {"target_too_long", &ListenerCounters::target_too_long}})
          out += fmt::format("offload_listener_refused_requests_total{{listener=\"{}\",reason=\"{}\"}} {}\n",
                             label(l->name), reason, v((*l).*field));
      family("listener_tunnels_total", "counter", "tunnels opened, by the mode that moves their bytes");
      for (const auto& l : t.listeners)
        for (const auto& [mode, field] :
             {std::pair{"kernel", &ListenerCounters::tunnels_kernel}, {"user", &ListenerCounters::tunnels_user}})
          out += fmt::format("offload_listener_tunnels_total{{listener=\"{}\",mode=\"{}\"}} {}\n", label(l->name),
                             mode, v((*l).*field));
      family("listener_tunnel_bytes_total", "counter",
             "bytes moved by tunnels, by direction (up: client to server) and mode");
      for (const auto& l : t.listeners)
        for (const auto& [direction, mode, field] :
             {std::tuple{"up", "user", &ListenerCounters::user_bytes_up},
              {"up", "kernel", &ListenerCounters::kernel_bytes_up},
              {"down", "user", &ListenerCounters::user_bytes_down},
              {"down", "kernel", &ListenerCounters::kernel_bytes_down}})
          out += fmt::format("offload_listener_tunnel_bytes_total{{listener=\"{}\",direction=\"{}\",mode=\"{}\"}} {}\n",
                             label(l->name), direction, mode, v((*l).*field));
      per_listener("listener_tunnel_half_closes_total", "counter", "tunnel directions ended by a FIN passed on",
                   &ListenerCounters::tunnel_half_closes);
      per_listener("listener_tunnel_resets_total", "counter", "tunnels ended by a reset",
                   &ListenerCounters::tunnel_resets);
      per_listener("listener_splice_setup_failures_total", "counter",
                   "tunnels that could not be put in the kernel splice (moved in user space)",
                   &ListenerCounters::splice_setup_failures);
      per_server("server_requests_total", "counter", "requests sent to the server", &ServerCounters::requests);
      per_server("server_responses_total", "counter", "responses received from the server", &ServerCounters::responses);
      per_server("server_failures_total", "counter", "failed connects, resets, timeouts and bad answers",
                 &ServerCounters::failures);
      per_server("server_connects_total", "counter", "connections opened to the server", &ServerCounters::connects);
      per_server("server_connections", "gauge", "connections open to the server now", &ServerCounters::connections);
      family("server_up", "gauge", "1 while no shard has taken the server out");
      for (const auto& s : t.servers)
        out += fmt::format("offload_server_up{{group=\"{}\",server=\"{}\"}} {}\n", label(s->group), label(s->name),
                           v(s->down) ? 0 : 1);
      break;
    }
  }
  return out;
}

}  // namespace offload
