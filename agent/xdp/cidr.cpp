#include "cidr.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <charconv>

namespace offload::xdp {

namespace {

bool host_bits_set(const Prefix& prefix) {
  for (uint32_t bit = prefix.len; bit < prefix.max_len(); ++bit) {
    if (prefix.addr[bit / 8] & (0x80u >> (bit % 8))) return true;
  }
  return false;
}

Prefix network_of(Prefix prefix) {
  for (uint32_t bit = prefix.len; bit < prefix.max_len(); ++bit) {
    prefix.addr[bit / 8] &= uint8_t(~(0x80u >> (bit % 8)));
  }
  return prefix;
}

bool parse_length(std::string_view digits, uint32_t max_len, uint32_t& len) {
  if (digits.empty() || digits.size() > 3) return false;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
  return ec == std::errc() && end == digits.data() + digits.size() && len <= max_len;
}

}  // namespace

std::string Prefix::str() const {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, addr.data(), text, sizeof(text));
  return fmt::format("{}/{}", text, len);
}

std::optional<Prefix> parse_prefix(std::string_view text, std::string& error) {
  const auto slash = text.find('/');
  const std::string address(text.substr(0, slash));
  Prefix prefix;
  if (inet_pton(AF_INET, address.c_str(), prefix.addr.data()) == 1) {
    prefix.v6 = false;
  } else if (inet_pton(AF_INET6, address.c_str(), prefix.addr.data()) == 1) {
    prefix.v6 = true;
  } else {
    error = fmt::format("'{}' is not an IPv4 or IPv6 address (expected ADDR or ADDR/LEN)", text);
    return std::nullopt;
  }
  prefix.len = prefix.max_len();
  if (slash != std::string_view::npos &&
      !parse_length(text.substr(slash + 1), prefix.max_len(), prefix.len)) {
    error = fmt::format("'{}' has a bad prefix length (expected 0 to {})", text, prefix.max_len());
    return std::nullopt;
  }
  if (host_bits_set(prefix)) {
    error = fmt::format("'{}' has host bits set (the network is {})", text,
                        network_of(prefix).str());
    return std::nullopt;
  }
  return prefix;
}

}  // namespace offload::xdp
