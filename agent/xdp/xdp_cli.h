#pragma once
// The XDP guard's commands on the agent's command line (see DESIGN.md, "The command line").

#include <functional>
#include <string>

namespace CLI {
class App;
}

namespace offload::xdp {

// How `deny` and `allow` reach the running agent (the agent's main gives its admin
// endpoint): `admin` and `config_file` as given (either may be empty), an HTTP method and
// target. reached=false with `error` when no agent answers.
struct AgentReply {
  bool reached = false;
  int status = 0;
  std::string body;
  std::string error;
};
using AgentCall = std::function<AgentReply(const std::string& admin, const std::string& config_file,
                                           const std::string& method, const std::string& target)>;

// Registers the subcommands attach, detach, deny (and allow, for allow-only mode) on the
// agent's CLI (CLI11). Each callback sets exit_code (0 ok, 1 runtime failure, 2 bad input)
// and prints one clear line on error. With `agent`, deny and allow change the running
// agent's rule set and the guard's maps together, one line saying what each did.
void add_xdp_commands(CLI::App& app, int& exit_code, AgentCall agent = {});

// The running agent's side of a change it mirrors into the guard it attached (the maps
// pinned under kPinDir): "guard: added 10.0.0.0/8", "guard: ...: why not".
std::string mirror_rule(bool deny, bool add, const std::string& cidr);

// The guard's counters summed over CPUs, read from the pinned maps: as plain text lines
// (json=false) or as one JSON object (json=true). Returns "" (text) or "null" (json) when
// nothing is pinned.
std::string stats(bool json);

}  // namespace offload::xdp
