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

// What all of a shard's spill files may hold together: descriptors (what the
// open-file limit leaves after clients and channels) and unsent bytes
// (spill_total_max, so max_clients large responses cannot fill temp_dir). A
// file is charged to it from open to close, its unsent bytes from write to read.
struct SpillBudget {
  uint32_t files = 0;
  uint32_t files_max = 0;
  uint64_t bytes = 0;
  uint64_t bytes_max = 0;
  bool has_room() const { return bytes < bytes_max; }
  bool can_open() const { return files < files_max && has_room(); }
};

struct Spill {
  int fd = -1;
  uint64_t write_off = 0;
  uint64_t read_off = 0;
  uint64_t punched_off = 0;  // bytes before this were given back to the file system
  SpillBudget* budget = nullptr;  // set while open
  bool refused = false;      // could not open: this response stays in memory
  uint64_t unread() const { return write_off - read_off; }
};

// An unlinked file in `dir` (O_TMPFILE, or a named file unlinked at once on
// file systems without it); -1 with errno set.
int open_spill_file(const std::string& dir);

// Opens a spill file in `dir` charged to `budget`. False, with `refused` set
// and errno (ENOSPC when the budget is spent), when it cannot.
bool spill_open(Spill& spill, SpillBudget& budget, const std::string& dir);

// Appends all of data; false on a write error (errno set).
bool spill_write(Spill& spill, const char* data, size_t len);

// Reads up to `cap` unread bytes into `out`; returns the count (0 when
// nothing is unread) or -1 on error.
long spill_read(Spill& spill, char* out, size_t cap);

void spill_close(Spill& spill);

}  // namespace offload
