#include "bus_rig.h"

#include <dirent.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "offload/ring.h"
#include "offload/ring_codec.h"
#include "offload/ring_queue.h"

namespace bus {

namespace {


std::string env_or(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(fallback);
}

void remove_tree(const std::string& dir) {
  if (dir.empty()) return;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      ::unlink((dir + "/" + n).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

}  // namespace

std::string unique_name(std::string_view tag) {
  static std::atomic<int> counter{0};
  return "bt-" + std::to_string(::getpid()) + "-" + std::string(tag) + "-" + std::to_string(counter.fetch_add(1));
}

std::string agent_path() { return env_or("OFFLOAD_AGENT", OFFLOAD_BUS_AGENT_PATH); }
std::string demo_path() { return env_or("OFFLOAD_DEMO_SERVER", OFFLOAD_BUS_DEMO_PATH); }

std::string demo_pattern(uint64_t n) {
  static constexpr std::string_view kBytes = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
  std::string s(n, '\0');
  for (uint64_t i = 0; i < n; ++i) s[i] = kBytes[i % kBytes.size()];
  return s;
}


// ------------------------------------------------------------------ agent

Agent::~Agent() {
  if (child_.pid() > 0) child_.stop(5000);
  remove_tree(temp_dir_);
}

bool Agent::start(const std::string& bus_name, const AgentOptions& o) {
  char tmpl[] = "/tmp/offload-bus-test-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    error_ = std::string("mkdtemp: ") + std::strerror(errno);
    return false;
  }
  temp_dir_ = tmpl;
  std::vector<std::string> args = {"run",      "--listen",   "127.0.0.1:0", "--upstream",
                                   "shm:" + bus_name, "--admin", "127.0.0.1:0", "--temp-dir",
                                   temp_dir_, "--max-upstream", std::to_string(o.max_upstream)};
  if (o.max_upstream < 4) rig::add_flag(args, "--persistent", o.max_upstream);  // persistent <= max-upstream
  rig::add_flag(args, "--max-clients", o.max_clients);
  rig::add_flag(args, "--queue-timeout-ms", o.queue_timeout_ms);
  rig::add_flag(args, "--response-timeout-ms", o.response_timeout_ms);
  rig::add_flag(args, "--response-buffer", o.response_buffer);
  rig::add_flag(args, "--response-spill-max", o.response_spill_max);
  args.insert(args.end(), o.extra.begin(), o.extra.end());
  if (!child_.start(agent_path(), args)) {
    error_ = "cannot start " + agent_path() + ": " + child_.error();
    return false;
  }
  auto listen = child_.wait_for_line("offload-agent: listening on ", 15000);
  auto admin = child_.wait_for_line("offload-agent: admin on ", listen ? 5000 : 0);
  if (!listen || !admin) {
    error_ = "offload-agent did not print its listening and admin lines; stderr:\n" + child_.stderr_text();
    return false;
  }
  port_ = rig::port_from_line(*listen);
  admin_port_ = rig::port_from_line(*admin);
  if (port_ == 0 || admin_port_ == 0) {
    error_ = "no port in: " + *listen + " / " + *admin;
    return false;
  }
  return true;
}

int Agent::count_lines(std::string_view needle) const {
  int n = 0;
  for (const auto& l : child_.stderr_lines())
    if (l.find(needle) != std::string::npos) ++n;
  return n;
}

bool Agent::wait_attached(int n, int timeout_ms) {
  int64_t deadline = rig::now_ms() + timeout_ms;
  for (;;) {
    if (count_lines(" attached with ") >= n) return true;
    if (rig::now_ms() >= deadline || !child_.running()) return false;
    rig::sleep_ms(5);
  }
}

std::optional<std::map<std::string, int64_t>> Agent::stats(std::string* error) {
  auto r = rig::http_get(admin_port_, "/stats?format=json", 3000);
  if (!r) {
    if (error) *error = "GET /stats: " + r.error;
    return std::nullopt;
  }
  std::string why;
  auto doc = rig::Json::parse(r.response->body, &why);
  if (!doc) {
    if (error) *error = "stats JSON: " + why;
    return std::nullopt;
  }
  return rig::flatten_stats(*doc);
}

int64_t Agent::stat(const std::string& name) {
  auto s = stats();
  if (!s) return -1;
  auto it = s->find(name);
  return it == s->end() ? -1 : it->second;
}

bool start_demo(rig::Child& child, const std::string& bus_name, int workers) {
  return child.start(demo_path(), {"--ring", bus_name, "--workers", std::to_string(workers)});
}

// ------------------------------------------------------------ recording

std::vector<std::string> Seen::all(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [n, v] : fields)
    if (offload::ring::iequals(n, name)) out.push_back(v);
  return out;
}

std::string Seen::field(std::string_view name) const {
  auto v = all(name);
  return v.empty() ? std::string() : v.front();
}

RecordingServer::RecordingServer(std::string bus_name, unsigned workers, uint32_t stream_bytes)
    : name_(std::move(bus_name)), workers_(workers) {
  offload::ServerOptions opts;
  opts.stream_bytes = stream_bytes;
  opts.reattach = true;
  server_ = std::make_unique<offload::Server>(name_, opts);
}

RecordingServer::~RecordingServer() { stop(); }

void RecordingServer::start() {
  thread_ = std::thread([this] {
    server_->serve([this](const offload::Request& q, offload::Response& r) { handle(q, r); }, workers_);
  });
}

void RecordingServer::stop() {
  release_stalls();
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void RecordingServer::release_stalls() {
  std::lock_guard lock(mutex_);
  released_ = true;
  cv_.notify_all();
}

std::vector<Seen> RecordingServer::seen() const {
  std::lock_guard lock(mutex_);
  return seen_;
}

std::optional<Seen> RecordingServer::wait_for(std::string_view target, int timeout_ms) const {
  std::unique_lock lock(mutex_);
  std::optional<Seen> found;
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    for (const Seen& s : seen_)
      if (s.target == target) {
        found = s;
        return true;
      }
    return false;
  });
  return found;
}

void RecordingServer::handle(const offload::Request& req, offload::Response& res) {
  Seen s;
  s.method = std::string(req.method());
  s.target = std::string(req.target());
  s.version_minor = req.version_minor();
  for (const auto& f : req.headers()) s.fields.emplace_back(std::string(f.name), std::string(f.value));
  s.body = std::string(req.body());
  s.raw_head = std::string(req.raw_head());
  {
    std::lock_guard lock(mutex_);
    seen_.push_back(s);
    cv_.notify_all();
  }
  std::string_view path = req.target().substr(0, req.target().find('?'));
  res.add_header("Content-Type", "text/plain");
  auto number = [](std::string_view digits) {
    uint64_t n = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return uint64_t{0};
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    return n;
  };
  if (path.starts_with("/size/")) {
    uint64_t n = number(path.substr(6));
    res.set_content_length(n);
    std::string slice(64 * 1024, '\0');
    for (uint64_t off = 0; off < n; off += slice.size()) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(slice.size(), n - off));
      rig::pattern_fill(slice.data(), off, k);
      if (!res.write(std::string_view(slice.data(), k))) return;
    }
  } else if (path.starts_with("/stream/")) {
    uint64_t n = number(path.substr(8));
    char piece[1000];
    for (uint64_t off = 0; off < n; off += sizeof piece) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(sizeof piece, n - off));
      rig::pattern_fill(piece, off, k);
      if (!res.write(std::string_view(piece, k))) return;
    }
  } else if (path.starts_with("/echo")) {
    res.add_header("X-Seen-Length", std::to_string(req.body().size()));
    res.write(req.body());
  } else if (path.starts_with("/stall")) {
    stalled_.fetch_add(1);
    {
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, std::chrono::seconds(20), [this] { return released_; });
    }
    stalled_.fetch_sub(1);
    res.write("late\n");
  } else {
    res.write("ok\n");
  }
}

// -------------------------------------------------------------- hostile

const char* to_string(Corruption c) {
  switch (c) {
    case Corruption::kLengthPastRingEnd: return "record length past the ring end";
    case Corruption::kLengthTooShort: return "record length shorter than its header";
    case Corruption::kImpossibleHead: return "producer index past the consumer by more than the ring";
    case Corruption::kFieldOutOfBounds: return "field span outside the record";
    case Corruption::kWrongId: return "response id of no request";
    case Corruption::kHeaderInjection: return "field value with CR LF";
  }
  return "?";
}

struct HostileServer::Impl {
  int sock = -1;
  void* base = nullptr;
  uint64_t bytes = 0;
  uint32_t ring_bytes = 0;
  std::vector<int> to_server, to_agent;
  std::vector<offload::ring::Consumer> requests;
  std::vector<offload::ring::Producer> responses;
  std::vector<bool> dead;  // channels we corrupted: left alone

  offload_region_header* header() const { return static_cast<offload_region_header*>(base); }
  uint8_t* channel(uint32_t ch) const {
    return static_cast<uint8_t*>(base) + sizeof(offload_region_header) +
           uint64_t{ch} * offload_ring_channel_bytes(ring_bytes);
  }
  offload_ring_ctrl* request_ctrl(uint32_t ch) const { return reinterpret_cast<offload_ring_ctrl*>(channel(ch)); }
  offload_ring_ctrl* response_ctrl(uint32_t ch) const { return request_ctrl(ch) + 1; }
  uint8_t* request_data(uint32_t ch) const { return channel(ch) + 2 * sizeof(offload_ring_ctrl); }
  uint8_t* response_data(uint32_t ch) const { return request_data(ch) + ring_bytes; }

  void close_all() {
    if (base != nullptr) ::munmap(base, bytes);
    base = nullptr;
    for (int fd : to_server) ::close(fd);
    for (int fd : to_agent) ::close(fd);
    to_server.clear();
    to_agent.clear();
    if (sock >= 0) ::close(sock);
    sock = -1;
  }
};

HostileServer::HostileServer() = default;
HostileServer::~HostileServer() { stop(); }

bool HostileServer::start(const std::string& bus_name, unsigned channels, Corruption kind, int extra_bells) {
  kind_ = kind;
  extra_bells_ = extra_bells;
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  auto fail = [&](std::string why) {
    error_ = why;
    m.close_all();
    return false;
  };
  m.sock = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (m.sock < 0) return fail(std::string("socket: ") + std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = std::string(OFFLOAD_RING_SOCKET_PREFIX) + bus_name;
  std::memcpy(addr.sun_path + 1, path.data(), path.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  if (::connect(m.sock, reinterpret_cast<sockaddr*>(&addr), len) != 0)
    return fail("connect @" + path + ": " + std::strerror(errno));
  offload_hello hello{OFFLOAD_RING_MAGIC, OFFLOAD_RING_VERSION, channels, static_cast<uint32_t>(::getpid()), 0};
  if (::send(m.sock, &hello, sizeof hello, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof hello))
    return fail(std::string("send hello: ") + std::strerror(errno));
  pollfd p{m.sock, POLLIN, 0};
  if (::poll(&p, 1, 3000) != 1) return fail("no welcome within 3 s");
  offload_welcome w{};
  iovec iov{&w, sizeof w};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (1 + 2 * OFFLOAD_RING_CHANNELS_MAX)));
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control.data();
  mh.msg_controllen = control.size();
  ssize_t n = ::recvmsg(m.sock, &mh, MSG_CMSG_CLOEXEC);
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  auto close_fds = [&] {
    for (int fd : fds) ::close(fd);
  };
  if (n != static_cast<ssize_t>(sizeof w) || w.magic != OFFLOAD_RING_MAGIC || w.status != 0 ||
      w.channel_count == 0 || w.channel_count > channels || fds.size() != 1 + 2 * size_t{w.channel_count}) {
    close_fds();
    return fail("bad welcome (status " + std::to_string(w.status) + ", " + std::to_string(fds.size()) + " fds)");
  }
  m.bytes = w.region_bytes;
  m.ring_bytes = w.ring_bytes;
  m.base = ::mmap(nullptr, m.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
  ::close(fds[0]);
  if (m.base == MAP_FAILED) {
    m.base = nullptr;
    for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
    return fail(std::string("mmap: ") + std::strerror(errno));
  }
  channels_ = w.channel_count;
  for (unsigned i = 0; i < channels_; ++i) {
    m.to_server.push_back(fds[1 + i]);
    m.to_agent.push_back(fds[1 + channels_ + i]);
  }
  m.requests.resize(channels_);
  m.responses.resize(channels_);
  m.dead.assign(channels_, false);
  for (unsigned i = 0; i < channels_; ++i) {
    m.requests[i].init(m.request_ctrl(i), m.request_data(i), m.ring_bytes, m.to_agent[i]);
    m.responses[i].init(m.response_ctrl(i), m.response_data(i), m.ring_bytes, m.to_agent[i]);
  }
  offload_region_header* h = m.header();
  h->server.pid = static_cast<uint32_t>(::getpid());
  __atomic_store_n(&h->server.state, OFFLOAD_SIDE_READY, __ATOMIC_RELEASE);
  thread_ = std::thread([this] { run(); });
  return true;
}

void HostileServer::stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (impl_) impl_->close_all();
}

namespace {

void ring_bell(int fd) {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

// A well-formed head record with the whole body, via the ring's producer.
bool send_response(offload::ring::Producer& out, uint64_t id, std::string_view name, std::string_view value,
                   std::string_view body) {
  std::string text = std::string(name) + std::string(value);
  offload_field f{{0, static_cast<uint32_t>(name.size())},
                  {static_cast<uint32_t>(name.size()), static_cast<uint32_t>(value.size())}};
  offload::ring::ResponseHeadOut h;
  h.id = id;
  h.status = 200;
  h.content_length = body.size();
  h.text = text;
  h.fields = std::span<const offload_field>(&f, 1);
  h.body = body;
  auto len = static_cast<uint32_t>(offload::ring::response_head_payload_bytes(h));
  int64_t deadline = rig::now_ms() + 2000;
  uint8_t* dst = nullptr;
  while ((dst = out.try_reserve(len)) == nullptr) {
    if (out.failed() || rig::now_ms() > deadline) return false;
    rig::sleep_ms(1);
  }
  offload::ring::encode_response_head(h, dst);
  out.commit(OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END, len);
  return true;
}

}  // namespace

void HostileServer::run() {
  Impl& m = *impl_;
  offload_region_header* h = m.header();
  uint64_t beat = 0;
  int64_t next_beat = 0;
  while (!stop_.load()) {
    if (rig::now_ms() >= next_beat) {
      __atomic_store_n(&h->server.heartbeat, ++beat, __ATOMIC_RELAXED);
      next_beat = rig::now_ms() + 50;
    }
    bool busy = false;
    for (unsigned ch = 0; ch < channels_; ++ch) {
      if (m.dead[ch]) continue;
      offload::ring::Record rec;
      if (m.requests[ch].peek(&rec) != 1) continue;
      busy = true;
      offload::ring::RequestIn req;
      std::vector<offload::ring::Field> fields;
      if (offload::ring::decode_request(rec, &req, &fields) != nullptr) {
        m.dead[ch] = true;
        continue;
      }
      const uint64_t id = req.id;
      const bool bad = req.target.starts_with("/bad");
      m.requests[ch].release();
      if (!bad) {
        if (send_response(m.responses[ch], id, "Content-Type", "text/plain", "fine\n")) answered_.fetch_add(1);
        continue;
      }
      // The corrupt answer. Raw writes go straight into the response ring;
      // the producer's own index word is ours to read.
      offload_ring_ctrl* ctrl = m.response_ctrl(ch);
      uint8_t* data = m.response_data(ch);
      const uint64_t head = __atomic_load_n(&ctrl->prod.head, __ATOMIC_RELAXED);
      const uint64_t pos = head & (m.ring_bytes - 1);
      corrupted_.fetch_add(1);  // before the bytes: the agent may answer the client at once
      auto raw = [&](uint32_t rec_len, uint64_t publish) {
        offload_rec r{rec_len, OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END};
        std::memset(data + pos, 0x41, std::min<uint64_t>(64, m.ring_bytes - pos));
        std::memcpy(data + pos, &r, sizeof r);
        offload_store_release_u64(&ctrl->prod.head, head + publish);
      };
      switch (kind_) {
        case Corruption::kLengthPastRingEnd: raw(0xFFFFFFF0u, 64); break;
        case Corruption::kLengthTooShort: raw(4, 8); break;
        case Corruption::kImpossibleHead:
          offload_store_release_u64(&ctrl->prod.head, head + 4ull * m.ring_bytes + 64);
          break;
        case Corruption::kFieldOutOfBounds: {
          const uint32_t payload = sizeof(offload_resp) + sizeof(offload_field) + 8;
          uint8_t* dst = m.responses[ch].try_reserve(payload);
          if (dst == nullptr) break;
          offload_resp r{id, 0, 200, 1, 8, 0, 0};
          offload_field f{{4000, 4}, {0, 4}};  // name starts 4000 bytes past an 8-byte text
          std::memcpy(dst, &r, sizeof r);
          std::memcpy(dst + sizeof r, &f, sizeof f);
          std::memcpy(dst + sizeof r + sizeof f, "NameValu", 8);
          m.responses[ch].commit(OFFLOAD_REC_RESPONSE_HEAD, OFFLOAD_REC_F_END, payload);
          break;
        }
        case Corruption::kWrongId:
          send_response(m.responses[ch], id + 1000, "Content-Type", "text/plain", "not yours\n");
          break;
        case Corruption::kHeaderInjection:
          send_response(m.responses[ch], id, "X-Evil", "a\r\nSet-Cookie: pwned=1", "injected\n");
          break;
      }
      m.dead[ch] = true;
      ring_bell(m.to_agent[ch]);
      for (int i = 0; i < extra_bells_ && !stop_.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ring_bell(m.to_agent[ch]);
      }
    }
    if (!busy) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  __atomic_store_n(&h->server.state, OFFLOAD_SIDE_CLOSING, __ATOMIC_RELEASE);
}

}  // namespace bus
