// doctest's main for the kernel splice's tests: they need root (to load BPF);
// anywhere else the whole executable is a SKIP (exit 77) with its reason.
// Listing the cases (ctest's discovery at build time) works for anyone.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "rig.h"

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing |= std::strstr(argv[i], "list-test") != nullptr || std::strcmp(argv[i], "-ltc") == 0;
  if (!listing && ::geteuid() != 0) {
    std::printf("SKIP: the kernel splice tests load BPF programs: they need root\n");
    return 77;
  }
  std::signal(SIGPIPE, SIG_IGN);
  rig::raise_fd_limit();
  doctest::Context context(argc, argv);
  return context.run();
}
