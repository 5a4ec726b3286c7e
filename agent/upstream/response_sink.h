// Where the bytes of a response (and of a large request body) go while the
// client is slower than the server: memory up to response_buffer, then an
// unlinked temporary file up to response_spill_max, within the shard's
// shared budgets (buffer memory, spill files and bytes); past all of them,
// back-pressure on the server's connection. The one place that decides
// where bytes go, that says whether the server may be read on, that keeps
// the responses waiting for budget to come back, and that counts responses
// by class. It owns no socket: the proxy and the upstreams ask it.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "loop/list.h"
#include "loop/loop.h"
#include "ops/counters.h"
#include "proxy/buffers.h"
#include "proxy/connection.h"
#include "proxy/spill.h"
#include "ops/log.h"

namespace offload {

class ResponseSink {
 public:
  struct Settings {
    uint64_t response_buffer = 256 * 1024;
    uint64_t response_spill_max = 1ull << 30;
    uint64_t body_buffer = 64 * 1024;
    std::string temp_dir = "/tmp";
  };

  ResponseSink(const Loop& loop, BlockPool& data_pool, SpillBudget& budget, Counters& counters, Settings settings)
      : loop_(loop), data_pool_(data_pool), budget_(budget), counters_(counters), settings_(std::move(settings)) {}

  // Response bytes for the client: memory up to response_buffer (once the
  // head is out of the way), then the spill file. False when neither has
  // room (buffer memory exhausted).
  bool append(Exchange* ex, const char* data, size_t len);
  // Request body bytes: memory up to body_buffer, then a spill file unless
  // `may_spill` is false (the ring carries a request as one record). False
  // when neither has room.
  bool append_body(Exchange* ex, const char* data, size_t len, bool may_spill);

  // May the server's connection be read on for this exchange now?
  bool read_allowed(const Exchange* ex) const;
  // Do the next bytes go to the spill file (they must stay in order behind
  // what is there)?
  bool spill_takes(const Exchange* ex) const;
  // Goes on in a temporary file; false when this response must stay in
  // memory (spilling off, the budget spent, or temp_dir refusing the file).
  bool start_spill(Exchange* ex);

  // The client drained memory: the next part of the spill file comes in.
  enum class Refill { kNothing, kDone, kNoMemory, kFailed };
  Refill refill(Exchange* ex);

  // Responses waiting for budget to come back (memory or spill room). Each
  // waiter is bounded meanwhile by its own send timer (the caller's).
  bool wait(ClientConn* c);  // false: it was already waiting
  void forget(ClientConn* c) { waiters_.remove_if_linked(c); }
  bool waiting(const ClientConn* c) const { return c->wait_node.linked(); }
  // Wakes every waiter once some budget is back (bounded: only those there
  // at the start; one that finds none again waits again).
  template <typename Resume>
  void wake(Resume resume);

  // Every response the client is sent, the server's or the agent's own.
  void count(int status);

  const Settings& settings() const { return settings_; }

 private:
  bool open_spill(Spill& spill, std::atomic<uint64_t>& opened);
  bool budget_back() const;

  const Loop& loop_;
  BlockPool& data_pool_;
  SpillBudget& budget_;
  Counters& counters_;
  Settings settings_;
  List<ClientConn, &ClientConn::wait_node> waiters_;
  LogLimiter log_limiter_;
};

template <typename Resume>
void ResponseSink::wake(Resume resume) {
  if (waiters_.empty() || !budget_back()) return;
  size_t n = waiters_.size();
  while (n-- > 0) resume(waiters_.pop_front());
}

}  // namespace offload
