// doctest's main for the bus tests: a higher descriptor limit for the
// 1,000-client case, and SIGPIPE ignored so an agent that closes on a client
// fails a check instead of killing the test.
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
