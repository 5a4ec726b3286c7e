// Active health checks of one upstream group: every interval, one HTTP probe
// per server on a fresh connection, its result handed to a callback (the
// group's Balancer::report_probe, which applies rise and fall).
//
// A probe is: socket(), then through the loop's io_uring a connect, a send of
//
//   GET <path> HTTP/1.1\r\nHost: <host>\r\nConnection: close\r\n
//   User-Agent: offload-health\r\n\r\n
//
// and receives until the status line is in. It is ok when a complete status
// line with a 2xx or 3xx status arrives before timeout_ms; anything else
// (refused, reset, end of file first, another status, bytes that are not a
// status line, the timeout) is not ok. The rest of the response is not read:
// the socket is closed as soon as the result is known.
//
// The lifetime rules, because completions point into this object:
//   - A server has at most one probe at a time. An interval that finds the
//     previous probe still running (or its socket still closing) is skipped
//     for that server and counted; so keep timeout_ms below interval_ms.
//   - Every operation a probe submits (connect, send, receive, and the
//     cancels that end them early) is counted in its `inflight`; its socket is
//     closed only once all of them are in, so no CQE ever reaches a reused fd.
//   - stop() ends every probe without a result: its timer is disarmed, its
//     operations cancelled, its socket shut down. The sockets close as the
//     cancelled completions arrive, so keep turning the loop until idle().
//   - The destructor is for the end of the loop, not for the middle of it:
//     destroy the checker only once the loop will not turn again (as a member
//     of the shard that owns the loop, or after stop() and turning until
//     idle()). Its two timer lists stay registered with the loop (the loop
//     has no way to remove them), and in-flight probes' completions would
//     name freed memory. It shuts down and closes any socket still open, so
//     nothing leaks and the kernel writes nothing into freed buffers.
//   - The callback may call stop(), never destroy the checker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "loop/loop.h"
#include "ops/config.h"

namespace offload {

struct HealthCheckSettings {
  std::string path = "/health";  // starts with '/'; see health_path_problem()
  uint32_t interval_ms = 5000;   // > 0: from one round of probes to the next
  uint32_t timeout_ms = 2000;    // > 0: from socket() to the status line
};

// What one server is probed at.
struct ProbeTarget {
  SocketAddress address;  // TCP (v4, v6) or Unix stream
  std::string host;       // the Host header's value
};

// Why the last probe ended the way it did (for stats).
enum class ProbeOutcome : uint8_t {
  kNone,       // no probe has ended yet
  kOk,         // a 2xx or 3xx status line
  kSocket,     // socket() failed here (EMFILE, ENOMEM): still reported not ok
  kConnect,    // connect failed (refused, unreachable)
  kSend,       // the send failed (reset)
  kReceive,    // the receive failed (reset)
  kEof,        // the server closed before a whole status line
  kStatus,     // a well-formed status line, not 2xx or 3xx
  kGarbage,    // bytes that are not an HTTP/1.x status line, or one too long
  kTimeout,    // no status line by timeout_ms
};

const char* probe_outcome_name(ProbeOutcome outcome);

// Per server. sent == ok + failed + timed_out + (1 if a probe is running).
struct ProbeCounters {
  uint64_t sent = 0;       // probes started
  uint64_t ok = 0;
  uint64_t failed = 0;     // not ok before the timeout (every outcome but kOk, kTimeout)
  uint64_t timed_out = 0;  // not ok: the timeout came first
  uint64_t skipped = 0;    // intervals with no probe: the previous one still running
  ProbeOutcome last = ProbeOutcome::kNone;
  int last_status = 0;     // the status of the last whole status line; 0 if none
  int last_errno = 0;      // of the last kSocket/kConnect/kSend/kReceive
};

// Checks of the text that goes into the request line and the Host header
// (for the config layer, to name the key): nullptr when fine, else what was
// expected.
const char* health_path_problem(std::string_view path);
const char* health_host_problem(std::string_view host);

// The status-line parser the probes use, on the bytes received so far: the
// status (100..999) once "HTTP/1.<d> <ddd>[ <reason>]\r\n" is complete,
// kStatusLineIncomplete while what is in is a prefix of one, and
// kStatusLineInvalid as soon as it cannot be one.
constexpr int kStatusLineIncomplete = 0;
constexpr int kStatusLineInvalid = -1;
int parse_status_line(std::string_view bytes);

class HealthChecker {
 public:
  // Called once per probe that ends (not for those stop() ends).
  using Report = std::function<void(size_t server, bool ok)>;

  // The longest status line a probe reads; longer is kGarbage.
  static constexpr size_t kStatusLineMax = 256;

  // `targets[i]` is server i of the group, the index the callback gets.
  // The settings and targets must pass the checks above (asserted).
  HealthChecker(Loop& loop, std::vector<ProbeTarget> targets, HealthCheckSettings settings, Report report);
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Probes every server now, then every interval_ms after.
  void start();
  // Stops the schedule and ends the running probes without results; see the
  // rules above. start() may be called again afterwards.
  void stop();

  bool started() const { return started_; }
  // No probe holds a socket or an operation: safe to destroy mid-loop-life
  // (apart from the timer lists, see above).
  bool idle() const;

  size_t size() const { return probes_.size(); }
  const ProbeCounters& counters(size_t server) const;
  const HealthCheckSettings& settings() const { return settings_; }
  // The exact request server i is sent (for tests and logs).
  const std::string& request(size_t server) const;

 private:
  struct Probe;

  void on_interval();
  void begin(Probe& p);
  void post_send(Probe& p);
  void post_recv(Probe& p);
  void on_connect(Probe* p, const io_uring_cqe& cqe);
  void on_sent(Probe* p, const io_uring_cqe& cqe);
  void on_received(Probe* p, const io_uring_cqe& cqe);
  void on_cancelled(Probe* p, const io_uring_cqe& cqe);
  void on_timeout(Probe* p, Timer& timer);
  void finish(Probe& p, ProbeOutcome outcome, int err = 0);
  void abort_operations(Probe& p);
  void maybe_close(Probe& p);

  Loop& loop_;
  HealthCheckSettings settings_;
  Report report_;
  std::vector<std::unique_ptr<Probe>> probes_;  // fixed after construction
  TimerList intervals_;
  TimerList timeouts_;
  Timer interval_timer_;
  bool started_ = false;
};

}  // namespace offload
