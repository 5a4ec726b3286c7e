#pragma once
// offload::xdp::Guard — the XDP guard (bpf/xdp_guard.bpf.c) loaded, pinned and attached to one
// interface, owned by one object. Guard::attach does open -> size maps -> load -> fill config
// -> pin maps -> attach a bpf_link -> pin the link; the destructor undoes exactly the steps
// that succeeded, unless persist() handed them over to bpffs (the `attach` command does that
// so the guard outlives it). Not thread-safe; make, keep and drop it on one thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

struct xdp_guard;

namespace offload::xdp {

enum class Mode { automatic, native, generic };  // automatic: native, else generic (announced)

// Where the guard pins: every map by name, and the link as "xdp_link".
inline constexpr const char* kPinDir = "/sys/fs/bpf/offload";

struct GuardConfig {
  std::string ifname;
  Mode mode = Mode::automatic;
  std::vector<uint32_t> cpus;    // agent CPUs to steer service traffic to; empty: no steering
  std::vector<uint16_t> ports;   // service ports (TCP destination)
  uint32_t syn_rate = 0;         // SYNs per second per source; 0: no SYN limit
  uint32_t syn_burst = 0;        // bucket size in SYNs; 0 with a rate: the rate
  bool allow_only = false;       // drop IP sources that are not in the allow set
  std::vector<std::string> allow;  // CIDRs put in the allow set before attaching
  std::string pin_dir = kPinDir;
  // Degraded features (native mode, a steering CPU) are announced once through this.
  std::function<void(std::string_view)> announce;
};

// Checks a config before any kernel call: bad values give a kExitBadInput status.
Status validate(const GuardConfig& config);

class Guard {
 public:
  // Loads and attaches. On failure returns nullptr, `status` says why, nothing is left behind.
  static std::unique_ptr<Guard> attach(const GuardConfig& config, Status& status);
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

  // From now on the pins own program, maps and link; the destructor only closes descriptors.
  void persist() { persisted_ = true; }

  int ifindex() const { return ifindex_; }
  Mode mode() const { return mode_; }  // native or generic: what the kernel accepted
  int prog_fd() const;

 private:
  Guard() = default;
  Status load(const GuardConfig& config);
  Status fill_maps(const GuardConfig& config);
  Status pin_maps();
  Status attach_link(const GuardConfig& config);
  void announce(const std::string& line) const;

  xdp_guard* skel_ = nullptr;
  int link_fd_ = -1;
  int ifindex_ = 0;
  Mode mode_ = Mode::automatic;
  std::string ifname_;
  std::string pin_dir_;
  bool dir_created_ = false;
  std::vector<std::string> pins_;  // every path this object pinned, link last
  bool persisted_ = false;
  std::function<void(std::string_view)> announce_;
};

// Removes the guard attached to `ifname` by an earlier persist(): detaches the link and
// removes its pin and every map pin. Fails when nothing (or another interface) is attached.
Status detach(const std::string& ifname, const std::string& pin_dir = kPinDir);

// The interface the pinned guard is attached to; "" when none is pinned.
std::string attached_interface(const std::string& pin_dir = kPinDir);

// Mounts bpffs at /sys/fs/bpf when it is not mounted (pin_dir must live under a bpffs).
Status ensure_bpffs(const std::string& pin_dir, const std::function<void(std::string_view)>& announce);

// Has this process the privileges to load and attach XDP (root, or CAP_BPF + CAP_NET_ADMIN)?
bool have_bpf_privilege();

// Sends libbpf's own messages to stderr only when OFFLOAD_BPF_DEBUG is set.
void quiet_libbpf();

const char* mode_name(Mode mode);

}  // namespace offload::xdp
