#pragma once
// The guard's maps seen from user space: borrowed from a loaded skeleton, or opened from the
// pins under /sys/fs/bpf/offload. Edits the deny and allow sets, registers service ports and
// reads the counters summed over CPUs. Descriptors it opened are closed by its destructor.

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bpf/xdp_guard.h"
#include "cidr.h"
#include "status.h"

struct xdp_guard;

namespace offload::xdp {

enum class SetKind { deny, allow };

struct ListedPrefix {
  Prefix prefix;
  uint64_t packets = 0;  // deny entries: packets dropped by the entry; allow entries: 0
};

struct PortCounters {
  uint16_t port = 0;
  xg_port_stats counters{};
};

class PinnedMaps {
 public:
  // Every map of the program, so also every pin besides the link's.
  enum Map { kConfig, kStats, kPortStats, kDenyV4, kDenyV6, kDenyLpmV4, kDenyLpmV6,
             kAllowV4, kAllowV6, kSynBuckets, kCpuMap, kMapCount };
  static const char* name(Map map);

  explicit PinnedMaps(xdp_guard* skel);  // borrows the skeleton's descriptors
  // Opens every map pinned under pin_dir. nullptr with status when one is missing or refused.
  static std::unique_ptr<PinnedMaps> open(const std::string& pin_dir, Status& status);
  ~PinnedMaps();
  PinnedMaps(const PinnedMaps&) = delete;
  PinnedMaps& operator=(const PinnedMaps&) = delete;

  // Whole addresses go to the exact-match hash (deny), shorter prefixes to the LPM trie.
  // Adding what is there is ok (with a note in message); removing what is not is a failure.
  Status add(SetKind set, const Prefix& prefix);
  Status remove(SetKind set, const Prefix& prefix);
  std::vector<ListedPrefix> list(SetKind set) const;

  Status add_service_port(uint16_t port);
  xg_config config() const;
  std::array<uint64_t, XG_REASON_MAX> counters() const;  // summed over CPUs
  std::vector<PortCounters> ports() const;                // summed over CPUs, by port

 private:
  PinnedMaps() = default;
  Map map_for(SetKind set, const Prefix& prefix) const;
  std::vector<uint8_t> key_for(Map map, const Prefix& prefix) const;
  void list_map(Map map, bool v6, std::vector<ListedPrefix>& out) const;

  std::array<int, kMapCount> fds_{};
  bool owned_ = false;
};

// The name of a counter (enum xg_reason order), e.g. "drop_deny".
const char* reason_name(int reason);

}  // namespace offload::xdp
