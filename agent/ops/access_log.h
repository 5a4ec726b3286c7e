// The access log: one line per HTTP request (and per tunnel), in nginx's `combined` format
// with the proxy's own fields after it, or as one JSON object per line.
//
// Three parts, by thread:
//   AccessRecord     in each Exchange: what the line needs that is gone by
//                    the end of the exchange (the request line and two
//                    fields, copied and bounded; the upstream's times).
//   AccessLog        one per shard, on its loop: formats each line into a
//                    buffer of its own and hands the buffer to the writer
//                    when it is large (after a batch) or 100 ms old (a
//                    timer). The loop never writes to the log's descriptor.
//   AccessLogWriter  one per agent, its own thread: writes the buffers in
//                    the order they came. Their total is bounded; a buffer
//                    that does not fit, or that cannot be written (full
//                    disk, a FIFO with no reader, a write error), is
//                    dropped and its lines counted in the shard's
//                    access_log_dropped. A slow disk or a reader that
//                    stops reading only ever fills the bound. reopen()
//                    (SIGUSR1) opens the path again: logrotate renames the
//                    file, signals, and the next lines go to the new one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "http/http_parser.h"
#include "loop/timer_list.h"

namespace offload {

class Loop;
struct Config;
struct Counters;
struct ClientConn;

// Who ended an exchange, and where. The first cause known is kept.
enum class Termination : uint8_t {
  kUnset,
  kDone,                  // the response was sent in full
  kClientAbortRequest,    // the client went before its request was complete
  kClientAbortWaiting,    // ... after it, before any response byte reached it
  kClientAbortResponse,   // ... while its response was being sent
  kTimeoutHeader,         // 408, or a close of a silent connection
  kTimeoutBody,           // 408
  kTimeoutQueue,          // 503: no upstream channel came free in time
  kTimeoutConnect,        // 504: the server could not be connected in time
  kTimeoutResponse,       // 504: the server said nothing for response_timeout
  kTimeoutSend,           // the client read nothing for send_timeout
  kUpstreamConnectError,  // 502: the server refused connections until the queue timeout
  kUpstreamError,         // 502: a response the parser refused, or no buffer for it
  kUpstreamReset,         // 502 or a cut response: the server closed or reset mid-exchange
  kRefusedScreen,         // 429: over the source's request rate
  kRefusedPolicy,         // 401/403/405: the listener's rules
  kParseError,            // 400, 413, 414, 431, 501, 505: the request itself
  kNoBuffer,              // 503: buffer memory exhausted
  kUpgraded,              // went on as a tunnel (the pass-through proxy's from there)
  // A tunnel's line (pass-through, or after an upgrade), at its end:
  kTunnelDone,            // both sides ended their writes (a FIN each way)
  kTunnelClientReset,     // the client reset it, or its socket failed
  kTunnelServerReset,     // the server reset it, or its socket failed
  kTimeoutTunnel,         // nothing moved for tunnel_timeout (or half_close_timeout)
  kDrainDeadline,         // still open when a drain's deadline came
  kSpliceError,           // the kernel splice's maps failed the agent mid-tunnel
  kUpgradeRefused,        // the server answered an upgrade with no 101: the client went back to HTTP
};
std::string_view termination_name(Termination t);

// Bounds on what is copied from a request (the rest is cut, and "..." marks
// the cut): an attacker's 8 KiB target or User-Agent costs each line no more.
inline constexpr size_t kAccessTargetMax = 1024;
inline constexpr size_t kAccessFieldMax = 256;   // Referer, User-Agent
inline constexpr size_t kAccessMethodMax = 32;

// Copies `from` into `to`, at most `max` bytes (then "..." after the cut).
void copy_bounded(std::string& to, std::string_view from, size_t max);

// What an exchange keeps for its line. Its strings keep their capacity when
// the exchange is pooled again: no allocation per request once warm.
struct AccessRecord {
  std::string method, target, protocol, referer, user_agent;
  const std::string* upstream = nullptr;  // the server's address as configured
  uint64_t assigned_ms = 0;      // loop time the upstream took it (0: never)
  uint64_t upstream_done_ms = 0; // ... and ended with it (response read, or failed)
  int64_t connect_ms = -1;       // opening its connection; 0 on a kept-alive one; -1: none
  uint64_t received = 0;         // request bytes from the client (head and body as sent)
  uint64_t sent = 0;             // bytes sent to the client
  uint32_t head_sent = 0;        // of which the response head and interim heads
  uint16_t status = 0;           // the final status sent (0: none)
  Termination end = Termination::kUnset;
  bool logged = false;

  // The request line, Referer and User-Agent of a parsed head.
  void capture(const http::Head& h, std::string_view msg);
  // A head the parser refused: its first line as far as it goes, in parts.
  void capture_raw(std::string_view input);
  void end_with(Termination t) {
    if (end == Termination::kUnset) end = t;
  }
  void reset();
};

// One line's values, as formatted. Times in milliseconds, -1 for none.
struct AccessEntry {
  std::string_view remote, method, target, protocol, referer, user_agent, upstream, listener;
  int status = 0;
  uint64_t body_bytes = 0, received = 0, sent = 0;
  int64_t total_ms = -1, queue_ms = -1, connect_ms = -1, upstream_ms = -1;
  Termination end = Termination::kDone;
  time_t wall = 0;  // seconds since the epoch, shown in local time
};

enum class AccessFormat : uint8_t { kCombined, kJson };

// Appends one line (with its '\n') to `out`. `time_text` is the wall time
// as the format shows it (time_text() of `wall`), cached by the caller.
void format_access_line(AccessFormat format, const AccessEntry& e, std::string_view time_text, std::string& out);
// "[01/Dec/2026:17:55:00 +0000]" for combined, "2026-12-01T17:55:00+00:00" for JSON.
std::string time_text(AccessFormat format, time_t wall);
// Escapes as each format needs: combined like nginx (\xHH for '"', '\\',
// control and non-ASCII bytes); JSON as a string's contents (\" \\ \n \t,
// \u00XX for control bytes, U+FFFD for each byte of invalid UTF-8).
void escape_combined(std::string_view in, std::string& out);
void escape_json(std::string_view in, std::string& out);

class AccessLogWriter {
 public:
  // "stderr" or a file path (created 0644, appended to). Throws
  // std::runtime_error naming the path when it cannot be opened, except a
  // FIFO with no reader yet (its lines are dropped until one opens it).
  explicit AccessLogWriter(std::string path, size_t queued_bytes_max = 4u << 20);
  // Writes what is queued (for at most a second), then ends the thread.
  ~AccessLogWriter();
  AccessLogWriter(const AccessLogWriter&) = delete;
  AccessLogWriter& operator=(const AccessLogWriter&) = delete;

  // The writer the next shards built take (main installs it before it
  // starts a generation; null: the log is off). A writer that goes
  // uninstalls itself.
  static AccessLogWriter* current();
  static void install(AccessLogWriter* w);

  // Any thread: open the path again before the next write.
  void reopen();
  // A shard's buffer of `lines` lines: taken (`buf` gets an empty one back)
  // or, over the bound, left for the caller to drop. Lines the writer drops
  // later are added to `dropped` (with an atomic add: the shard adds there too).
  bool submit(std::string& buf, uint32_t lines, std::atomic<uint64_t>* dropped);
  // Lines written so far (for tests).
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }

 private:
  struct Batch {
    std::string text;
    uint32_t lines = 0;
    std::atomic<uint64_t>* dropped = nullptr;
  };

  void run();
  void open_path(bool at_start);
  void write_batch(Batch& b);
  void drop(Batch& b, size_t from);
  void complain(const char* what, int err);

  const std::string path_;
  const size_t queued_bytes_max_;
  int fd_ = -1;
  bool own_fd_ = false;
  uint64_t next_open_ms_ = 0;    // after a failed open: not before this
  int last_error_ = 0;           // said once until a write succeeds again
  bool gave_up_ = false;         // stopping, and the reader took nothing for a second
  std::atomic<uint64_t> written_{0};

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Batch> queue_;
  std::vector<std::string> spare_;  // emptied buffers, handed back to shards
  size_t queued_bytes_ = 0;
  bool reopen_ = false;
  bool stop_ = false;
  std::thread thread_;
};

// A shard's side: on its loop thread only.
class AccessLog {
 public:
  // Off (on() false) unless the config turns it on and a writer exists.
  AccessLog(Loop& loop, const Config& config, Counters& counters);
  ~AccessLog();  // hands over what is left
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  bool on() const { return writer_ != nullptr; }
  // The exchange of `c` ended: its line. `end` is used where its record has none.
  void log(ClientConn& c, Termination end);
  // Any other line (a tunnel's): `e` as it is, its wall time set here.
  void log(AccessEntry& e);
  // Large buffers go to the writer after each batch of completions.
  void after_batch() {
    if (buf_.size() >= kHandOverBytes) hand_over();
  }

 private:
  static constexpr size_t kHandOverBytes = 32 * 1024;
  void hand_over();
  void on_timer();
  std::string_view wall_text(time_t now);

  Loop& loop_;
  Counters& counters_;
  AccessLogWriter* writer_ = nullptr;
  AccessFormat format_ = AccessFormat::kCombined;
  std::string buf_;
  uint32_t lines_ = 0;
  TimerList flush_list_{100};
  Timer flush_timer_;
  time_t cached_wall_ = -1;
  std::string cached_text_;
};

}  // namespace offload
