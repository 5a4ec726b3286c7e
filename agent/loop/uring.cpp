#include "loop/uring.h"

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
  for (auto& g : groups_) {
    if (g.ring != nullptr) munmap(g.ring, g.count * sizeof(io_uring_buf));
    if (g.buffers != nullptr) munmap(g.buffers, size_t(g.count) * g.bytes);
  }
}

io_uring_sqe* Uring::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void Uring::setup_buffers(uint16_t group, uint32_t count, uint32_t bytes) {
  BufferGroup& g = groups_[group];
  g.count = count;
  g.bytes = bytes;
  size_t ring_bytes = count * sizeof(io_uring_buf);
  void* ring_mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  // Populated up front: these pages are in use from the first busy second
  // anyway, and faulting them in later would land on the hot path.
  void* buf_mem =
      mmap(nullptr, size_t(count) * bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE | MAP_POPULATE, -1, 0);
  if (ring_mem == MAP_FAILED || buf_mem == MAP_FAILED) throw std::runtime_error("mmap for receive buffers failed");
  g.ring = static_cast<io_uring_buf_ring*>(ring_mem);
  g.buffers = static_cast<char*>(buf_mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(g.ring);
  reg.ring_entries = count;
  reg.bgid = group;
  int rc = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (rc != 0)
    throw std::runtime_error(fmt::format("io_uring provided-buffer ring: {} (kernel 5.19+ needed)", std::strerror(-rc)));
  io_uring_buf_ring_init(g.ring);
  for (uint32_t i = 0; i < count; ++i)
    io_uring_buf_ring_add(g.ring, g.buffers + size_t(i) * bytes, bytes, uint16_t(i), io_uring_buf_ring_mask(count),
                          int(i));
  io_uring_buf_ring_advance(g.ring, int(count));
  features_ += fmt::format(" buffers[{}]={}x{}", group, count, bytes);
}

void Uring::recycle_buffer(uint16_t group, uint16_t bid) {
  BufferGroup& g = groups_[group];
  io_uring_buf_ring_add(g.ring, g.buffers + size_t(bid) * g.bytes, g.bytes, bid, io_uring_buf_ring_mask(g.count),
                        int(g.pending));
  ++g.pending;
}

void Uring::publish_buffers() {
  for (auto& g : groups_) {
    if (g.pending == 0) continue;
    io_uring_buf_ring_advance(g.ring, int(g.pending));
    g.pending = 0;
  }
}

}  // namespace offload
