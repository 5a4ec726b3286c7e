// A stand-in for offload-agent with only the XDP guard's commands, so they can be driven
// (by the end-to-end test and by hand) before and apart from the agent's main.
//   xdp_cli attach|detach|deny|allow|stats ...
#include <CLI/CLI.hpp>

#include <cstdio>

#include "xdp_cli.h"

int main(int argc, char** argv) {
  CLI::App app{"offload XDP guard commands (test driver)"};
  app.require_subcommand(1);
  int exit_code = 0;
  offload::xdp::add_xdp_commands(app, exit_code);
  bool json = false;
  auto* stats = app.add_subcommand("stats", "the guard's counters summed over CPUs");
  stats->add_flag("--json", json, "one JSON object");
  stats->callback([&json, &exit_code] {
    const std::string text = offload::xdp::stats(json);
    if (text.empty() || text == "null") {
      std::fprintf(stderr, "stats: no XDP guard is attached\n");
      exit_code = 1;
      return;
    }
    std::printf("%s%s", text.c_str(), json ? "\n" : "");
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;  // --help is fine; anything else is bad input
  }
  return exit_code;
}
