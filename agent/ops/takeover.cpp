#include "ops/takeover.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

#include "generation.h"
#include "ops/reload.h"
#include "ops/version.h"

namespace offload::takeover {

namespace {

constexpr size_t kRecordMax = 4096;
constexpr uint32_t kSocketsMax = 65536;  // bounds the offer's loop whatever the old agent says
constexpr int kTimeoutS = 5;

// ------------------------------------------------------------- records

// A value as one word: space, '%', '=' and control bytes as %XX.
std::string encode(std::string_view v) {
  std::string out;
  for (unsigned char c : v) {
    if (c <= ' ' || c == '%' || c == '=' || c >= 0x7f) out += fmt::format("%{:02X}", c);
    else out += char(c);
  }
  return out;
}

std::string decode(std::string_view v) {
  std::string out;
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '%' && i + 2 < v.size() && hex(v[i + 1]) >= 0 && hex(v[i + 2]) >= 0) {
      out += char(hex(v[i + 1]) * 16 + hex(v[i + 2]));
      i += 2;
    } else {
      out += v[i];
    }
  }
  return out;
}

struct Record {
  std::string word;
  std::map<std::string, std::string> fields;
  int fd = -1;  // attached, now this process's
  std::string get(const std::string& key) const {
    auto it = fields.find(key);
    return it == fields.end() ? std::string() : it->second;
  }
  uint32_t number(const std::string& key) const {
    const std::string v = get(key);
    uint32_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size())
      throw std::runtime_error(fmt::format("takeover: bad {} '{}' in '{}'", key, v, word));
    return n;
  }
};

Record parse(std::string_view line) {
  Record r;
  size_t at = 0;
  while (at < line.size()) {
    size_t end = line.find(' ', at);
    if (end == std::string_view::npos) end = line.size();
    std::string_view item = line.substr(at, end - at);
    at = end + 1;
    if (item.empty()) continue;
    if (r.word.empty()) {
      r.word = std::string(item);
      continue;
    }
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) r.fields[decode(item)] = "";
    else r.fields[decode(item.substr(0, eq))] = decode(item.substr(eq + 1));
  }
  return r;
}

// One record, with `fd` attached when it is not -1. False with errno.
bool send_record(int sock, const std::string& line, int fd = -1) {
  iovec iov{const_cast<char*>(line.data()), line.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  return ::sendmsg(sock, &msg, MSG_NOSIGNAL) == ssize_t(line.size());
}

// One record; nullopt-like `false` on EOF (errno 0) or an error (errno set).
// Any descriptor beyond the first is closed: one record carries one.
bool recv_record(int sock, Record& out) {
  char buf[kRecordMax];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    if (n == 0) errno = 0;
    return false;
  }
  out = parse(std::string_view(buf, size_t(n)));
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (out.fd < 0) out.fd = fd;
      else ::close(fd);
    }
  }
  return true;
}

void set_timeouts(int fd) {
  timeval tv{kTimeoutS, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::string why_not(const char* what) {
  return errno == 0 ? fmt::format("{}: the other side closed", what)
         : errno == EAGAIN || errno == EWOULDBLOCK
             ? fmt::format("{}: no answer within {} s", what, kTimeoutS)
             : fmt::format("{}: {}", what, std::strerror(errno));
}

// ------------------------------------------------------------- addresses

// The numeric form parse_socket_address reads back.
std::string address_text(const SocketAddress& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a.family() == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
    return fmt::format("[{}]:{}", host, ntohs(v6->sin6_port));
  }
  auto* v4 = reinterpret_cast<const sockaddr_in*>(&a.storage);
  inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
  return fmt::format("{}:{}", host, ntohs(v4->sin_port));
}

SocketAddress bound_address(int fd) {
  SocketAddress a;
  a.length = sizeof a.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.length) != 0) a.length = 0;
  return a;
}

bool listening_stream(int fd) {
  int type = 0, accepting = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return false;
  len = sizeof accepting;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 && accepting == 1;
}

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof a.sun_path - 1));
  return a;
}

void close_all(Offer& offer) {
  for (Socket& s : offer.sockets)
    if (s.fd >= 0) {
      ::close(s.fd);
      s.fd = -1;
    }
}

bool has_bus(const Config& c) {
  return std::any_of(c.groups.begin(), c.groups.end(), [](const GroupConfig& g) { return g.is_bus(); });
}

}  // namespace

AgentSockets as_sockets(const std::vector<std::vector<int>>& fds) {
  AgentSockets out(fds.size());
  for (size_t s = 0; s < fds.size(); ++s) {
    out[s].resize(fds[s].size());
    for (size_t j = 0; j < fds[s].size(); ++j)
      if (fds[s][j] >= 0) out[s][j].push_back(fds[s][j]);
  }
  return out;
}

std::vector<Socket> offer_of(const Generation& running, int admin_fd, const std::string& admin_address) {
  std::vector<Socket> out;
  const Config& config = running.config();
  for (size_t s = 0; s < running.fds().size(); ++s)
    for (size_t j = 0; j < running.fds()[s].size(); ++j) {
      const ListenerConfig& l = config.listeners[j];
      out.push_back({false, uint32_t(s), uint32_t(j), l.name, l.address, l.port_last, running.fds()[s][j].front()});
    }
  if (admin_fd >= 0) {
    Socket a;
    a.admin = true;
    a.name = "admin";
    a.address = parse_socket_address("admin", admin_address);
    a.fd = admin_fd;
    out.push_back(a);
  }
  return out;
}

// ---------------------------------------------------------------- Server

// Bound under a name of its own, made private, then renamed over the path:
// nobody can connect before the mode is set, and the path never names
// nothing (a new agent that took over replaces the old one's socket).
Server::Server(const std::string& path) : path_(path) {
  // 90: room in sockaddr_un's 108 bytes for the ".PID" of the name bound first.
  if (path.empty() || path.front() != '/' || path.size() > 90)
    throw ConfigError(fmt::format("takeover_socket: bad value '{}' (expected an absolute path of at most 90 bytes)",
                                  path));
  const std::string temp = fmt::format("{}.{}", path, ::getpid());
  auto fail = [&](const char* what) {
    const std::string why = std::strerror(errno);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    ::unlink(temp.c_str());
    throw ConfigError(fmt::format("takeover_socket: cannot listen on '{}': {}: {}", path, what, why));
  };
  listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) fail("socket");
  ::unlink(temp.c_str());  // a leftover of an agent with this pid that did not end cleanly
  const sockaddr_un a = unix_address(temp);
  if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) fail("bind");
  if (::chmod(temp.c_str(), 0600) != 0) fail("chmod");
  if (::listen(listen_fd_, 4) != 0) fail("listen");
  struct stat st{};
  if (::stat(temp.c_str(), &st) != 0) fail("stat");
  inode_ = st.st_ino;
  device_ = st.st_dev;
  if (::rename(temp.c_str(), path.c_str()) != 0) fail("rename");
}

Server::~Server() {
  drop();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  struct stat st{};
  if (::stat(path_.c_str(), &st) == 0 && st.st_ino == inode_ && st.st_dev == device_) ::unlink(path_.c_str());
}

void Server::drop() {
  if (conn_fd_ >= 0) ::close(conn_fd_);
  conn_fd_ = -1;
  offered_.clear();
}

std::string Server::accept_one(const std::vector<Socket>& offer, uint32_t shards, const std::string& refusal) {
  const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return {};
  ucred peer{};
  socklen_t len = sizeof peer;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) peer = {};
  set_timeouts(fd);
  auto refuse = [&](const std::string& why) {
    (void)send_record(fd, "refuse why=" + encode(why));
    ::close(fd);
    return fmt::format("takeover: refused pid {}: {}", peer.pid, why);
  };
  if (peer.uid != ::geteuid() && peer.uid != 0) return refuse(fmt::format("uid {} is not this agent's", peer.uid));
  if (busy()) return refuse(fmt::format("another new agent is taking over"));
  if (!refusal.empty()) return refuse(refusal);
  bool ok = send_record(fd, fmt::format("offload-takeover version={} pid={} agent={} shards={} sockets={}", kProtocol,
                                        ::getpid(), encode(offload::kVersion), shards, offer.size()));
  for (size_t i = 0; ok && i < offer.size(); ++i) {
    const Socket& s = offer[i];
    const std::string line =
        s.admin ? fmt::format("socket kind=admin address={}", address_text(s.address))
                : fmt::format("socket kind=listener shard={} listener={} name={} address={} range={}", s.shard,
                              s.listener, encode(s.name), address_text(s.address), s.port_last);
    ok = send_record(fd, line, s.fd);
  }
  ok = ok && send_record(fd, "end");
  if (!ok) {
    const std::string why = why_not("send");
    ::close(fd);
    return fmt::format("takeover: pid {} connected, but the sockets could not be sent ({}); serving on", peer.pid,
                       why);
  }
  conn_fd_ = fd;
  offered_.clear();
  for (const Socket& s : offer) offered_.push_back(s.fd);
  return fmt::format("takeover: pid {} connected; {} sockets sent, serving on until it is ready", peer.pid,
                     offer.size());
}

Server::Request Server::read_request() {
  Request r;
  Record rec;
  if (!recv_record(conn_fd_, rec)) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return r;
    r.kind = Request::Kind::kGone;
    r.why = errno == 0 ? "the new agent left before taking over" : why_not("receive");
    drop();
    return r;
  }
  if (rec.fd >= 0) ::close(rec.fd);
  if (rec.word != "drain") {
    r.kind = Request::Kind::kGone;
    r.why = fmt::format("the new agent said '{}', not drain", rec.word);
    drop();
    return r;
  }
  const std::string kept = rec.get("kept");
  for (size_t at = 0; at < kept.size();) {
    size_t end = kept.find(',', at);
    if (end == std::string::npos) end = kept.size();
    size_t i = 0;
    auto [p, ec] = std::from_chars(kept.data() + at, kept.data() + end, i);
    if (ec == std::errc() && p == kept.data() + end && i < offered_.size()) r.kept.push_back(offered_[i]);
    at = end + 1;
  }
  r.kind = Request::Kind::kDrain;
  draining_ = true;
  return r;
}

void Server::say_draining() {
  if (conn_fd_ >= 0) (void)send_record(conn_fd_, "draining");
}

void Server::say_cancelled() {
  if (conn_fd_ >= 0) (void)send_record(conn_fd_, "cancelled");
  drop();
}

// ------------------------------------------------------------------ Plan

Plan plan(const Config& config, Offer& offer) {
  try {
    if (config.workers < offer.shards)
      throw ConfigError(fmt::format(
          "takeover: workers: {} is fewer than the running agent's {} shards (their other sockets would be closed "
          "with the connections queued on them; set workers = {} or more, or stop and start)",
          config.workers, offer.shards, offer.shards));
    if (has_bus(config))
      throw ConfigError("takeover: upstream: an shm: group cannot be handed over yet (its bus socket is one "
                        "process's; stop and start)");
  } catch (...) {
    close_all(offer);
    throw;
  }
  Plan p;
  p.fds.assign(config.workers, std::vector<int>(config.listeners.size(), -1));
  std::vector<bool> kept(offer.sockets.size(), false);
  std::vector<bool> taken;  // per old listener: each goes to one new listener
  for (const Socket& s : offer.sockets)
    if (!s.admin && s.listener >= taken.size()) taken.resize(s.listener + 1, false);
  for (size_t j = 0; j < config.listeners.size(); ++j) {
    const ListenerConfig& is = config.listeners[j];
    for (size_t k = 0; k < offer.sockets.size(); ++k) {
      const Socket& was = offer.sockets[k];
      if (was.admin || taken[was.listener] || was.port_last != is.port_last) continue;
      if (!same_address(is.address, was.address) && !same_address(is.address, bound_address(was.fd))) continue;
      taken[was.listener] = true;
      for (size_t m = 0; m < offer.sockets.size(); ++m) {
        const Socket& one = offer.sockets[m];
        if (one.admin || one.listener != was.listener || one.shard >= config.workers) continue;
        p.fds[one.shard][j] = one.fd;
        kept[m] = true;
      }
      break;
    }
  }
  if (config.admin != "off") {
    const SocketAddress admin = parse_socket_address("admin", config.admin);
    for (size_t k = 0; k < offer.sockets.size(); ++k) {
      const Socket& s = offer.sockets[k];
      if (!s.admin || !(same_address(admin, s.address) || same_address(admin, bound_address(s.fd)))) continue;
      p.admin_fd = s.fd;
      kept[k] = true;
      break;
    }
  }
  size_t closed = 0, to_open = 0;
  for (size_t k = 0; k < offer.sockets.size(); ++k) {
    if (kept[k]) {
      p.kept.push_back(k);
    } else {
      ::close(offer.sockets[k].fd);
      offer.sockets[k].fd = -1;
      ++closed;
    }
  }
  for (const auto& shard : p.fds) to_open += size_t(std::count(shard.begin(), shard.end(), -1));
  p.summary = fmt::format("{} socket{} taken over, {} closed (not in this configuration), {} to open", p.kept.size(),
                          p.kept.size() == 1 ? "" : "s", closed, to_open);
  return p;
}

// ---------------------------------------------------------------- Client

std::unique_ptr<Client> Client::connect(const std::string& path, std::string& why) {
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(fmt::format("takeover: socket: {}", std::strerror(errno)));
  const sockaddr_un a = unix_address(path);
  if (path.size() >= sizeof a.sun_path || ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    const int e = path.size() >= sizeof a.sun_path ? ENAMETOOLONG : errno;
    ::close(fd);
    // Nobody there: no agent to take over from. Anything else (no
    // permission, say) may hide a running agent: binding next to it would
    // leave two agents on the ports, so that stops the start.
    if (e == ENOENT || e == ECONNREFUSED) {
      why = fmt::format("no agent at {} ({})", path, std::strerror(e));
      return nullptr;
    }
    throw std::runtime_error(fmt::format("takeover: cannot connect to {}: {}", path, std::strerror(e)));
  }
  set_timeouts(fd);
  return std::unique_ptr<Client>(new Client(fd, path));
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Offer Client::receive() {
  Offer offer;
  auto fail = [&](const std::string& why) {
    close_all(offer);
    throw std::runtime_error(fmt::format("takeover: the agent at {}: {}", path_, why));
  };
  Record rec;
  if (!recv_record(fd_, rec)) fail(why_not("receive"));
  if (rec.word == "refuse") fail("refused: " + rec.get("why"));
  if (rec.word != "offload-takeover") fail(fmt::format("said '{}', not offload-takeover", rec.word));
  if (rec.get("version") != std::to_string(kProtocol))
    fail(fmt::format("speaks takeover version {}, this agent {}", rec.get("version"), kProtocol));
  offer.pid = pid_t(rec.number("pid"));
  offer.agent = rec.get("agent");
  offer.shards = rec.number("shards");
  const uint32_t count = rec.number("sockets");
  if (count > kSocketsMax) fail(fmt::format("offers {} sockets", count));
  for (uint32_t i = 0; i <= count; ++i) {
    Record s;
    if (!recv_record(fd_, s)) fail(why_not("receive"));
    if (s.word == "end" && i == count) break;
    if (s.word != "socket" || i == count || s.fd < 0) {
      if (s.fd >= 0) ::close(s.fd);
      fail(fmt::format("record {} is '{}' (expected {})", i, s.word, i == count ? "end" : "a socket with its fd"));
    }
    Socket sock;
    sock.fd = s.fd;
    offer.sockets.push_back(sock);  // owned from here: closed on a failure below
    Socket& out = offer.sockets.back();
    try {
      out.admin = s.get("kind") == "admin";
      out.address = parse_socket_address("address", s.get("address"));
      if (!out.admin) {
        out.shard = s.number("shard");
        out.listener = s.number("listener");
        out.name = s.get("name");
        out.port_last = uint16_t(s.number("range"));
      }
    } catch (const std::exception& e) {
      fail(e.what());
    }
    if (!listening_stream(out.fd)) fail(fmt::format("socket {} is not a listening TCP socket", i));
    if (!out.admin && (out.shard >= offer.shards || out.listener >= kSocketsMax))
      fail(fmt::format("socket {} names shard {} of {}", i, out.shard, offer.shards));
  }
  return offer;
}

std::string Client::drain(const Offer& offer, const std::vector<size_t>& kept) {
  std::string list;
  for (size_t k : kept) list += (list.empty() ? "" : ",") + std::to_string(k);
  if (!send_record(fd_, "drain kept=" + list))
    return fmt::format("takeover: could not tell agent pid {} to drain ({}); stop it by hand", offer.pid,
                       why_not("send"));
  for (const char* want : {"draining", "cancelled"}) {
    Record rec;
    if (!recv_record(fd_, rec) || rec.word != want)
      return fmt::format("takeover: agent pid {} did not say {} ({}); serving on", offer.pid, want,
                         rec.word.empty() ? why_not("receive") : "it said '" + rec.word + "'");
    if (rec.fd >= 0) ::close(rec.fd);
  }
  return fmt::format("takeover: agent pid {} (version {}) stopped accepting and drains; this one serves its sockets",
                     offer.pid, offer.agent);
}

Start begin(const std::string& path, const Config& config) {
  Start s;
  std::string why;
  s.client = Client::connect(path, why);
  if (!s.client) {
    s.line = fmt::format("takeover: {}; binding the listeners fresh", why);
    return s;
  }
  s.offer = s.client->receive();
  s.plan = plan(config, s.offer);
  s.line = fmt::format("takeover: from agent pid {} (version {}, {} shard{}): {}", s.offer.pid, s.offer.agent,
                       s.offer.shards, s.offer.shards == 1 ? "" : "s", s.plan.summary);
  return s;
}

pid_t spawn_successor(const std::string& exe, const std::vector<std::string>& args, const std::string& path,
                      std::string& why) {
  std::vector<std::string> argv = {exe};
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "-x" || args[i] == "--takeover") {
      ++i;  // and its value
      continue;
    }
    if (args[i].starts_with("--takeover=") || (args[i].starts_with("-x") && args[i].size() > 2)) continue;
    argv.push_back(args[i]);
  }
  argv.push_back("--takeover");
  argv.push_back(path);
  std::vector<char*> c_argv;
  for (std::string& a : argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  // posix_spawn, not fork: glibc's does not copy the agent's memory (its
  // pinned io_uring buffers would be), and it returns the exec's own error.
  // The agent blocks its signals for signalfd and ignores SIGPIPE: the new
  // process starts with neither; and only stdin, stdout and stderr go with
  // it, never a client's or a server's connection.
  posix_spawn_file_actions_t files;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addclosefrom_np(&files, 3);
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, c_argv[0], &files, &attr, c_argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&files);
  if (rc != 0) {
    why = fmt::format("exec {}: {}", exe, std::strerror(rc));
    return -1;
  }
  return pid;
}

}  // namespace offload::takeover
