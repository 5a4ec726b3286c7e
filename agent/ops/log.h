// The agent's own log: one line per event on stderr, "offload-agent: ..."
// as before, with a level. Under systemd (JOURNAL_STREAM names our stderr)
// each line starts with its syslog priority, "<4>" for a warning, so that
// `journalctl -p warning` finds it; in a terminal the lines stay plain.
// Lines below the level set by `log_level` / `--log-level` are not written.
//
// A line that can repeat with the traffic (a server down, a disk full) goes
// through a LogLimiter: at most a few per period, and the next one let
// through says how many like it were left out, so a storm of failures
// neither floods the journal nor hides that it happened.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace offload {

enum class LogLevel : uint8_t { kError = 3, kWarning = 4, kInfo = 6, kDebug = 7 };  // syslog's numbers

// "error", "warning" (or "warn"), "info", "debug"; nullopt for anything else.
std::optional<LogLevel> parse_log_level(std::string_view name);
std::string_view log_level_name(LogLevel level);

void set_log_level(LogLevel level);  // for the whole process; default info
bool log_enabled(LogLevel level);
// Prefix each line with its priority; set at start-up from JOURNAL_STREAM.
void set_log_priority_prefix(bool on);
bool journal_is_stderr();

// Writes "offload-agent: <line>\n" in one write (lines of several threads
// never interleave), if `level` is enabled.
void log_line(LogLevel level, std::string_view line);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (log_enabled(level)) log_line(level, fmt::format(format, std::forward<Args>(args)...));
}

// At most `burst` lines per `period_ms` for one kind of event; one per
// owner (a pool, a sink), driven by the owner's clock so it is testable.
class LogLimiter {
 public:
  explicit LogLimiter(uint64_t period_ms = 5000, uint32_t burst = 1) : period_ms_(period_ms), burst_(burst) {}

  // True when a line may be written now; else the line is counted as left out.
  bool allow(uint64_t now_ms);
  // What allow() left out before the line it just let through (then reset).
  uint64_t take_suppressed();

 private:
  uint64_t period_ms_;
  uint32_t burst_;
  uint64_t window_start_ms_ = 0;
  uint32_t in_window_ = 0;
  bool started_ = false;
  uint64_t suppressed_ = 0;
};

// A line through `limiter`: " (N more like it left out)" is added when some were.
template <typename... Args>
void log_limited(LogLimiter& limiter, uint64_t now_ms, LogLevel level, fmt::format_string<Args...> format,
                 Args&&... args) {
  if (!log_enabled(level) || !limiter.allow(now_ms)) return;
  std::string line = fmt::format(format, std::forward<Args>(args)...);
  if (uint64_t n = limiter.take_suppressed()) line += fmt::format(" ({} more like it left out)", n);
  log_line(level, line);
}

}  // namespace offload
