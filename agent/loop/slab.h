// Objects made once, up to a fixed count, never allocated on the data path.
//
// The storage for `capacity` objects is reserved at start-up (address space
// only: MAP_NORESERVE), and each slot is constructed the first time it is
// handed out, so memory follows the most objects ever in use at once, never
// more than capacity, and a burst costs no allocations the second time.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <functional>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "loop/check.h"

namespace offload {

template <typename T>
class Slab {
 public:
  // `make` constructs one object in the storage it is given (placement new).
  Slab(uint32_t capacity, std::function<T*(void*)> make) : capacity_(capacity), make_(std::move(make)) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    slots_ = static_cast<T*>(p);
    free_.reserve(capacity);
  }
  ~Slab() {
    for (uint32_t i = 0; i < made_; ++i) slots_[i].~T();
    ::munmap(slots_, bytes());
  }
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  // A free object, or null when all `capacity` are in use.
  T* get() {
    if (!free_.empty()) {
      T* t = free_.back();
      free_.pop_back();
      ++in_use_;
      return t;
    }
    if (made_ == capacity_) return nullptr;
    T* t = make_(&slots_[made_]);
    ++made_;
    ++in_use_;
    return t;
  }

  void put(T* t) {
    OFFLOAD_ASSERT(t >= slots_ && t < slots_ + made_);
    OFFLOAD_ASSERT(in_use_ > 0);
    --in_use_;
    free_.push_back(t);
  }

  uint32_t in_use() const { return in_use_; }
  uint32_t made() const { return made_; }
  uint32_t capacity() const { return capacity_; }

 private:
  size_t bytes() const { return size_t(capacity_ == 0 ? 1 : capacity_) * sizeof(T); }

  uint32_t capacity_;
  std::function<T*(void*)> make_;
  T* slots_ = nullptr;
  uint32_t made_ = 0;
  uint32_t in_use_ = 0;
  std::vector<T*> free_;
};

}  // namespace offload
