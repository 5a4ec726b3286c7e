#include "security/rule_set.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace offload {
namespace {

int compare(const IpAddress& a, const IpAddress& b) { return std::memcmp(a.bytes, b.bytes, 16); }

}  // namespace

PrefixTable::PrefixTable(const std::vector<const PrefixLists*>& parts) {
  auto put = [this](const Prefix& p, bool deny) {
    Ranked& r = p.bits >= 96 && p.address.is_v4() ? v4_ : v6_;
    r.entries.push_back({p.address.masked(p.bits), p.bits, deny});
  };
  for (const PrefixLists* p : parts) {
    for (const Prefix& d : p->deny) put(d, true);
    for (const Prefix& a : p->allow) put(a, false);
    allow_only_ = allow_only_ || !p->allow.empty();
  }
  v4_.sort();
  v6_.sort();
}

void PrefixTable::Ranked::sort() {
  std::sort(entries.begin(), entries.end(), [](const Entry& x, const Entry& y) {
    if (x.bits != y.bits) return x.bits > y.bits;
    if (int c = compare(x.address, y.address); c != 0) return c < 0;
    return x.deny && !y.deny;
  });
  for (uint32_t i = 0; i < entries.size(); ++i) {
    if (runs.empty() || runs.back().bits != entries[i].bits) {
      const unsigned b = entries[i].bits;
      const Key mask{b == 0 ? 0 : b >= 64 ? ~0ull : ~0ull << (64 - b), b <= 64 ? 0 : ~0ull << (128 - b)};
      runs.push_back({entries[i].bits, i, mask});
    }
    runs.back().end = i + 1;
    keys.push_back(Key::of(entries[i].address));
  }
}

PrefixTable::Key PrefixTable::Key::of(const IpAddress& a) {
  Key k{0, 0};
  for (int i = 0; i < 8; ++i) k.hi = (k.hi << 8) | a.bytes[i];
  for (int i = 8; i < 16; ++i) k.lo = (k.lo << 8) | a.bytes[i];
  return k;
}

const PrefixTable::Entry* PrefixTable::Ranked::longest_match(const IpAddress& a) const {
  const Key whole = Key::of(a);
  auto from = keys.begin();
  for (const Run& run : runs) {
    const Key key = whole & run.mask;
    // The first entry of this length not below the key is the match if any
    // (deny sorts first among equals).
    auto to = keys.begin() + run.end;
    auto it = std::lower_bound(from, to, key);
    if (it != to && *it == key) return &entries[size_t(it - keys.begin())];
    from = to;
  }
  return nullptr;
}

RuleVerdict PrefixTable::check(const IpAddress& a) const {
  if (const Entry* e = (a.is_v4() ? v4_ : v6_).longest_match(a))
    return e->deny ? RuleVerdict::kDenied : RuleVerdict::kAccept;
  return allow_only_ ? RuleVerdict::kNotAllowed : RuleVerdict::kAccept;
}

RuleSet::RuleSet(PrefixLists global, std::vector<PrefixLists> listeners)
    : global_(std::move(global)), listeners_(std::move(listeners)), global_table_({&global_}) {
  empty_ = global_.empty();
  for (const PrefixLists& own : listeners_) {
    tables_.emplace_back(std::vector<const PrefixLists*>{&global_, &own});
    empty_ = empty_ && own.empty();
  }
}

RuleVerdict RuleSet::check(const IpAddress& a, uint32_t listener) const {
  return listener < tables_.size() ? tables_[listener].check(a) : global_table_.check(a);
}

std::vector<Prefix> RuleSet::guard_denies() const {
  auto allowed_inside = [this](const Prefix& d) {
    auto inside = [&d](const Prefix& a) { return a.bits > d.bits && d.contains(a.address); };
    if (std::any_of(global_.allow.begin(), global_.allow.end(), inside)) return true;
    for (const PrefixLists& own : listeners_)
      if (std::any_of(own.allow.begin(), own.allow.end(), inside)) return true;
    return false;
  };
  std::vector<Prefix> out;
  for (const Prefix& d : global_.deny)
    if (!allowed_inside(d)) out.push_back(d);
  return out;
}

std::string prefix_text(const Prefix& p) {
  char buf[INET6_ADDRSTRLEN];
  if (p.address.is_v4() && p.bits >= 96) {
    inet_ntop(AF_INET, p.address.bytes + 12, buf, sizeof buf);
    return fmt::format("{}/{}", buf, p.bits - 96);
  }
  inet_ntop(AF_INET6, p.address.bytes, buf, sizeof buf);
  return fmt::format("{}/{}", buf, p.bits);
}

}  // namespace offload
