#include "dispatch/port_dispatch.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "bpf/sk_dispatch.h"
#include "sk_dispatch.skel.h"

namespace offload {
namespace {

int libbpf_silent(enum libbpf_print_level, const char*, va_list) { return 0; }

std::string why(const char* step, int err) {
  err = err < 0 ? -err : err;
  std::string text = fmt::format("sk_lookup {}: {}", step, std::strerror(err));
  if (err == EPERM || err == EACCES) text += " (needs root, or CAP_BPF and CAP_NET_ADMIN)";
  return text;
}

skd_range range_value(const DispatchRange& r) {
  skd_range v{};
  v.family = r.address.ss_family;
  if (r.address.ss_family == AF_INET) {
    std::memcpy(&v.addr[0], &reinterpret_cast<const sockaddr_in*>(&r.address)->sin_addr, 4);
  } else {
    std::memcpy(v.addr, &reinterpret_cast<const sockaddr_in6*>(&r.address)->sin6_addr, 16);
  }
  v.port_first = r.port_first;
  v.port_last = r.port_last;
  return v;
}

}  // namespace

std::unique_ptr<PortDispatch> PortDispatch::start(const std::vector<DispatchRange>& ranges, std::string& error) {
  if (ranges.empty() || ranges.size() > SKD_RANGES_MAX) {
    error = fmt::format("sk_lookup: {} port ranges (expected 1 to {})", ranges.size(), SKD_RANGES_MAX);
    return nullptr;
  }
  libbpf_set_print(libbpf_silent);  // the reason is returned, not printed by libbpf
  std::unique_ptr<PortDispatch> d(new PortDispatch());
  d->skel_ = sk_dispatch__open_and_load();
  if (d->skel_ == nullptr) {
    error = why("load", errno);
    return nullptr;
  }
  const int socks = bpf_map__fd(d->skel_->maps.skd_socks);
  const int values = bpf_map__fd(d->skel_->maps.skd_ranges);
  for (uint32_t i = 0; i < ranges.size(); ++i) {
    skd_range v = range_value(ranges[i]);
    uint64_t fd = uint64_t(ranges[i].fd);
    if (bpf_map_update_elem(socks, &i, &fd, BPF_ANY) != 0) {
      error = why("socket map", errno);
      return nullptr;
    }
    if (bpf_map_update_elem(values, &i, &v, BPF_ANY) != 0) {
      error = why("range map", errno);
      return nullptr;
    }
  }
  const int netns = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (netns < 0) {
    error = why("network namespace", errno);
    return nullptr;
  }
  d->link_ = bpf_program__attach_netns(d->skel_->progs.sk_dispatch, netns);
  const int attach_err = errno;
  ::close(netns);
  if (d->link_ == nullptr) {
    error = why("attach", attach_err);
    return nullptr;
  }
  d->ranges_ = ranges.size();
  return d;
}

PortDispatch::~PortDispatch() {
  if (link_ != nullptr) bpf_link__destroy(link_);
  if (skel_ != nullptr) sk_dispatch__destroy(skel_);
}

uint64_t PortDispatch::connections(size_t i) const {
  if (i >= ranges_) return 0;
  uint32_t key = uint32_t(i);
  skd_range v{};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.skd_ranges), &key, &v) != 0) return 0;
  return v.connections;
}

}  // namespace offload
