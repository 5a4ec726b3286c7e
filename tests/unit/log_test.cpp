#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "ops/log.h"

using offload::LogLevel;
using offload::LogLimiter;

namespace {

// What the agent's log lines would have written to stderr while `fn` ran:
// stderr goes to a pipe for that time.
template <typename Fn>
std::string stderr_of(Fn fn) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
  int saved = ::dup(STDERR_FILENO);
  ::dup2(p[1], STDERR_FILENO);
  fn();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(p[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  ::close(p[0]);
  return out;
}

struct LevelGuard {  // the process-wide level and prefix back to the defaults
  ~LevelGuard() {
    offload::set_log_level(LogLevel::kInfo);
    offload::set_log_priority_prefix(false);
  }
};

}  // namespace

TEST_CASE("log levels: the names a user writes, and nothing else") {
  CHECK(offload::parse_log_level("error") == LogLevel::kError);
  CHECK(offload::parse_log_level("warning") == LogLevel::kWarning);
  CHECK(offload::parse_log_level("warn") == LogLevel::kWarning);
  CHECK(offload::parse_log_level("info") == LogLevel::kInfo);
  CHECK(offload::parse_log_level("debug") == LogLevel::kDebug);
  CHECK_FALSE(offload::parse_log_level("INFO").has_value());
  CHECK_FALSE(offload::parse_log_level("").has_value());
  CHECK_FALSE(offload::parse_log_level("verbose").has_value());
  for (LogLevel l : {LogLevel::kError, LogLevel::kWarning, LogLevel::kInfo, LogLevel::kDebug})
    CHECK(offload::parse_log_level(offload::log_level_name(l)) == l);
}

TEST_CASE("a line below the level is not written; at or above it is, whole, with the agent's prefix") {
  LevelGuard guard;
  offload::set_log_level(LogLevel::kWarning);
  std::string out = stderr_of([] {
    offload::log(LogLevel::kInfo, "listening on {}", "127.0.0.1:1");
    offload::log(LogLevel::kWarning, "upstream {}: refused", "tcp://127.0.0.1:2");
    offload::log(LogLevel::kError, "disk {}", "full");
    offload::log(LogLevel::kDebug, "noise");
  });
  CHECK(out == "offload-agent: upstream tcp://127.0.0.1:2: refused\noffload-agent: disk full\n");
}

TEST_CASE("under the journal, each line starts with its syslog priority") {
  LevelGuard guard;
  offload::set_log_priority_prefix(true);
  std::string out = stderr_of([] {
    offload::log(LogLevel::kWarning, "a");
    offload::log(LogLevel::kInfo, "b");
  });
  CHECK(out == "<4>offload-agent: a\n<6>offload-agent: b\n");
}

TEST_CASE("JOURNAL_STREAM counts only while stderr is that very stream") {
  ::unsetenv("JOURNAL_STREAM");
  CHECK_FALSE(offload::journal_is_stderr());
  struct stat st {};
  REQUIRE(::fstat(STDERR_FILENO, &st) == 0);
  std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  ::setenv("JOURNAL_STREAM", mine.c_str(), 1);
  CHECK(offload::journal_is_stderr());
  ::setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1)).c_str(), 1);
  CHECK_FALSE(offload::journal_is_stderr());  // stderr was redirected elsewhere
  ::setenv("JOURNAL_STREAM", "garbage", 1);
  CHECK_FALSE(offload::journal_is_stderr());
  ::unsetenv("JOURNAL_STREAM");
}

TEST_CASE("a limiter lets `burst` lines through per period and says how many it left out") {
  LogLimiter limiter(5000, 2);
  CHECK(limiter.allow(1000));
  CHECK(limiter.allow(1001));
  CHECK_FALSE(limiter.allow(1002));  // the third in the period
  CHECK_FALSE(limiter.allow(5999));  // still the same period
  CHECK(limiter.take_suppressed() == 2);
  CHECK(limiter.take_suppressed() == 0);
  CHECK(limiter.allow(6000));  // a new period
  CHECK(limiter.allow(6001));
  CHECK_FALSE(limiter.allow(6002));
}

TEST_CASE("log_limited: a storm of one line becomes one line per period, then a count of the rest") {
  LevelGuard guard;
  LogLimiter limiter(5000, 1);
  std::string out = stderr_of([&] {
    for (uint64_t t = 0; t < 100; ++t)
      offload::log_limited(limiter, 10 + t, LogLevel::kWarning, "upstream {}: refused", "s1");
    offload::log_limited(limiter, 5010, LogLevel::kWarning, "upstream {}: refused", "s1");
  });
  CHECK(out ==
        "offload-agent: upstream s1: refused\n"
        "offload-agent: upstream s1: refused (99 more like it left out)\n");
}

TEST_CASE("a line below the level does not use up the limiter") {
  LevelGuard guard;
  offload::set_log_level(LogLevel::kError);
  LogLimiter limiter(5000, 1);
  std::string out = stderr_of([&] {
    offload::log_limited(limiter, 10, LogLevel::kWarning, "hidden");
    offload::set_log_level(LogLevel::kInfo);
    offload::log_limited(limiter, 11, LogLevel::kWarning, "shown");
  });
  CHECK(out == "offload-agent: shown\n");
}
