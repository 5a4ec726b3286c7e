// Hashes of our own, stable across runs and builds (unlike std::hash):
// FNV-1a for the servers' identities and the clients' addresses of
// source-hash balancing, and a finalizer that spreads a word's bits.
#pragma once

#include <cstddef>
#include <cstdint>

namespace offload {

// A 64-bit finalizer (the avalanche step of MurmurHash3): every input bit
// flips each output bit with probability about 1/2, so nearby sources and
// nearby keys land far apart.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline uint64_t fnv1a(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace offload
