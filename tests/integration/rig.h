// The integration test rig: child processes (the agent, the recording
// backend, nginx), raw TCP clients with timeouts, an HTTP/1.1 response
// reader, and the backend's record. Every wait here is bounded; nothing
// throws on the data path: calls report failure in their result so a test can
// say what went wrong.
#pragma once

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

#include <sys/types.h>

#include "pattern.h"

namespace rig {

// CLOCK_MONOTONIC microseconds: the same clock the recording backend records in.
int64_t now_us();
int64_t now_ms();

// The most a loopback TCP connection's kernel buffers can hold, both ends
// together (tcp_rmem and tcp_wmem maxima): a response larger than this
// cannot be absorbed by the kernel while the reader reads nothing.
uint64_t loopback_buffering_max();

// Raises RLIMIT_NOFILE to its hard limit; returns the soft limit now in force.
uint64_t raise_fd_limit();

// ---------------------------------------------------------------- processes

// A child process whose stderr is captured line by line in the background.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();  // SIGKILL if still running, then reaps it

  // Starts `path` with `args` (not including argv[0]); stdout goes to /dev/null
  // unless `keep_stdout`. False (and `error()`) if it could not be started.
  bool start(const std::string& path, const std::vector<std::string>& args, bool keep_stdout = false);

  // Waits up to `timeout_ms` for a stderr line containing `needle` (also lines
  // already seen). Returns the line, or nullopt on timeout or exit.
  std::optional<std::string> wait_for_line(std::string_view needle, int timeout_ms);

  // Sends `sig`; then waits up to `timeout_ms` for the exit.
  void signal(int sig);
  // Exit code (or 128 + signal); nullopt if still running after `timeout_ms`.
  std::optional<int> wait_exit(int timeout_ms);
  // SIGTERM, then SIGKILL after `term_timeout_ms`. Returns the exit code as above.
  int stop(int term_timeout_ms = 5000);

  bool running();
  pid_t pid() const { return pid_; }
  std::string stderr_text() const;
  std::vector<std::string> stderr_lines() const;
  const std::string& error() const { return error_; }

 private:
  void reader_loop(int fd);

  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::string error_;
  mutable std::mutex mutex_;
  std::string stderr_;
  bool stderr_closed_ = false;
  std::thread reader_;
};

// The port at the end of "...on 127.0.0.1:PORT"; 0 if none.
uint16_t port_from_line(std::string_view line);

// A loopback TCP port that nothing listens on right now (bound, then closed).
uint16_t unused_port();

// ------------------------------------------------------------------ clients

struct Response {
  int status = 0;
  std::string version;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool chunked = false;
  std::vector<int> interim;  // the statuses of 1xx responses that came first, in order
  // A header's value (first match, case-insensitive); empty if absent.
  std::string header(std::string_view name) const;
  bool has_header(std::string_view name) const;
  // True when "Connection: close" is present.
  bool closes() const;
};

// An incremental HTTP/1.1 response parser. feed() consumes what it has
// understood from the front of `in`.
class ResponseParser {
 public:
  enum class State { kNeedMore, kDone, kError };
  explicit ResponseParser(bool head_request = false) : head_request_(head_request) {}
  State feed(std::string& in, bool eof);
  Response& response() { return response_; }
  const std::string& error() const { return error_; }
  uint64_t body_received() const { return response_.body.size(); }

 private:
  State parse_head(std::string& in);
  State parse_body(std::string& in, bool eof);
  State parse_chunked(std::string& in);
  State fail(std::string why);

  bool head_request_;
  enum class Phase { kHead, kLength, kChunkSize, kChunkData, kChunkCrlf, kTrailers, kUntilClose, kDone } phase_ =
      Phase::kHead;
  uint64_t remaining_ = 0;
  std::vector<int> interim_;
  Response response_;
  std::string error_;
};

// The outcome of reading one response.
struct ReadResult {
  std::optional<Response> response;  // set when complete
  std::string error;                 // why not
  bool closed = false;               // the peer closed (EOF or reset) during the read
  int64_t first_byte_us = 0;
  int64_t done_us = 0;
  int reads = 0;
  explicit operator bool() const { return response.has_value(); }
};

// A client connection: a socket with its own input buffer, so pipelined
// responses can be read one after the other.
class Client {
 public:
  Client() = default;
  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Connects to 127.0.0.1:port (::1 with `ipv6`) within `timeout_ms`. rcvbuf
  // > 0 sets SO_RCVBUF before connecting. False with `error()` on failure.
  bool connect(uint16_t port, int timeout_ms = 3000, int rcvbuf = 0, bool ipv6 = false);
  // Starts a non-blocking connect (for many clients at once); finish_connect() completes it.
  bool start_connect(uint16_t port, int rcvbuf = 0, bool ipv6 = false);
  // Connects from this local address (such as 127.0.0.7: all of 127.0.0.0/8
  // is loopback), so one test can be many sources. Empty: the kernel's pick.
  void set_source(std::string address) { source_ = std::move(address); }

  bool send_all(std::string_view data, int timeout_ms = 5000);
  // Sends `chunk` bytes at a time with `delay_ms` between them.
  bool send_trickle(std::string_view data, size_t chunk, int delay_ms, int timeout_ms = 60000);

  ReadResult read_response(int timeout_ms = 5000, bool head_request = false);
  // Reads at most `chunk` bytes every `interval_ms` until the response is complete.
  ReadResult read_response_slowly(size_t chunk, int interval_ms, int timeout_ms, bool head_request = false);
  // True when the peer closes (EOF or reset) within `timeout_ms`; whatever
  // arrives before that is appended to `got`.
  bool wait_closed(int timeout_ms, std::string* got = nullptr);

  // One recv() of at most `max` bytes into the buffer, waiting up to timeout_ms.
  // >0 bytes, 0 EOF, -1 timeout, -2 error.
  int recv_some(size_t max, int timeout_ms);

  int fd() const { return fd_; }
  std::string& buffer() { return in_; }
  const std::string& error() const { return error_; }
  void close();
  // Half-closes the write side (FIN), keeps reading.
  void shutdown_write();

 private:
  int fd_ = -1;
  std::string in_;
  std::string error_;
  std::string source_;
};

// A GET over a fresh connection.
ReadResult http_get(uint16_t port, std::string_view path, int timeout_ms = 5000);
std::string get_request(std::string_view path, std::string_view extra_headers = "");

// ---------------------------------------------------------------------- json

// A small JSON value: enough to read the backend's record and agent stats.
struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool boolean = false;
  double number = 0;
  int64_t integer = 0;  // the number when it is integral
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;

  const Json* get(std::string_view key) const;
  int64_t int_or(std::string_view key, int64_t fallback) const;
  std::string str_or(std::string_view key, std::string fallback) const;
  bool bool_or(std::string_view key, bool fallback) const;

  // Parses `text`; nullopt with `error` on malformed input.
  static std::optional<Json> parse(std::string_view text, std::string* error = nullptr);
};

// ------------------------------------------------------------ the recording

struct RecordedRequest {
  int index = 0;
  std::string method, target, version;
  bool complete = false;
  std::string error;
  uint64_t bytes = 0;
  std::string raw;
  std::string body;
  uint64_t body_bytes = 0;
  int reads = 0;
  int64_t first_byte_us = 0, last_byte_us = 0;
  int status = 0;
  int64_t response_start_us = 0, response_done_us = 0;
};

struct RecordedConnection {
  uint64_t id = 0;
  int64_t opened_us = 0, served_us = 0, closed_us = 0;
  uint64_t bytes_in = 0;
  int read_calls = 0;
  std::vector<RecordedRequest> requests;
};

struct Record {
  int64_t now_us = 0;
  int current_connections = 0;
  int max_connections = 0;
  uint64_t accepted = 0;
  uint64_t requests = 0;
  std::vector<RecordedConnection> connections;

  uint64_t bytes_in() const;
  std::vector<const RecordedRequest*> all_requests() const;
  // The first recorded request whose target is `target`, or nullptr.
  const RecordedRequest* find(std::string_view target) const;
  // How many recorded requests have `target`.
  int count(std::string_view target) const;
  // The connection that carried the first request for `target`, or nullptr.
  const RecordedConnection* connection_of(std::string_view target) const;
};

// ------------------------------------------------------------------ backend

class Backend {
 public:
  // Starts the recording backend with `workers` threads on `port` (0: any
  // free port); false with `error`.
  bool start(int workers = 64, uint16_t port = 0);
  uint16_t port() const { return port_; }
  uint16_t control_port() const { return control_port_; }
  // Fetches and parses /__record from the control port.
  std::optional<Record> record(std::string* error = nullptr);
  bool reset();
  // Waits until `pred(record)` holds, polling every 5 ms, up to `timeout_ms`.
  template <class Pred>
  std::optional<Record> wait_record(Pred pred, int timeout_ms);
  int stop() { return child_.stop(); }
  Child& child() { return child_; }
  const std::string& error() const { return error_; }

 private:
  Child child_;
  uint16_t port_ = 0;
  uint16_t control_port_ = 0;
  std::string error_;
};

void sleep_ms(int ms);

template <class Pred>
std::optional<Record> Backend::wait_record(Pred pred, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    auto r = record();
    if (r && pred(*r)) return r;
    if (now_ms() >= deadline) return std::nullopt;
    sleep_ms(5);
  }
}

// ------------------------------------------------------------ proxy under test

// Settings a test asks of the proxy in front of the backend. -1 / empty: the
// proxy's default. Mapped to agent flags, or to an nginx configuration when
// OFFLOAD_IT_PROXY=nginx (a cross-check of the tests themselves).
struct ProxyOptions {
  int max_clients = -1;
  int max_upstream = -1;
  int persistent = -1;
  int header_timeout_ms = -1;
  int body_timeout_ms = -1;
  int keepalive_timeout_ms = -1;
  int send_timeout_ms = -1;
  int connect_timeout_ms = -1;
  int response_timeout_ms = -1;
  int queue_timeout_ms = -1;
  int drain_timeout_ms = -1;
  std::string header_bytes_max;
  std::string body_bytes_max;
  std::string response_buffer;
  std::string response_spill_max;
  std::string listen;                    // agent only; empty: 127.0.0.1:0
  std::vector<std::string> extra_flags;  // agent only
  int open_files_max = -1;               // agent only: run under this RLIMIT_NOFILE (soft and hard)
};

// Which proxy the tests run against: "agent" (default) or "nginx".
std::string proxy_kind();
// The agent binary: $OFFLOAD_AGENT, else the path CMake compiled in; empty if none.
std::string agent_path();
std::string backend_path();

class Proxy {
 public:
  Proxy() = default;
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;
  ~Proxy();  // stops the proxy, removes its temporary directory
  bool start(uint16_t upstream_port, const ProxyOptions& options);
  uint16_t port() const { return port_; }
  uint16_t admin_port() const { return admin_port_; }
  bool is_agent() const { return kind_ == "agent"; }
  Child& child() { return child_; }
  const std::string& error() const { return error_; }
  // The agent's counters from GET /stats?format=json on the admin port.
  std::optional<std::map<std::string, int64_t>> stats(std::string* error = nullptr);
  // One counter; -1 if it could not be read.
  int64_t stat(const std::string& name);
  int stop(int term_timeout_ms = 5000) { return child_.stop(term_timeout_ms); }

 private:
  bool start_agent(uint16_t upstream_port, const ProxyOptions& options);
  bool start_nginx(uint16_t upstream_port, const ProxyOptions& options);

  std::string kind_;
  Child child_;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
  std::string temp_dir_;
  std::string error_;
};

// Flattens counters from a stats JSON document: a numeric top-level key wins;
// otherwise numbers under that key anywhere in the tree are summed (per-shard
// layouts).
std::map<std::string, int64_t> flatten_stats(const Json& doc);

// The bytes as lower-case hex: the recording backend's X-Script header.
std::string hex(std::string_view bytes);

// "" when equal, else where two byte strings first differ (never the bytes
// themselves: a failed check must not print megabytes).
std::string difference(const std::string& got, const std::string& want);

// Appends "FLAG VALUE" to a command line when the value is set (a number
// >= 0, a non-empty string); unset options keep the program's default.
void add_flag(std::vector<std::string>& args, const char* flag, int value);
void add_flag(std::vector<std::string>& args, const char* flag, const std::string& value);

}  // namespace rig
