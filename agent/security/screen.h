// The security screen every client connection passes at accept, in user
// space: a deny list, an optional allow-only list, and a limit on
// connections per source address. It is the user-space twin of the XDP
// guard's deny set (which drops at the NIC when it is attached) and holds
// where the guard is not loaded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace offload {

// An IPv4 address is kept IPv4-mapped (::ffff:a.b.c.d), so one form serves both.
struct IpAddress {
  uint8_t bytes[16] = {};
  static IpAddress from_v4(const uint8_t v4[4]);
  static IpAddress from_v6(const uint8_t v6[16]);
  bool operator==(const IpAddress& o) const;
};

struct Prefix {
  IpAddress address;
  uint8_t bits = 0;  // of the 128-bit (mapped) form
  bool contains(const IpAddress& a) const;
};

// Parses "203.0.113.0/24", "2001:db8::/32" or a bare address (a host).
// Throws ConfigError naming `key` for a bad prefix or host bits set.
Prefix parse_prefix(const std::string& key, const std::string& text);

enum class Verdict : uint8_t { kAccept, kDenied, kNotAllowed, kOverSourceLimit };

class Screen {
 public:
  Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, uint32_t per_source_max, uint32_t max_clients);

  // Nothing to check: the accept path skips the address lookup entirely.
  bool active() const { return !deny_.empty() || !allow_.empty() || per_source_max_ > 0; }

  // On accept: the verdict, and on kAccept the connection is counted
  // against its source until release().
  Verdict admit(const IpAddress& source);
  void release(const IpAddress& source);

  uint32_t connections_from(const IpAddress& source) const;

 private:
  struct Slot {
    IpAddress key;
    uint32_t count = 0;  // 0: empty
  };
  size_t find(const IpAddress& a) const;  // slot index holding a, or the empty one ending its probe

  std::vector<Prefix> deny_;
  std::vector<Prefix> allow_;
  uint32_t per_source_max_;
  // Open addressing with linear probing, sized for every client at once at
  // half load; removal shifts later entries back (no tombstones).
  std::unique_ptr<Slot[]> slots_;
  size_t mask_ = 0;
};

}  // namespace offload
