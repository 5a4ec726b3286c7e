#include "loop/loop.h"

#include <cerrno>
#include <cstring>


#include "loop/check.h"
#include "ops/log.h"

namespace offload {

Loop::Loop(const Clock& clock, uint32_t sq_entries, uint32_t cq_entries)
    : clock_(clock), uring_(sq_entries, cq_entries), now_ms_(clock.now_ms()) {}

io_uring_sqe* Loop::sqe(Completion& c) {
  OFFLOAD_ASSERT(c.bound());
  io_uring_sqe* s = uring_.sqe();
  io_uring_sqe_set_data(s, &c);
  return s;
}

io_uring_sqe* Loop::sqe_unwatched() {
  io_uring_sqe* s = uring_.sqe();
  io_uring_sqe_set_data64(s, 0);
  return s;
}

void Loop::cancel(const Completion& target, Completion* done) {
  io_uring_sqe* s = done != nullptr ? sqe(*done) : sqe_unwatched();
  io_uring_prep_cancel(s, const_cast<Completion*>(&target), 0);
}

uint64_t Loop::next_deadline_ms() const {
  uint64_t d = UINT64_MAX;
  for (const TimerList* list : timer_lists_) d = std::min(d, list->next_deadline_ms());
  return d;
}

size_t Loop::expire() {
  size_t fired = 0;
  for (TimerList* list : timer_lists_)
    while (Timer* t = list->pop_expired(now_ms_)) {
      t->fire();
      ++fired;
    }
  return fired;
}

void Loop::dispatch(const io_uring_cqe& cqe) {
  auto* c = static_cast<Completion*>(io_uring_cqe_get_data(&cqe));
  if (c != nullptr) c->complete(cqe);
}

size_t Loop::turn(uint64_t wake_by_ms, uint64_t max_wait_ms) {
  const uint64_t deadline = std::min(next_deadline_ms(), wake_by_ms);
  uint64_t wait_ms = deadline > now_ms_ ? deadline - now_ms_ : 0;
  wait_ms = std::min(wait_ms, max_wait_ms);
  __kernel_timespec ts{};
  ts.tv_sec = int64_t(wait_ms / 1000);
  ts.tv_nsec = int64_t(wait_ms % 1000) * 1000000;
  uring_.publish_buffers();
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(uring_.ring(), &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
    log_limited(wait_errors_, now_ms_, LogLevel::kError, "io_uring wait: {}", std::strerror(-rc));
  refresh_clock();
  unsigned head;
  unsigned seen = 0;
  io_uring_for_each_cqe(uring_.ring(), head, cqe) {
    dispatch(*cqe);
    ++seen;
  }
  io_uring_cq_advance(uring_.ring(), seen);
  expire();
  return seen;
}

}  // namespace offload
