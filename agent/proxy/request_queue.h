// Where complete requests wait for an upstream: a group's queue, or the
// pending list of the server the balancer gave one to. A client is in a queue
// exactly while it is kQueued: queue_on() is the only way in, set_state()
// (every change out of kQueued) and take_from() the ways out, so no ending
// path can leave a finished exchange behind in a queue.
#pragma once

#include "loop/list.h"
#include "ops/counters.h"
#include "proxy/connection.h"

namespace offload {

using RequestQueue = List<ClientConn, &ClientConn::queue_node>;

// Sets a client's state, taking it out of its queue when it leaves kQueued.
void set_state(ClientConn* c, ClientState s, Counters& counters);
// A complete request joins `q` (at the front: it was there before).
void queue_on(ClientConn* c, RequestQueue& q, bool front, Counters& counters);
// The oldest client waiting in `q`, now kUpstream; or null.
ClientConn* take_from(RequestQueue& q, Counters& counters);

}  // namespace offload
