#include "offload/ring_queue.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace offload::ring {

void ring_doorbell(int fd) {
  if (fd < 0) return;
  uint64_t one = 1;
  // EAGAIN means the counter is saturated: the peer is being woken anyway.
  while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

// ---- producer ---------------------------------------------------------------

void Producer::init(offload_ring_ctrl* ctrl, uint8_t* data, uint32_t ring_bytes, int peer_bell_fd) {
  prod_ = &ctrl->prod;
  cons_ = &ctrl->cons;
  data_ = data;
  size_ = ring_bytes;
  bell_fd_ = peer_bell_fd;
  head_ = 0;  // regions are always fresh: both indices start at 0
  tail_cache_ = 0;
  reserved_ = 0;
  error_.clear();
}

bool Producer::refresh_tail() {
  uint64_t tail = offload_load_acquire_u64(&cons_->tail);
  // The consumer can neither go past what we published nor move backwards.
  if (tail > head_ || tail < tail_cache_ || (tail & (OFFLOAD_RING_ALIGN - 1)) != 0) {
    error_ = "ring: consumer index " + std::to_string(tail) + " outside [" +
             std::to_string(tail_cache_) + ", " + std::to_string(head_) + "]";
    return false;
  }
  tail_cache_ = tail;
  return true;
}

uint64_t Producer::free_bytes() {
  if (failed() || !refresh_tail()) return 0;
  return size_ - (head_ - tail_cache_);
}

void Producer::publish(uint64_t head) {
  head_ = head;
  offload_store_release_u64(&prod_->head, head);
  offload_fence_seq_cst();
  if (offload_load_relaxed_u32(&cons_->waiting) != 0) ring_doorbell(bell_fd_);
}

uint8_t* Producer::try_reserve(uint32_t payload_len) {
  if (failed() || payload_len > max_payload()) return nullptr;
  uint64_t need = offload_rec_span(static_cast<uint32_t>(payload_len + sizeof(offload_rec)));
  uint64_t pos = head_ & (size_ - 1);
  uint64_t contig = size_ - pos;
  if (need > contig) {
    // Pad to the end of the data area; the record goes at position 0.
    if (size_ - (head_ - tail_cache_) < contig && (!refresh_tail() || size_ - (head_ - tail_cache_) < contig))
      return nullptr;
    offload_rec pad{static_cast<uint32_t>(contig), OFFLOAD_REC_PAD, 0};
    std::memcpy(data_ + pos, &pad, sizeof pad);
    publish(head_ + contig);
    pos = 0;
  }
  if (size_ - (head_ - tail_cache_) < need && (!refresh_tail() || size_ - (head_ - tail_cache_) < need))
    return nullptr;
  reserved_ = payload_len;
  return data_ + pos + sizeof(offload_rec);
}

void Producer::commit(uint16_t type, uint16_t flags, uint32_t payload_len) {
  if (payload_len > reserved_) payload_len = reserved_;  // never past the reservation
  uint32_t len = static_cast<uint32_t>(payload_len + sizeof(offload_rec));
  offload_rec rec{len, type, flags};
  std::memcpy(data_ + (head_ & (size_ - 1)), &rec, sizeof rec);
  reserved_ = 0;
  publish(head_ + offload_rec_span(len));
}

bool Producer::prepare_wait(uint32_t payload_len) {
  offload_store_relaxed_u32(&prod_->waiting, 1);
  offload_fence_seq_cst();
  if (failed() || !refresh_tail()) return false;  // let the caller see the failure
  uint64_t need = offload_rec_span(static_cast<uint32_t>(payload_len + sizeof(offload_rec)));
  uint64_t contig = size_ - (head_ & (size_ - 1));
  if (need > contig) need = contig;  // first step: room for the pad
  if (size_ - (head_ - tail_cache_) >= need) {
    end_wait();
    return false;
  }
  return true;
}

void Producer::end_wait() { offload_store_relaxed_u32(&prod_->waiting, 0); }

// ---- consumer ---------------------------------------------------------------

void Consumer::init(offload_ring_ctrl* ctrl, const uint8_t* data, uint32_t ring_bytes, int peer_bell_fd) {
  prod_ = &ctrl->prod;
  cons_ = &ctrl->cons;
  data_ = data;
  size_ = ring_bytes;
  bell_fd_ = peer_bell_fd;
  tail_ = 0;  // regions are always fresh: both indices start at 0
  head_cache_ = 0;
  pending_ = 0;
  error_.clear();
}

int Consumer::fail(std::string_view why) {
  if (error_.empty()) error_ = "ring: " + std::string(why);
  return -EBADMSG;
}

bool Consumer::refresh_head() {
  uint64_t head = offload_load_acquire_u64(&prod_->head);
  if (head < head_cache_ || head - tail_ > size_ || (head & (OFFLOAD_RING_ALIGN - 1)) != 0) {
    fail("producer index " + std::to_string(head) + " impossible (consumed " + std::to_string(tail_) +
         ", ring " + std::to_string(size_) + " bytes)");
    return false;
  }
  head_cache_ = head;
  return true;
}

void Consumer::advance(uint64_t bytes) {
  tail_ += bytes;
  offload_store_release_u64(&cons_->tail, tail_);
  offload_fence_seq_cst();
  if (offload_load_relaxed_u32(&prod_->waiting) != 0) ring_doorbell(bell_fd_);
}

int Consumer::peek(Record* out) {
  if (failed()) return -EBADMSG;
  for (;;) {
    if (head_cache_ == tail_ && (!refresh_head() || head_cache_ == tail_)) return failed() ? -EBADMSG : 0;
    uint64_t avail = head_cache_ - tail_;
    uint64_t pos = tail_ & (size_ - 1);
    uint64_t contig = size_ - pos;
    if (avail < sizeof(offload_rec)) return fail("published bytes end inside a record header");
    auto rec = snapshot<offload_rec>(data_ + pos);
    if (rec.len < sizeof(offload_rec)) return fail("record length " + std::to_string(rec.len) + " < 8");
    uint64_t span = offload_rec_span(rec.len);
    if (span > contig) return fail("record of " + std::to_string(rec.len) + " bytes crosses the ring end");
    if (span > avail) return fail("record of " + std::to_string(rec.len) + " bytes exceeds published bytes");
    if (rec.type == OFFLOAD_REC_PAD) {
      if (span != contig) return fail("pad record does not reach the ring end");
      advance(span);
      continue;
    }
    if (rec.type < OFFLOAD_REC_REQUEST || rec.type > OFFLOAD_REC_RESPONSE_ABORT)
      return fail("unknown record type " + std::to_string(rec.type));
    pending_ = span;
    out->type = rec.type;
    out->flags = rec.flags;
    out->payload = data_ + pos + sizeof(offload_rec);
    out->payload_len = rec.len - static_cast<uint32_t>(sizeof(offload_rec));
    return 1;
  }
}

void Consumer::release() {
  if (pending_ == 0) return;
  uint64_t span = pending_;
  pending_ = 0;
  advance(span);
}

bool Consumer::prepare_wait() {
  offload_store_relaxed_u32(&cons_->waiting, 1);
  offload_fence_seq_cst();
  if (failed() || !refresh_head() || head_cache_ != tail_) {
    end_wait();
    return false;
  }
  return true;
}

void Consumer::end_wait() { offload_store_relaxed_u32(&cons_->waiting, 0); }

}  // namespace offload::ring
