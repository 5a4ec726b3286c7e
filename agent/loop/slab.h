// Objects made once, up to a fixed count, never allocated on the data path.
//
// The storage for `capacity` objects is reserved at start-up (address space
// only: MAP_NORESERVE) and each slot is constructed the first time it is
// handed out, so a burst costs no allocation of the objects themselves.
// Freed objects are kept constructed for reuse up to `keep_free`; past that
// the free object highest in the storage is destroyed (its own heap parts go
// back to malloc) and every page no constructed object touches any more goes
// back to the kernel (MADV_DONTNEED). Objects are handed out lowest first,
// so what stays constructed after a burst is packed at the start of the
// storage and the resident size follows the objects in use.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <algorithm>
#include <functional>
#include <new>
#include <utility>
#include <vector>

#include "loop/check.h"

namespace offload {

template <typename T>
class Slab {
 public:
  // `make` constructs one object in the storage it is given (placement new).
  Slab(uint32_t capacity, std::function<T*(void*)> make, uint32_t keep_free = 256)
      : capacity_(capacity), keep_free_(keep_free), make_(std::move(make)) {
    page_ = size_t(::sysconf(_SC_PAGESIZE));
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    slots_ = static_cast<T*>(p);
    free_.reserve(size_t(keep_free) + 1);
    unmade_.reserve(capacity);
    constructed_.assign(capacity, 0);
    live_per_page_.assign((bytes() + page_ - 1) / page_, 0);
  }
  ~Slab() {
    for (uint32_t i = 0; i < made_; ++i)
      if (constructed_[i]) slots_[i].~T();
    ::munmap(slots_, bytes());
  }
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  // A free object, or null when all `capacity` are in use.
  T* get() {
    T* t = nullptr;
    if (!free_.empty()) {
      t = slots_ + pop_lowest(free_);
    } else if (!unmade_.empty()) {
      t = construct(pop_lowest(unmade_));
    } else if (made_ < capacity_) {
      t = construct(made_++);
    } else {
      return nullptr;
    }
    ++in_use_;
    return t;
  }

  void put(T* t) {
    OFFLOAD_ASSERT(t >= slots_ && t < slots_ + made_ && constructed_[index(t)]);
    OFFLOAD_ASSERT(in_use_ > 0);
    --in_use_;
    push(free_, index(t));
    if (free_.size() <= keep_free_) return;
    // Over keep_free: the free object highest in the storage goes (a scan of
    // at most keep_free + 1, only while a burst drains).
    auto highest = std::max_element(free_.begin(), free_.end());
    const uint32_t i = *highest;
    *highest = free_.back();
    free_.pop_back();
    std::make_heap(free_.begin(), free_.end(), std::greater<>());
    destroy(i);
  }

  uint32_t in_use() const { return in_use_; }
  uint32_t made() const { return made_; }  // slots ever used (the high-water mark)
  uint32_t constructed() const { return constructed_count_; }
  uint32_t capacity() const { return capacity_; }

 private:
  size_t bytes() const { return size_t(capacity_ == 0 ? 1 : capacity_) * sizeof(T); }
  uint32_t index(const T* t) const { return uint32_t(t - slots_); }
  size_t first_page(uint32_t i) const { return size_t(i) * sizeof(T) / page_; }
  size_t last_page(uint32_t i) const { return (size_t(i + 1) * sizeof(T) - 1) / page_; }

  // Min-heaps of slot indexes (std::greater): the lowest comes out first.
  static void push(std::vector<uint32_t>& heap, uint32_t i) {
    heap.push_back(i);
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  }
  static uint32_t pop_lowest(std::vector<uint32_t>& heap) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const uint32_t i = heap.back();
    heap.pop_back();
    return i;
  }

  T* construct(uint32_t i) {
    OFFLOAD_ASSERT(i < capacity_ && !constructed_[i]);
    for (size_t p = first_page(i); p <= last_page(i); ++p) ++live_per_page_[p];
    constructed_[i] = 1;
    ++constructed_count_;
    return make_(&slots_[i]);
  }

  void destroy(uint32_t i) {
    slots_[i].~T();
    constructed_[i] = 0;
    --constructed_count_;
    for (size_t p = first_page(i); p <= last_page(i); ++p)
      if (--live_per_page_[p] == 0) ::madvise(reinterpret_cast<char*>(slots_) + p * page_, page_, MADV_DONTNEED);
    push(unmade_, i);
  }

  uint32_t capacity_;
  uint32_t keep_free_;
  std::function<T*(void*)> make_;
  size_t page_ = 4096;
  T* slots_ = nullptr;
  uint32_t made_ = 0;
  uint32_t in_use_ = 0;
  uint32_t constructed_count_ = 0;
  std::vector<uint32_t> free_;     // constructed and free (a min-heap): reused first
  std::vector<uint32_t> unmade_;   // below made_, destroyed (a min-heap): constructed again on use
  std::vector<uint8_t> constructed_;
  std::vector<uint16_t> live_per_page_;  // constructed objects touching each page
};

}  // namespace offload
