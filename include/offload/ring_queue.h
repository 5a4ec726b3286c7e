// One SPSC ring of the bus (see ring.h): the producer and the consumer ends.
//
// Neither end trusts the other: the consumer validates every index and record
// header before it reads, and a violation puts the end into a failed state
// with a readable error (peek() returns -EBADMSG from then on). The producer
// likewise treats an impossible `tail` from the consumer as corruption.
//
// Doorbells: each end is given the eventfd that wakes its peer (or -1) and
// rings it only when the peer's `waiting` word says it sleeps.
//
// Thread rules: one thread per end at a time; the two ends of a ring may be
// on different threads or processes. No allocation, no syscalls except the
// doorbell write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "offload/ring.h"

namespace offload::ring {

// A record as seen by the consumer: a view of its payload inside the ring.
struct Record {
  uint16_t type = 0;
  uint16_t flags = 0;
  const uint8_t* payload = nullptr;
  uint32_t payload_len = 0;
};

// Shared memory may change under us while we look at it (a buggy or hostile
// peer). Copy a field out exactly once and use the copy: the barrier keeps
// the compiler from re-reading the shared bytes in place of the copy.
template <typename T>
inline T snapshot(const void* shared) {
  T v;
  __builtin_memcpy(&v, shared, sizeof v);
  asm volatile("" ::: "memory");
  return v;
}

// Writes 1 to an eventfd doorbell (no-op for fd < 0).
void ring_doorbell(int fd);

class Producer {
 public:
  Producer() = default;
  // `ctrl` and `data` (ring_bytes, a power of two) lie in the shared region.
  void init(offload_ring_ctrl* ctrl, uint8_t* data, uint32_t ring_bytes, int peer_bell_fd);

  // The largest payload one record can carry.
  uint32_t max_payload() const { return size_ - sizeof(offload_rec); }

  // Space for a record with `payload_len` bytes of payload: a pointer to the
  // payload area, or nullptr when the ring has no room now (or the end has
  // failed, or payload_len > max_payload()). May publish a PAD record.
  uint8_t* try_reserve(uint32_t payload_len);
  // Publishes the record reserved last with its final length (<= reserved),
  // then rings the consumer if it sleeps.
  void commit(uint16_t type, uint16_t flags, uint32_t payload_len);

  // Before sleeping on the doorbell because try_reserve failed: announces
  // the wait and re-checks. True: still no room for `payload_len`, sleep.
  // False: room appeared (the announcement is withdrawn).
  bool prepare_wait(uint32_t payload_len);
  void end_wait();

  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  uint64_t free_bytes();  // refreshes the cached tail

 private:
  bool refresh_tail();
  void publish(uint64_t head);

  offload_ring_prod* prod_ = nullptr;
  offload_ring_cons* cons_ = nullptr;
  uint8_t* data_ = nullptr;
  uint32_t size_ = 0;
  int bell_fd_ = -1;
  uint64_t head_ = 0;        // ours
  uint64_t tail_cache_ = 0;  // the consumer's, re-read only when full
  uint32_t reserved_ = 0;    // payload bytes of the pending reservation
  std::string error_;
};

class Consumer {
 public:
  Consumer() = default;
  void init(offload_ring_ctrl* ctrl, const uint8_t* data, uint32_t ring_bytes, int peer_bell_fd);

  // 1: `out` is the next record (valid until release()); 0: the ring is
  // empty; -EBADMSG: the ring is corrupt (see error()), for good.
  // PAD records are skipped here. Calling peek() again without release()
  // returns the same record.
  int peek(Record* out);
  // Frees the record returned by peek(), then rings the producer if it
  // waits for space.
  void release();

  // Before sleeping on the doorbell because peek() returned 0: announces the
  // wait and re-checks. True: still empty, sleep. False: data arrived.
  bool prepare_wait();
  void end_wait();

  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  // Marks the ring corrupt from outside (a record whose payload failed to
  // decode). Keeps the first error.
  int fail(std::string_view why);

 private:
  bool refresh_head();
  void advance(uint64_t bytes);

  const offload_ring_prod* prod_ = nullptr;
  offload_ring_cons* cons_ = nullptr;
  const uint8_t* data_ = nullptr;
  uint32_t size_ = 0;
  int bell_fd_ = -1;
  uint64_t tail_ = 0;        // ours
  uint64_t head_cache_ = 0;  // the producer's, re-read only when empty
  uint64_t pending_ = 0;     // span of the record handed out by peek()
  std::string error_;
};

}  // namespace offload::ring
