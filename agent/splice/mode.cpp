// The start-up choice of the pass-through mode (see mode.h).
#include "splice/mode.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

namespace offload::splice {
namespace {

constexpr int kCapNetAdmin = 12;
constexpr int kCapSysAdmin = 21;
constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;

Choice user_space(const std::string& why) { return Choice{nullptr, "pass-through: user space (" + why + ")", "", {}}; }

}  // namespace

bool have_privilege() {
  if (::geteuid() == 0) return true;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const uint64_t caps = std::strtoull(line.c_str() + 7, nullptr, 16);
    const auto has = [caps](int cap) { return ((caps >> cap) & 1) != 0; };
    return has(kCapNetAdmin) && (has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon)));
  }
  return false;
}

Choice choose(const std::string& setting, bool no_bpf, uint32_t max_pairs) {
  if (no_bpf) return user_space("--no-bpf");
  if (setting == "user") return user_space("splice = \"user\"");
  const auto unavailable = [&](const std::string& why) {
    Choice c = user_space(why);
    if (setting == "kernel")
      c.error = fmt::format("splice = \"kernel\", but the kernel splice is unavailable here: {}", why);
    return c;
  };
  if (!have_privilege()) return unavailable("no BPF privilege: needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN");
  std::string why;
  std::unique_ptr<Splicer> s = Splicer::open(max_pairs, why);
  if (!s) return unavailable(why);
  if (!s->self_test(why)) {
    Choice c = unavailable("the self-test failed on this kernel: " + why);
    c.notes = s->notes();
    return c;
  }
  Choice c;
  c.notes = s->notes();
  c.line = fmt::format("pass-through: kernel splice (sockhash self-test passed on this kernel; maps pinned in {}, "
                       "budget {} MiB per direction)", s->pin_dir(), s->budget() >> 20);
  c.splicer = std::move(s);
  return c;
}

}  // namespace offload::splice
