// offload::PortDispatch — bpf/sk_dispatch.bpf.c loaded and attached to the agent's network
// namespace (BPF_SK_LOOKUP), so that one listening socket serves a whole port range. Owned
// by one object for the agent's lifetime: the link is not pinned, so when the agent ends,
// by exit or by crash, the kernel drops the program with it and nothing stale is left
// behind (no pins to clean). Its maps are named skd_socks and skd_ranges for bpftool.
//
// Without BPF (no privilege, --no-bpf, an old kernel) start() fails with the reason and the
// caller binds every port of the range instead.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct sk_dispatch;
struct bpf_link;

namespace offload {

struct DispatchRange {
  sockaddr_storage address{};  // the range's address; its port is ignored
  uint16_t port_first = 0;
  uint16_t port_last = 0;
  int fd = -1;  // a listening socket bound to port_first (the first of its SO_REUSEPORT group)
};

class PortDispatch {
 public:
  // Loads, fills the ranges and attaches. nullptr with `error` set when it cannot.
  static std::unique_ptr<PortDispatch> start(const std::vector<DispatchRange>& ranges, std::string& error);
  ~PortDispatch();
  PortDispatch(const PortDispatch&) = delete;
  PortDispatch& operator=(const PortDispatch&) = delete;

  // Connections the program handed to range i so far.
  uint64_t connections(size_t i) const;

 private:
  PortDispatch() = default;
  sk_dispatch* skel_ = nullptr;
  ::bpf_link* link_ = nullptr;
  size_t ranges_ = 0;
};

}  // namespace offload
