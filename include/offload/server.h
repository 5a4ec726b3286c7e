// liboffload-server: serve HTTP requests that the offload agent hands over the
// shared-memory bus (ring.h), without owning a single client connection.
//
//   offload::Server srv{"app"};               // the agent runs --upstream shm:app
//   srv.serve([](const offload::Request& req, offload::Response& res) {
//     res.set_status(200);
//     res.add_header("Content-Type", "text/plain");
//     res.write("hello\n");
//   }, 4);                                     // 4 workers, one channel each
//
// The request arrives complete and already parsed by the agent: method,
// target, header fields and body are views, nothing is parsed again. The
// response is buffered and sent when the handler returns; a body larger than
// the stream threshold goes out in several records as the handler writes it,
// paced by the space in the ring.
//
// A server with its own event loop uses attach() / doorbell_fd() /
// serve_ready() instead of serve().
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "offload/ring.h"
#include "offload/ring_codec.h"

namespace offload {

using ring::Field;

// One request. Views stay valid until the handler returns.
// Thread rules: used by the worker that received it only.
class Request {
 public:
  std::string_view method() const { return in_.method_text; }
  uint8_t method_code() const { return in_.method; }  // OFFLOAD_METHOD_*
  std::string_view target() const { return in_.target; }
  int version_minor() const { return in_.version_minor; }
  std::span<const Field> headers() const { return fields_; }
  // The first field named `name` (case-insensitive), if any.
  std::optional<std::string_view> header(std::string_view name) const;
  std::string_view body() const { return in_.body; }
  // The head as forwarded by the agent (request line, fields, empty line).
  std::string_view raw_head() const { return in_.text.substr(0, in_.text.size() - in_.body.size()); }
  uint64_t id() const { return in_.id; }

 private:
  friend class ChannelWorker;
  ring::RequestIn in_;
  std::vector<Field> fields_;
};

class ChannelWorker;

// The response a handler fills in. Status 200 unless set.
// Thread rules: used by the worker that created it only.
class Response {
 public:
  // 200..999. False for anything else, and the response becomes a 500: a
  // 1xx status cannot be a final response (use send_interim for those).
  bool set_status(int status);
  // Sends an interim response now, ahead of the final one: `status` 102..199
  // but not 101 (e.g. 103 Early Hints), with the fields added so far (which
  // are then cleared for the final response). False (nothing sent) for
  // another status, after the final head went out, or when it cannot be
  // delivered. The agent passes it to HTTP/1.1 clients only.
  bool send_interim(int status);
  // False (and ignored) for an invalid name or value, or a framing field
  // (Content-Length, Transfer-Encoding, Connection: the agent frames).
  bool add_header(std::string_view name, std::string_view value);
  // Announces the body length before streaming; without it, a body that
  // fits the buffer gets its exact length and a larger one streams with an
  // unknown length (the agent then uses chunked framing toward the client).
  void set_content_length(uint64_t bytes);
  // Appends body bytes. False once the response cannot be delivered (the
  // agent went away, or more bytes than set_content_length announced).
  // For a HEAD request the bytes are only counted: the length is announced
  // (set_content_length, else what was written) and no body is sent.
  bool write(std::string_view bytes);

 private:
  friend class ChannelWorker;
  explicit Response(ChannelWorker* w) : worker_(w) {}
  void reset(uint64_t id, bool head_request);

  ChannelWorker* worker_;
  uint64_t id_ = 0;
  int status_ = 200;
  std::string text_;                  // field names and values
  std::vector<offload_field> fields_;
  std::string body_;                  // not yet sent
  uint64_t content_length_ = OFFLOAD_LENGTH_UNKNOWN;
  uint64_t body_sent_ = 0;
  bool head_sent_ = false;
  bool broken_ = false;
  bool head_request_ = false;
  uint64_t head_written_ = 0;         // HEAD: body bytes the handler wrote, counted only
};

using Handler = std::function<void(const Request&, Response&)>;

struct ServerOptions {
  // Busy-poll before sleeping on the doorbell. 0 (sleep at once) unless the
  // server has cores to itself: on shared cores spinning workers take the
  // CPU the others need (bench/ring/whole_path.sh: 0.15x vs 0.56x of direct).
  uint32_t spin_us = 0;
  bool reattach = true;            // serve(): wait for the agent to come back
  uint32_t stream_bytes = 64 * 1024;  // body buffered before streaming starts
  // The uid the agent must run as (checked with SO_PEERCRED on attach: any
  // local process could bind the bus name). -1: this process's euid. Root
  // is always accepted (it could take this process over anyway).
  int64_t agent_uid = -1;
};

class Server {
 public:
  // `name` is the bus NAME (the agent's shm:NAME); a leading '/' is ignored.
  explicit Server(std::string name, ServerOptions opts = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Attaches and serves on `workers` threads (one channel each; the agent may
  // grant fewer) until stop(). With reattach, waits for the agent when it is
  // not there and re-attaches after it goes away. Returns 0 after stop(), or
  // a negative errno (with error()) for a problem retrying cannot fix.
  int serve(Handler handler, unsigned workers);
  // Ends serve() (from any thread; async-signal-safe). Handlers running now
  // finish first.
  void stop();

  // ---- for servers with their own loop (instead of serve()) ----
  // Connects and attaches with `channels` channels; 0 or -errno (error()).
  // Starts the heartbeat thread. -ECONNREFUSED: no agent listening. -EPERM:
  // the peer was refused (not the expected uid, a region that is not a memfd
  // sealed against shrinking and growing, or doorbells that are not eventfds)
  // or it refused us; serve() retries.
  int attach(unsigned channels);
  unsigned channel_count() const;
  // Readable when channel `ch` may have work (or space freed for a response
  // being streamed). Read it (8 bytes) or call serve_ready, which drains it.
  int doorbell_fd(unsigned ch) const;
  // Serves the requests waiting on `ch` now; returns how many, or -EPIPE when
  // detached (the agent went away: call detach()), -EBADMSG when the channel
  // is corrupt. After 0 the doorbell is armed. Blocks only while a response
  // waits for ring space.
  int serve_ready(unsigned ch, const Handler& handler);
  bool attached() const;  // false once the agent went away
  void detach();

  const std::string& error() const;
  uint64_t requests_served() const;
  uint64_t attach_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace offload
