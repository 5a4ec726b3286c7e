// The shared region and the attach handshake, used by both ends of the bus
// (private to server/: the agent end and liboffload-server).
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "offload/ring.h"
#include "offload/ring_queue.h"

namespace offload::ring {

// NAME: 1..OFFLOAD_RING_NAME_MAX of [A-Za-z0-9._-].
bool valid_name(std::string_view name);
// The abstract socket address "@offload-ring-NAME" and its length.
socklen_t socket_address(std::string_view name, sockaddr_un* out);

// An fd closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release();
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A mapped region. Offsets come from the agent-side layout computation, never
// from the shared header (the server checks the header against it once).
class Region {
 public:
  Region() = default;
  Region(Region&& o) noexcept;
  Region& operator=(Region&& o) noexcept;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region() { unmap(); }

  // Agent: a fresh zeroed region with its header written, in a memfd sealed
  // against shrinking and growing (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL).
  // Returns 0 or -errno.
  static int create(uint32_t channels, uint32_t ring_bytes, Region* out);
  // Server: maps `fd` and checks it against the welcome; refuses (before
  // mapping) an fd that is not a memfd sealed against shrinking and growing.
  // 0, or -errno with `error` set.
  static int map(int fd, const offload_welcome& w, Region* out, std::string* error);

  bool mapped() const { return base_ != nullptr; }
  int fd() const { return fd_.get(); }
  uint32_t channels() const { return channels_; }
  uint32_t ring_bytes() const { return ring_bytes_; }
  uint64_t bytes() const { return bytes_; }
  offload_region_header* header() { return static_cast<offload_region_header*>(base_); }
  offload_ring_ctrl* request_ctrl(uint32_t ch) { return reinterpret_cast<offload_ring_ctrl*>(channel(ch)); }
  offload_ring_ctrl* response_ctrl(uint32_t ch) { return request_ctrl(ch) + 1; }
  uint8_t* request_data(uint32_t ch) { return channel(ch) + 2 * sizeof(offload_ring_ctrl); }
  uint8_t* response_data(uint32_t ch) { return request_data(ch) + ring_bytes_; }
  void unmap();

 private:
  uint8_t* channel(uint32_t ch);

  void* base_ = nullptr;
  uint64_t bytes_ = 0;
  uint32_t channels_ = 0;
  uint32_t ring_bytes_ = 0;
  Fd fd_;
};

uint64_t region_bytes(uint32_t channels, uint32_t ring_bytes);

// One SOCK_SEQPACKET message with optional fds. Returns 0 or -errno.
int send_message(int sock, const void* msg, size_t len, const int* fds, size_t nfds);
// Receives one message of exactly `len` bytes and up to `fds_max` fds (owned
// by `fds` afterwards). Returns 0, -EAGAIN when nothing is there (nonblocking
// socket), -EPIPE at end of stream, -EPROTO for a malformed message.
int recv_message(int sock, void* msg, size_t len, std::vector<Fd>* fds, size_t fds_max);

// Monotonic milliseconds.
uint64_t now_ms();

}  // namespace offload::ring
