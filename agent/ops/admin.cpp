#include "ops/admin.h"

#include "proxy/listener.h"

#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

namespace offload {

namespace {

int64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// A pause on the listener after EMFILE and the like: the pending connection
// stays readable, and accepting again at once would spin.
constexpr int64_t kAcceptPauseMs = 100;

bool head_complete(std::string_view in) {
  return in.find("\r\n\r\n") != std::string_view::npos || in.find("\n\n") != std::string_view::npos;
}

std::string http_answer(std::string_view status, std::string_view type, std::string_view body) {
  return fmt::format("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                     status, type, body.size(), body);
}

// A query value as sent: %XX decoded (a CIDR needs no more).
std::string query_value(std::string_view target, std::string_view name) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    std::string_view pair = rest.substr(0, rest.find('&'));
    rest.remove_prefix(std::min(rest.size(), pair.size() + 1));
    if (!pair.starts_with(name) || pair.size() <= name.size() || pair[name.size()] != '=') continue;
    std::string out;
    std::string_view v = pair.substr(name.size() + 1);
    auto digit = [](char c) { return std::isxdigit(uint8_t(c)) ? (std::isdigit(uint8_t(c)) ? c - '0' : (c | 0x20) - 'a' + 10) : -1; };
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '%' && i + 2 < v.size() && digit(v[i + 1]) >= 0 && digit(v[i + 2]) >= 0) {
        out += char(digit(v[i + 1]) * 16 + digit(v[i + 2]));
        i += 2;
      } else {
        out += v[i];
      }
    }
    return out;
  }
  return {};
}

}  // namespace

AdminServer::AdminServer(const SocketAddress& address, std::vector<const Counters*> shards,
                         const TopologyStats* topology)
    : shards_(std::move(shards)), topology_(topology) {
  shown_ = shards_.size();
  fd_ = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 ||
      ::listen(fd_, int(2 * kConnectionsMax)) != 0) {
    std::string why = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    throw ConfigError(fmt::format("admin: cannot listen on '{}': {}", address.text, why));
  }
  make_wake_fd();
}

AdminServer::AdminServer(int listening_fd, std::vector<const Counters*> shards, const TopologyStats* topology)
    : shards_(std::move(shards)), topology_(topology), fd_(listening_fd) {
  shown_ = shards_.size();
  // Handed over as the old agent had it: accept4 below needs it non-blocking.
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
  make_wake_fd();
}

void AdminServer::make_wake_fd() {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    std::string why = std::strerror(errno);
    ::close(fd_);
    throw ConfigError(fmt::format("admin: cannot make an eventfd: {}", why));
  }
  conns_.reserve(kConnectionsMax);
}

AdminServer::~AdminServer() {
  const uint64_t one = 1;
  // Cannot fail short of a counter overflow; the thread wakes on the first write.
  (void)!::write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  for (Conn& c : conns_) ::close(c.fd);
  ::close(wake_fd_);
  ::close(fd_);
}

void AdminServer::set_sources(std::vector<const Counters*> shards, size_t shown, const TopologyStats* topology,
                              const std::function<void()>& meanwhile) {
  std::lock_guard lock(sources_mutex_);
  if (meanwhile) meanwhile();
  shards_ = std::move(shards);
  shown_ = shown;
  topology_ = topology;
}

void AdminServer::set_rules(std::shared_ptr<LiveRules> rules, Mirror mirror) {
  std::lock_guard lock(sources_mutex_);  // a reload swaps them while the admin thread serves
  rules_ = std::move(rules);
  mirror_ = std::move(mirror);
}

void AdminServer::start() { thread_ = std::thread([this] { serve(); }); }

std::string AdminServer::bound_address() const { return local_address(fd_); }

void AdminServer::serve() {
  std::vector<pollfd> fds;
  fds.reserve(kConnectionsMax + 2);
  for (;;) {
    int64_t now = monotonic_ms();
    // Deadlines first: a connection past its own is closed whatever it is doing.
    int64_t next = now >= accept_paused_until_ ? INT64_MAX : accept_paused_until_;
    for (Conn& c : conns_) {
      if (now >= c.deadline_ms) {
        bump(counters_.admin_timeouts);
        ::close(c.fd);
        c.fd = -1;
      } else {
        next = std::min(next, c.deadline_ms);
      }
    }
    std::erase_if(conns_, [](const Conn& c) { return c.fd < 0; });
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    const bool accepting = now >= accept_paused_until_ && accepting_.load(std::memory_order_relaxed);
    fds.push_back({accepting ? fd_ : -1, POLLIN, 0});  // -1: not polled
    for (const Conn& c : conns_) fds.push_back({c.fd, short(c.out.empty() ? POLLIN : POLLOUT), 0});
    const int timeout = next == INT64_MAX ? -1 : int(std::max<int64_t>(0, next - now));
    if (::poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR || errno == ENOMEM) continue;
      return;  // EFAULT/EINVAL: a bug of ours; the agent serves on without stats
    }
    if (fds[0].revents != 0) return;
    for (size_t i = 0; i < conns_.size(); ++i) {
      Conn& c = conns_[i];
      if (fds[i + 2].revents == 0) continue;
      const bool more = c.out.empty() ? on_readable(c) : on_writable(c);
      if (!more) {
        ::close(c.fd);
        c.fd = -1;
      }
    }
    std::erase_if(conns_, [](const Conn& c) { return c.fd < 0; });
    if (fds[1].revents != 0) accept_ready(monotonic_ms());
  }
}

void AdminServer::accept_ready(int64_t now_ms) {
  if (!accepting_.load(std::memory_order_relaxed)) return;  // the next turn leaves the socket out
  // At most one slot's worth per wake-up, so the loop gets back to the others.
  for (size_t k = 0; k < kConnectionsMax; ++k) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        accept_paused_until_ = now_ms + kAcceptPauseMs;
        return;
      }
      continue;  // ECONNABORTED and the like: that one is gone, try the next
    }
    if (conns_.size() == kConnectionsMax) {
      bump(counters_.admin_evicted);
      ::close(conns_.front().fd);
      conns_.erase(conns_.begin());
    }
    Conn c;
    c.fd = fd;
    c.deadline_ms = now_ms + kDeadlineMs;
    // The request often came with the connection: answer it now.
    if (on_readable(c)) conns_.push_back(std::move(c));
    else ::close(fd);
  }
}

// Reads what is there; once the head is in (or the bound is hit) the answer
// is made and sending begins.
bool AdminServer::on_readable(Conn& c) {
  char buf[kRequestBytesMax];
  ssize_t n = ::recv(c.fd, buf, kRequestBytesMax - c.in.size(), 0);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  if (n == 0) return false;  // gone before asking
  c.in.append(buf, size_t(n));
  if (head_complete(c.in)) {
    c.out = answer(c.in);
  } else if (c.in.size() >= kRequestBytesMax) {
    c.out = http_answer("431 Request Header Fields Too Large", "text/plain", "request too large\n");
  } else {
    return true;
  }
  return on_writable(c);
}

bool AdminServer::on_writable(Conn& c) {
  while (c.sent < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.sent += size_t(n);
  }
  return false;  // all sent: done
}

std::string AdminServer::answer(std::string_view request) const {
  std::string_view line = request.substr(0, request.find('\n'));
  // Before the lock: the reload replaces the sources.
  if (reload_ && line.starts_with("POST /reload ")) {
    auto [ok, said] = reload_();
    return http_answer(ok ? "200 OK" : "400 Bad Request", "text/plain", said + "\n");
  }
  if (line.find(" /security/") != std::string_view::npos) {  // takes the lock for its rule set itself
    const size_t sp = line.find(' ');
    std::string_view target = line.substr(sp + 1);
    target = target.substr(0, target.find(' '));
    return security_answer(line.substr(0, sp), target);
  }
  std::lock_guard lock(sources_mutex_);
  std::vector<const Counters*> parts = shards_;
  parts.push_back(&counters_);
  auto render = [&](StatsFormat f) {
    std::string out = render_totals(parts, shown_, f);
    if (topology_ == nullptr) return out;
    if (f != StatsFormat::kJson) return out + render_topology(*topology_, f);
    out.resize(out.size() - 2);  // {...}\n → {..., "listeners":[...], "servers":[...]}\n
    return out + "," + render_topology(*topology_, f) + "}\n";
  };
  if (line.starts_with("GET /stats?format=json "))
    return http_answer("200 OK", "application/json", render(StatsFormat::kJson));
  if (line.starts_with("GET /stats "))
    return http_answer("200 OK", "text/plain", render(StatsFormat::kText));
  if (line.starts_with("GET /metrics "))
    return http_answer("200 OK", "text/plain; version=0.0.4", render(StatsFormat::kPrometheus));
  return http_answer("404 Not Found", "text/plain", "try /stats, /stats?format=json or /metrics\n");
}

// /security/deny and /security/allow: list, add, remove.
std::string AdminServer::security_answer(std::string_view method, std::string_view target) const {
  std::shared_ptr<LiveRules> rules;
  Mirror mirror;
  {
    std::lock_guard lock(sources_mutex_);
    rules = rules_;
    mirror = mirror_;
  }
  const std::string_view path = target.substr(0, target.find('?'));
  if (rules == nullptr || (path != "/security/deny" && path != "/security/allow"))
    return http_answer("404 Not Found", "text/plain", "try /security/deny or /security/allow\n");
  const LiveRules::List list = path == "/security/deny" ? LiveRules::List::kDeny : LiveRules::List::kAllow;
  const std::string listener = query_value(target, "listener");  // empty: the global lists
  if (method == "GET") {
    try {
      return http_answer("200 OK", "text/plain", rules->list(list, listener));
    } catch (const ConfigError& e) {
      return http_answer("400 Bad Request", "text/plain", std::string(e.what()) + "\n");
    }
  }
  if (method != "POST" && method != "DELETE")
    return http_answer("405 Method Not Allowed", "text/plain", "GET, POST or DELETE\n");
  const std::string cidr = query_value(target, "cidr");
  const bool add = method == "POST";
  bool changed = false;
  std::string agent;
  // One change at a time, so that the guard's denies before and after it
  // are this change's alone.
  std::lock_guard changing(security_change_mutex_);
  const std::shared_ptr<const RuleSet> before = rules->current();
  try {
    agent = add ? rules->add(list, cidr, &changed, listener) : rules->remove(list, cidr, &changed, listener);
  } catch (const ConfigError& e) {
    return http_answer("400 Bad Request", "text/plain", std::string(e.what()) + "\n");
  }
  const std::string guard = mirror ? mirror_change(mirror, *before, *rules->current(), list, add, cidr, !listener.empty())
                                   : "guard: not attached to the agent";
  return http_answer("200 OK", "text/plain", fmt::format("agent: {}\n{}\n", agent, guard));
}

// What the guard must change for one change of the rule set: the global
// denies it holds (RuleSet::guard_denies) before and after, so an allow
// added inside a deny takes that deny out of the guard (the agent alone
// screens it), and deleting the allow puts it back. An allow itself is
// mirrored too (the guard keeps it for its allow-only mode).
std::string mirror_change(const AdminServer::Mirror& mirror, const RuleSet& before, const RuleSet& after,
                          LiveRules::List list, bool add, const std::string& cidr, bool listener) {
  auto text_of = [](const std::vector<Prefix>& ps) {
    std::vector<std::string> out;
    for (const Prefix& p : ps) out.push_back(prefix_text(p));
    std::sort(out.begin(), out.end());
    return out;
  };
  const std::vector<std::string> held = text_of(before.guard_denies()), next = text_of(after.guard_denies());
  std::vector<std::string> gone, come;
  std::set_difference(held.begin(), held.end(), next.begin(), next.end(), std::back_inserter(gone));
  std::set_difference(next.begin(), next.end(), held.begin(), held.end(), std::back_inserter(come));
  std::vector<std::string> lines;
  for (const std::string& d : gone) lines.push_back(mirror(LiveRules::List::kDeny, false, d));
  for (const std::string& d : come) lines.push_back(mirror(LiveRules::List::kDeny, true, d));
  if (list == LiveRules::List::kAllow && !listener) lines.push_back(mirror(list, add, cidr));
  if (lines.empty() && listener) lines.push_back("guard: not changed (a listener's own prefixes stay in the agent)");
  if (lines.empty() && list == LiveRules::List::kDeny && add) {
    // Denied here, but an allow lies inside it: the guard cannot make that exception.
    lines.push_back(fmt::format("guard: not changed ({} has an allow inside it: the agent alone screens it)",
                                prefix_text(parse_prefix("deny", cidr))));
  }
  if (lines.empty()) lines.push_back("guard: not changed");
  std::string out;
  for (const std::string& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

std::pair<int, std::string> request_admin(const SocketAddress& address, const std::string& method,
                                          const std::string& path, int timeout_s) {
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::strerror(errno));
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error(fmt::format("cannot reach the agent's admin endpoint {}: {}", address.text, why));
  }
  std::string req = fmt::format("{} {} HTTP/1.1\r\nHost: offload\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                method, path);
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, size_t(n));
  }
  ::close(fd);
  auto body = resp.find("\r\n\r\n");
  if (!resp.starts_with("HTTP/1.1 ") || resp.size() < 12 || body == std::string::npos)
    throw std::runtime_error(fmt::format("unexpected answer from {}", address.text));
  return {std::atoi(resp.substr(9, 3).c_str()), resp.substr(body + 4)};
}

std::string fetch_admin(const SocketAddress& address, const std::string& path) {
  auto [status, body] = request_admin(address, "GET", path, 5);
  if (status != 200) throw std::runtime_error(fmt::format("unexpected answer from {}", address.text));
  return body;
}

}  // namespace offload
