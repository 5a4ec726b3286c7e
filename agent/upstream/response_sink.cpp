#include "upstream/response_sink.h"

#include <cerrno>
#include <cstring>


namespace offload {

bool ResponseSink::append(Exchange* ex, const char* data, size_t len) {
  if (ex->spill.fd < 0 && ex->response_head_done && ex->out.bytes() + len > settings_.response_buffer)
    (void)start_spill(ex);
  if (!spill_takes(ex)) return ex->out.append(data_pool_, data, len);
  return spill_write(ex->spill, data, len);
}

// A few large uploads cannot take the memory that small requests need.
bool ResponseSink::append_body(Exchange* ex, const char* data, size_t len, bool may_spill) {
  Spill& sp = ex->body_spill;
  if (sp.fd < 0 && !sp.refused && may_spill && ex->body.bytes() + len > settings_.body_buffer)
    (void)open_spill(sp, counters_.spilled_bodies);  // refused: the body stays in memory
  if (sp.fd >= 0) return spill_write(sp, data, len);
  return ex->body.append(data_pool_, data, len);
}

bool ResponseSink::read_allowed(const Exchange* ex) const {
  if (ex->spill.fd >= 0) {
    if (ex->spill.unread() >= settings_.response_spill_max) return false;
    if (budget_.has_room()) return true;
    // The shared room is spent: a response whose own file is drained goes on
    // through memory, so it never waits for other clients to read theirs.
    return ex->spill.unread() == 0 && ex->out.bytes() < settings_.response_buffer;
  }
  if (settings_.response_spill_max == 0 || ex->spill.refused || !budget_.can_open())
    return ex->out.bytes() < settings_.response_buffer;  // memory only
  return true;
}

bool ResponseSink::spill_takes(const Exchange* ex) const {
  return ex->spill.fd >= 0 && (ex->spill.unread() > 0 || budget_.has_room());
}

bool ResponseSink::start_spill(Exchange* ex) {
  if (ex->spill.fd >= 0) return true;
  if (settings_.response_spill_max == 0 || ex->spill.refused) return false;
  return open_spill(ex->spill, counters_.spilled_responses);
}

// Opens a spill file within the shared budget, counting it in `opened`, or
// the refusal (a temp_dir that fails is logged, at most every 5 s; a spent
// budget is not news).
bool ResponseSink::open_spill(Spill& spill, std::atomic<uint64_t>& opened) {
  if (!spill_open(spill, budget_, settings_.temp_dir)) {
    bump(counters_.spill_refused);
    if (errno != ENOSPC)
      log_limited(log_limiter_, loop_.now_ms(), LogLevel::kError, "spill file in {}: {}", settings_.temp_dir,
                  std::strerror(errno));
    return false;
  }
  bump(opened);
  return true;
}

ResponseSink::Refill ResponseSink::refill(Exchange* ex) {
  Spill& sp = ex->spill;
  if (sp.fd < 0 || sp.unread() == 0) return Refill::kNothing;
  Block* b = ex->out.writable_tail(data_pool_, data_pool_.block_bytes());
  if (b == nullptr) return Refill::kNoMemory;  // retried when some is given back
  long got = spill_read(sp, b->data() + b->tail, b->writable());
  if (got <= 0) return Refill::kFailed;
  ex->out.commit(uint32_t(got));
  return Refill::kDone;
}

bool ResponseSink::wait(ClientConn* c) {
  if (c->wait_node.linked()) return false;
  bump(counters_.budget_waits);
  waiters_.push_back(c);
  return true;
}

bool ResponseSink::budget_back() const {
  const bool memory = data_pool_.bytes_in_use() + data_pool_.block_bytes() <= data_pool_.budget_bytes();
  return memory || budget_.has_room();
}

void ResponseSink::count(int status) {
  switch (status / 100) {
    case 1: bump(counters_.responses_1xx); break;
    case 2: bump(counters_.responses_2xx); break;
    case 3: bump(counters_.responses_3xx); break;
    case 4: bump(counters_.responses_4xx); break;
    default: bump(counters_.responses_5xx); break;
  }
}

}  // namespace offload
