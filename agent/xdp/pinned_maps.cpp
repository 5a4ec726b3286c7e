#include "pinned_maps.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

#include "xdp_guard.skel.h"

namespace offload::xdp {

namespace {

constexpr const char* kMapNames[PinnedMaps::kMapCount] = {
    "xdp_config", "xdp_stats", "xdp_port_stats", "xdp_deny_v4", "xdp_deny_v6",
    "xdp_deny_lpm_v4", "xdp_deny_lpm_v6", "xdp_allow_v4", "xdp_allow_v6", "xdp_syn_buckets",
    "xdp_cpu_map"};

constexpr const char* kReasonNames[XG_REASON_MAX] = {
    "pass_non_ip", "pass_non_tcp", "pass_fragment", "pass_other_port", "pass_service",
    "redirect_service", "drop_malformed", "drop_vlan_depth", "drop_ext_depth", "drop_deny",
    "drop_not_allowed", "drop_syn_rate"};

size_t possible_cpus() {
  const int n = libbpf_num_possible_cpus();
  return n > 0 ? size_t(n) : 1;
}

// A per-CPU map's value as user space reads it: one 8-byte aligned copy per possible CPU.
template <typename T>
std::vector<T> percpu_buffer() {
  static_assert(sizeof(T) % 8 == 0, "per-CPU values are 8-byte aligned");
  return std::vector<T>(possible_cpus());
}

bool is_lpm(PinnedMaps::Map map) {
  return map == PinnedMaps::kDenyLpmV4 || map == PinnedMaps::kDenyLpmV6 ||
         map == PinnedMaps::kAllowV4 || map == PinnedMaps::kAllowV6;
}

const char* set_name(SetKind set) { return set == SetKind::deny ? "deny" : "allow"; }

}  // namespace

const char* PinnedMaps::name(Map map) { return kMapNames[map]; }

const char* reason_name(int reason) {
  return reason >= 0 && reason < XG_REASON_MAX ? kReasonNames[reason] : "unknown";
}

PinnedMaps::PinnedMaps(xdp_guard* skel) {
  for (int i = 0; i < kMapCount; ++i) {
    fds_[i] = bpf_map__fd(bpf_object__find_map_by_name(skel->obj, kMapNames[i]));
  }
}

std::unique_ptr<PinnedMaps> PinnedMaps::open(const std::string& pin_dir, Status& status) {
  std::unique_ptr<PinnedMaps> maps(new PinnedMaps());
  maps->fds_.fill(-1);
  maps->owned_ = true;
  for (int i = 0; i < kMapCount; ++i) {
    const std::string path = pin_dir + "/" + kMapNames[i];
    maps->fds_[i] = bpf_obj_get(path.c_str());
    if (maps->fds_[i] >= 0) continue;
    const int err = errno;
    if (err == ENOENT) {
      status = Status::failure(fmt::format("the XDP guard is not attached ({} is missing); run "
                                           "`attach` first", path));
    } else if (err == EACCES || err == EPERM) {
      status = Status::failure(fmt::format("permission denied opening {}: needs root", path));
    } else {
      status = Status::failure(fmt::format("cannot open {}: {}", path, std::strerror(err)));
    }
    return nullptr;
  }
  status = Status::success();
  return maps;
}

PinnedMaps::~PinnedMaps() {
  if (!owned_) return;
  for (int fd : fds_) {
    if (fd >= 0) close(fd);
  }
}

PinnedMaps::Map PinnedMaps::map_for(SetKind set, const Prefix& prefix) const {
  if (set == SetKind::allow) return prefix.v6 ? kAllowV6 : kAllowV4;
  if (prefix.whole_address()) return prefix.v6 ? kDenyV6 : kDenyV4;
  return prefix.v6 ? kDenyLpmV6 : kDenyLpmV4;
}

std::vector<uint8_t> PinnedMaps::key_for(Map map, const Prefix& prefix) const {
  const size_t addr_len = prefix.v6 ? 16 : 4;
  const size_t addr_off = is_lpm(map) ? sizeof(uint32_t) : 0;  // LPM keys start with the length
  std::vector<uint8_t> key(addr_off + addr_len);
  if (addr_off) std::memcpy(key.data(), &prefix.len, sizeof(uint32_t));
  std::memcpy(key.data() + addr_off, prefix.addr.data(), addr_len);
  return key;
}

Status PinnedMaps::add(SetKind set, const Prefix& prefix) {
  const Map map = map_for(set, prefix);
  const auto key = key_for(map, prefix);
  xg_deny_entry deny{};
  uint32_t allow = 1;
  const void* value = set == SetKind::deny ? static_cast<const void*>(&deny) : &allow;
  if (bpf_map_update_elem(fds_[map], key.data(), value, BPF_NOEXIST) == 0) {
    return Status::success();
  }
  const int err = errno;
  if (err == EEXIST) {
    return {kExitOk, fmt::format("{} is already in the {} set", prefix.str(), set_name(set))};
  }
  if (err == E2BIG || err == ENOSPC || err == ENOMEM) {
    return Status::failure(fmt::format("the {} set is full ({}): {} not added", set_name(set),
                                       kMapNames[map], prefix.str()));
  }
  return Status::failure(fmt::format("cannot add {} to {}: {}", prefix.str(), kMapNames[map],
                                     std::strerror(err)));
}

Status PinnedMaps::remove(SetKind set, const Prefix& prefix) {
  const Map map = map_for(set, prefix);
  const auto key = key_for(map, prefix);
  if (bpf_map_delete_elem(fds_[map], key.data()) == 0) return Status::success();
  const int err = errno;
  if (err == ENOENT) {
    return Status::failure(fmt::format("{} is not in the {} set", prefix.str(), set_name(set)));
  }
  return Status::failure(fmt::format("cannot remove {} from {}: {}", prefix.str(),
                                     kMapNames[map], std::strerror(err)));
}

void PinnedMaps::list_map(Map map, bool v6, std::vector<ListedPrefix>& out) const {
  const size_t key_size = (is_lpm(map) ? 4 : 0) + (v6 ? 16 : 4);
  std::vector<uint8_t> key(key_size), next(key_size);
  const void* cursor = nullptr;
  while (bpf_map_get_next_key(fds_[map], cursor, next.data()) == 0) {
    ListedPrefix entry;
    entry.prefix.v6 = v6;
    const size_t addr_off = is_lpm(map) ? 4 : 0;
    std::memcpy(entry.prefix.addr.data(), next.data() + addr_off, v6 ? 16 : 4);
    entry.prefix.len = entry.prefix.max_len();
    if (is_lpm(map)) std::memcpy(&entry.prefix.len, next.data(), 4);
    xg_deny_entry deny{};
    uint32_t allow = 0;
    void* value = map == kAllowV4 || map == kAllowV6 ? static_cast<void*>(&allow) : &deny;
    if (bpf_map_lookup_elem(fds_[map], next.data(), value) == 0) entry.packets = deny.packets;
    out.push_back(entry);
    key = next;
    cursor = key.data();
  }
}

std::vector<ListedPrefix> PinnedMaps::list(SetKind set) const {
  std::vector<ListedPrefix> out;
  if (set == SetKind::deny) {
    list_map(kDenyV4, false, out);
    list_map(kDenyLpmV4, false, out);
    list_map(kDenyV6, true, out);
    list_map(kDenyLpmV6, true, out);
  } else {
    list_map(kAllowV4, false, out);
    list_map(kAllowV6, true, out);
  }
  std::sort(out.begin(), out.end(), [](const ListedPrefix& a, const ListedPrefix& b) {
    return std::tie(a.prefix.v6, a.prefix.addr, a.prefix.len) <
           std::tie(b.prefix.v6, b.prefix.addr, b.prefix.len);
  });
  return out;
}

Status PinnedMaps::add_service_port(uint16_t port) {
  auto zeros = percpu_buffer<xg_port_stats>();
  if (bpf_map_update_elem(fds_[kPortStats], &port, zeros.data(), BPF_NOEXIST) == 0 ||
      errno == EEXIST) {
    return Status::success();
  }
  return Status::failure(fmt::format("cannot add service port {}: {}", port,
                                     std::strerror(errno)));
}

xg_config PinnedMaps::config() const {
  xg_config cfg{};
  const uint32_t zero = 0;
  bpf_map_lookup_elem(fds_[kConfig], &zero, &cfg);
  cfg.ifname[sizeof(cfg.ifname) - 1] = '\0';
  return cfg;
}

std::array<uint64_t, XG_REASON_MAX> PinnedMaps::counters() const {
  std::array<uint64_t, XG_REASON_MAX> sum{};
  auto values = percpu_buffer<xg_stats>();
  const uint32_t zero = 0;
  if (bpf_map_lookup_elem(fds_[kStats], &zero, values.data()) != 0) return sum;
  for (const auto& cpu : values) {
    uint64_t fields[XG_REASON_MAX];
    static_assert(sizeof(fields) == sizeof(cpu));
    std::memcpy(fields, &cpu, sizeof(fields));
    for (int i = 0; i < XG_REASON_MAX; ++i) sum[size_t(i)] += fields[i];
  }
  return sum;
}

std::vector<PortCounters> PinnedMaps::ports() const {
  std::vector<PortCounters> out;
  auto values = percpu_buffer<xg_port_stats>();
  uint16_t key = 0, next = 0;
  const void* cursor = nullptr;
  while (bpf_map_get_next_key(fds_[kPortStats], cursor, &next) == 0) {
    PortCounters port{next, {}};
    if (bpf_map_lookup_elem(fds_[kPortStats], &next, values.data()) == 0) {
      for (const auto& cpu : values) {
        port.counters.packets += cpu.packets;
        port.counters.bytes += cpu.bytes;
        port.counters.syns += cpu.syns;
        port.counters.redirected += cpu.redirected;
      }
    }
    out.push_back(port);
    key = next;
    cursor = &key;
  }
  std::sort(out.begin(), out.end(),
            [](const PortCounters& a, const PortCounters& b) { return a.port < b.port; });
  return out;
}

}  // namespace offload::xdp
