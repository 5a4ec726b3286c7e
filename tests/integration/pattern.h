// The deterministic body that the recording backend sends for /size/N and
// /chunked/N, shared with the tests so they can check a response byte for byte.
// Not periodic at any block size a proxy uses, so a lost, repeated or shifted
// block shows up as a mismatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace rig {

inline char pattern_byte(uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return static_cast<char>('a' + (x % 26));
}

inline void pattern_fill(char* out, uint64_t offset, size_t n) {
  for (size_t k = 0; k < n; ++k) out[k] = pattern_byte(offset + k);
}

inline std::string pattern_string(uint64_t n) {
  std::string s(n, '\0');
  pattern_fill(s.data(), 0, n);
  return s;
}

}  // namespace rig
