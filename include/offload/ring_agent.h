// The agent's end of the bus: a non-blocking object an event loop drives.
//
// It listens on the abstract socket "@offload-ring-NAME" (see ring.h). A
// server process (liboffload-server) attaches by connecting; the agent then
// creates a fresh region with as many channels as the server has workers
// (at most channels_max) and hands it over with the doorbells. Each channel
// is one "bus connection": the agent sends a complete request, then reads the
// response pieces back. When the server dies (its socket closes, or its
// heartbeat stops for dead_ms) the agent detaches and waits for the next
// attach, without restarting.
//
// Driving it from an event loop (every call is non-blocking):
//
//   fd                     when readable            then
//   listen_fd()            on_listen_ready(now)     (always registered)
//   peer_fd() (may be -1;  on_peer_ready(now)       (re-read peer_fd() after
//     changes on events)                             every Event != kNone)
//   doorbell_fd(ch)        on_doorbell(ch)          poll_response(ch) until it
//     (stable, ch <                                   returns 0; retry sends
//      channels_max)                                  that returned kFull
//   a timer, every <=250ms tick(now)
//
// The calls that return an Event say when a server attached (channels are
// usable: 0..channel_count()-1) or detached (every request in flight on any
// channel is lost: answer 502; last_error() says why). A loop may block only
// after poll_response() returned 0 on each channel it waits on (that call
// arms the doorbell) or try_send_request() returned kFull (which arms it for
// space); otherwise keep polling.
//
// Thread rules. One thread, the owner, makes the control calls: create,
// listen_fd, peer_fd, on_listen_ready, on_peer_ready, tick, detach,
// attached, channel_count, generation, server_pid, last_error, attachment,
// and the channel calls of RingAgent itself (on_doorbell, try_send_request,
// poll_response, release_response, channel_error: they act on the current
// attach). doorbell_fd, clear_doorbell and max_request_bytes read only what
// create() made and may be called from any thread.
//
// To serve channels from several threads (the agent's shards), the owner
// hands each thread the current attach (attachment(), a shared_ptr, passed
// under the caller's own lock), and each thread makes the channel calls of
// its own channels on that RingAttach: a channel's calls come from one thread
// at a time, different channels' from different threads at once. A detach
// (and the next attach) leaves the RingAttach it replaced alone: its region
// stays mapped until the last holder lets go, so a thread still in a call on
// it finishes safely; the server is gone, so nothing more will come on it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "offload/ring_codec.h"

namespace offload::ring {

struct RingAgentOptions {
  std::string name;                      // the bus NAME of shm:NAME
  uint32_t channels_max = 8;             // 1..OFFLOAD_RING_CHANNELS_MAX
  uint32_t ring_bytes = 256 * 1024;      // per ring, power of two
  uint32_t dead_ms = OFFLOAD_RING_DEAD_MS;  // server heartbeat silence = dead
  uint32_t handshake_ms = 1000;          // a connecting server must say hello by then
  // The region is always an anonymous memfd sealed against shrinking and
  // growing: liboffload-server refuses anything else (see ring.h, Attaching).
};

class RingAttach;

class RingAgent {
 public:
  enum class Event : uint8_t { kNone, kAttached, kDetached };
  enum class Send : uint8_t {
    kOk,         // the request is in the ring (the server was woken if asleep)
    kFull,       // no room now; the doorbell rings when the server frees some
    kTooLarge,   // can never fit: larger than max_request_bytes()
    kBadRequest, // a span of the request lies outside its head
    kDetached,   // no server attached, or ch >= channel_count()
    kFailed,     // the channel is corrupt (channel_error()); 502 and avoid it
  };

  // Creates the listening socket. nullptr with `error` set when the name is
  // invalid, the options are out of range, or the socket is taken (another
  // agent uses NAME). Start-up only.
  static std::unique_ptr<RingAgent> create(const RingAgentOptions& opts, std::string* error);
  ~RingAgent();
  RingAgent(const RingAgent&) = delete;
  RingAgent& operator=(const RingAgent&) = delete;

  int listen_fd() const;
  int peer_fd() const;  // the attached (or handshaking) server's socket, or -1
  Event on_listen_ready(uint64_t now_ms);
  Event on_peer_ready(uint64_t now_ms);
  // Heartbeats, the server's liveness check and the handshake timeout.
  Event tick(uint64_t now_ms);

  bool attached() const;
  uint32_t channel_count() const;   // 0 when detached
  uint64_t generation() const;      // +1 on every attach
  uint32_t server_pid() const;
  const std::string& last_error() const;  // why the last detach/refusal happened
  // The largest head + body + header index one request may have.
  uint64_t max_request_bytes() const;

  int doorbell_fd(uint32_t ch) const;  // ch < channels_max
  // Drains the doorbell (any thread); the caller then polls responses and
  // retries sends: on_doorbell() of this object or of a RingAttach.
  void clear_doorbell(uint32_t ch) const;
  // clear_doorbell(ch), then the current attach's on_doorbell(ch).
  void on_doorbell(uint32_t ch);

  // The current attach (null when detached), to hand to the threads that
  // serve its channels. The same object until the next detach.
  std::shared_ptr<RingAttach> attachment() const;

  Send try_send_request(uint32_t ch, const RequestOut& req);

  // 1: `out` holds the next response piece, its views valid until
  // release_response(ch); 0: nothing now (the doorbell is armed);
  // -EBADMSG: the channel is corrupt (channel_error(ch)) for the rest of this
  // attach; -EPIPE: not attached / no such channel.
  // Pieces: any interim kHeads (status 1xx, no body, not `end`: e.g. 103
  // Early Hints), one kHead (status, fields, first body bytes), then kBody
  // pieces, the last with `end`; or a kAbort (the server could not finish:
  // close the client). Checked: ids match the request sent, fields are safe
  // to copy. A 1xx head with `end` is passed on: the caller must not treat
  // it as a response (the agent answers 502).
  int poll_response(uint32_t ch, ResponsePiece* out);
  void release_response(uint32_t ch);
  const std::string& channel_error(uint32_t ch) const;

  // Detaches now (e.g. shutting down); Event kDetached is implied.
  void detach(std::string why);

 private:
  struct Impl;
  explicit RingAgent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The channels of one attach: its region (mapped as long as this object
// lives), the server's doorbells, and each channel's agent-side state. The
// calls mean what RingAgent's of the same names mean, for this attach only;
// after its detach they go on working on memory the server no longer reads
// (sends may succeed, nothing answers). Thread rules: see RingAgent.
class RingAttach {
 public:
  ~RingAttach();
  RingAttach(const RingAttach&) = delete;
  RingAttach& operator=(const RingAttach&) = delete;

  uint64_t generation() const;     // RingAgent::generation() of this attach
  uint32_t channel_count() const;  // fixed for its life

  // After RingAgent::clear_doorbell(ch): ends the channel's waits.
  void on_doorbell(uint32_t ch);
  RingAgent::Send try_send_request(uint32_t ch, const RequestOut& req);
  int poll_response(uint32_t ch, ResponsePiece* out);
  void release_response(uint32_t ch);
  const std::string& channel_error(uint32_t ch) const;

 private:
  friend class RingAgent;
  struct State;
  explicit RingAttach(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

}  // namespace offload::ring
