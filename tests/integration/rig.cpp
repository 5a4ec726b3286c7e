#include "rig.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace rig {

int64_t now_us() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

int64_t now_ms() { return now_us() / 1000; }

void sleep_ms(int ms) {
  timespec ts{ms / 1000, static_cast<long>(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

uint64_t loopback_buffering_max() {
  auto third = [](const char* path, uint64_t fallback) {
    std::FILE* f = std::fopen(path, "r");
    if (f == nullptr) return fallback;
    unsigned long long lo = 0, mid = 0, hi = 0;
    int n = std::fscanf(f, "%llu %llu %llu", &lo, &mid, &hi);
    std::fclose(f);
    return n == 3 ? static_cast<uint64_t>(hi) : fallback;
  };
  return third("/proc/sys/net/ipv4/tcp_rmem", 64ull << 20) + third("/proc/sys/net/ipv4/tcp_wmem", 64ull << 20);
}

uint64_t raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

namespace {

int remaining_ms(int64_t deadline_ms) {
  int64_t left = deadline_ms - now_ms();
  return left < 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

// poll() one fd for `events` until the deadline. True when ready.
bool wait_fd(int fd, short events, int64_t deadline_ms, short* revents = nullptr) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline_ms));
    if (r < 0 && errno == EINTR) continue;
    if (revents) *revents = p.revents;
    return r > 0;
  }
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

// ----------------------------------------------------------------- Child

Child::~Child() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (reader_.joinable()) reader_.join();
}

bool Child::start(const std::string& path, const std::vector<std::string>& args, bool keep_stdout) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    error_ = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  std::vector<std::string> argv_s;
  argv_s.push_back(path);
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    error_ = std::string("fork: ") + std::strerror(errno);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return false;
  }
  if (pid == 0) {
    ::dup2(pipefd[1], 2);
    if (!keep_stdout) {
      int devnull = ::open("/dev/null", O_WRONLY);
      if (devnull >= 0) ::dup2(devnull, 1);
    }
    ::signal(SIGPIPE, SIG_DFL);
    ::execv(path.c_str(), argv.data());
    std::fprintf(stderr, "exec %s: %s\n", path.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  pid_ = pid;
  reader_ = std::thread([this, fd = pipefd[0]] { reader_loop(fd); });
  return true;
}

void Child::reader_loop(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    std::lock_guard lock(mutex_);
    if (stderr_.size() < (4u << 20)) stderr_.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  std::lock_guard lock(mutex_);
  stderr_closed_ = true;
}

std::optional<std::string> Child::wait_for_line(std::string_view needle, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      size_t at = stderr_.find(needle);
      if (at != std::string::npos) {
        size_t begin = stderr_.rfind('\n', at);
        begin = begin == std::string::npos ? 0 : begin + 1;
        size_t end = stderr_.find('\n', at);
        if (end != std::string::npos) return stderr_.substr(begin, end - begin);
      }
      if (stderr_closed_) return std::nullopt;
    }
    if (now_ms() >= deadline) return std::nullopt;
    if (!running()) {
      // Let the reader catch the last bytes, then look once more.
      sleep_ms(20);
      std::lock_guard lock(mutex_);
      size_t at = stderr_.find(needle);
      if (at == std::string::npos) return std::nullopt;
      continue;
    }
    sleep_ms(5);
  }
}

void Child::signal(int sig) {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, sig);
}

bool Child::running() {
  if (pid_ <= 0 || exit_code_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

std::optional<int> Child::wait_exit(int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    if (!running()) break;
    if (now_ms() >= deadline) return std::nullopt;
    sleep_ms(5);
  }
  // The process is gone, but the reader thread may not have drained its last
  // lines yet: wait (bounded) for the pipe's end of file, so a test that
  // reads stderr right after the exit sees all of it.
  int64_t drain_deadline = now_ms() + 1000;
  while (now_ms() < drain_deadline) {
    {
      std::lock_guard lock(mutex_);
      if (stderr_closed_) break;
    }
    sleep_ms(2);
  }
  return exit_code_;
}

int Child::stop(int term_timeout_ms) {
  if (pid_ <= 0) return -1;
  if (!running()) return *exit_code_;
  ::kill(pid_, SIGTERM);
  if (auto code = wait_exit(term_timeout_ms)) return *code;
  ::kill(pid_, SIGKILL);
  auto code = wait_exit(5000);
  return code.value_or(-1);
}

std::string Child::stderr_text() const {
  std::lock_guard lock(mutex_);
  return stderr_;
}

std::vector<std::string> Child::stderr_lines() const {
  std::string text = stderr_text();
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return lines;
}

uint16_t port_from_line(std::string_view line) {
  size_t colon = line.rfind(':');
  if (colon == std::string_view::npos) return 0;
  unsigned port = 0;
  size_t i = colon + 1;
  for (; i < line.size() && std::isdigit(static_cast<unsigned char>(line[i])); ++i) {
    port = port * 10 + static_cast<unsigned>(line[i] - '0');
    if (port > 65535) return 0;
  }
  return i == colon + 1 ? 0 : static_cast<uint16_t>(port);
}

uint16_t unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// ----------------------------------------------------------- Response

std::string Response::header(std::string_view name) const {
  std::string want = lower(name);
  for (const auto& [k, v] : headers) {
    if (lower(k) == want) return v;
  }
  return {};
}

bool Response::has_header(std::string_view name) const {
  std::string want = lower(name);
  for (const auto& [k, v] : headers) {
    if (lower(k) == want) return true;
  }
  return false;
}

bool Response::closes() const { return lower(header("connection")).find("close") != std::string::npos; }

ResponseParser::State ResponseParser::fail(std::string why) {
  error_ = std::move(why);
  return State::kError;
}

ResponseParser::State ResponseParser::feed(std::string& in, bool eof) {
  for (int guard = 0; guard < 1'000'000; ++guard) {
    if (phase_ == Phase::kDone) return State::kDone;
    Phase before = phase_;
    size_t size_before = in.size();
    State s = phase_ == Phase::kHead ? parse_head(in) : parse_body(in, eof);
    if (s == State::kError) return s;
    bool progressed = phase_ != before || in.size() != size_before;
    if (s == State::kNeedMore && progressed && !in.empty()) continue;
    if (s == State::kNeedMore) {
      if (eof && phase_ != Phase::kDone) {
        return fail(phase_ == Phase::kHead && in.empty() && response_.status == 0
                        ? "connection closed before a response"
                        : "connection closed in the middle of a response");
      }
      return s;
    }
  }
  return fail("parser made no progress");
}

ResponseParser::State ResponseParser::parse_head(std::string& in) {
  size_t end = in.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (in.size() > 256 * 1024) return fail("response head over 256 KiB");
    return State::kNeedMore;
  }
  std::string_view head(in.data(), end + 2);
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  if (line.substr(0, 5) != "HTTP/" || line.size() < 12 || line[8] != ' ') {
    return fail("bad status line: " + std::string(line.substr(0, 80)));
  }
  Response r;
  r.version = line.substr(0, 8);
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(line[i]))) return fail("bad status code");
    status = status * 10 + (line[i] - '0');
  }
  r.status = status;
  r.reason = line.size() > 13 ? std::string(line.substr(13)) : std::string();
  size_t pos = eol + 2;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    std::string_view field = head.substr(pos, e - pos);
    pos = e + 2;
    if (field.empty()) break;
    size_t colon = field.find(':');
    if (colon == std::string_view::npos) return fail("bad header line");
    r.headers.emplace_back(std::string(field.substr(0, colon)), std::string(trim(field.substr(colon + 1))));
  }
  in.erase(0, end + 4);
  if (status >= 100 && status < 200 && status != 101) {  // interim: read the next head
    interim_.push_back(status);
    return State::kNeedMore;
  }
  response_ = std::move(r);
  response_.interim = interim_;
  std::string te = lower(response_.header("transfer-encoding"));
  std::string cl = response_.header("content-length");
  if (head_request_ || status == 204 || status == 304 || status == 101) {
    phase_ = Phase::kDone;
  } else if (te.find("chunked") != std::string::npos) {
    response_.chunked = true;
    phase_ = Phase::kChunkSize;
  } else if (response_.has_header("content-length")) {
    if (cl.empty() || cl.size() > 15 || cl.find_first_not_of("0123456789") != std::string::npos)
      return fail("bad content-length: " + cl);
    remaining_ = std::stoull(cl);
    phase_ = remaining_ == 0 ? Phase::kDone : Phase::kLength;
  } else {
    phase_ = Phase::kUntilClose;
  }
  return phase_ == Phase::kDone ? State::kDone : State::kNeedMore;
}

ResponseParser::State ResponseParser::parse_body(std::string& in, bool eof) {
  switch (phase_) {
    case Phase::kLength: {
      size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size()));
      response_.body.append(in, 0, n);
      in.erase(0, n);
      remaining_ -= n;
      if (remaining_ == 0) phase_ = Phase::kDone;
      return phase_ == Phase::kDone ? State::kDone : State::kNeedMore;
    }
    case Phase::kUntilClose:
      response_.body += in;
      in.clear();
      if (eof) phase_ = Phase::kDone;
      return eof ? State::kDone : State::kNeedMore;
    default:
      return parse_chunked(in);
  }
}

ResponseParser::State ResponseParser::parse_chunked(std::string& in) {
  for (int guard = 0; guard < 1'000'000; ++guard) {
    if (phase_ == Phase::kChunkSize || phase_ == Phase::kTrailers || phase_ == Phase::kChunkCrlf) {
      size_t eol = in.find("\r\n");
      if (eol == std::string::npos) {
        if (in.size() > 8192) return fail("chunk line too long");
        return State::kNeedMore;
      }
      std::string line = in.substr(0, eol);
      in.erase(0, eol + 2);
      if (phase_ == Phase::kChunkCrlf) {
        if (!line.empty()) return fail("chunk data not followed by CRLF");
        phase_ = Phase::kChunkSize;
        continue;
      }
      if (phase_ == Phase::kTrailers) {
        if (line.empty()) {
          phase_ = Phase::kDone;
          return State::kDone;
        }
        continue;
      }
      std::string digits(trim(std::string_view(line).substr(0, line.find(';'))));
      if (digits.empty() || digits.size() > 15 || digits.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
        return fail("bad chunk size: " + line.substr(0, 40));
      remaining_ = std::stoull(digits, nullptr, 16);
      phase_ = remaining_ == 0 ? Phase::kTrailers : Phase::kChunkData;
      continue;
    }
    if (phase_ == Phase::kChunkData) {
      if (in.empty()) return State::kNeedMore;
      size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size()));
      response_.body.append(in, 0, n);
      in.erase(0, n);
      remaining_ -= n;
      if (remaining_ == 0) phase_ = Phase::kChunkCrlf;
      continue;
    }
    return phase_ == Phase::kDone ? State::kDone : fail("bad parser phase");
  }
  return fail("too many chunks");
}

// ----------------------------------------------------------------- Client

Client::Client(Client&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      in_(std::move(other.in_)),
      error_(std::move(other.error_)),
      source_(std::move(other.source_)) {}

Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    in_ = std::move(other.in_);
    error_ = std::move(other.error_);
    source_ = std::move(other.source_);
  }
  return *this;
}

Client::~Client() { close(); }

void Client::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Client::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

namespace {

bool bind_source(int fd, const std::string& source, bool ipv6, std::string* error) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  auto* a = reinterpret_cast<sockaddr_in*>(&storage);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (!ipv6 && ::inet_pton(AF_INET, source.c_str(), &a->sin_addr) == 1) {
    a->sin_family = AF_INET;
    length = sizeof *a;
  } else if (ipv6 && ::inet_pton(AF_INET6, source.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    length = sizeof *a6;
  } else {
    *error = "bad source address " + source;
    return false;
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&storage), length) != 0) {
    *error = "bind " + source + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace

bool Client::start_connect(uint16_t port, int rcvbuf, bool ipv6) {
  close();
  in_.clear();
  fd_ = ::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    error_ = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!source_.empty() && !bind_source(fd_, source_, ipv6, &error_)) {
    close();
    return false;
  }
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (ipv6) {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&storage);
    a6->sin6_family = AF_INET6;
    a6->sin6_addr = in6addr_loopback;
    a6->sin6_port = htons(port);
    length = sizeof *a6;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&storage);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->sin_port = htons(port);
    length = sizeof *a;
  }
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&storage), length) != 0 && errno != EINPROGRESS) {
    error_ = std::string("connect: ") + std::strerror(errno);
    close();
    return false;
  }
  return true;
}

bool Client::connect(uint16_t port, int timeout_ms, int rcvbuf, bool ipv6) {
  if (!start_connect(port, rcvbuf, ipv6)) return false;
  short revents = 0;
  if (!wait_fd(fd_, POLLOUT, now_ms() + timeout_ms, &revents)) {
    error_ = "connect: timed out";
    close();
    return false;
  }
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    error_ = std::string("connect: ") + std::strerror(err);
    close();
    return false;
  }
  return true;
}

bool Client::send_all(std::string_view data, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  while (!data.empty()) {
    ssize_t w = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (w > 0) {
      data.remove_prefix(static_cast<size_t>(w));
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_fd(fd_, POLLOUT, deadline)) {
        error_ = "send: timed out";
        return false;
      }
      continue;
    }
    error_ = std::string("send: ") + std::strerror(errno);
    return false;
  }
  return true;
}

bool Client::send_trickle(std::string_view data, size_t chunk, int delay_ms, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  chunk = std::max<size_t>(chunk, 1);
  for (size_t off = 0; off < data.size(); off += chunk) {
    if (off > 0) sleep_ms(delay_ms);
    if (now_ms() > deadline) {
      error_ = "send_trickle: timed out";
      return false;
    }
    if (!send_all(data.substr(off, chunk), remaining_ms(deadline))) return false;
  }
  return true;
}

int Client::recv_some(size_t max, int timeout_ms) {
  if (!wait_fd(fd_, POLLIN, now_ms() + timeout_ms)) return -1;
  size_t old = in_.size();
  in_.resize(old + max);
  for (;;) {
    ssize_t r = ::recv(fd_, in_.data() + old, max, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      in_.resize(old);
      return -1;
    }
    if (r < 0) {
      error_ = std::string("recv: ") + std::strerror(errno);
      in_.resize(old);
      return -2;
    }
    in_.resize(old + static_cast<size_t>(r));
    return static_cast<int>(r);
  }
}

namespace {

// Shared loop of read_response and read_response_slowly.
ReadResult read_loop(Client& c, size_t chunk, int interval_ms, int timeout_ms, bool head_request) {
  ReadResult out;
  ResponseParser parser(head_request);
  int64_t deadline = now_ms() + timeout_ms;
  bool eof = false;
  for (;;) {
    if (!c.buffer().empty() || eof) {
      auto s = parser.feed(c.buffer(), eof);
      if (s == ResponseParser::State::kDone) {
        out.response = std::move(parser.response());
        out.done_us = now_us();
        return out;
      }
      if (s == ResponseParser::State::kError) {
        out.error = parser.error();
        return out;
      }
    }
    if (eof) {
      out.error = "connection closed";
      return out;
    }
    int left = remaining_ms(deadline);
    if (left == 0) {
      out.error = "timed out after " + std::to_string(timeout_ms) + " ms (" +
                  std::to_string(parser.body_received()) + " body bytes so far)";
      return out;
    }
    if (interval_ms > 0 && out.reads > 0) sleep_ms(std::min(interval_ms, left));
    int r = c.recv_some(chunk, remaining_ms(deadline));
    if (r > 0) {
      if (out.reads++ == 0) out.first_byte_us = now_us();
    } else if (r == 0 || r == -2) {
      eof = true;
      out.closed = true;
    }
  }
}

}  // namespace

ReadResult Client::read_response(int timeout_ms, bool head_request) {
  return read_loop(*this, 256 * 1024, 0, timeout_ms, head_request);
}

ReadResult Client::read_response_slowly(size_t chunk, int interval_ms, int timeout_ms, bool head_request) {
  return read_loop(*this, chunk, interval_ms, timeout_ms, head_request);
}

bool Client::wait_closed(int timeout_ms, std::string* got) {
  int64_t deadline = now_ms() + timeout_ms;
  if (got) *got += in_;
  in_.clear();
  for (;;) {
    int left = remaining_ms(deadline);
    if (left == 0) return false;
    int r = recv_some(64 * 1024, left);
    if (r == 0 || r == -2) return true;
    if (r > 0) {
      if (got) *got += in_;
      in_.clear();
    }
  }
}

std::string get_request(std::string_view path, std::string_view extra_headers) {
  std::string r = "GET ";
  r += path;
  r += " HTTP/1.1\r\nHost: test\r\n";
  r += extra_headers;
  r += "\r\n";
  return r;
}

ReadResult http_get(uint16_t port, std::string_view path, int timeout_ms) {
  Client c;
  ReadResult out;
  if (!c.connect(port, timeout_ms)) {
    out.error = c.error();
    return out;
  }
  if (!c.send_all(get_request(path), timeout_ms)) {
    out.error = c.error();
    return out;
  }
  return c.read_response(timeout_ms);
}

// ------------------------------------------------------------------ Json

namespace {

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}

  bool parse(Json& out, std::string* error) {
    if (!value(out, 0)) {
      if (error) *error = "JSON error at byte " + std::to_string(pos_) + ": " + why_;
      return false;
    }
    skip_ws();
    if (pos_ != s_.size()) {
      if (error) *error = "trailing bytes after JSON at " + std::to_string(pos_);
      return false;
    }
    return true;
  }

 private:
  bool fail(const char* why) {
    why_ = why;
    return false;
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return fail("bad literal");
    pos_ += word.size();
    return true;
  }

  bool value(Json& out, int depth) {
    if (depth > 64) return fail("nested too deep");
    skip_ws();
    if (pos_ >= s_.size()) return fail("unexpected end");
    char ch = s_[pos_];
    if (ch == '{') return object(out, depth);
    if (ch == '[') return array(out, depth);
    if (ch == '"') {
      out.type = Json::Type::kString;
      return string(out.string);
    }
    if (ch == 't') {
      out.type = Json::Type::kBool;
      out.boolean = true;
      return literal("true");
    }
    if (ch == 'f') {
      out.type = Json::Type::kBool;
      return literal("false");
    }
    if (ch == 'n') return literal("null");
    return number(out);
  }

  bool object(Json& out, int depth) {
    out.type = Json::Type::kObject;
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    for (;;) {
      skip_ws();
      std::string key;
      if (pos_ >= s_.size() || s_[pos_] != '"' || !string(key)) return fail("expected a key");
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') return fail("expected ':'");
      ++pos_;
      Json v;
      if (!value(v, depth + 1)) return false;
      out.object.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or '}'");
    }
  }

  bool array(Json& out, int depth) {
    out.type = Json::Type::kArray;
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    for (;;) {
      Json v;
      if (!value(v, depth + 1)) return false;
      out.array.push_back(std::move(v));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or ']'");
    }
  }

  bool string(std::string& out) {
    ++pos_;  // opening quote
    while (pos_ < s_.size()) {
      char ch = s_[pos_++];
      if (ch == '"') return true;
      if (ch != '\\') {
        out += ch;
        continue;
      }
      if (pos_ >= s_.size()) break;
      char esc = s_[pos_++];
      switch (esc) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) return fail("short \\u escape");
          unsigned cp = 0;
          for (int i = 0; i < 4; ++i) {
            char h = s_[pos_++];
            if (!std::isxdigit(static_cast<unsigned char>(h))) return fail("bad \\u escape");
            cp = cp * 16 + static_cast<unsigned>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                                                                                          : std::tolower(h) - 'a' + 10);
          }
          // The backend escapes single bytes as \u00XX; keep them as bytes.
          if (cp < 0x100) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default:
          return fail("bad escape");
      }
    }
    return fail("unterminated string");
  }

  bool number(Json& out) {
    size_t start = pos_;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    bool integral = true;
    while (pos_ < s_.size()) {
      char ch = s_[pos_];
      if (std::isdigit(static_cast<unsigned char>(ch))) {
        ++pos_;
      } else if (ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-') {
        integral = false;
        ++pos_;
      } else {
        break;
      }
    }
    if (pos_ == start) return fail("unexpected character");
    std::string text(s_.substr(start, pos_ - start));
    out.type = Json::Type::kNumber;
    char* end = nullptr;
    out.number = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size()) return fail("bad number");
    out.integer = integral ? std::strtoll(text.c_str(), nullptr, 10) : static_cast<int64_t>(out.number);
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  const char* why_ = "";
};

}  // namespace

const Json* Json::get(std::string_view key) const {
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

int64_t Json::int_or(std::string_view key, int64_t fallback) const {
  const Json* v = get(key);
  return v && v->type == Type::kNumber ? v->integer : fallback;
}

std::string Json::str_or(std::string_view key, std::string fallback) const {
  const Json* v = get(key);
  return v && v->type == Type::kString ? v->string : fallback;
}

bool Json::bool_or(std::string_view key, bool fallback) const {
  const Json* v = get(key);
  return v && v->type == Type::kBool ? v->boolean : fallback;
}

std::optional<Json> Json::parse(std::string_view text, std::string* error) {
  Json out;
  JsonParser p(text);
  if (!p.parse(out, error)) return std::nullopt;
  return out;
}

// ---------------------------------------------------------------- Record

uint64_t Record::bytes_in() const {
  uint64_t n = 0;
  for (const auto& c : connections) n += c.bytes_in;
  return n;
}

std::vector<const RecordedRequest*> Record::all_requests() const {
  std::vector<const RecordedRequest*> out;
  for (const auto& c : connections) {
    for (const auto& r : c.requests) out.push_back(&r);
  }
  return out;
}

const RecordedRequest* Record::find(std::string_view target) const {
  for (const auto& c : connections) {
    for (const auto& r : c.requests) {
      if (r.target == target) return &r;
    }
  }
  return nullptr;
}

int Record::count(std::string_view target) const {
  int n = 0;
  for (const auto& c : connections)
    for (const auto& r : c.requests) n += r.target == target;
  return n;
}

const RecordedConnection* Record::connection_of(std::string_view target) const {
  for (const auto& c : connections)
    for (const auto& r : c.requests)
      if (r.target == target) return &c;
  return nullptr;
}

namespace {

RecordedRequest to_request(const Json& j) {
  RecordedRequest r;
  r.index = static_cast<int>(j.int_or("index", 0));
  r.method = j.str_or("method", "");
  r.target = j.str_or("target", "");
  r.version = j.str_or("version", "");
  r.complete = j.bool_or("complete", false);
  r.error = j.str_or("error", "");
  r.bytes = static_cast<uint64_t>(j.int_or("bytes", 0));
  r.raw = j.str_or("raw", "");
  r.body = j.str_or("body", "");
  r.body_bytes = static_cast<uint64_t>(j.int_or("body_bytes", 0));
  r.reads = static_cast<int>(j.int_or("reads", 0));
  r.first_byte_us = j.int_or("first_byte_us", 0);
  r.last_byte_us = j.int_or("last_byte_us", 0);
  r.status = static_cast<int>(j.int_or("status", 0));
  r.response_start_us = j.int_or("response_start_us", 0);
  r.response_done_us = j.int_or("response_done_us", 0);
  return r;
}

std::optional<Record> to_record(const Json& j) {
  if (j.type != Json::Type::kObject) return std::nullopt;
  Record rec;
  rec.now_us = j.int_or("now_us", 0);
  rec.current_connections = static_cast<int>(j.int_or("current_connections", 0));
  rec.max_connections = static_cast<int>(j.int_or("max_connections", 0));
  rec.accepted = static_cast<uint64_t>(j.int_or("accepted", 0));
  rec.requests = static_cast<uint64_t>(j.int_or("requests", 0));
  const Json* conns = j.get("connections");
  if (!conns || conns->type != Json::Type::kArray) return std::nullopt;
  for (const auto& cj : conns->array) {
    RecordedConnection c;
    c.id = static_cast<uint64_t>(cj.int_or("id", 0));
    c.opened_us = cj.int_or("opened_us", 0);
    c.served_us = cj.int_or("served_us", 0);
    c.closed_us = cj.int_or("closed_us", 0);
    c.bytes_in = static_cast<uint64_t>(cj.int_or("bytes_in", 0));
    c.read_calls = static_cast<int>(cj.int_or("read_calls", 0));
    if (const Json* reqs = cj.get("requests"); reqs && reqs->type == Json::Type::kArray) {
      for (const auto& rj : reqs->array) c.requests.push_back(to_request(rj));
    }
    rec.connections.push_back(std::move(c));
  }
  return rec;
}

std::string self_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

bool executable(const std::string& path) { return !path.empty() && ::access(path.c_str(), X_OK) == 0; }

}  // namespace

// ---------------------------------------------------------------- Backend

std::string backend_path() {
  if (const char* env = std::getenv("RECORDING_BACKEND"); env && *env) return env;
#ifdef RECORDING_BACKEND_PATH
  if (executable(RECORDING_BACKEND_PATH)) return RECORDING_BACKEND_PATH;
#endif
  return self_dir() + "/recording-backend";
}

std::string agent_path() {
  if (const char* env = std::getenv("OFFLOAD_AGENT"); env && *env) return env;
#ifdef OFFLOAD_AGENT_PATH
  return OFFLOAD_AGENT_PATH;
#else
  return {};
#endif
}

std::string proxy_kind() {
  const char* env = std::getenv("OFFLOAD_IT_PROXY");
  return env && *env ? std::string(env) : std::string("agent");
}

bool Backend::start(int workers, uint16_t port) {
  std::string path = backend_path();
  if (!child_.start(path, {"--listen", "127.0.0.1:" + std::to_string(port), "--control", "127.0.0.1:0", "--workers",
                           std::to_string(workers)})) {
    error_ = child_.error();
    return false;
  }
  auto listen = child_.wait_for_line("recording-backend: listening on ", 10000);
  auto control = child_.wait_for_line("recording-backend: control on ", 10000);
  if (!listen || !control) {
    error_ = "recording backend (" + path + ") did not get ready: " + child_.stderr_text();
    return false;
  }
  port_ = port_from_line(*listen);
  control_port_ = port_from_line(*control);
  return port_ != 0 && control_port_ != 0;
}

std::optional<Record> Backend::record(std::string* error) {
  auto r = http_get(control_port_, "/__record", 10000);
  if (!r) {
    if (error) *error = "fetching /__record: " + r.error;
    return std::nullopt;
  }
  std::string jerr;
  auto j = Json::parse(r.response->body, &jerr);
  if (!j) {
    if (error) *error = "parsing /__record: " + jerr;
    return std::nullopt;
  }
  auto rec = to_record(*j);
  if (!rec && error) *error = "/__record has an unexpected shape";
  return rec;
}

bool Backend::reset() {
  auto r = http_get(control_port_, "/__reset", 5000);
  return r && r.response->status == 200;
}

// ------------------------------------------------------------------ Proxy

Proxy::~Proxy() {
  child_.stop(2000);
  if (!temp_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_dir_, ec);
  }
}

bool Proxy::start(uint16_t upstream_port, const ProxyOptions& options) {
  kind_ = proxy_kind();
  if (kind_ == "nginx") return start_nginx(upstream_port, options);
  return start_agent(upstream_port, options);
}

bool Proxy::start_agent(uint16_t upstream_port, const ProxyOptions& o) {
  std::string path = agent_path();
  if (!executable(path)) {
    error_ = "no offload-agent binary at '" + path + "' (set OFFLOAD_AGENT)";
    return false;
  }
  std::vector<std::string> args = {"run", "--listen", o.listen.empty() ? "127.0.0.1:0" : o.listen, "--upstream",
                                   "tcp://127.0.0.1:" + std::to_string(upstream_port), "--admin", "127.0.0.1:0"};
  add_flag(args, "--max-clients", o.max_clients);
  add_flag(args, "--max-upstream", o.max_upstream);
  add_flag(args, "--persistent", o.persistent);
  add_flag(args, "--header-timeout-ms", o.header_timeout_ms);
  add_flag(args, "--body-timeout-ms", o.body_timeout_ms);
  add_flag(args, "--keepalive-timeout-ms", o.keepalive_timeout_ms);
  add_flag(args, "--send-timeout-ms", o.send_timeout_ms);
  add_flag(args, "--connect-timeout-ms", o.connect_timeout_ms);
  add_flag(args, "--response-timeout-ms", o.response_timeout_ms);
  add_flag(args, "--queue-timeout-ms", o.queue_timeout_ms);
  add_flag(args, "--drain-timeout-ms", o.drain_timeout_ms);
  add_flag(args, "--header-bytes-max", o.header_bytes_max);
  add_flag(args, "--body-bytes-max", o.body_bytes_max);
  add_flag(args, "--response-buffer", o.response_buffer);
  add_flag(args, "--response-spill-max", o.response_spill_max);
  args.insert(args.end(), o.extra_flags.begin(), o.extra_flags.end());
  if (o.open_files_max >= 0) {  // prlimit(1) sets the limit and runs the agent
    const std::string n = std::to_string(o.open_files_max);
    args.insert(args.begin(), {"--nofile=" + n + ":" + n, "--", path});
    path = "/usr/bin/prlimit";
  }
  if (!child_.start(path, args)) {
    error_ = child_.error();
    return false;
  }
  auto listen = child_.wait_for_line("offload-agent: listening on ", 15000);
  auto admin = child_.wait_for_line("offload-agent: admin on ", listen ? 5000 : 0);
  if (!listen || !admin) {
    error_ = "offload-agent did not print its listening and admin lines; stderr:\n" + child_.stderr_text();
    return false;
  }
  port_ = port_from_line(*listen);
  admin_port_ = port_from_line(*admin);
  if (port_ == 0) error_ = "no port in: " + *listen;
  return port_ != 0;
}

namespace {

std::string ms_or(int v, const char* fallback) { return v >= 0 ? std::to_string(v) + "ms" : fallback; }

// nginx sizes take k/m but not g.
std::string nginx_size(const std::string& v, const char* fallback) {
  if (v.empty()) return fallback;
  if (!v.empty() && (v.back() == 'g' || v.back() == 'G')) return v.substr(0, v.size() - 1) + "000m";
  return v;
}

bool wait_listening(uint16_t port, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  while (now_ms() < deadline) {
    Client c;
    if (c.connect(port, 200)) return true;
    sleep_ms(10);
  }
  return false;
}

}  // namespace

// nginx as a buffering proxy with the same settings, to check that the tests
// hold for a proxy known to buffer (they are not expected to all pass: nginx
// has no upstream queue, for one).
bool Proxy::start_nginx(uint16_t upstream_port, const ProxyOptions& o) {
  char tmpl[] = "/tmp/offload-it-nginx-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    error_ = "mkdtemp failed";
    return false;
  }
  temp_dir_ = tmpl;
  port_ = unused_port();
  std::string d = temp_dir_;
  std::string upstream_server = "server 127.0.0.1:" + std::to_string(upstream_port);
  if (o.max_upstream > 0) upstream_server += " max_conns=" + std::to_string(o.max_upstream);
  std::string conf = "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log " + d +
                     "/error.log warn;\npid " + d + "/nginx.pid;\nworker_rlimit_nofile 20000;\n" +
                     "events { worker_connections 16000; }\nhttp {\n  access_log off;\n" +
                     "  client_body_temp_path " + d + "/body;\n  proxy_temp_path " + d + "/proxy;\n" +
                     "  fastcgi_temp_path " + d + "/fcgi;\n  uwsgi_temp_path " + d + "/uwsgi;\n" +
                     "  scgi_temp_path " + d + "/scgi;\n" + "  upstream backend { " + upstream_server +
                     "; keepalive " + std::to_string(o.persistent > 0 ? o.persistent : 8) + "; }\n" +
                     "  server {\n    listen 127.0.0.1:" + std::to_string(port_) + ";\n" +
                     "    client_header_timeout " + ms_or(o.header_timeout_ms, "10s") + ";\n" +
                     "    client_body_timeout " + ms_or(o.body_timeout_ms, "30s") + ";\n" +
                     "    keepalive_timeout " + ms_or(o.keepalive_timeout_ms, "75s") + ";\n" +
                     "    send_timeout " + ms_or(o.send_timeout_ms, "60s") + ";\n" +
                     "    client_max_body_size " + nginx_size(o.body_bytes_max, "16m") + ";\n" +
                     "    large_client_header_buffers 4 " + nginx_size(o.header_bytes_max, "16k") + ";\n" +
                     "    location / {\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n" +
                     "      proxy_set_header Connection \"\";\n      proxy_buffering on;\n" +
                     "      proxy_request_buffering on;\n      proxy_max_temp_file_size 1024m;\n" +
                     "      proxy_connect_timeout " + ms_or(o.connect_timeout_ms, "5s") + ";\n" +
                     "      proxy_read_timeout " + ms_or(o.response_timeout_ms, "60s") + ";\n" +
                     "      proxy_next_upstream off;\n    }\n  }\n}\n";
  std::ofstream(d + "/nginx.conf") << conf;
  const char* nginx = std::getenv("NGINX");
  if (!child_.start(nginx && *nginx ? nginx : "/usr/sbin/nginx", {"-p", d, "-c", d + "/nginx.conf"})) {
    error_ = child_.error();
    return false;
  }
  if (!wait_listening(port_, 10000)) {
    error_ = "nginx did not listen; stderr:\n" + child_.stderr_text();
    return false;
  }
  return true;
}

std::map<std::string, int64_t> flatten_stats(const Json& doc) {
  std::map<std::string, int64_t> top, summed;
  std::function<void(const Json&, int)> walk = [&](const Json& j, int depth) {
    if (depth > 16) return;
    if (j.type == Json::Type::kObject) {
      for (const auto& [k, v] : j.object) {
        if (v.type == Json::Type::kNumber) {
          if (depth == 0) top[k] = v.integer;
          summed[k] += v.integer;
        } else {
          walk(v, depth + 1);
        }
      }
    } else if (j.type == Json::Type::kArray) {
      for (const auto& v : j.array) walk(v, depth + 1);
    }
  };
  walk(doc, 0);
  for (const auto& [k, v] : top) summed[k] = v;
  return summed;
}

std::optional<std::map<std::string, int64_t>> Proxy::stats(std::string* error) {
  if (!is_agent()) {
    if (error) *error = "no counters for " + kind_;
    return std::nullopt;
  }
  auto r = http_get(admin_port_, "/stats?format=json", 5000);
  if (!r) {
    if (error) *error = "GET /stats?format=json: " + r.error;
    return std::nullopt;
  }
  std::string jerr;
  auto j = Json::parse(r.response->body, &jerr);
  if (!j) {
    if (error) *error = "stats JSON: " + jerr + " in: " + r.response->body.substr(0, 200);
    return std::nullopt;
  }
  return flatten_stats(*j);
}

int64_t Proxy::stat(const std::string& name) {
  auto s = stats();
  if (!s) return -1;
  auto it = s->find(name);
  return it == s->end() ? -1 : it->second;
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char ch : bytes) {
    out += kDigits[ch >> 4];
    out += kDigits[ch & 15];
  }
  return out;
}

std::string difference(const std::string& got, const std::string& want) {
  if (got == want) return {};
  size_t n = std::min(got.size(), want.size());
  size_t at = 0;
  while (at < n && got[at] == want[at]) ++at;
  return "got " + std::to_string(got.size()) + " bytes, want " + std::to_string(want.size()) +
         ", first difference at offset " + std::to_string(at);
}

void add_flag(std::vector<std::string>& args, const char* flag, int value) {
  if (value < 0) return;
  args.push_back(flag);
  args.push_back(std::to_string(value));
}

void add_flag(std::vector<std::string>& args, const char* flag, const std::string& value) {
  if (value.empty()) return;
  args.push_back(flag);
  args.push_back(value);
}

}  // namespace rig
