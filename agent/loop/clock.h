// The time the loop runs on, in milliseconds. Injected so that every timeout
// can be unit-tested with a TestClock that moves only when the test says.
#pragma once

#include <time.h>

#include <cstdint>

namespace offload {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t now_ms() const = 0;
};

// CLOCK_MONOTONIC: never jumps with wall-clock changes.
class SteadyClock final : public Clock {
 public:
  uint64_t now_ms() const override {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
  }
};

class TestClock final : public Clock {
 public:
  explicit TestClock(uint64_t start_ms = 1000) : now_(start_ms) {}
  uint64_t now_ms() const override { return now_; }
  void advance(uint64_t ms) { now_ += ms; }

 private:
  uint64_t now_;
};

}  // namespace offload
