// The two kinds of connection a shard holds, and the exchange (one request
// and its response) that links them.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/buffers.h"
#include "http/http_parser.h"
#include "loop/list.h"
#include "proxy/spill.h"
#include "loop/completion.h"
#include "loop/timer_list.h"
#include "ops/access_log.h"

namespace offload {

// Provided-buffer groups: client requests, upstream responses.
inline constexpr uint16_t kClientGroup = 0;
inline constexpr uint16_t kUpstreamGroup = 1;
inline constexpr uint32_t kUpstreamBuffers = 128;
inline constexpr uint32_t kUpstreamBufferBytes = 16 * 1024;

struct Channel;
struct UpstreamGroup;
struct Listener;
class TcpPool;
struct ClientConn;

// Everything a request in progress needs. Pooled: a connection holds one only
// while a request is being received, forwarded or answered, so an idle
// keep-alive connection costs no more than its ClientConn.
struct Exchange {
  explicit Exchange(const http::Limits& limits) : parser(http::Parser::Kind::kRequest, limits) {}

  http::Parser parser;
  Block* in = nullptr;         // the head being parsed, later pipelined bytes
  BlockChain overflow;         // pipelined bytes beyond `in` (receiving paused)
  Block* forward = nullptr;    // the head sent upstream
  uint32_t forward_bytes = 0;
  BlockChain body;             // the decoded request body, up to body_buffer...
  Spill body_spill;            // ... and the rest in a temporary file (not over the ring)
  Block* bounce = nullptr;     // a piece of body_spill on its way upstream
  BlockChain out;              // the response waiting for the client
  Spill spill;
  Channel* up = nullptr;       // the upstream's ticket: the channel serving it, while one does
  TcpPool* server = nullptr;   // the server the balancer gave it to, until it is done there

  msghdr send_msg{};           // the client send in flight
  iovec send_iov[8]{};

  uint64_t response_bytes = 0; // raw bytes received from upstream
  uint64_t started_ms = 0;     // loop time of the request's first byte (request_duration)
  uint64_t queued_ms = 0;      // loop time it joined its group's queue (queue_wait)
  AccessRecord log;            // what its access log line needs (ops/access_log.h)
  http::Method method = http::Method::kGet;
  bool response_head_done = false;
  bool response_done = false;  // the whole response is in `out` / the spill
  bool sent_to_client = false; // some response byte reached the client
  bool retried = false;
  bool close_after = false;    // close the client when this response is sent
  bool client_http10 = false;
  bool dechunk = false;        // a chunked response decoded for an HTTP/1.0 client
  bool discard_input = false;  // answered with an error of ours: the rest of the input is dropped
  bool upgrade = false;        // an Upgrade request: the connection goes to the pass-through proxy
  bool connect = false;        // a CONNECT to a listed target (connect_to): the same
  bool handing_over = false;   // either, waiting for the client's receive to stop
  sockaddr_storage connect_to{};
  socklen_t connect_to_len = 0;
  std::string_view canned;     // the unsent part of that error (static text)
  std::string interim;         // interim (1xx) heads for the client, sent ahead of the response
  size_t interim_sent = 0;
  bool interim_pending() const { return interim_sent < interim.size(); }
  // Bytes the client has still to get: an error of ours, interim heads, the
  // response in memory or in its spill file.
  bool unsent() const { return !canned.empty() || interim_pending() || !out.empty() || spill.unread() > 0; }

  uint64_t body_bytes() const { return body.bytes() + body_spill.write_off; }
  // Sent once more on another channel at most, and only when that is safe.
  bool may_retry() const { return !retried && (method == http::Method::kGet || method == http::Method::kHead); }
};

enum class ClientState : uint8_t {
  kIdle,        // keep-alive, no request bytes yet
  kHead,        // receiving a request head
  kBody,        // receiving a request body
  kQueued,      // complete, waiting for an upstream channel
  kUpstream,    // on a channel: forwarded and/or being answered
  kLingering,   // response sent, write side shut, draining input before close
  kClosing,     // waiting for in-flight operations before the slot is freed
};

// A client's kinds of timeout (and its response's): each listener has its
// own list of each, so its timeouts can differ.
enum TimerKind : uint8_t {
  kTimerHeader,
  kTimerBody,
  kTimerKeepalive,
  kTimerSend,
  kTimerQueue,
  kTimerLinger,
  kTimerResponse,
  kClientTimerKinds,
};

struct ClientConn {
  Timer timer;
  Completion received;          // the multishot receive
  Completion sent;              // the send in flight
  Completion cancelled;         // a cancel of the receive
  ListNode queue_node;          // in a group's ready queue or a server's pending list while kQueued
  List<ClientConn, &ClientConn::queue_node>* queue = nullptr;  // which of them
  Listener* listener = nullptr;  // the socket it came in on: its limits, timeouts and group
  ListNode wait_node;           // among the ResponseSink's waiters: its response waits for memory or spill room
  Exchange* ex = nullptr;
  int fd = -1;
  uint32_t slot = 0;
  ClientState state = ClientState::kIdle;
  uint8_t inflight = 0;         // io_uring operations still to complete
  // Each direction's state: what comes in from the client, what goes out.
  struct {
    bool armed = false;         // the multishot receive is running
    bool paused = false;        // input is full: receiving stopped on purpose
    bool eof = false;           // the client's end of file (or error) came in
  } in;
  struct {
    bool busy = false;          // a send is in flight
  } out;
  bool handed_over = false;     // its socket went on as a tunnel (an upgrade): close without a shutdown
  uint8_t peer_family = 0;      // 0: not looked up yet
  uint8_t peer_addr[16] = {};
};

enum class UpstreamState : uint8_t { kFree, kConnecting, kIdle, kBusy, kClosing };

// What an exchange is on while an upstream serves it (Exchange::up): a TCP or
// Unix connection (UpstreamConn) or a ring channel (RingChannel, in
// upstream/ring_bus.h). The proxy only asks whether there is one; each
// Upstream knows its own kind.
struct Channel {};

// A connection to a TCP or Unix server, one of its TcpPool's slots.
struct UpstreamConn : Channel {
  UpstreamConn(uint32_t index, const http::Limits& limits)
      : parser(http::Parser::Kind::kResponse, limits), slot(index) {}

  Timer timer;
  TcpPool* pool = nullptr;      // the server it connects to
  Completion connected;         // the connect...
  Completion connect_timed_out; // ... and its linked timeout
  Completion sent;
  Completion received;          // the multishot receive
  Completion cancelled;         // a cancel of the receive
  ListNode idle_node;
  http::Parser parser;
  ClientConn* client = nullptr;
  msghdr send_msg{};
  iovec send_iov[16]{};
  uint64_t send_off = 0;        // request bytes sent so far
  uint64_t busy_since_ms = 0;   // when its current request was assigned
  uint64_t opened_ms = 0;       // when its connect was sent...
  uint64_t connected_ms = 0;    // ... and completed (its first request's connect time)
  uint64_t responses_before = 0; // its pool's responses read by then
  int fd = -1;
  uint32_t slot;
  uint32_t generation = 0;      // bumped at each open: a completion can tell its connection
  UpstreamState state = UpstreamState::kFree;
  uint8_t inflight = 0;
  // Each direction's state, as a client's: the response coming in, the
  // request going out.
  struct {
    bool armed = false;         // the multishot receive is running
    bool paused = false;        // the client's buffers are full: receive cancelled
  } in;
  struct {
    bool busy = false;          // a send of the request is in flight
  } out;
  // What the pool has learnt of the connection.
  bool used = false;            // has carried a request (for reuse counting)
  bool proven = false;          // has carried a response: the server serves it
  bool stall_noted = false;     // its first request went unanswered too long (counted once)
  bool reusable = true;         // may carry another request after this one
};

}  // namespace offload
