// doctest main for tests that load BPF programs: without the privilege they SKIP (exit 77).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "xdp_guard.h"

int main(int argc, char** argv) {
  if (!offload::xdp::have_bpf_privilege()) {
    std::printf("SKIP: these tests load BPF programs, which needs root (or CAP_BPF and "
                "CAP_NET_ADMIN)\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
