#include "security/screen.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "ops/config.h"
#include "security/decision_log.h"

namespace offload {
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

bool IpAddress::is_v4() const {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(bytes, kMapped, 12) == 0;
}

IpAddress IpAddress::masked(unsigned bits) const {
  IpAddress out = *this;
  if (bits >= 128) return out;
  const unsigned whole = bits / 8;
  out.bytes[whole] &= uint8_t(0xff00 >> (bits % 8));
  std::memset(out.bytes + whole + 1, 0, 15 - whole);
  return out;
}

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
  if (!(p.address.masked(p.bits) == p.address))  // host bits must be zero, as in `deny add`
    throw ConfigError(fmt::format("{}: bad value '{}' (host bits are set; expected the network address)", key, text));
  return p;
}

SourceRules source_rules(const Config& config) {
  SourceRules r;
  r.max_connections = config.max_clients_per_source;
  r.rate = {config.rate_limit, config.rate_burst};
  r.table_size = config.source_table_size;
  r.ipv4_prefix = uint8_t(config.source_ipv4_prefix);
  r.ipv6_prefix = uint8_t(config.source_ipv6_prefix);
  return r;
}

std::shared_ptr<SharedSources> share_sources(const Config& next, const Config* running) {
  const SourceRules r = source_rules(next);
  if (r.max_connections == 0 && r.rate.rate == 0) return nullptr;
  if (running != nullptr && running->sources != nullptr) {
    const SharedSources& s = *running->sources;
    if (s.table.capacity() == r.table_size && s.ipv4_prefix == r.ipv4_prefix && s.ipv6_prefix == r.ipv6_prefix)
      return running->sources;
  }
  return std::make_shared<SharedSources>(r);
}

Screen::Screen(const Config& config, const SourceRules& rules)
    : live_(config.live_rules ? config.live_rules : std::make_shared<LiveRules>(config)),
      rules_view_(live_),
      rescreened_(rules_view_.version()),
      rules_(rules) {
  for (const ListenerConfig& l : config.listeners) listener_names_.push_back(l.name);
  if (tracking()) sources_ = config.sources ? config.sources : std::make_shared<SharedSources>(rules_);
}

Screen::Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, const SourceRules& rules)
    : live_(std::make_shared<LiveRules>(PrefixLists{std::move(deny), std::move(allow)})),
      rules_view_(live_),
      rescreened_(rules_view_.version()),
      rules_(rules) {
  if (tracking()) sources_ = std::make_shared<SharedSources>(rules_);
}

Screen::Screen(std::vector<Prefix> deny, std::vector<Prefix> allow, uint32_t per_source_max, uint32_t max_clients)
    : Screen(std::move(deny), std::move(allow), SourceRules{per_source_max, {}, max_clients, 32, 128}) {}

IpAddress Screen::source_of(const IpAddress& a) const {
  return a.masked(a.is_v4() ? 96u + rules_.ipv4_prefix : rules_.ipv6_prefix);
}

// The source's entry, made with a full bucket if new; null when the table
// is full of sources with open connections.
SourceEntry* Screen::entry(const IpAddress& source, uint64_t now_ms) {
  bool fresh = false;
  SourceTable& table = sources_->table;
  const uint64_t evicted = table.evictions();
  SourceEntry* e = table.get(source_of(source), &fresh);
  evictions_ += table.evictions() - evicted;
  if (e != nullptr && fresh && rules_.rate.rate > 0) e->bucket.fill(rules_.rate, now_ms);
  return e;
}

Verdict Screen::admit(const IpAddress& source, uint64_t now_ms, uint32_t listener) {
  rules_view_.refresh();
  switch (rules_view_.rules().check(source, listener)) {
    case RuleVerdict::kDenied: note(source, "denied", listener, now_ms); return Verdict::kDenied;
    case RuleVerdict::kNotAllowed: note(source, "not in the allow list", listener, now_ms); return Verdict::kNotAllowed;
    case RuleVerdict::kAccept: break;
  }
  if (!tracking()) return Verdict::kAccept;
  Verdict v = Verdict::kAccept;
  {
    std::lock_guard held(sources_->lock);
    SourceEntry* e = entry(source, now_ms);
    if (e == nullptr)
      v = Verdict::kSourceTableFull;
    else if (rules_.max_connections > 0 && e->connections >= rules_.max_connections)
      v = Verdict::kOverSourceLimit;
    else
      sources_->table.connect(e);
  }
  // The log takes its own lock: not under the table's.
  if (v == Verdict::kSourceTableFull) note(source, "source table full", listener, now_ms);
  if (v == Verdict::kOverSourceLimit) note(source, "over max_clients_per_source", listener, now_ms);
  return v;
}

bool Screen::take_rescreen() {
  rules_view_.refresh();
  if (rules_view_.version() == rescreened_) return false;
  rescreened_ = rules_view_.version();
  return true;
}

RuleVerdict Screen::recheck(const IpAddress& source, uint32_t listener) const {
  return rules_view_.rules().check(source, listener);
}

void Screen::note(const IpAddress& source, const char* reason, uint32_t listener, uint64_t now_ms) const {
  const std::string name = listener < listener_names_.size() ? listener_names_[listener] : std::to_string(listener);
  decision_log().note(now_ms, source, reason, name);
}

void Screen::release(const IpAddress& source) {
  if (!tracking()) return;
  std::lock_guard held(sources_->lock);
  if (SourceEntry* e = sources_->table.find(source_of(source))) sources_->table.disconnect(e);
}

uint64_t Screen::check_rate(const IpAddress& source, uint64_t now_ms, uint32_t listener) {
  if (rules_.rate.rate == 0) return 0;
  uint64_t wait_ms = 1000;
  {
    std::lock_guard held(sources_->lock);
    // Found at once for a connection admitted at accept: its entry is pinned.
    if (SourceEntry* e = entry(source, now_ms)) wait_ms = e->bucket.take(rules_.rate, now_ms);
  }
  if (wait_ms > 0) note(source, "over the request rate", listener, now_ms);
  return wait_ms;
}

uint32_t Screen::connections_from(const IpAddress& source) const {
  if (!tracking()) return 0;
  std::lock_guard held(sources_->lock);
  SourceEntry* e = sources_->table.find(source_of(source));
  return e == nullptr ? 0 : e->connections;
}

uint32_t Screen::sources_tracked() const {
  if (!tracking()) return 0;
  std::lock_guard held(sources_->lock);
  return sources_->table.size();
}

}  // namespace offload
