#include "ops/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace offload {
namespace {

std::atomic<uint8_t> g_level{uint8_t(LogLevel::kInfo)};
std::atomic<bool> g_priority_prefix{false};

}  // namespace

std::optional<LogLevel> parse_log_level(std::string_view name) {
  if (name == "error") return LogLevel::kError;
  if (name == "warning" || name == "warn") return LogLevel::kWarning;
  if (name == "info") return LogLevel::kInfo;
  if (name == "debug") return LogLevel::kDebug;
  return std::nullopt;
}

std::string_view log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "info";
}

void set_log_level(LogLevel level) { g_level.store(uint8_t(level), std::memory_order_relaxed); }
bool log_enabled(LogLevel level) { return uint8_t(level) <= g_level.load(std::memory_order_relaxed); }
void set_log_priority_prefix(bool on) { g_priority_prefix.store(on, std::memory_order_relaxed); }

// systemd sets JOURNAL_STREAM to "DEV:INODE" of the stream it connected to
// our stderr: only when stderr is still that stream is it the journal (a
// redirect in ExecStart= or a test's pipe is not).
bool journal_is_stderr() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

void log_line(LogLevel level, std::string_view line) {
  if (!log_enabled(level)) return;
  std::string out;
  out.reserve(line.size() + 24);
  if (g_priority_prefix.load(std::memory_order_relaxed)) out += fmt::format("<{}>", uint8_t(level));
  out += "offload-agent: ";
  out += line;
  out += '\n';
  // One write: lines of the shards' threads never interleave. (A stderr
  // nobody reads can still hold it, as any write to it would: the lines that
  // repeat with the traffic go through a LogLimiter.)
  ssize_t w = ::write(STDERR_FILENO, out.data(), out.size());
  (void)w;
}

bool LogLimiter::allow(uint64_t now_ms) {
  if (!started_ || now_ms - window_start_ms_ >= period_ms_) {
    started_ = true;
    window_start_ms_ = now_ms;
    in_window_ = 0;
  }
  if (in_window_ < burst_) {
    ++in_window_;
    return true;
  }
  ++suppressed_;
  return false;
}

uint64_t LogLimiter::take_suppressed() {
  uint64_t n = suppressed_;
  suppressed_ = 0;
  return n;
}

}  // namespace offload
