// What offload-demo-server answers, independent of how the request arrived
// (plain HTTP/1.1 socket or the shared-memory ring).
//
//   GET /size/N    N bytes of a fixed pattern (byte i is kPatternBytes[i % 64])
//   GET /spin/US   busy-spins US microseconds on the worker, then answers
//   GET /PATH      the regular file PATH under --root (no escaping the root)
//
// HEAD is answered like GET without the body, POST like GET (body ignored);
// other methods get 405.
// Thread rules: route() is thread-safe; a Reply belongs to one worker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace offload::demo {

inline constexpr std::string_view kPatternBytes =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
static_assert(kPatternBytes.size() == 64);

inline constexpr uint64_t kSizeMax = uint64_t{1} << 34;     // /size/N cap: 16 GiB
inline constexpr uint64_t kSpinMaxUs = 60'000'000;          // /spin/US cap: 60 s

struct Reply {
  enum class Kind : uint8_t { kText, kPattern, kFile };
  int status = 200;
  Kind kind = Kind::kText;
  std::string_view content_type = "text/plain";
  std::string text;          // kText: the whole body
  uint64_t length = 0;       // body bytes (all kinds)
  int fd = -1;               // kFile: open regular file, owned by the Reply
  bool head_only = false;    // HEAD: headers only

  Reply() = default;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  Reply(Reply&& o) noexcept;
  Reply& operator=(Reply&& o) noexcept;
  ~Reply();

  // Copies up to `cap` body bytes starting at body offset `off` into `buf`.
  // Returns the count copied (0 at the end), or -errno for a file read error.
  long fill(uint64_t off, char* buf, size_t cap) const;
};

// Opens the directory served for plain paths; -1 (no files served) when
// `root` is empty. Throws std::runtime_error when it cannot be opened.
int open_root(const std::string& root);

// The answer for one request. `root_fd` may be -1.
Reply route(std::string_view method, std::string_view target, int root_fd);

// "OK", "Not Found"... for the status codes the demo uses.
std::string_view reason(int status);

}  // namespace offload::demo
