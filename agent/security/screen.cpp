#include "security/screen.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "ops/config.h"

namespace offload {
namespace {

size_t hash_of(const IpAddress& a) {
  uint64_t lo, hi;
  std::memcpy(&lo, a.bytes, 8);
  std::memcpy(&hi, a.bytes + 8, 8);
  uint64_t h = (lo ^ (hi * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
  return size_t(h ^ (h >> 29));
}

}  // namespace

IpAddress IpAddress::from_v4(const uint8_t v4[4]) {
  IpAddress a;
  a.bytes[10] = a.bytes[11] = 0xff;
  std::memcpy(a.bytes + 12, v4, 4);
  return a;
}

IpAddress IpAddress::from_v6(const uint8_t v6[16]) {
  IpAddress a;
  std::memcpy(a.bytes, v6, 16);
  return a;
}

bool IpAddress::operator==(const IpAddress& o) const { return std::memcmp(bytes, o.bytes, 16) == 0; }

bool Prefix::contains(const IpAddress& a) const {
  uint8_t full = bits / 8, rest = bits % 8;
  if (std::memcmp(address.bytes, a.bytes, full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = uint8_t(0xff << (8 - rest));
  return (address.bytes[full] & mask) == (a.bytes[full] & mask);
}

Prefix parse_prefix(const std::string& key, const std::string& text) {
  auto slash = text.find('/');
  std::string host = text.substr(0, slash);
  Prefix p;
  uint8_t raw[16];
  int max_bits = 0;
  if (inet_pton(AF_INET, host.c_str(), raw) == 1) {
    p.address = IpAddress::from_v4(raw);
    max_bits = 32;
  } else if (inet_pton(AF_INET6, host.c_str(), raw) == 1) {
    p.address = IpAddress::from_v6(raw);
    max_bits = 128;
  } else {
    throw ConfigError(fmt::format("{}: bad value '{}' (expected an address or CIDR prefix, such as "
                                  "203.0.113.0/24 or 2001:db8::/32)", key, text));
  }
  int bits = max_bits;
  if (slash != std::string::npos) {
    std::string len = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), bits);
    if (len.empty() || ec != std::errc() || end != len.data() + len.size() || bits < 0 || bits > max_bits)
      throw ConfigError(fmt::format("{}: bad value '{}' (expected a prefix length from 0 to {})", key, text, max_bits));
  }
  p.bits = uint8_t(bits + (max_bits == 32 ? 96 : 0));
  Prefix check = p;
  IpAddress zeroed = p.address;  // host bits must be zero, as in `deny add`
  for (int i = p.bits; i < 128; ++i) zeroed.bytes[i / 8] &= uint8_t(~(0x80 >> (i % 8)));
  if (!(zeroed == check.address))
    throw ConfigError(fmt::format("{}: bad value '{}' (host bits are set; expected the network address)", key, text));
  return p;
}

Screen::Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, uint32_t per_source_max, uint32_t max_clients)
    : deny_(std::move(deny)), allow_(std::move(allow)), per_source_max_(per_source_max) {
  if (per_source_max_ == 0) return;
  size_t size = 16;
  while (size < size_t(max_clients) * 2) size *= 2;
  slots_.reset(new Slot[size]);
  mask_ = size - 1;
}

size_t Screen::find(const IpAddress& a) const {
  size_t i = hash_of(a) & mask_;
  while (slots_[i].count != 0 && !(slots_[i].key == a)) i = (i + 1) & mask_;
  return i;
}

Verdict Screen::admit(const IpAddress& source) {
  for (const auto& p : deny_)
    if (p.contains(source)) return Verdict::kDenied;
  if (!allow_.empty()) {
    bool allowed = false;
    for (const auto& p : allow_) allowed = allowed || p.contains(source);
    if (!allowed) return Verdict::kNotAllowed;
  }
  if (per_source_max_ == 0) return Verdict::kAccept;
  Slot& s = slots_[find(source)];
  if (s.count >= per_source_max_) return Verdict::kOverSourceLimit;
  s.key = source;
  ++s.count;
  return Verdict::kAccept;
}

void Screen::release(const IpAddress& source) {
  if (per_source_max_ == 0) return;
  size_t i = find(source);
  if (slots_[i].count == 0) return;
  if (--slots_[i].count > 0) return;
  // Backward-shift deletion: pull later entries of the probe run into the hole.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; slots_[j].count != 0; j = (j + 1) & mask_) {
    size_t home = hash_of(slots_[j].key) & mask_;
    bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
    if (movable) {
      slots_[hole] = slots_[j];
      slots_[j].count = 0;
      hole = j;
    }
  }
}

uint32_t Screen::connections_from(const IpAddress& source) const {
  if (per_source_max_ == 0) return 0;
  return slots_[find(source)].count;
}

}  // namespace offload
