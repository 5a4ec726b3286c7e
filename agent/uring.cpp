#include "uring.h"

#include <sys/mman.h>

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace offload {

Uring::Uring(uint32_t sq_entries, uint32_t cq_entries) {
  // Best first: one thread submits (SINGLE_ISSUER), and completion work runs
  // only when we wait (DEFER_TASKRUN), so no IPIs interrupt the loop.
  struct Attempt {
    unsigned flags;
    const char* name;
  };
  const Attempt attempts[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "single_issuer defer_taskrun"},
      {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER, "single_issuer coop_taskrun"},
      {IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
      {0, "plain"},
  };
  int rc = -EINVAL;
  for (const auto& a : attempts) {
    io_uring_params p{};
    p.flags = a.flags | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = cq_entries;
    rc = io_uring_queue_init_params(sq_entries, &ring_, &p);
    if (rc == -EINVAL) {  // an older kernel: try without SUBMIT_ALL too
      p = io_uring_params{};
      p.flags = a.flags | IORING_SETUP_CQSIZE;
      p.cq_entries = cq_entries;
      rc = io_uring_queue_init_params(sq_entries, &ring_, &p);
    }
    if (rc == 0) {
      features_ = fmt::format("io_uring {} sq={} cq={}", a.name, ring_.sq.ring_entries, ring_.cq.ring_entries);
      if (!(p.features & IORING_FEAT_NODROP)) features_ += " (no NODROP: completions may be lost under overload)";
      break;
    }
  }
  if (rc != 0) throw std::runtime_error(fmt::format("io_uring_queue_init: {}", std::strerror(-rc)));
  if (io_uring_register_ring_fd(&ring_) >= 0) features_ += " registered-ring-fd";
}

Uring::~Uring() {
  io_uring_queue_exit(&ring_);
  if (buf_ring_ != nullptr) munmap(buf_ring_, buffer_count_ * sizeof(io_uring_buf));
  if (buffers_ != nullptr) munmap(buffers_, size_t(buffer_count_) * buffer_bytes_);
}

io_uring_sqe* Uring::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void Uring::setup_buffers(uint32_t count, uint32_t bytes) {
  buffer_count_ = count;
  buffer_bytes_ = bytes;
  size_t ring_bytes = count * sizeof(io_uring_buf);
  void* ring_mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  void* buf_mem = mmap(nullptr, size_t(count) * bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (ring_mem == MAP_FAILED || buf_mem == MAP_FAILED) throw std::runtime_error("mmap for receive buffers failed");
  buf_ring_ = static_cast<io_uring_buf_ring*>(ring_mem);
  buffers_ = static_cast<char*>(buf_mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(buf_ring_);
  reg.ring_entries = count;
  reg.bgid = 0;
  int rc = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (rc != 0)
    throw std::runtime_error(fmt::format("io_uring provided-buffer ring: {} (kernel 5.19+ needed)", std::strerror(-rc)));
  io_uring_buf_ring_init(buf_ring_);
  for (uint32_t i = 0; i < count; ++i)
    io_uring_buf_ring_add(buf_ring_, buffers_ + size_t(i) * bytes, bytes, uint16_t(i),
                          io_uring_buf_ring_mask(count), int(i));
  io_uring_buf_ring_advance(buf_ring_, int(count));
  features_ += fmt::format(" provided-buffers={}x{}", count, bytes);
}

void Uring::recycle_buffer(uint16_t bid) {
  io_uring_buf_ring_add(buf_ring_, buffers_ + size_t(bid) * buffer_bytes_, buffer_bytes_, bid,
                        io_uring_buf_ring_mask(buffer_count_), int(pending_recycled_));
  ++pending_recycled_;
}

void Uring::publish_buffers() {
  if (pending_recycled_ == 0) return;
  io_uring_buf_ring_advance(buf_ring_, int(pending_recycled_));
  pending_recycled_ = 0;
}

}  // namespace offload
