// doctest's main for the integration tests: raises the descriptor limit for
// the 1,000-client cases and ignores SIGPIPE (a proxy that closes on us must
// fail a check, not kill the test).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>

#include "rig.h"

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  rig::raise_fd_limit();
  doctest::Context context(argc, argv);
  return context.run();
}
