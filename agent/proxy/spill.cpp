#include "proxy/spill.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "loop/check.h"

namespace offload {

int open_spill_file(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  std::string path = dir + "/offload-spill-XXXXXX";
  fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd >= 0) ::unlink(path.c_str());
  return fd;
}

bool spill_open(Spill& spill, SpillBudget& budget, const std::string& dir) {
  OFFLOAD_ASSERT(spill.fd < 0);
  if (!budget.can_open()) {
    spill.refused = true;
    errno = ENOSPC;
    return false;
  }
  spill.fd = open_spill_file(dir);
  if (spill.fd < 0) {
    spill.refused = true;
    return false;
  }
  spill.budget = &budget;
  ++budget.files;
  return true;
}

bool spill_write(Spill& spill, const char* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t w = ::pwrite(spill.fd, data + done, len - done, off_t(spill.write_off));
    if (w <= 0) return false;
    done += size_t(w);
    spill.write_off += uint64_t(w);
    if (spill.budget != nullptr) spill.budget->bytes += uint64_t(w);
  }
  return true;
}

long spill_read(Spill& spill, char* out, size_t cap) {
  size_t want = size_t(std::min<uint64_t>(cap, spill.unread()));
  if (want == 0) return 0;
  ssize_t got = ::pread(spill.fd, out, want, off_t(spill.read_off));
  if (got <= 0) return -1;
  spill.read_off += uint64_t(got);
  if (spill.budget != nullptr) spill.budget->bytes -= uint64_t(got);
  constexpr uint64_t kPunchStep = 1 << 20;
  if (spill.read_off - spill.punched_off >= kPunchStep) {
    uint64_t upto = spill.read_off & ~(kPunchStep - 1);
    ::fallocate(spill.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(spill.punched_off),
                off_t(upto - spill.punched_off));
    spill.punched_off = upto;
  }
  return long(got);
}

void spill_close(Spill& spill) {
  if (spill.fd >= 0) ::close(spill.fd);
  if (SpillBudget* b = spill.budget) {
    OFFLOAD_ASSERT(b->files > 0 && b->bytes >= spill.unread());
    --b->files;
    b->bytes -= spill.unread();
  }
  spill = Spill{};
}

}  // namespace offload
