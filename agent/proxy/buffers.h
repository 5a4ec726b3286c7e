// Data blocks for request bodies and buffered responses.
//
// A Block is a fixed-size buffer with a readable window [head, tail). Blocks
// come from a BlockPool that keeps freed blocks on a LIFO free list (the
// most recently used, cache-warm block is reused first) and refuses to grow
// past its byte budget, so buffer memory is bounded and no block is malloc'd
// per request after warm-up. A BlockChain is a FIFO of blocks: bytes are
// appended at the tail and consumed from the head.
//
// States of a chain: empty (no blocks), holding bytes, or holding a partly
// filled tail block that receives the next recv directly.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "loop/check.h"

namespace offload {

struct Block {
  Block* next = nullptr;
  uint32_t head = 0;      // first unread byte
  uint32_t tail = 0;      // one past the last written byte
  uint32_t capacity = 0;
  char* data() { return reinterpret_cast<char*>(this + 1); }
  uint32_t readable() const { return tail - head; }
  uint32_t writable() const { return capacity - tail; }
};

class BlockPool {
 public:
  // Keeps at most `free_max` freed blocks for reuse; more go back to malloc,
  // so a burst does not hold its peak memory forever.
  BlockPool(uint32_t block_bytes, uint64_t budget_bytes, uint32_t free_max = 64);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A block with head = tail = 0, or null when the budget is spent.
  Block* get();
  void put(Block* b);

  uint32_t block_bytes() const { return block_bytes_; }
  uint64_t bytes_in_use() const { return uint64_t(in_use_) * block_bytes_; }
  uint64_t budget_bytes() const { return budget_bytes_; }
  // Once per housekeeping period: the free blocks no get() needed since the
  // last call (the free list's low-water mark) go back to malloc, so what is
  // kept after a burst decays to what the traffic since uses. Returns the
  // bytes handed back to malloc since the last call (for malloc_trim).
  uint64_t release_idle();
  uint32_t free_count() const { return free_count_; }

 private:
  void release(Block* b);

  uint32_t block_bytes_;
  uint64_t budget_bytes_;
  uint32_t free_max_;
  uint32_t allocated_ = 0;
  uint32_t in_use_ = 0;
  uint32_t free_count_ = 0;
  uint32_t free_low_ = 0;  // the fewest free blocks since the last release_idle()
  uint64_t released_bytes_ = 0;
  Block* free_ = nullptr;
};

class BlockChain {
 public:
  BlockChain() = default;
  BlockChain(const BlockChain&) = delete;
  BlockChain& operator=(const BlockChain&) = delete;

  bool empty() const { return bytes_ == 0; }
  uint64_t bytes() const { return bytes_; }
  Block* front() const { return first_; }
  Block* back() const { return last_; }

  // The tail block if it has room for at least `min_free` bytes, else a new
  // block from `pool` appended to the chain; null when the pool is spent.
  Block* writable_tail(BlockPool& pool, uint32_t min_free = 1);
  void commit(uint32_t n);  // n bytes were written at back()->tail

  // Copies bytes in, taking blocks from the pool as needed; false when the
  // pool is spent (what fitted stays appended).
  bool append(BlockPool& pool, const char* data, size_t len);

  // Drops n bytes from the front, returning emptied blocks to the pool.
  void consume(BlockPool& pool, uint64_t n);
  void clear(BlockPool& pool);
  void swap(BlockChain& other) {
    std::swap(first_, other.first_);
    std::swap(last_, other.last_);
    std::swap(bytes_, other.bytes_);
  }
  // The front block's window now starts at `new_head` (a head rewritten in place).
  void move_front_head(uint32_t new_head) {
    bytes_ = bytes_ + first_->head - new_head;
    first_->head = new_head;
  }
  // Drops the last n bytes of the tail block (bytes past a message's end).
  void trim_tail(uint32_t n) {
    OFFLOAD_ASSERT(last_ != nullptr && n <= last_->readable());
    last_->tail -= n;
    bytes_ -= n;
  }

  // Fills up to max_iov entries with the readable windows; returns the count.
  int fill_iovec(iovec* iov, int max_iov) const;

 private:
  Block* first_ = nullptr;
  Block* last_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace offload
