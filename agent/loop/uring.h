// The io_uring a shard runs on: set-up with the best flags the kernel takes,
// a provided-buffer ring for receives, and an SQE getter that never fails.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <string>

namespace offload {

// A send of n iovecs: a plain send for one (cheaper than sendmsg, the common
// case), else a sendmsg through `msg`, which must live until completion.
inline void prep_send_iov(io_uring_sqe* sqe, int fd, msghdr& msg, iovec* iov, int n) {
  if (n == 1) {
    io_uring_prep_send(sqe, fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    return;
  }
  msg = msghdr{};
  msg.msg_iov = iov;
  msg.msg_iovlen = size_t(n);
  io_uring_prep_sendmsg(sqe, fd, &msg, MSG_NOSIGNAL);
}

class Uring {
 public:
  Uring(uint32_t sq_entries, uint32_t cq_entries);
  ~Uring();
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // A free SQE; when the submission queue is full it submits first, so the
  // caller always gets one.
  io_uring_sqe* sqe();

  // Provided buffers for multishot receives: `count` buffers of `bytes`
  // each in buffer group `group` (0: clients, 1: upstreams).
  void setup_buffers(uint16_t group, uint32_t count, uint32_t bytes);
  const char* buffer(uint16_t group, uint16_t bid) const {
    return groups_[group].buffers + size_t(bid) * groups_[group].bytes;
  }
  // Hands a buffer back to the kernel; made visible by publish_buffers().
  void recycle_buffer(uint16_t group, uint16_t bid);
  void publish_buffers();

  io_uring* ring() { return &ring_; }
  const std::string& features() const { return features_; }

 private:
  struct BufferGroup {
    io_uring_buf_ring* ring = nullptr;
    char* buffers = nullptr;
    uint32_t count = 0;
    uint32_t bytes = 0;
    uint32_t pending = 0;  // recycled, not yet published
  };
  static constexpr uint16_t kGroups = 2;

  io_uring ring_{};
  BufferGroup groups_[kGroups];
  std::string features_;
};

}  // namespace offload
