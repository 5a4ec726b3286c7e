// The demo server's plain HTTP/1.1 mode: the classic blocking application
// server. Each worker thread does a blocking accept, then reads and answers
// requests on that one connection (keep-alive, pipelining) until the client
// closes it, and only then accepts the next one. A slow client therefore holds
// a worker for as long as it likes, which is the starvation the agent removes.
//
// The request reader is deliberately small but strict: the head must fit in
// kHeadBytesMax, lines end in CRLF, obs-fold, bare CR/LF, bad tokens and
// ambiguous lengths are 400, Transfer-Encoding is 501 (no chunked bodies), and
// bodies over kBodyBytesMax are 413. After any error the connection closes.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace offload::demo {

inline constexpr size_t kHeadBytesMax = 16 * 1024;
inline constexpr uint64_t kBodyBytesMax = 1024 * 1024;

struct Counters {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> connections{0};
};

// The parts of a request head the demo needs. Views point into the head.
struct HeadInfo {
  int error_status = 0;            // 0, or the status to answer before closing
  std::string_view method;
  std::string_view target;
  uint64_t content_length = 0;
  bool keep_alive = true;
};

// Parses `head` (request line and fields, ending with the empty line's CRLF).
HeadInfo parse_head(std::string_view head);

// Serves one accepted connection until it closes or errs; closes nothing.
void serve_connection(int fd, int root_fd, Counters& counters);

// Binds and listens on "ADDR:PORT" (IPv4, or [IPv6]:PORT); port 0 picks one.
// Throws std::runtime_error with a readable reason. Returns the fd and writes
// the bound address (same notation) to `bound`.
int listen_on(const std::string& addr_port, int backlog, std::string* bound);

}  // namespace offload::demo
