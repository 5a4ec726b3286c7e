// Client addresses and CIDR prefixes as the security screen sees them.
#pragma once

#include <cstdint>
#include <string>

namespace offload {

// An IPv4 address is kept IPv4-mapped (::ffff:a.b.c.d), so one form serves both.
struct IpAddress {
  uint8_t bytes[16] = {};
  static IpAddress from_v4(const uint8_t v4[4]);
  static IpAddress from_v6(const uint8_t v6[16]);
  bool operator==(const IpAddress& o) const;
  bool is_v4() const;
  // The address with every bit after the first `bits` (of the 128) cleared.
  IpAddress masked(unsigned bits) const;
};

struct Prefix {
  IpAddress address;
  uint8_t bits = 0;  // of the 128-bit (mapped) form
  bool contains(const IpAddress& a) const;
};

// Parses "203.0.113.0/24", "2001:db8::/32" or a bare address (a host).
// Throws ConfigError naming `key` for a bad prefix or host bits set.
Prefix parse_prefix(const std::string& key, const std::string& text);

}  // namespace offload
