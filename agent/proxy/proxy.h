// An application proxy: what serves the connections of the listeners that
// name its kind (`proxy = "http"`; the pass-through proxy is the next kind).
// The shard knows its proxies only through this: a new kind is a new class.
#pragma once

#include <cstdint>

namespace offload {

struct Listener;

class Proxy {
 public:
  virtual ~Proxy() = default;
  // Takes a listener's connections (accepting from start() on).
  virtual void serve(Listener* l) = 0;
  virtual void start() = 0;
  // SIGTERM: idle connections close, the others after their exchange.
  virtual void drain() = 0;
  // Connections open: the drain ends when every proxy has none.
  virtual uint32_t active() const = 0;
  // After each batch of completions.
  virtual void after_batch() = 0;
  // Once a second: memory kept for reuse that nothing used since the last
  // call goes back; returns the bytes given back (the shard trims the heap).
  virtual uint64_t release_idle() = 0;
  // At teardown, while the upstreams still exist: every connection closed.
  virtual void release_all() = 0;
};

}  // namespace offload
