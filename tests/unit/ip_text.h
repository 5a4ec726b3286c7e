// What the security tests share: an address from its text, IPv4 or IPv6.
#pragma once

#include <doctest/doctest.h>
#include <arpa/inet.h>

#include <cstdint>

#include "security/address.h"

namespace unit_test {

inline offload::IpAddress ip(const char* text) {
  uint8_t raw[16];
  if (inet_pton(AF_INET, text, raw) == 1) return offload::IpAddress::from_v4(raw);
  REQUIRE(inet_pton(AF_INET6, text, raw) == 1);
  return offload::IpAddress::from_v6(raw);
}

}  // namespace unit_test
