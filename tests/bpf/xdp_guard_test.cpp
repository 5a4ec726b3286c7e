// Packet-level tests of bpf/xdp_guard.bpf.c: synthetic frames through BPF_PROG_TEST_RUN,
// each fixture asserting the XDP action and the exact change of every verdict counter.
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "guard_harness.h"
#include "packet_builder.h"

namespace offload::test {
namespace {

constexpr uint16_t kService = 8080;
constexpr uint16_t kService2 = 8443;

struct Fixture {
  std::string name;
  std::vector<uint8_t> frame;
  int action;                         // XDP_PASS, XDP_DROP or XDP_REDIRECT
  std::map<int, uint64_t> deltas;     // counter -> expected change; all others must not move
};

Fixture fx(std::string name, const Frame& frame, int action, int reason) {
  return {std::move(name), frame.bytes(), action, {{reason, 1}}};
}

void expect(GuardHarness& guard, const Fixture& f) {
  const Counters before = guard.counters();
  const int action = guard.run(f.frame);
  const Counters after = guard.counters();
  CHECK_MESSAGE(action == f.action, f.name);
  for (int i = 0; i < XG_REASON_MAX; ++i) {
    const auto it = f.deltas.find(i);
    const uint64_t expected = it == f.deltas.end() ? 0 : it->second;
    CHECK_MESSAGE(after[size_t(i)] - before[size_t(i)] == expected,
                  f.name << ": counter " << xdp::reason_name(i));
  }
}

void run_table(GuardHarness& guard, const std::vector<Fixture>& table) {
  for (const auto& f : table) {
    SUBCASE(f.name.c_str()) { expect(guard, f); }
  }
}

// The setting most fixtures share: two service ports, no steering CPU, no SYN limit,
// a few denied hosts and prefixes.
void base_setup(GuardHarness& guard, xg_config config = {}) {
  guard.configure(config);
  REQUIRE(guard.maps().add_service_port(kService).ok());
  REQUIRE(guard.maps().add_service_port(kService2).ok());
  guard.deny("10.77.0.66");
  guard.deny("10.99.0.0/16");
  guard.deny("fd77::66");
  guard.deny("fd66::/48");
}

Frame v4(const char* src) { return Frame().Eth().IPv4(src); }
Frame v6(const char* src) { return Frame().Eth().IPv6(src); }

}  // namespace

TEST_CASE("verdicts by protocol, port and source") {
  GuardHarness guard;
  base_setup(guard);
  run_table(guard, {
    fx("ARP passes as non-IP", Frame().Eth().EtherType(0x0806).Payload(28), XDP_PASS,
       XG_PASS_NON_IP),
    fx("IPv4 SYN to a service port", v4("10.77.0.2").TCP(40000, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("IPv4 ACK to another port", v4("10.77.0.2").TCP(40000, 22, kAck), XDP_PASS,
       XG_PASS_OTHER_PORT),
    fx("IPv4 UDP", v4("10.77.0.2").UDP(53, 53).Payload(20), XDP_PASS, XG_PASS_NON_TCP),
    fx("IPv4 ICMP from a denied host", v4("10.77.0.66").Proto(1).Payload(8), XDP_DROP,
       XG_DROP_DENY),
    fx("IPv4 denied exact host", v4("10.77.0.66").TCP(40000, kService, kSyn), XDP_DROP,
       XG_DROP_DENY),
    fx("IPv4 denied prefix", v4("10.99.3.4").TCP(40000, kService, kSyn), XDP_DROP,
       XG_DROP_DENY),
    fx("IPv4 just outside the denied prefix", v4("10.98.255.255").TCP(1, kService, kAck),
       XDP_PASS, XG_PASS_SERVICE),
    fx("IPv4 RST to a service port", v4("10.77.0.2").TCP(40000, kService, kRst), XDP_PASS,
       XG_PASS_SERVICE),
    fx("IPv4 SYN-ACK to a service port", v4("10.77.0.2").TCP(40000, kService2, kSyn | kAck),
       XDP_PASS, XG_PASS_SERVICE),
    fx("IPv4 FIN from a denied host", v4("10.77.0.66").TCP(40000, 22, kFin | kAck), XDP_DROP,
       XG_DROP_DENY),
    fx("IPv6 SYN to a service port", v6("fd77::2").TCP(40000, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("IPv6 UDP", v6("fd77::2").UDP(53, 53), XDP_PASS, XG_PASS_NON_TCP),
    fx("IPv6 denied exact host", v6("fd77::66").TCP(40000, kService, kSyn), XDP_DROP,
       XG_DROP_DENY),
    fx("IPv6 denied prefix", v6("fd66:0:0:5::1").TCP(40000, 22, kAck), XDP_DROP, XG_DROP_DENY),
    fx("IPv6 just outside the denied prefix", v6("fd66:0:1::1").TCP(40000, 22, kAck), XDP_PASS,
       XG_PASS_OTHER_PORT),
    fx("802.1Q VLAN, IPv4 to a service port",
       Frame().Eth().Vlan(10).IPv4("10.77.0.2").TCP(40000, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("QinQ (802.1AD + 802.1Q), IPv4 denied",
       Frame().Eth().Vlan(10, 0x88a8).Vlan(20).IPv4("10.99.0.1").TCP(1, kService, kSyn),
       XDP_DROP, XG_DROP_DENY),
    fx("QinQ, IPv6 to a service port",
       Frame().Eth().Vlan(10, 0x88a8).Vlan(20).IPv6("fd77::2").TCP(1, kService, kAck),
       XDP_PASS, XG_PASS_SERVICE),
    fx("QinQ, ARP", Frame().Eth().Vlan(1, 0x88a8).Vlan(2).EtherType(0x0806).Payload(28),
       XDP_PASS, XG_PASS_NON_IP),
    fx("three VLAN tags are more than the guard reads",
       Frame().Eth().Vlan(1, 0x88a8).Vlan(2).Vlan(3).IPv4("10.77.0.2").TCP(1, kService, kSyn),
       XDP_DROP, XG_DROP_VLAN_DEPTH),
  });
}

TEST_CASE("IPv4 header rules: options, lengths, fragments") {
  GuardHarness guard;
  base_setup(guard);
  const auto padded = v4("10.77.0.2").TCP(1, kService, kAck).IpLength(40).Payload(6, 0);
  run_table(guard, {
    fx("IPv4 with 40 bytes of options, the port is read past them",
       Frame().Eth().IPv4("10.77.0.2", "10.77.0.1", 10).TCP(1, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("IPv4 with options, other port",
       Frame().Eth().IPv4("10.77.0.2", "10.77.0.1", 1).TCP(1, 22, kSyn), XDP_PASS,
       XG_PASS_OTHER_PORT),
    fx("IHL 4 is malformed", v4("10.77.0.2").TCP(1, kService, kSyn).Ihl(4), XDP_DROP,
       XG_DROP_MALFORMED),
    fx("version 6 in an IPv4 frame is malformed",
       v4("10.77.0.2").TCP(1, kService, kSyn).IpVersion(6), XDP_DROP, XG_DROP_MALFORMED),
    fx("total length under the header length is malformed",
       v4("10.77.0.2").TCP(1, kService, kSyn).IpLength(19), XDP_DROP, XG_DROP_MALFORMED),
    fx("total length past the frame is malformed",
       v4("10.77.0.2").TCP(1, kService, kSyn).IpLength(1500), XDP_DROP, XG_DROP_MALFORMED),
    fx("Ethernet padding after the datagram is fine", padded, XDP_PASS, XG_PASS_SERVICE),
    fx("options longer than the datagram are malformed",
       Frame().Eth().IPv4("10.77.0.2", "10.77.0.1", 10).IpLength(44).Payload(16), XDP_DROP,
       XG_DROP_MALFORMED),
    fx("first fragment with a whole TCP header is screened as TCP",
       v4("10.77.0.2").TCP(1, kService, kSyn).Payload(100).Fragment(0, true), XDP_PASS,
       XG_PASS_SERVICE),
    fx("later fragment passes", v4("10.77.0.2").Proto(6).Payload(64).Fragment(185, false),
       XDP_PASS, XG_PASS_FRAGMENT),
    fx("later fragment from a denied source is dropped",
       v4("10.99.1.1").Proto(6).Payload(64).Fragment(185, true), XDP_DROP, XG_DROP_DENY),
    fx("TCP fragment at offset 8 bytes is malformed (RFC 1858)",
       v4("10.77.0.2").Proto(6).Payload(64).Fragment(1, true), XDP_DROP, XG_DROP_MALFORMED),
    fx("UDP fragment at offset 8 bytes passes",
       v4("10.77.0.2").Proto(17).Payload(64).Fragment(1, false), XDP_PASS, XG_PASS_FRAGMENT),
    fx("tiny first fragment without the whole TCP header is malformed",
       v4("10.77.0.2").Proto(6).Payload(8).Fragment(0, true), XDP_DROP, XG_DROP_MALFORMED),
  });
}

TEST_CASE("TCP header rules") {
  GuardHarness guard;
  base_setup(guard);
  run_table(guard, {
    fx("TCP with 40 bytes of options", v4("10.77.0.2").TCP(1, kService, kSyn, 10), XDP_PASS,
       XG_PASS_SERVICE),
    fx("data offset 4 is malformed", v4("10.77.0.2").TCP(1, kService, kSyn).DataOffset(4),
       XDP_DROP, XG_DROP_MALFORMED),
    fx("data offset past the frame is malformed",
       v4("10.77.0.2").TCP(1, kService, kSyn).DataOffset(15), XDP_DROP, XG_DROP_MALFORMED),
    fx("TCP header of 10 bytes (IP length agrees) is malformed",
       v4("10.77.0.2").Proto(6).Payload(10), XDP_DROP, XG_DROP_MALFORMED),
    fx("IPv6 TCP header of 19 bytes is malformed", v6("fd77::2").Proto(6).Payload(19), XDP_DROP,
       XG_DROP_MALFORMED),
    fx("a denied source is dropped as denied even when its TCP header is cut",
       v4("10.77.0.66").Proto(6).Payload(10), XDP_DROP, XG_DROP_DENY),
  });
}

TEST_CASE("IPv6 extension headers") {
  GuardHarness guard;
  base_setup(guard);
  auto chain_of = [](int n) {
    Frame f = Frame().Eth().IPv6("fd77::2");
    for (int i = 0; i < n; ++i) f.Ext(60);
    return f.TCP(1, kService, kSyn);
  };
  run_table(guard, {
    fx("hop-by-hop then TCP", v6("fd77::2").Ext(0).TCP(1, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("hop-by-hop, destination options (24 bytes), routing, TCP",
       v6("fd77::2").Ext(0).Ext(60, 2).Ext(43, 1).TCP(1, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("authentication header then TCP", v6("fd77::2").AH().TCP(1, kService, kAck), XDP_PASS,
       XG_PASS_SERVICE),
    fx("first fragment then TCP", v6("fd77::2").Fragment6(0, true).TCP(1, kService, kSyn),
       XDP_PASS, XG_PASS_SERVICE),
    fx("later fragment passes", v6("fd77::2").Fragment6(10, false).Payload(40), XDP_PASS,
       XG_PASS_FRAGMENT),
    fx("later fragment from a denied source is dropped",
       v6("fd66::9").Fragment6(10, false).Payload(40), XDP_DROP, XG_DROP_DENY),
    fx("six extension headers (the maximum) then TCP", chain_of(XG_MAX_IPV6_EXT), XDP_PASS,
       XG_PASS_SERVICE),
    fx("seven extension headers are dropped", chain_of(XG_MAX_IPV6_EXT + 1), XDP_DROP,
       XG_DROP_EXT_DEPTH),
    fx("ESP is not looked into", v6("fd77::2").Proto(50).Payload(40), XDP_PASS,
       XG_PASS_NON_TCP),
    fx("no next header", v6("fd77::2").Ext(60).Proto(59), XDP_PASS, XG_PASS_NON_TCP),
    fx("extension header cut short is malformed",
       v6("fd77::2").Ext(0, 4).TCP(1, kService, kSyn).IpLength(16).Cut(14 + 40 + 16), XDP_DROP,
       XG_DROP_MALFORMED),
    fx("payload length past the frame is malformed",
       v6("fd77::2").TCP(1, kService, kSyn).IpLength(200), XDP_DROP, XG_DROP_MALFORMED),
    fx("version 4 in an IPv6 frame is malformed",
       v6("fd77::2").TCP(1, kService, kSyn).IpVersion(4), XDP_DROP, XG_DROP_MALFORMED),
  });
}

TEST_CASE("truncated at every header boundary") {
  GuardHarness guard;
  base_setup(guard);
  const std::vector<std::pair<const char*, Frame>> frames = {
      {"Eth IPv4 TCP", v4("10.77.0.2").TCP(1, kService, kSyn)},
      {"Eth VLAN VLAN IPv4+options TCP+options",
       Frame().Eth().Vlan(1, 0x88a8).Vlan(2).IPv4("10.77.0.2", "10.77.0.1", 3)
           .TCP(1, kService, kSyn, 2)},
      {"Eth IPv6 hop-by-hop fragment AH TCP",
       v6("fd77::2").Ext(0).Fragment6(0, true).AH().TCP(1, kService, kSyn)},
  };
  for (const auto& [name, frame] : frames) {
    SUBCASE(name) {
      const auto whole = frame.bytes();
      CHECK(guard.run(whole) == XDP_PASS);
      // Every cut inside the headers leaves a header incomplete: dropped as malformed.
      for (size_t length = 14; length < whole.size(); ++length) {
        Fixture f{std::string(name) + " cut to " + std::to_string(length),
                  std::vector<uint8_t>(whole.begin(), whole.begin() + long(length)), XDP_DROP,
                  {{XG_DROP_MALFORMED, 1}}};
        expect(guard, f);
      }
      // The kernel will not run XDP on less than an Ethernet header at all.
      for (size_t length = 0; length < 14; ++length) {
        CHECK(guard.run(std::vector<uint8_t>(whole.begin(), whole.begin() + long(length))) ==
              -EINVAL);
      }
    }
  }
}

TEST_CASE("longest-prefix match and exact hosts, counted per entry") {
  GuardHarness guard;
  guard.configure({});
  guard.deny("10.0.0.0/8");
  guard.deny("10.9.0.0/16");
  guard.deny("10.9.9.9");
  guard.deny("fd10::/16");
  guard.deny("fd10:20::/32");
  guard.deny("fd10:20::9");
  struct Hit {
    const char* source;
    const char* entry;
  };
  const Hit hits[] = {{"10.9.1.1", "10.9.0.0/16"},     {"10.8.1.1", "10.0.0.0/8"},
                      {"10.9.9.9", "10.9.9.9/32"},     {"fd10:20::1", "fd10:20::/32"},
                      {"fd10:21::1", "fd10::/16"},     {"fd10:20::9", "fd10:20::9/128"}};
  for (const auto& hit : hits) {
    SUBCASE(hit.source) {
      std::map<std::string, uint64_t> before;
      for (const auto& e : guard.maps().list(xdp::SetKind::deny)) before[e.prefix.str()] = e.packets;
      const bool is_v6 = std::string(hit.source).find(':') != std::string::npos;
      const Frame frame = is_v6 ? v6(hit.source).TCP(1, 80, kSyn) : v4(hit.source).TCP(1, 80, kSyn);
      CHECK(guard.run(frame.bytes()) == XDP_DROP);
      for (const auto& e : guard.maps().list(xdp::SetKind::deny)) {
        const uint64_t expected = e.prefix.str() == hit.entry ? 1 : 0;
        CHECK_MESSAGE(e.packets - before[e.prefix.str()] == expected, e.prefix.str());
      }
    }
  }
  SUBCASE("outside every entry") {
    CHECK(guard.run(v4("11.0.0.1").TCP(1, 80, kSyn).bytes()) == XDP_PASS);
    CHECK(guard.run(v6("fd11::1").TCP(1, 80, kSyn).bytes()) == XDP_PASS);
  }
  SUBCASE("deleting an entry takes effect at once") {
    std::string error;
    CHECK(guard.maps().remove(xdp::SetKind::deny, *xdp::parse_prefix("10.9.0.0/16", error)).ok());
    CHECK(guard.run(v4("10.9.1.1").TCP(1, 80, kSyn).bytes()) == XDP_DROP);  // still in /8
    CHECK(guard.deny_hits("10.0.0.0/8") == 1);
  }
}

TEST_CASE("allow-only mode") {
  GuardHarness guard;
  xg_config config{};
  config.allow_only = 1;
  base_setup(guard, config);
  guard.allow("192.168.0.0/16");
  guard.allow("fd00:aa::/32");
  guard.allow("10.77.0.66");  // also denied: deny wins
  run_table(guard, {
    fx("allowed IPv4 source", v4("192.168.5.5").TCP(1, kService, kSyn), XDP_PASS,
       XG_PASS_SERVICE),
    fx("IPv4 source outside the allow set", v4("192.169.0.1").TCP(1, kService, kSyn), XDP_DROP,
       XG_DROP_NOT_ALLOWED),
    fx("UDP from outside the allow set", v4("172.16.0.1").UDP(1, 2), XDP_DROP,
       XG_DROP_NOT_ALLOWED),
    fx("denied wins over allowed", v4("10.77.0.66").TCP(1, kService, kSyn), XDP_DROP,
       XG_DROP_DENY),
    fx("allowed IPv6 source", v6("fd00:aa:1::5").TCP(1, 22, kAck), XDP_PASS,
       XG_PASS_OTHER_PORT),
    fx("IPv6 source outside the allow set", v6("fd00:ab::5").TCP(1, 22, kAck), XDP_DROP,
       XG_DROP_NOT_ALLOWED),
    fx("neighbour solicitation from outside still passes", v6("fe80::1").ICMPv6(135), XDP_PASS,
       XG_PASS_NON_TCP),
    fx("router advertisement from outside still passes", v6("fe80::1").Ext(0).ICMPv6(134),
       XDP_PASS, XG_PASS_NON_TCP),
    fx("echo request from outside is dropped", v6("fe80::1").ICMPv6(128), XDP_DROP,
       XG_DROP_NOT_ALLOWED),
    fx("ARP is not IP and passes", Frame().Eth().EtherType(0x0806).Payload(28), XDP_PASS,
       XG_PASS_NON_IP),
  });
}

TEST_CASE("service ports: counters and steering through the cpumap") {
  GuardHarness guard;
  xg_config config{};
  config.cpu_count = 1;
  config.cpus[0] = 0;
  base_setup(guard, config);
  const auto syn = v4("10.77.0.2").TCP(40000, kService, kSyn);
  const auto ack = v6("fd77::2").TCP(40000, kService, kAck).Payload(100);

  SUBCASE("no cpumap entry for the CPU: the redirect falls back to PASS") {
    expect(guard, {"SYN", syn.bytes(), XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    CHECK(guard.port(kService).redirected == 0);
  }
  SUBCASE("with the entry, service traffic is redirected; other ports are not") {
    guard.enable_cpu(0);
    expect(guard, {"SYN", syn.bytes(), XDP_REDIRECT, {{XG_REDIRECT_SERVICE, 1}}});
    expect(guard, {"ACK", ack.bytes(), XDP_REDIRECT, {{XG_REDIRECT_SERVICE, 1}}});
    expect(guard, {"other port", v4("10.77.0.2").TCP(1, 9999, kSyn).bytes(), XDP_PASS,
                   {{XG_PASS_OTHER_PORT, 1}}});
    const xg_port_stats port = guard.port(kService);
    CHECK(port.packets == 2);
    CHECK(port.syns == 1);
    CHECK(port.redirected == 2);
    CHECK(port.bytes == syn.bytes().size() + ack.bytes().size());
    CHECK(guard.port(kService2).packets == 0);
  }
}

TEST_CASE("SYN token bucket (test clock)") {
  GuardHarness guard;
  xg_config config{};
  config.syn_rate = 10;   // one token every 100 ms
  config.syn_burst = 3;
  config.test_clock_ns = 1'000'000'000;
  base_setup(guard, config);
  const auto syn_a = v4("10.77.0.2").TCP(40000, kService, kSyn).bytes();
  const auto syn_b = v4("10.77.0.3").TCP(40000, kService, kSyn).bytes();
  const auto ack_a = v4("10.77.0.2").TCP(40000, kService, kAck).bytes();
  const auto synack_a = v4("10.77.0.2").TCP(40000, kService, kSyn | kAck).bytes();
  auto at = [&](uint64_t ms) {
    config.test_clock_ns = 1'000'000'000 + ms * 1'000'000;
    guard.configure(config);
  };
  const Fixture pass{"SYN within the bucket", syn_a, XDP_PASS, {{XG_PASS_SERVICE, 1}}};
  const Fixture drop{"SYN over the bucket", syn_a, XDP_DROP, {{XG_DROP_SYN_RATE, 1}}};

  SUBCASE("burst, exhaustion, refill") {
    for (int i = 0; i < 3; ++i) expect(guard, pass);
    expect(guard, drop);
    expect(guard, drop);
    expect(guard, {"another source has its own bucket", syn_b, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    expect(guard, {"ACK is not limited", ack_a, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    expect(guard, {"SYN-ACK is not limited", synack_a, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    at(99);
    expect(guard, drop);  // 99 ms: not yet a whole token
    at(100);
    expect(guard, pass);  // 100 ms: one token
    expect(guard, drop);
    at(100 + 250);        // 250 ms more: two tokens and a half
    expect(guard, pass);
    expect(guard, pass);
    expect(guard, drop);
    at(60'000);           // a minute: full, but never more than the burst
    for (int i = 0; i < 3; ++i) expect(guard, pass);
    expect(guard, drop);
    CHECK(guard.port(kService).syns == 3 + 1 + 1 + 2 + 3);
  }
  SUBCASE("IPv6 sources share a bucket per /64") {
    const auto a1 = v6("fd77:1:2:3::1").TCP(1, kService, kSyn).bytes();
    const auto a2 = v6("fd77:1:2:3::2").TCP(1, kService, kSyn).bytes();
    const auto other = v6("fd77:1:2:4::1").TCP(1, kService, kSyn).bytes();
    expect(guard, {"first", a1, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    expect(guard, {"same /64", a2, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    expect(guard, {"same /64 again", a1, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
    expect(guard, {"same /64, over", a2, XDP_DROP, {{XG_DROP_SYN_RATE, 1}}});
    expect(guard, {"next /64", other, XDP_PASS, {{XG_PASS_SERVICE, 1}}});
  }
}

TEST_CASE("SYN token bucket (kernel clock)") {
  GuardHarness guard;
  xg_config config{};
  config.syn_rate = 1;  // the test needs well under a second between its SYNs
  config.syn_burst = 2;
  base_setup(guard, config);
  const auto syn = v4("10.77.0.9").TCP(40000, 22, kSyn).bytes();
  expect(guard, {"1st", syn, XDP_PASS, {{XG_PASS_OTHER_PORT, 1}}});
  expect(guard, {"2nd", syn, XDP_PASS, {{XG_PASS_OTHER_PORT, 1}}});
  expect(guard, {"3rd", syn, XDP_DROP, {{XG_DROP_SYN_RATE, 1}}});
}

}  // namespace offload::test
