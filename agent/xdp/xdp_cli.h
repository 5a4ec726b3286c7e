#pragma once
// The XDP guard's commands on the agent's command line (see DESIGN.md, "The command line").

#include <string>

namespace CLI {
class App;
}

namespace offload::xdp {

// Registers the subcommands attach, detach, deny (and allow, for allow-only mode) on the
// agent's CLI (CLI11). Each callback sets exit_code (0 ok, 1 runtime failure, 2 bad input)
// and prints one clear line on error.
void add_xdp_commands(CLI::App& app, int& exit_code);

// The guard's counters summed over CPUs, read from the pinned maps: as plain text lines
// (json=false) or as one JSON object (json=true). Returns "" (text) or "null" (json) when
// nothing is pinned.
std::string stats(bool json);

}  // namespace offload::xdp
