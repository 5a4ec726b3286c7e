#include "xdp_cli.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cctype>
#include <cstdio>
#include <memory>
#include <string>

#include "cidr.h"
#include "pinned_maps.h"
#include "xdp_guard.h"

namespace offload::xdp {

namespace {

struct AttachArgs {
  GuardConfig config;
  std::string mode;
};

struct SetArgs {
  std::string action;
  std::string cidr;
  std::string admin;
  std::string config_file;
  std::string listener;  // a listener's own lists, in the running agent only
};

// A query value: everything but unreserved characters percent-encoded
// (a listener's name is often its address: "[::1]:8080").
std::string query_escape(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') out += char(c);
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

int report(const char* command, const Status& status) {
  if (!status.message.empty()) {
    std::fprintf(status.ok() ? stdout : stderr, "%s: %s\n", command, status.message.c_str());
  }
  return status.exit_code;
}

int run_attach(AttachArgs& args) {
  args.config.mode = args.mode == "native"    ? Mode::native
                     : args.mode == "generic" ? Mode::generic
                                              : Mode::automatic;
  args.config.announce = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", int(line.size()), line.data());
  };
  Status status;
  auto guard = Guard::attach(args.config, status);
  if (!guard) return report("attach", status);
  guard->persist();
  std::printf("attach: XDP guard on %s (%s mode), maps pinned under %s\n",
              args.config.ifname.c_str(), mode_name(guard->mode()), args.config.pin_dir.c_str());
  if (args.config.allow_only && args.config.allow.empty()) {
    std::fprintf(stderr, "attach: allow-only mode with an empty allow set drops every IP "
                         "source; add some with `allow add CIDR`\n");
  }
  return kExitOk;
}

// The guard's side of `deny|allow add|del|list`, one line per change.
int guard_edit(SetKind set, const SetArgs& args, const std::optional<Prefix>& prefix) {
  if (attached_interface().empty()) {
    std::printf("guard: not attached\n");
    return kExitOk;
  }
  Status status;
  auto maps = PinnedMaps::open(kPinDir, status);
  if (!maps) {
    std::fprintf(stderr, "guard: %s\n", status.message.c_str());
    return status.exit_code;
  }
  if (args.action == "list") {
    for (const auto& entry : maps->list(set)) std::printf("guard: %s packets=%llu\n", entry.prefix.str().c_str(),
                                                          static_cast<unsigned long long>(entry.packets));
    return kExitOk;
  }
  status = args.action == "add" ? maps->add(set, *prefix) : maps->remove(set, *prefix);
  std::fprintf(status.ok() ? stdout : stderr, "guard: %s %s%s%s\n", args.action == "add" ? "added" : "removed",
               prefix->str().c_str(), status.message.empty() ? "" : ": ", status.message.c_str());
  return status.exit_code;
}

// Both places: the running agent through its admin endpoint (which mirrors into a guard
// it attached itself), then a guard attached apart from it (`attach`).
int run_both(const char* command, SetKind set, const SetArgs& args, const std::optional<Prefix>& prefix,
             const AgentCall& agent) {
  std::string target = fmt::format("/security/{}", command);
  std::string query;
  if (prefix) query += "&cidr=" + prefix->str();
  if (!args.listener.empty()) query += "&listener=" + query_escape(args.listener);
  if (!query.empty()) target += "?" + query.substr(1);
  const char* method = args.action == "add" ? "POST" : args.action == "del" ? "DELETE" : "GET";
  const AgentReply reply = agent(args.admin, args.config_file, method, target);
  // A listener's lists are the agent's alone: no guard holds them.
  bool guard_done = !args.listener.empty();
  if (!reply.reached && !args.listener.empty()) {
    std::fprintf(stderr, "%s: nothing changed: --listener needs the running agent (%s)\n", command,
                 reply.error.c_str());
    return kExitFailure;
  }
  if (!reply.reached && attached_interface().empty()) {
    std::fprintf(stderr, "%s: nothing changed: no agent running (%s) and no XDP guard attached\n", command,
                 reply.error.c_str());
    return kExitFailure;
  }
  if (!reply.reached) {
    std::printf("agent: not running (%s)\n", reply.error.c_str());
  } else if (reply.status == 400) {
    std::fprintf(stderr, "%s: %s", command, reply.body.c_str());
    return kExitBadInput;
  } else if (reply.status != 200) {
    std::fprintf(stderr, "agent: unexpected answer %d: %s", reply.status, reply.body.c_str());
    return kExitFailure;
  } else if (args.action == "list") {
    size_t from = 0;
    while (from < reply.body.size()) {
      size_t nl = reply.body.find('\n', from);
      if (nl == std::string::npos) nl = reply.body.size();
      std::printf("agent: %s\n", reply.body.substr(from, nl - from).c_str());
      from = nl + 1;
    }
  } else {
    // "agent: ...\nguard: ...\n": the guard's line says whether the agent mirrored it.
    guard_done = guard_done || reply.body.find("\nguard: not attached to the agent") == std::string::npos;
    const std::string shown = guard_done ? reply.body : reply.body.substr(0, reply.body.find("\nguard: ") + 1);
    std::printf("%s", shown.c_str());
  }
  return guard_done ? kExitOk : guard_edit(set, args, prefix);
}

int run_set(const char* command, SetKind set, const SetArgs& args, const AgentCall& agent) {
  if (args.action == "list") {
    if (!args.cidr.empty()) return report(command, Status::bad_input("list takes no CIDR"));
  } else if (args.cidr.empty()) {
    return report(command, Status::bad_input(fmt::format("{} needs a CIDR", args.action)));
  }
  std::string error;
  std::optional<Prefix> prefix;
  if (!args.cidr.empty()) {
    prefix = parse_prefix(args.cidr, error);
    if (!prefix) return report(command, Status::bad_input(error));
  }
  if (agent) return run_both(command, set, args, prefix, agent);
  Status status;
  auto maps = PinnedMaps::open(kPinDir, status);
  if (!maps) return report(command, status);
  if (args.action == "add") return report(command, maps->add(set, *prefix));
  if (args.action == "del") return report(command, maps->remove(set, *prefix));
  for (const auto& entry : maps->list(set)) {
    if (set == SetKind::deny) {
      std::printf("%s packets=%llu\n", entry.prefix.str().c_str(),
                  static_cast<unsigned long long>(entry.packets));
    } else {
      std::printf("%s\n", entry.prefix.str().c_str());
    }
  }
  return kExitOk;
}

void add_attach(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<AttachArgs>();
  auto* cmd = app.add_subcommand("attach", "load the XDP guard on an interface and pin its maps");
  cmd->add_option("--iface", args->config.ifname, "network interface")->required();
  cmd->add_option("--mode", args->mode, "native or generic (default: native, else generic)")
      ->check(CLI::IsMember({"native", "generic"}));
  cmd->add_option("--cpu", args->config.cpus, "agent CPU(s) to steer service traffic to")
      ->delimiter(',');
  cmd->add_option("--ports", args->config.ports, "service ports, e.g. 8080,8443")
      ->delimiter(',')
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--syn-rate", args->config.syn_rate, "SYNs per second per source (0: off)");
  cmd->add_option("--syn-burst", args->config.syn_burst, "SYN bucket size (default: the rate)");
  cmd->add_flag("--allow-only", args->config.allow_only, "drop sources not in the allow set");
  cmd->add_option("--allow", args->config.allow, "CIDR(s) for the allow set")->delimiter(',');
  cmd->callback([args, &exit_code] { exit_code = run_attach(*args); });
}

void add_set_command(CLI::App& app, int& exit_code, const char* command, SetKind set,
                     const char* help, const AgentCall& agent) {
  auto args = std::make_shared<SetArgs>();
  auto* cmd = app.add_subcommand(command, help);
  cmd->add_option("action", args->action, "add, del or list")
      ->required()
      ->check(CLI::IsMember({"add", "del", "list"}));
  cmd->add_option("cidr", args->cidr, "ADDR or ADDR/LEN, IPv4 or IPv6");
  if (agent) {
    cmd->add_option("--admin", args->admin, "the running agent's admin endpoint (default: -c's, else 127.0.0.1:9901)");
    cmd->add_option("-c,--config", args->config_file, "the running agent's configuration file, for its admin address");
    cmd->add_option("--listener", args->listener, "a listener's own list (its name), not the global one");
  }
  cmd->callback([args, &exit_code, command, set, agent] { exit_code = run_set(command, set, *args, agent); });
}

std::string stats_text(const PinnedMaps& maps, bool attached) {
  const xg_config cfg = maps.config();
  std::string out = fmt::format("xdp.iface {}\nxdp.attached {}\n", cfg.ifname, attached ? 1 : 0);
  const auto counters = maps.counters();
  for (int i = 0; i < XG_REASON_MAX; ++i) {
    out += fmt::format("xdp.{} {}\n", reason_name(i), counters[size_t(i)]);
  }
  for (const auto& port : maps.ports()) {
    const auto& c = port.counters;
    out += fmt::format("xdp.port.{}.packets {}\nxdp.port.{}.bytes {}\nxdp.port.{}.syns {}\n"
                       "xdp.port.{}.redirected {}\n", port.port, c.packets, port.port, c.bytes,
                       port.port, c.syns, port.port, c.redirected);
  }
  return out;
}

// Interface names may hold any byte but '/', ':' and white space.
std::string json_string(const char* text) {
  std::string out = "\"";
  for (const char* c = text; *c; ++c) {
    if (*c == '"' || *c == '\\') {
      out += '\\';
      out += *c;
    } else if (static_cast<unsigned char>(*c) < 0x20) {
      out += fmt::format("\\u{:04x}", int(*c));
    } else {
      out += *c;
    }
  }
  return out + "\"";
}

std::string stats_json(const PinnedMaps& maps, bool attached) {
  const xg_config cfg = maps.config();
  std::string cpus;
  for (uint32_t i = 0; i < cfg.cpu_count && i < XG_MAX_AGENT_CPUS; ++i) {
    cpus += fmt::format("{}{}", i ? "," : "", cfg.cpus[i]);
  }
  std::string out = fmt::format(
      "{{\"iface\":{},\"attached\":{},\"allow_only\":{},\"syn_rate\":{},\"syn_burst\":{},"
      "\"cpus\":[{}],\"counters\":{{",
      json_string(cfg.ifname), attached ? "true" : "false", cfg.allow_only ? "true" : "false",
      cfg.syn_rate, cfg.syn_burst, cpus);
  const auto counters = maps.counters();
  for (int i = 0; i < XG_REASON_MAX; ++i) {
    out += fmt::format("{}\"{}\":{}", i ? "," : "", reason_name(i), counters[size_t(i)]);
  }
  out += "},\"ports\":{";
  bool first = true;
  for (const auto& port : maps.ports()) {
    const auto& c = port.counters;
    out += fmt::format("{}\"{}\":{{\"packets\":{},\"bytes\":{},\"syns\":{},\"redirected\":{}}}",
                       first ? "" : ",", port.port, c.packets, c.bytes, c.syns, c.redirected);
    first = false;
  }
  out += fmt::format("}},\"deny_entries\":{}}}", maps.list(SetKind::deny).size());
  return out;
}

}  // namespace

void add_xdp_commands(CLI::App& app, int& exit_code, AgentCall agent) {
  add_attach(app, exit_code);
  auto* detach_cmd = app.add_subcommand("detach", "remove the XDP guard, its link and its pins");
  auto ifname = std::make_shared<std::string>();
  detach_cmd->add_option("--iface", *ifname, "network interface")->required();
  detach_cmd->callback([ifname, &exit_code] {
    const Status status = detach(*ifname);
    exit_code = report("detach", status);
    if (status.ok()) std::printf("detach: XDP guard removed from %s\n", ifname->c_str());
  });
  add_set_command(app, exit_code, "deny", SetKind::deny,
                  agent ? "refuse a source prefix in the running agent and the XDP guard: add|del|list [CIDR]"
                        : "edit the guard's deny set: add|del|list [CIDR]",
                  agent);
  add_set_command(app, exit_code, "allow", SetKind::allow,
                  agent ? "accept only these prefixes, in the running agent and the guard's allow-only set: "
                          "add|del|list [CIDR]"
                        : "edit the allow set used in allow-only mode: add|del|list [CIDR]",
                  agent);
}

std::string mirror_rule(bool deny, bool add, const std::string& cidr) {
  std::string error;
  const std::optional<Prefix> prefix = parse_prefix(cidr, error);
  if (!prefix) return "guard: not changed: " + error;
  Status status;
  auto maps = PinnedMaps::open(kPinDir, status);
  if (!maps) return "guard: not changed: " + status.message;
  const SetKind set = deny ? SetKind::deny : SetKind::allow;
  status = add ? maps->add(set, *prefix) : maps->remove(set, *prefix);
  return fmt::format("guard: {} {}{}{}", !status.ok() ? "not changed" : add ? "added" : "removed", prefix->str(),
                     status.message.empty() ? "" : ": ", status.message);
}

std::string stats(bool json) {
  quiet_libbpf();
  Status status;
  auto maps = PinnedMaps::open(kPinDir, status);
  if (!maps) return json ? "null" : "";
  // The link outlives its interface only as a pin; then the counters are history.
  const std::string iface = attached_interface();
  const bool attached = !iface.empty() && iface != "(interface gone)";
  return json ? stats_json(*maps, attached) : stats_text(*maps, attached);
}

}  // namespace offload::xdp
