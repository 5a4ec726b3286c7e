#pragma once
// An IPv4 or IPv6 prefix as typed by an operator ("10.1.0.0/16", "2001:db8::/32", "10.0.0.7").

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace offload::xdp {

struct Prefix {
  bool v6 = false;
  std::array<uint8_t, 16> addr{};  // IPv4 in the first 4 bytes, network order
  uint32_t len = 0;                // prefix length in bits

  uint32_t max_len() const { return v6 ? 128 : 32; }
  bool whole_address() const { return len == max_len(); }
  std::string str() const;  // "10.1.0.0/16"
};

// Parses "ADDR" (a whole address) or "ADDR/LEN". Rejects bad addresses, bad lengths and set
// host bits ("10.0.0.1/8"), with a one-line reason in `error`.
std::optional<Prefix> parse_prefix(std::string_view text, std::string& error);

}  // namespace offload::xdp
