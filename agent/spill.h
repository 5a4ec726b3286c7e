// A response larger than response_buffer goes on in an unlinked temporary
// file (O_TMPFILE, like nginx's proxy temp files), so a slow reader of a big
// response still lets the upstream channel go. Bytes [read_off, write_off)
// wait for the client; what was read is punched out of the file as it goes,
// so the disk holds only what is still unsent.
//
// Reads and writes are synchronous: the data was written moments before and
// sits in the page cache (nginx's temp files without aio do the same).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace offload {

struct Spill {
  int fd = -1;
  uint64_t write_off = 0;
  uint64_t read_off = 0;
  uint64_t punched_off = 0;  // bytes before this were given back to the file system
  uint64_t unread() const { return write_off - read_off; }
};

// An unlinked file in `dir` (O_TMPFILE, or a named file unlinked at once on
// file systems without it); -1 with errno set.
int open_spill_file(const std::string& dir);

// Appends all of data; false on a write error (errno set).
bool spill_write(Spill& spill, const char* data, size_t len);

// Reads up to `cap` unread bytes into `out`; returns the count (0 when
// nothing is unread) or -1 on error.
long spill_read(Spill& spill, char* out, size_t cap);

void spill_close(Spill& spill);

}  // namespace offload
