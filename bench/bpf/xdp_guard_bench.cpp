// Nanoseconds per packet of the XDP guard's paths, measured by BPF_PROG_TEST_RUN with repeat
// (the kernel times the loop; the figure includes test-run's own per-packet overhead).
// The deny sets hold 1,000 hosts and 1,000 /24 prefixes per family, as a busy host's would.
//   xdp_guard_bench [REPEAT]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "guard_harness.h"
#include "packet_builder.h"

using offload::test::Frame;
using offload::test::GuardHarness;
using offload::test::kAck;
using offload::test::kSyn;

namespace {

struct Path {
  const char* name;
  std::vector<uint8_t> frame;
  int expected;  // the XDP action the path must give, or the figure is of something else
};

void fill_deny_sets(GuardHarness& guard) {
  char text[64];
  for (int i = 0; i < 1000; ++i) {
    std::snprintf(text, sizeof(text), "10.%d.%d.7", 100 + i / 250, i % 250);
    guard.deny(text);
    std::snprintf(text, sizeof(text), "10.%d.%d.0/24", 200 + i / 250, i % 250);
    guard.deny(text);
    std::snprintf(text, sizeof(text), "fd99::%x", i + 1);
    guard.deny(text);
    std::snprintf(text, sizeof(text), "fd98:%x::/32", i + 1);
    guard.deny(text);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!offload::xdp::have_bpf_privilege()) {
    std::printf("SKIP: needs root (or CAP_BPF and CAP_NET_ADMIN) to load the XDP guard\n");
    return 77;
  }
  const uint32_t repeat = argc > 1 ? uint32_t(std::atoi(argv[1])) : 1'000'000;
  GuardHarness guard;
  xg_config config{};
  config.syn_rate = 1;
  config.syn_burst = 1;
  config.test_clock_ns = 1;  // a frozen clock: the bucket never refills during the loop
  guard.configure(config);
  if (!guard.maps().add_service_port(8080).ok()) return 1;
  fill_deny_sets(guard);
  const auto exhausted = Frame().Eth().IPv4("10.77.0.9").TCP(1, 8080, kSyn).bytes();
  guard.run(exhausted);  // takes the only token

  const std::vector<Path> paths = {
      {"allow  IPv4 ACK, other port", Frame().Eth().IPv4("10.77.0.2").TCP(1, 22, kAck).bytes(),
       XDP_PASS},
      {"allow  IPv4 ACK, service port (counted)",
       Frame().Eth().IPv4("10.77.0.2").TCP(1, 8080, kAck).bytes(), XDP_PASS},
      {"allow  IPv6 ACK, service port", Frame().Eth().IPv6("fd77::2").TCP(1, 8080, kAck).bytes(),
       XDP_PASS},
      {"deny   IPv4 exact host (hash)",
       Frame().Eth().IPv4("10.100.5.7").TCP(1, 8080, kSyn).bytes(), XDP_DROP},
      {"deny   IPv4 /24 prefix (LPM)",
       Frame().Eth().IPv4("10.201.5.9").TCP(1, 8080, kSyn).bytes(), XDP_DROP},
      {"deny   IPv6 exact host (hash)", Frame().Eth().IPv6("fd99::5").TCP(1, 8080, kSyn).bytes(),
       XDP_DROP},
      {"deny   IPv6 /32 prefix (LPM)", Frame().Eth().IPv6("fd98:5::1").TCP(1, 8080, kSyn).bytes(),
       XDP_DROP},
      {"limit  SYN over the bucket", exhausted, XDP_DROP},
      {"drop   malformed (TCP cut short)", Frame().Eth().IPv4("10.77.0.2").Proto(6).Payload(8).bytes(),
       XDP_DROP},
  };
  std::printf("xdp_guard test-run, %u repeats per path (1,000 hosts + 1,000 prefixes denied per family)\n",
              repeat);
  for (const auto& path : paths) {
    uint32_t ns = 0;
    const int action = guard.run(path.frame, repeat, &ns);
    if (action != path.expected) {
      std::printf("%-42s wrong action %d (expected %d)\n", path.name, action, path.expected);
      return 1;
    }
    std::printf("%-42s %5u ns/packet\n", path.name, ns);
  }
  return 0;
}
