// The bus test rig: the real offload-agent with --upstream shm:NAME, the demo
// server in ring mode, and two servers that live inside the test process:
//
//   RecordingServer  liboffload-server (offload::Server) that records every
//                    request it is handed (method, target, fields, body) and
//                    answers a few routes (sizes, echo, streamed bodies of
//                    unknown length, a stall that a test releases).
//   HostileServer    speaks the raw ring protocol of include/offload/ring*.h
//                    itself and, for targets starting with "/bad", writes a
//                    corrupt response record of a chosen kind.
//
// Processes come from tests/integration/rig.h (rig::Child); every wait is
// bounded and processes are stopped by PID only.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "offload/server.h"
#include "rig.h"

namespace bus {

// A bus name no other test run uses: "bt-<pid>-<tag>-<counter>".
std::string unique_name(std::string_view tag);

std::string agent_path();
std::string demo_path();

// Byte i of the demo server's /size/N body.
std::string demo_pattern(uint64_t n);


// ------------------------------------------------------------------ agent

struct AgentOptions {
  int max_upstream = 4;
  int max_clients = -1;
  int queue_timeout_ms = -1;
  int response_timeout_ms = -1;
  std::string response_buffer;
  std::string response_spill_max;
  std::vector<std::string> extra;
};

class Agent {
 public:
  Agent() = default;
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;
  ~Agent();  // stops the agent, removes its temp dir

  bool start(const std::string& bus_name, const AgentOptions& o = {});
  uint16_t port() const { return port_; }
  uint16_t admin_port() const { return admin_port_; }
  const std::string& temp_dir() const { return temp_dir_; }
  rig::Child& child() { return child_; }
  const std::string& error() const { return error_; }

  // Waits until the agent has printed at least `n` "server pid ... attached"
  // lines (each attach prints one).
  bool wait_attached(int n, int timeout_ms);
  // Lines of its stderr that contain `needle`.
  int count_lines(std::string_view needle) const;

  std::optional<std::map<std::string, int64_t>> stats(std::string* error = nullptr);
  int64_t stat(const std::string& name);  // -1 when unreadable

 private:
  rig::Child child_;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
  std::string temp_dir_;
  std::string error_;
};

// offload-demo-server --ring NAME --workers N.
bool start_demo(rig::Child& child, const std::string& bus_name, int workers);

// ------------------------------------------------------------ recording

struct Seen {
  std::string method;
  std::string target;
  int version_minor = 1;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string body;
  std::string raw_head;
  // Values of every field named `name` (case-insensitive), in order.
  std::vector<std::string> all(std::string_view name) const;
  bool has(std::string_view name) const { return !all(name).empty(); }
  std::string field(std::string_view name) const;  // first value, or ""
};

// Routes:
//   /size/N     N bytes of rig::pattern, length announced
//   /stream/N   N bytes of rig::pattern written in 1000-byte writes without a
//               length (over the stream threshold: unknown length upstream)
//   /echo...    the request body; X-Seen-Length: its length
//   /stall...   waits until release_stalls() (at most 20 s), then "late\n"
//   otherwise   "ok\n"
class RecordingServer {
 public:
  explicit RecordingServer(std::string bus_name, unsigned workers = 2, uint32_t stream_bytes = 16 * 1024);
  // requests_served() of the library.
  uint64_t served() const { return server_->requests_served(); }
  ~RecordingServer();
  RecordingServer(const RecordingServer&) = delete;
  RecordingServer& operator=(const RecordingServer&) = delete;

  void start();
  void stop();  // releases stalls, ends serve(), joins

  std::vector<Seen> seen() const;
  // The first request whose target is `target`, waiting up to `timeout_ms`.
  std::optional<Seen> wait_for(std::string_view target, int timeout_ms) const;
  int stalled_now() const { return stalled_.load(); }
  void release_stalls();

 private:
  void handle(const offload::Request& req, offload::Response& res);

  std::string name_;
  unsigned workers_;
  std::unique_ptr<offload::Server> server_;
  std::thread thread_;
  std::atomic<int> stalled_{0};
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  std::vector<Seen> seen_;
  bool released_ = false;
};

// -------------------------------------------------------------- hostile

enum class Corruption {
  kLengthPastRingEnd,  // record header len far larger than the ring
  kLengthTooShort,     // record header len 4 (< the 8-byte header)
  kImpossibleHead,     // producer index jumps past the consumer by > ring size
  kFieldOutOfBounds,   // well-framed head record whose field span lies outside it
  kWrongId,            // a well-formed response for a request id never sent
  kHeaderInjection,    // a field value carrying CR LF
};
const char* to_string(Corruption c);

class HostileServer {
 public:
  HostileServer();
  ~HostileServer();
  HostileServer(const HostileServer&) = delete;
  HostileServer& operator=(const HostileServer&) = delete;

  // Attaches with `channels` channels (the raw handshake) and starts serving:
  // targets starting with "/bad" get the corrupt answer `kind`, others a
  // well-formed 200 "fine\n". False with error() on failure.
  // `extra_bells`: after corrupting, ring the agent's doorbell of that
  // channel this many more times, 20 ms apart.
  bool start(const std::string& bus_name, unsigned channels, Corruption kind, int extra_bells = 0);
  // Closes the bus connection (the agent sees the server leave).
  void stop();
  unsigned channels() const { return channels_; }
  int corrupted() const { return corrupted_.load(); }
  int answered() const { return answered_.load(); }
  const std::string& error() const { return error_; }

 private:
  void run();

  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> corrupted_{0};
  std::atomic<int> answered_{0};
  unsigned channels_ = 0;
  Corruption kind_ = Corruption::kLengthPastRingEnd;
  int extra_bells_ = 0;
  std::string error_;
};

}  // namespace bus
