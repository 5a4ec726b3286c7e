#include "ring_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace offload::ring {

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > OFFLOAD_RING_NAME_MAX) return false;
  for (char c : name) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

socklen_t socket_address(std::string_view name, sockaddr_un* out) {
  *out = sockaddr_un{};
  out->sun_family = AF_UNIX;
  std::string path = std::string(OFFLOAD_RING_SOCKET_PREFIX) + std::string(name);
  size_t n = std::min(path.size(), sizeof(out->sun_path) - 1);
  std::memcpy(out->sun_path + 1, path.data(), n);  // sun_path[0] = '\0': abstract
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

int Fd::release() { return std::exchange(fd_, -1); }

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

uint64_t region_bytes(uint32_t channels, uint32_t ring_bytes) {
  return sizeof(offload_region_header) + uint64_t{channels} * offload_ring_channel_bytes(ring_bytes);
}

Region::Region(Region&& o) noexcept { *this = std::move(o); }

Region& Region::operator=(Region&& o) noexcept {
  if (this != &o) {
    unmap();
    base_ = std::exchange(o.base_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    channels_ = std::exchange(o.channels_, 0);
    ring_bytes_ = std::exchange(o.ring_bytes_, 0);
    fd_ = std::move(o.fd_);
  }
  return *this;
}

void Region::unmap() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
  base_ = nullptr;
  bytes_ = 0;
  fd_.reset();
}

uint8_t* Region::channel(uint32_t ch) {
  return static_cast<uint8_t*>(base_) + sizeof(offload_region_header) +
         uint64_t{ch} * offload_ring_channel_bytes(ring_bytes_);
}

namespace {

bool ring_size_ok(uint32_t ring_bytes) {
  return ring_bytes >= OFFLOAD_RING_BYTES_MIN && ring_bytes <= OFFLOAD_RING_BYTES_MAX &&
         (ring_bytes & (ring_bytes - 1)) == 0;
}

// A memfd sealed against shrinking and growing: the server refuses any
// other region (a region that can shrink under its mapping could SIGBUS it).
int open_backing(uint64_t bytes) {
  int fd = ::memfd_create("offload-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

}  // namespace

int Region::create(uint32_t channels, uint32_t ring_bytes, Region* out) {
  if (channels == 0 || channels > OFFLOAD_RING_CHANNELS_MAX || !ring_size_ok(ring_bytes)) return -EINVAL;
  uint64_t bytes = region_bytes(channels, ring_bytes);
  int fd = open_backing(bytes);
  if (fd < 0) return fd;
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  Region r;
  r.base_ = base;
  r.bytes_ = bytes;
  r.channels_ = channels;
  r.ring_bytes_ = ring_bytes;
  r.fd_.reset(fd);
  offload_region_header* h = r.header();
  h->magic = OFFLOAD_RING_MAGIC;
  h->version = OFFLOAD_RING_VERSION;
  h->header_bytes = sizeof(offload_region_header);
  h->channel_count = channels;
  h->ring_bytes = ring_bytes;
  h->channel_bytes = offload_ring_channel_bytes(ring_bytes);
  h->region_bytes = bytes;
  h->heartbeat_ms = OFFLOAD_RING_HEARTBEAT_MS;
  h->agent.pid = static_cast<uint32_t>(::getpid());
  h->agent.state = OFFLOAD_SIDE_READY;
  *out = std::move(r);
  return 0;
}

int Region::map(int fd, const offload_welcome& w, Region* out, std::string* error) {
  auto fail = [&](int e, std::string why) {
    *error = "ring region: " + why;
    return e;
  };
  if (w.channel_count == 0 || w.channel_count > OFFLOAD_RING_CHANNELS_MAX) return fail(-EPROTO, "bad channel count");
  if (!ring_size_ok(w.ring_bytes)) return fail(-EPROTO, "bad ring size");
  uint64_t bytes = region_bytes(w.channel_count, w.ring_bytes);
  if (w.region_bytes != bytes) return fail(-EPROTO, "region size does not match its layout");
  // Checked before mapping: a region the peer could still shrink would turn
  // our next access into a SIGBUS.
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return fail(-EPERM, "refused: the region is not a sealed memfd");
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
    return fail(-EPERM, "refused: the region memfd is not sealed against shrinking and growing");
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(-errno, "fstat failed");
  if (!S_ISREG(st.st_mode)) return fail(-EPERM, "refused: the region is not a memfd");
  if (static_cast<uint64_t>(st.st_size) < bytes) return fail(-EPROTO, "region file smaller than announced");
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return fail(-errno, std::string("mmap: ") + std::strerror(errno));
  Region r;
  r.base_ = base;
  r.bytes_ = bytes;
  r.channels_ = w.channel_count;
  r.ring_bytes_ = w.ring_bytes;  // the fd stays the caller's until success
  auto h = snapshot<offload_region_header>(r.header());
  if (h.magic != OFFLOAD_RING_MAGIC || h.version != OFFLOAD_RING_VERSION) return fail(-EPROTO, "bad magic or version");
  if (h.header_bytes != sizeof(offload_region_header) || h.channel_count != w.channel_count ||
      h.ring_bytes != w.ring_bytes || h.channel_bytes != offload_ring_channel_bytes(w.ring_bytes) ||
      h.region_bytes != bytes)
    return fail(-EPROTO, "region header does not match the welcome");
  r.fd_.reset(fd);
  *out = std::move(r);
  return 0;
}

int send_message(int sock, const void* msg, size_t len, const int* fds, size_t nfds) {
  iovec iov{const_cast<void*>(msg), len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * nfds));
  if (nfds > 0) {
    mh.msg_control = control.data();
    mh.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(len)) return 0;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -errno : -EPROTO;
  }
}

int recv_message(int sock, void* msg, size_t len, std::vector<Fd>* fds, size_t fds_max) {
  iovec iov{msg, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (fds_max > 0 ? fds_max : 1)));
  mh.msg_control = control.data();
  mh.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? -EAGAIN : -errno;
  if (n == 0) return -EPIPE;
  fds->clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds->emplace_back(fd);
    }
  }
  if (static_cast<size_t>(n) != len || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || fds->size() > fds_max) {
    fds->clear();
    return -EPROTO;
  }
  return 0;
}

uint64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

}  // namespace offload::ring
