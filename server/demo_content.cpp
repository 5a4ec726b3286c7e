#include "demo_content.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace offload::demo {

Reply::Reply(Reply&& o) noexcept { *this = std::move(o); }

Reply& Reply::operator=(Reply&& o) noexcept {
  if (this != &o) {
    if (fd >= 0) ::close(fd);
    status = o.status;
    kind = o.kind;
    content_type = o.content_type;
    text = std::move(o.text);
    length = o.length;
    fd = std::exchange(o.fd, -1);
    head_only = o.head_only;
  }
  return *this;
}

Reply::~Reply() {
  if (fd >= 0) ::close(fd);
}

long Reply::fill(uint64_t off, char* buf, size_t cap) const {
  if (off >= length) return 0;
  size_t n = static_cast<size_t>(std::min<uint64_t>(cap, length - off));
  switch (kind) {
    case Kind::kText:
      std::memcpy(buf, text.data() + off, n);
      return static_cast<long>(n);
    case Kind::kPattern:
      for (size_t i = 0; i < n; ++i) buf[i] = kPatternBytes[(off + i) % kPatternBytes.size()];
      return static_cast<long>(n);
    case Kind::kFile: {
      ssize_t got = ::pread(fd, buf, n, static_cast<off_t>(off));
      if (got < 0) return -errno;
      if (got == 0) return -EIO;  // file shrank under us
      return got;
    }
  }
  return -EINVAL;
}

int open_root(const std::string& root) {
  if (root.empty()) return -1;
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("--root " + root + ": " + std::strerror(errno));
  return fd;
}

namespace {

Reply text_reply(int status, std::string body) {
  Reply r;
  r.status = status;
  r.text = std::move(body);
  r.length = r.text.size();
  return r;
}

// Digits only, no sign, no overflow, at most `max`.
bool parse_number(std::string_view s, uint64_t max, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

Reply size_reply(std::string_view arg) {
  uint64_t n = 0;
  if (!parse_number(arg, kSizeMax, &n)) return text_reply(400, "bad size\n");
  Reply r;
  r.kind = Reply::Kind::kPattern;
  r.content_type = "application/octet-stream";
  r.length = n;
  return r;
}

Reply spin_reply(std::string_view arg) {
  uint64_t us = 0;
  if (!parse_number(arg, kSpinMaxUs, &us)) return text_reply(400, "bad spin time\n");
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
  return text_reply(200, "spun " + std::to_string(us) + " us\n");
}

// Opens `path` (relative, already checked for ".." and empty segments) with
// the kernel refusing any escape from the root (symlinks included).
int open_beneath(int root_fd, const std::string& path) {
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  long fd = ::syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof how);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

bool safe_relative_path(std::string_view p) {
  if (p.empty()) return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view seg = p.substr(start, end - start);
    if (seg.empty() || seg == "." || seg == "..") return false;
    start = end + 1;
  }
  return p.find('\0') == std::string_view::npos;
}

Reply file_reply(std::string_view path, int root_fd) {
  if (root_fd < 0) return text_reply(404, "not found\n");
  std::string rel(path.substr(1));
  if (rel.empty() || rel.back() == '/') rel += "index.html";
  if (!safe_relative_path(rel)) return text_reply(404, "not found\n");
  int fd = open_beneath(root_fd, rel);
  if (fd < 0) return text_reply(fd == -EACCES ? 403 : 404, "not found\n");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return text_reply(404, "not found\n");
  }
  Reply r;
  r.kind = Reply::Kind::kFile;
  r.content_type = "application/octet-stream";
  r.fd = fd;
  r.length = static_cast<uint64_t>(st.st_size);
  return r;
}

}  // namespace

Reply route(std::string_view method, std::string_view target, int root_fd) {
  bool head = method == "HEAD";
  // POST is answered like GET (its body is read and ignored) so proxies can
  // be exercised with request bodies.
  if (method != "GET" && method != "POST" && !head) return text_reply(405, "method not allowed\n");
  std::string_view path = target.substr(0, target.find('?'));
  if (path.empty() || path[0] != '/') return text_reply(400, "bad target\n");
  Reply r;
  if (path.starts_with("/size/")) {
    r = size_reply(path.substr(6));
  } else if (path.starts_with("/spin/")) {
    r = spin_reply(path.substr(6));
  } else {
    r = file_reply(path, root_fd);
  }
  r.head_only = head;
  return r;
}

std::string_view reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace offload::demo
