// The kernel splice's loader, maps and start-up self-test (see splicer.h).
#include "splice/splicer.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#ifdef OFFLOAD_HAVE_SPLICE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "sock_splice.skel.h"
#endif

namespace offload::splice {
namespace {

std::atomic<Splicer*> g_installed{nullptr};

constexpr unsigned long kBpfFsMagic = 0xcafe4a11;
const char* const kMapNames[] = {SS_MAP_SOCKS, SS_MAP_PEERS, SS_MAP_FLOWS, SS_MAP_CTL};
// The kernel keeps 15 characters of a map's name (BPF_OBJ_NAME_LEN): a longer
// one would be cut, and the pins and bpftool would not find it by name.
static_assert(sizeof(SS_MAP_SOCKS) <= 16 && sizeof(SS_MAP_PEERS) <= 16 && sizeof(SS_MAP_FLOWS) <= 16 &&
              sizeof(SS_MAP_CTL) <= 16);

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

bool is_bpffs(const char* path) {
  struct statfs fs {};
  return statfs(path, &fs) == 0 && static_cast<unsigned long>(fs.f_type) == kBpfFsMagic;
}

// bpffs is not always mounted (DESIGN.md): mount it where bpftool expects it.
bool ensure_bpffs(std::string& why) {
  if (is_bpffs("/sys/fs/bpf")) return true;
  ::mkdir("/sys/fs/bpf", 0700);
  if (::mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0) {
    why = fmt::format("cannot mount bpffs at /sys/fs/bpf: {}", errno_text(errno));
    return false;
  }
  return true;
}

bool pid_alive(long pid) { return pid > 0 && (::kill(pid_t(pid), 0) == 0 || errno == EPERM); }

// A pin directory's PID ("splice-1234" → 1234); 0 when the name is not one.
long pin_dir_pid(const char* name) {
  if (std::strncmp(name, "splice-", 7) != 0) return 0;
  char* end = nullptr;
  long pid = std::strtol(name + 7, &end, 10);
  return end != nullptr && *end == '\0' ? pid : 0;
}

// --------------------------------------------------------- self-test sockets

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// A connected loopback pair: `out` connected to the listener, `in` accepted.
bool loopback_pair(int listener, uint16_t port, Fd& out, Fd& in) {
  out.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (out.fd < 0 || ::connect(out.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
  in.fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  return in.fd >= 0;
}

bool wait_for(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & events) != 0;
}

bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    if (!wait_for(fd, POLLOUT, 2000)) return false;
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && errno == EAGAIN) continue;
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Reads exactly `n` bytes into `out` (each wait at most 2 s).
bool recv_exactly(int fd, std::string& out, size_t n) {
  char buf[65536];
  while (out.size() < n) {
    if (!wait_for(fd, POLLIN, 2000)) return false;
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), MSG_DONTWAIT);
    if (r < 0 && errno == EAGAIN) continue;
    if (r <= 0) return false;
    out.append(buf, size_t(r));
  }
  return true;
}

// What is waiting on `fd`, read without waiting.
std::string recv_waiting(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r <= 0) return out;
    out.append(buf, size_t(r));
  }
}

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    s[i] = char(seed >> 16);
  }
  return s;
}

}  // namespace

Splicer* installed() { return g_installed.load(std::memory_order_acquire); }
void install(Splicer* s) { g_installed.store(s, std::memory_order_release); }

std::vector<std::string> remove_stale_pins(const std::string& root) {
  std::vector<std::string> notes;
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) return notes;
  while (dirent* e = ::readdir(d)) {
    const long pid = pin_dir_pid(e->d_name);
    if (pid == 0 || pid_alive(pid)) continue;
    const std::string dir = root + "/" + e->d_name;
    for (const char* name : kMapNames) ::unlink((dir + "/" + name).c_str());
    if (::rmdir(dir.c_str()) == 0)
      notes.push_back(fmt::format("removed the stale pins of agent {} ({})", pid, dir));
  }
  ::closedir(d);
  return notes;
}

bool Splicer::cookie(int fd, uint64_t& out) {
  socklen_t len = sizeof out;
  return ::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &out, &len) == 0 && len == sizeof out;
}

// Acknowledged bytes (TCP_INFO) + the send queue (SIOCOUTQ: written, not yet
// acknowledged) = everything written, whatever was retransmitted. The send
// queue is read second: an acknowledgement between the two reads moves bytes
// out of it that the first read did not count, so the sum can only fall short.
bool Splicer::queued_total(int fd, uint64_t& out) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
  if (len < offsetof(tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked) return false;
  int outq = 0;
  if (::ioctl(fd, SIOCOUTQ, &outq) != 0 || outq < 0) return false;
  out = info.tcpi_bytes_acked + uint64_t(outq);
  return true;
}

bool Splicer::received_total(int fd, uint64_t& out) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
  if (len < offsetof(tcp_info, tcpi_bytes_received) + sizeof info.tcpi_bytes_received) return false;
  out = info.tcpi_bytes_received;
  return true;
}

bool Splicer::drained(int fd, uint64_t base, uint64_t expected) {
  uint64_t queued = 0;
  return queued_total(fd, queued) && queued >= base + expected;
}

#ifdef OFFLOAD_HAVE_SPLICE

namespace {

int libbpf_silent(enum libbpf_print_level, const char*, va_list) { return 0; }
int libbpf_stderr(enum libbpf_print_level level, const char* format, va_list args) {
  return level == LIBBPF_DEBUG ? 0 : std::vfprintf(stderr, format, args);
}

}  // namespace

std::unique_ptr<Splicer> Splicer::open(uint32_t max_pairs, std::string& why) {
  const char* debug = std::getenv("OFFLOAD_BPF_DEBUG");
  libbpf_set_print(debug && *debug && *debug != '0' ? libbpf_stderr : libbpf_silent);
  std::unique_ptr<Splicer> s(new Splicer());
  if (!ensure_bpffs(why)) return nullptr;
  s->notes_ = remove_stale_pins();
  if (!s->load(max_pairs, why) || !s->pin(why)) return nullptr;
  return s;
}

bool Splicer::load(uint32_t max_pairs, std::string& why) {
  skel_ = sock_splice__open();
  if (skel_ == nullptr) {
    why = fmt::format("cannot open the sock_splice program: {}", errno_text(errno));
    return false;
  }
  // Two sockets per pair, and room for the self-test's.
  const uint32_t entries = std::max<uint32_t>(2 * max_pairs + 16, 64);
  for (bpf_map* m : {skel_->maps.splice_socks, skel_->maps.splice_peers, skel_->maps.splice_flows,
                     skel_->maps.splice_ctl})
    bpf_map__set_max_entries(m, entries);
  if (int err = sock_splice__load(skel_); err != 0) {
    why = fmt::format("cannot load the sock_splice program: {}{}", errno_text(err),
                      err == -EPERM || err == -EACCES ? " (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
                                                      : " (set OFFLOAD_BPF_DEBUG=1 for libbpf's log)");
    return false;
  }
  socks_fd_ = bpf_map__fd(skel_->maps.splice_socks);
  peers_fd_ = bpf_map__fd(skel_->maps.splice_peers);
  flows_fd_ = bpf_map__fd(skel_->maps.splice_flows);
  ctl_fd_ = bpf_map__fd(skel_->maps.splice_ctl);
  prog_fd_ = bpf_program__fd(skel_->progs.splice_verdict);
  // libbpf 1.1 has no sockmap link: the attachment is the map's, undone by
  // bpf_prog_detach2 in the destructor (or with the map when its last
  // reference, a pin of a crashed agent, goes).
  if (bpf_prog_attach(prog_fd_, socks_fd_, BPF_SK_SKB_STREAM_VERDICT, 0) != 0) {
    why = fmt::format("cannot attach the stream verdict to {}: {}", SS_MAP_SOCKS, errno_text(errno));
    return false;
  }
  attached_ = true;
  return true;
}

bool Splicer::pin(std::string& why) {
  ::mkdir(kPinRoot, 0700);
  pin_dir_ = fmt::format("{}/splice-{}", kPinRoot, ::getpid());
  for (const char* name : kMapNames) ::unlink((pin_dir_ + "/" + name).c_str());  // a PID reused
  if (::mkdir(pin_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    why = fmt::format("cannot create {}: {}", pin_dir_, errno_text(errno));
    return false;
  }
  const int fds[] = {socks_fd_, peers_fd_, flows_fd_, ctl_fd_};
  for (size_t i = 0; i < std::size(kMapNames); ++i) {
    const std::string path = pin_dir_ + "/" + kMapNames[i];
    if (bpf_obj_pin(fds[i], path.c_str()) != 0) {
      why = fmt::format("cannot pin {}: {}", path, errno_text(errno));
      return false;
    }
    ::chmod(path.c_str(), 0600);
    pins_.push_back(path);
  }
  return true;
}

Splicer::~Splicer() {
  if (attached_) bpf_prog_detach2(prog_fd_, socks_fd_, BPF_SK_SKB_STREAM_VERDICT);
  for (const std::string& p : pins_) ::unlink(p.c_str());
  if (!pin_dir_.empty()) ::rmdir(pin_dir_.c_str());
  sock_splice__destroy(skel_);
}

bool Splicer::add_pair(int fd_a, int fd_b, Pair& pair) {
  if (!cookie(fd_a, pair.a) || !cookie(fd_b, pair.b) || !queued_total(fd_a, pair.base_a) ||
      !queued_total(fd_b, pair.base_b))
    return false;
  const ss_flow setup{};  // SS_SETUP, nothing counted
  const ss_ctl waiting{0, budget_};
  // The flows and their controls before the sockets (a socket in the map
  // with no flow is passed: harmless), the peers last: from then on the
  // verdict acts.
  bool ok = bpf_map_update_elem(flows_fd_, &pair.a, &setup, BPF_NOEXIST) == 0 &&
            bpf_map_update_elem(flows_fd_, &pair.b, &setup, BPF_NOEXIST) == 0 &&
            bpf_map_update_elem(ctl_fd_, &pair.a, &waiting, BPF_NOEXIST) == 0 &&
            bpf_map_update_elem(ctl_fd_, &pair.b, &waiting, BPF_NOEXIST) == 0;
  const uint64_t va = uint64_t(fd_a), vb = uint64_t(fd_b);
  ok = ok && bpf_map_update_elem(socks_fd_, &pair.a, &va, BPF_NOEXIST) == 0 &&
       bpf_map_update_elem(socks_fd_, &pair.b, &vb, BPF_NOEXIST) == 0;
  ok = ok && bpf_map_update_elem(peers_fd_, &pair.a, &pair.b, BPF_NOEXIST) == 0 &&
       bpf_map_update_elem(peers_fd_, &pair.b, &pair.a, BPF_NOEXIST) == 0;
  if (!ok) {
    ss_flow ignored_a{}, ignored_b{};
    remove_pair(pair, ignored_a, ignored_b);
  }
  return ok;
}

void Splicer::remove_pair(const Pair& pair, ss_flow& a, ss_flow& b) {
  // The peers first: from here on every skb stays on its socket.
  bpf_map_delete_elem(peers_fd_, &pair.a);
  bpf_map_delete_elem(peers_fd_, &pair.b);
  if (!flow(pair.a, a)) a = ss_flow{};
  if (!flow(pair.b, b)) b = ss_flow{};
  for (int fd : {flows_fd_, ctl_fd_, socks_fd_}) {
    bpf_map_delete_elem(fd, &pair.a);
    bpf_map_delete_elem(fd, &pair.b);
  }
}

bool Splicer::flow(uint64_t cookie, ss_flow& out) const {
  return bpf_map_lookup_elem(flows_fd_, &cookie, &out) == 0;
}

bool Splicer::forwarded(uint64_t cookie, uint64_t user_sent) {
  const ss_ctl c{user_sent, budget_};
  return bpf_map_update_elem(ctl_fd_, &cookie, &c, BPF_EXIST) == 0;
}

// The self-test, as the agent would run a pair: `client` is a's far end,
// `server` b's. Each step names what failed.
bool Splicer::self_test(std::string& why) {
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (listener.fd < 0 || ::bind(listener.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listener.fd, 4) != 0 || ::getsockname(listener.fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    why = fmt::format("no loopback listener: {}", errno_text(errno));
    return false;
  }
  Fd client, agent_a, agent_b, server;
  const uint16_t port = ntohs(a.sin_port);
  if (!loopback_pair(listener.fd, port, client, agent_a) || !loopback_pair(listener.fd, port, agent_b, server)) {
    why = fmt::format("no loopback pair: {}", errno_text(errno));
    return false;
  }
  // Bytes sent before the insertion stay on agent_a: the agent forwards them.
  const std::string early = "early bytes, before the maps";
  if (!send_all(client.fd, early.data(), early.size())) return why = "cannot send on loopback", false;
  wait_for(agent_a.fd, POLLIN, 1000);
  Pair pair;
  if (!add_pair(agent_a.fd, agent_b.fd, pair)) {
    why = fmt::format("cannot insert a loopback pair in {}: {}", SS_MAP_SOCKS, errno_text(errno));
    return false;
  }
  bool ok = false;
  ss_flow last_a{}, last_b{};
  [&] {
    ss_flow f{};
    // The verdict may judge what was queued already (the kernel redirects it
    // then, in order: nothing precedes it); what it has not is read here.
    const std::string first = recv_waiting(agent_a.fd);
    if (early.compare(0, first.size(), first) != 0) return void(why = "the bytes queued before the insertion differ");
    if (!send_all(agent_b.fd, first.data(), first.size()) || !forwarded(pair.a, first.size()))
      return void(why = "cannot end the setup of a loopback pair");
    // Redirected: out of the far end, in order, after what came first.
    const std::string bulk = pattern(1 << 20, 7);
    std::string got;
    if (!send_all(client.fd, bulk.data(), bulk.size()) || !recv_exactly(server.fd, got, early.size() + bulk.size()) ||
        got != early + bulk)
      return void(why = "redirected bytes did not come out of the peer intact");
    if (!flow(pair.a, f) || f.state != SS_REDIRECT || f.bytes == 0)
      return void(why = "the verdict did not redirect (the bytes went through user space)");
    if (!drained(agent_b.fd, pair.base_b, first.size() + f.bytes))
      return void(why = "TCP_INFO does not account for the redirected bytes");
    // Passed (no peer entry): readable, counted by FIONREAD, then a FIN.
    bpf_map_delete_elem(peers_fd_, &pair.b);
    const std::string back = "passed to its own socket";
    if (!send_all(server.fd, back.data(), back.size()) || !wait_for(agent_b.fd, POLLIN, 2000))
      return void(why = "a socket in the sockhash is not readable for passed bytes");
    int inq = -1;
    if (::ioctl(agent_b.fd, FIONREAD, &inq) != 0 || inq != int(back.size()))
      return void(why = fmt::format("FIONREAD says {} for {} passed bytes", inq, back.size()));
    if (recv_waiting(agent_b.fd) != back) return void(why = "passed bytes did not read back");
    ::shutdown(server.fd, SHUT_WR);
    char c;
    if (!wait_for(agent_b.fd, POLLRDHUP, 2000) || ::recv(agent_b.fd, &c, 1, MSG_DONTWAIT) != 0)
      return void(why = "a FIN on a socket in the sockhash is not seen");
    uint64_t received = 0;
    if (!received_total(agent_b.fd, received) || received != back.size() + 1)
      return void(why = "TCP_INFO's bytes_received does not count what came and the FIN");
    ok = true;
  }();
  remove_pair(pair, last_a, last_b);
  uint64_t key = 0;
  if (ok && bpf_map_get_next_key(socks_fd_, nullptr, &key) == 0) {
    why = "the maps kept entries of a removed pair";
    ok = false;
  }
  return ok;
}

#else  // built without kernel BTF: no program to load

std::unique_ptr<Splicer> Splicer::open(uint32_t, std::string& why) {
  why = "built without the sock_splice program (no kernel BTF at build time)";
  return nullptr;
}
Splicer::~Splicer() = default;
bool Splicer::self_test(std::string& why) { return why = "not built", false; }
bool Splicer::add_pair(int, int, Pair&) { return false; }
void Splicer::remove_pair(const Pair&, ss_flow& a, ss_flow& b) { a = b = ss_flow{}; }
bool Splicer::flow(uint64_t, ss_flow&) const { return false; }
bool Splicer::forwarded(uint64_t, uint64_t) { return false; }

#endif

}  // namespace offload::splice
