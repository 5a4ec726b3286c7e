// FNV-1a, 64-bit: the servers' identities and the clients' addresses for
// source-hash balancing (stable across runs and builds, unlike std::hash).
#pragma once

#include <cstddef>
#include <cstdint>

namespace offload {

inline uint64_t fnv1a(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace offload
