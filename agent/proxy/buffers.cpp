#include "proxy/buffers.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace offload {

BlockPool::BlockPool(uint32_t block_bytes, uint64_t budget_bytes, uint32_t free_max)
    : block_bytes_(block_bytes), budget_bytes_(budget_bytes), free_max_(free_max) {}

BlockPool::~BlockPool() {
  while (free_ != nullptr) {
    Block* b = free_;
    free_ = b->next;
    b->~Block();
    std::free(b);
  }
}

Block* BlockPool::get() {
  Block* b = free_;
  if (b != nullptr) {
    free_ = b->next;
    --free_count_;
    free_low_ = std::min(free_low_, free_count_);
  } else {
    if (uint64_t(allocated_ + 1) * block_bytes_ > budget_bytes_) return nullptr;
    void* mem = std::aligned_alloc(64, (sizeof(Block) + block_bytes_ + 63) / 64 * 64);
    if (mem == nullptr) return nullptr;
    b = new (mem) Block;
    b->capacity = block_bytes_;
    ++allocated_;
  }
  b->next = nullptr;
  b->head = b->tail = 0;
  ++in_use_;
  return b;
}

void BlockPool::put(Block* b) {
  OFFLOAD_ASSERT(b != nullptr && in_use_ > 0);
  --in_use_;
  if (free_count_ >= free_max_) {
    release(b);
    return;
  }
  b->next = free_;
  free_ = b;
  ++free_count_;
}

void BlockPool::release(Block* b) {
  b->~Block();
  std::free(b);
  --allocated_;
  released_bytes_ += block_bytes_;
}

uint64_t BlockPool::release_idle() {
  for (uint32_t n = free_low_; n > 0; --n) {
    Block* b = free_;
    OFFLOAD_ASSERT(b != nullptr);
    free_ = b->next;
    --free_count_;
    release(b);
  }
  free_low_ = free_count_;
  return std::exchange(released_bytes_, 0);
}

Block* BlockChain::writable_tail(BlockPool& pool, uint32_t min_free) {
  if (last_ != nullptr && last_->writable() >= min_free) return last_;
  Block* b = pool.get();
  if (b == nullptr) return nullptr;
  if (last_ == nullptr) {
    first_ = last_ = b;
  } else {
    last_->next = b;
    last_ = b;
  }
  return b;
}

void BlockChain::commit(uint32_t n) {
  OFFLOAD_ASSERT(last_ != nullptr && n <= last_->writable());
  last_->tail += n;
  bytes_ += n;
}

bool BlockChain::append(BlockPool& pool, const char* data, size_t len) {
  while (len > 0) {
    Block* b = writable_tail(pool);
    if (b == nullptr) return false;
    uint32_t n = uint32_t(len < b->writable() ? len : b->writable());
    std::memcpy(b->data() + b->tail, data, n);
    commit(n);
    data += n;
    len -= n;
  }
  return true;
}

void BlockChain::consume(BlockPool& pool, uint64_t n) {
  OFFLOAD_ASSERT(n <= bytes_);
  bytes_ -= n;
  while (n > 0) {
    Block* b = first_;
    uint32_t take = uint32_t(n < b->readable() ? n : b->readable());
    b->head += take;
    n -= take;
    if (b->readable() == 0) {  // drained: back to the pool, so front() is null iff empty()
      first_ = b->next;
      if (first_ == nullptr) last_ = nullptr;
      pool.put(b);
    }
  }
}

void BlockChain::clear(BlockPool& pool) {
  while (first_ != nullptr) {
    Block* b = first_;
    first_ = b->next;
    pool.put(b);
  }
  last_ = nullptr;
  bytes_ = 0;
}

int BlockChain::fill_iovec(iovec* iov, int max_iov) const {
  int n = 0;
  for (Block* b = first_; b != nullptr && n < max_iov; b = b->next) {
    if (b->readable() == 0) continue;
    iov[n].iov_base = b->data() + b->head;
    iov[n].iov_len = b->readable();
    ++n;
  }
  return n;
}

}  // namespace offload
