// The upstream side as the HTTP proxy sees it. Each listener names a group,
// and each group is served by one Upstream: TcpUpstream for TCP and Unix
// servers (upstream/tcp_upstream.h), RingBus for the shared-memory bus
// (upstream/ring_bus.h). A new kind of upstream is a new class, not a case.
#pragma once

#include <cstdint>
#include <string_view>

namespace offload {

struct ClientConn;
struct Exchange;

class Upstream {
 public:
  virtual ~Upstream() = default;
  // A complete request. It waits in the group's queue, then goes onto a
  // channel, which the exchange holds as its ticket (Exchange::up) until the
  // response is in; the upstream answers through the proxy
  // (HttpProxy::on_response_done, fail_exchange).
  virtual void submit(ClientConn* c) = 0;
  // Cancels the ticket: the client is going while ex->up is set.
  virtual void abandon(ClientConn* c) = 0;
  // The client drained some of its response: a paused read may go on.
  virtual void resume(Exchange* ex) = 0;
  // The exchange is done with its server (answered, failed or gone).
  virtual void leave(Exchange* ex) = 0;
  // What a request that waited in vain is answered (503, 502, 504).
  virtual int queue_timeout_status(const ClientConn* c) const = 0;
  // The largest request it can carry: UINT64_MAX when requests stream (TCP,
  // Unix), else the ring's record size.
  virtual uint64_t request_bytes_max(const ClientConn* c) const = 0;
  // The Host of a request that has none (HTTP/1.0).
  virtual std::string_view default_host(const ClientConn* c) const = 0;
};

}  // namespace offload
