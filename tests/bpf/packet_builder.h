#pragma once
// Builds test frames layer by layer: Frame().Eth().Vlan(7).IPv4("10.0.0.2").TCP(1234, 80, kSyn).
// Each layer fills in the previous layer's "next protocol" field; bytes() fills in the IP
// lengths. Deliberately broken frames come from the raw setters (Ihl, DataOffset, Cut, ...).

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace offload::test {

inline constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;

class Frame {
 public:
  Frame& Eth() {
    const uint8_t macs[12] = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2};
    bytes_.insert(bytes_.end(), macs, macs + sizeof(macs));
    ethertype_at_ = put16(0);
    return *this;
  }
  Frame& Vlan(uint16_t id, uint16_t tpid = 0x8100) {
    set16(ethertype_at_, tpid);
    put16(id & 0x0fff);
    ethertype_at_ = put16(0);
    return *this;
  }
  Frame& EtherType(uint16_t type) {
    set16(ethertype_at_, type);
    return *this;
  }
  // An IPv4 header with option_words 32-bit words of NOP options.
  Frame& IPv4(const char* src, const char* dst = "10.77.0.1", unsigned option_words = 0) {
    set16(ethertype_at_, 0x0800);
    ip_at_ = bytes_.size();
    v6_ = false;
    put8(uint8_t(0x40 | (5 + option_words)));
    put8(0);
    put16(0);        // total length, filled in by bytes()
    put16(0x1234);   // id
    put16(0);        // flags and fragment offset
    put8(64);
    next_at_ = put8(0);
    put16(0);        // header checksum (the guard does not check it)
    put_addr(AF_INET, src);
    put_addr(AF_INET, dst);
    for (unsigned i = 0; i < option_words * 4; ++i) put8(1);  // NOP
    return *this;
  }
  // IPv4 fragment: offset in 8-byte units, "more fragments" flag.
  Frame& Fragment(uint16_t offset_units, bool more) {
    set16(ip_at_ + 6, uint16_t((more ? 0x2000 : 0) | (offset_units & 0x1fff)));
    return *this;
  }
  Frame& Ihl(uint8_t words) {
    bytes_[ip_at_] = uint8_t((bytes_[ip_at_] & 0xf0) | (words & 0x0f));
    return *this;
  }
  Frame& IpVersion(uint8_t version) {
    bytes_[ip_at_] = uint8_t((bytes_[ip_at_] & 0x0f) | (version << 4));
    return *this;
  }
  Frame& IpLength(uint16_t length) {  // IPv4 total length or IPv6 payload length, kept as is
    length_override_ = length;
    return *this;
  }
  Frame& IPv6(const char* src, const char* dst = "fd77::1") {
    set16(ethertype_at_, 0x86dd);
    ip_at_ = bytes_.size();
    v6_ = true;
    put32(0x60000000);
    put16(0);        // payload length, filled in by bytes()
    next_at_ = put8(0);
    put8(64);
    put_addr(AF_INET6, src);
    put_addr(AF_INET6, dst);
    return *this;
  }
  // A hop-by-hop, routing or destination options header of (units + 1) * 8 bytes.
  Frame& Ext(uint8_t type, uint8_t units = 0) {
    chain(type);
    next_at_ = put8(0);
    put8(units);
    pad(size_t(units + 1) * 8 - 2);
    return *this;
  }
  Frame& Fragment6(uint16_t offset_units, bool more) {
    chain(44);
    next_at_ = put8(0);
    put8(0);
    put16(uint16_t(offset_units << 3 | (more ? 1 : 0)));
    put32(0xabcd);
    return *this;
  }
  Frame& AH(uint8_t len_field = 4) {  // (len_field + 2) * 4 bytes
    chain(51);
    next_at_ = put8(0);
    put8(len_field);
    pad(size_t(len_field + 2) * 4 - 2);
    return *this;
  }
  Frame& TCP(uint16_t sport, uint16_t dport, uint8_t flags, unsigned option_words = 0) {
    chain(6);
    tcp_at_ = bytes_.size();
    put16(sport);
    put16(dport);
    put32(1000);
    put32(flags & kAck ? 2000 : 0);
    put8(uint8_t((5 + option_words) << 4));
    put8(flags);
    put16(65535);
    put16(0);
    put16(0);
    for (unsigned i = 0; i < option_words * 4; ++i) put8(1);  // NOP
    return *this;
  }
  Frame& DataOffset(uint8_t words) {
    bytes_[tcp_at_ + 12] = uint8_t(words << 4);
    return *this;
  }
  Frame& UDP(uint16_t sport, uint16_t dport) {
    chain(17);
    put16(sport);
    put16(dport);
    put16(8);
    put16(0);
    return *this;
  }
  Frame& ICMPv6(uint8_t type) {
    chain(58);
    put8(type);
    pad(7);
    return *this;
  }
  Frame& Proto(uint8_t proto) {  // names the next protocol without adding its header
    chain(proto);
    return *this;
  }
  Frame& Payload(size_t n, uint8_t fill = 0xab) {
    bytes_.insert(bytes_.end(), n, fill);
    return *this;
  }
  Frame& Cut(size_t length) {  // truncate after the lengths are filled in
    cut_ = length;
    return *this;
  }
  size_t size() const { return bytes_.size(); }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out = bytes_;
    if (ip_at_ != kNone) {
      const size_t header = v6_ ? 40 : 0;
      const size_t length = length_override_ ? length_override_ : out.size() - ip_at_ - header;
      out[ip_at_ + (v6_ ? 4 : 2)] = uint8_t(length >> 8);
      out[ip_at_ + (v6_ ? 5 : 3)] = uint8_t(length);
    }
    if (cut_ < out.size()) out.resize(cut_);
    return out;
  }

 private:
  static constexpr size_t kNone = ~size_t(0);

  size_t put8(uint8_t v) {
    bytes_.push_back(v);
    return bytes_.size() - 1;
  }
  size_t put16(uint16_t v) {
    put8(uint8_t(v >> 8));
    put8(uint8_t(v));
    return bytes_.size() - 2;
  }
  void put32(uint32_t v) {
    put16(uint16_t(v >> 16));
    put16(uint16_t(v));
  }
  void set16(size_t at, uint16_t v) {
    if (at == kNone) throw std::logic_error("no field to set");
    bytes_[at] = uint8_t(v >> 8);
    bytes_[at + 1] = uint8_t(v);
  }
  void pad(size_t n) { bytes_.insert(bytes_.end(), n, 0); }
  void chain(uint8_t proto) {
    if (next_at_ == kNone) throw std::logic_error("no IP header before this layer");
    bytes_[next_at_] = proto;
    next_at_ = kNone;
  }
  void put_addr(int family, const char* text) {
    uint8_t addr[16] = {};
    if (inet_pton(family, text, addr) != 1) throw std::invalid_argument(text);
    bytes_.insert(bytes_.end(), addr, addr + (family == AF_INET ? 4 : 16));
  }

  std::vector<uint8_t> bytes_;
  size_t ethertype_at_ = kNone;
  size_t next_at_ = kNone;
  size_t ip_at_ = kNone;
  size_t tcp_at_ = kNone;
  size_t cut_ = kNone;
  uint16_t length_override_ = 0;
  bool v6_ = false;
};

}  // namespace offload::test
