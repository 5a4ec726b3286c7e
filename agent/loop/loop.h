// The loop: one io_uring, the timers, and the clock. It knows completions and
// timers and nothing else: a CQE goes to the Completion its SQE named, an
// expired timer to the handler it was bound to, and every component (a proxy,
// a pool, the bus) submits and handles its own operations.
#pragma once

#include <cstdint>
#include <vector>

#include "loop/clock.h"
#include "loop/completion.h"
#include "loop/timer_list.h"
#include "loop/uring.h"
#include "ops/log.h"

namespace offload {

class Loop {
 public:
  Loop(const Clock& clock, uint32_t sq_entries, uint32_t cq_entries);
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  Uring& uring() { return uring_; }
  const std::string& features() const { return uring_.features(); }

  // A free SQE whose completion goes to `c` (bound beforehand).
  io_uring_sqe* sqe(Completion& c);
  // A free SQE whose result nobody needs (user_data 0: dropped on arrival).
  io_uring_sqe* sqe_unwatched();
  // Cancels every operation submitted with `target`; the cancel's own result
  // goes to `done` (null: unwatched).
  void cancel(const Completion& target, Completion* done);

  // The time of the current batch: read from the clock once after each wait,
  // so everything handled in one batch sees the same time.
  uint64_t now_ms() const { return now_ms_; }
  void refresh_clock() { now_ms_ = clock_.now_ms(); }

  // Timers. A list is registered once; its timers expire in turn().
  void add_timers(TimerList& list) { timer_lists_.push_back(&list); }
  void arm(Timer& t, TimerList& list) { list.arm(&t, now_ms_); }
  uint64_t next_deadline_ms() const;
  // Fires every timer due now; returns how many fired.
  size_t expire();

  // One turn: submit, wait for a completion or until the next deadline (or
  // `wake_by_ms`, whichever is first; at most `max_wait_ms` of real time),
  // handle every CQE, then fire the timers that are due. Returns the CQEs
  // handled.
  size_t turn(uint64_t wake_by_ms = UINT64_MAX, uint64_t max_wait_ms = 1000);

  // Hands one CQE to its Completion (public so that tests can feed CQEs).
  static void dispatch(const io_uring_cqe& cqe);

 private:
  const Clock& clock_;
  Uring uring_;
  uint64_t now_ms_ = 0;
  std::vector<TimerList*> timer_lists_;
  LogLimiter wait_errors_;  // a failing wait fails every turn: one line per 5 s
};

}  // namespace offload
