#include "xdp_cli.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <memory>

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
};

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

int run_set(const char* command, SetKind set, const SetArgs& args) {
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
                     const char* help) {
  auto args = std::make_shared<SetArgs>();
  auto* cmd = app.add_subcommand(command, help);
  cmd->add_option("action", args->action, "add, del or list")
      ->required()
      ->check(CLI::IsMember({"add", "del", "list"}));
  cmd->add_option("cidr", args->cidr, "ADDR or ADDR/LEN, IPv4 or IPv6");
  cmd->callback([args, &exit_code, command, set] { exit_code = run_set(command, set, *args); });
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

void add_xdp_commands(CLI::App& app, int& exit_code) {
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
                  "edit the guard's deny set: add|del|list [CIDR]");
  add_set_command(app, exit_code, "allow", SetKind::allow,
                  "edit the allow set used in allow-only mode: add|del|list [CIDR]");
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
