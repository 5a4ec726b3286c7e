#include "proxy/request_queue.h"

#include "loop/check.h"

namespace offload {

void set_state(ClientConn* c, ClientState s, Counters& counters) {
  OFFLOAD_ASSERT(s != ClientState::kQueued);  // queue_on is the way in
  if (c->state == ClientState::kQueued) {
    OFFLOAD_ASSERT(c->queue != nullptr);
    c->queue->remove(c);  // asserts that it was there
    c->queue = nullptr;
    drop(counters.queue_length);
  }
  OFFLOAD_ASSERT(!c->queue_node.linked() && c->queue == nullptr);
  c->state = s;
}

void queue_on(ClientConn* c, RequestQueue& q, bool front, Counters& counters) {
  OFFLOAD_ASSERT(c->state != ClientState::kQueued && !c->queue_node.linked());
  OFFLOAD_ASSERT(c->fd >= 0 && c->ex != nullptr && c->ex->up == nullptr);
  c->state = ClientState::kQueued;
  c->queue = &q;
  if (front) q.push_front(c);
  else q.push_back(c);
  bump(counters.queue_length);
}

ClientConn* take_from(RequestQueue& q, Counters& counters) {
  ClientConn* c = q.front();
  if (c == nullptr) return nullptr;
  OFFLOAD_ASSERT(c->state == ClientState::kQueued && c->queue == &q && c->fd >= 0 && c->ex != nullptr);
  set_state(c, ClientState::kUpstream, counters);
  return c;
}

}  // namespace offload
