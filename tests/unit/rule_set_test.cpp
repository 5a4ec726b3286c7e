// The live rule set: longest prefix wins over allow and deny, per family and
// per listener; changes publish a new set that a shard's view takes; the
// decision log's sample stays within its lines per second.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "ip_text.h"
#include "ops/admin.h"
#include "ops/config.h"
#include "security/decision_log.h"
#include "security/live_rules.h"
#include "security/rule_set.h"
#include "security/screen.h"

using offload::IpAddress;
using unit_test::ip;
using offload::LiveRules;
using offload::PrefixLists;
using offload::RuleSet;
using offload::RuleVerdict;

namespace {

std::vector<offload::Prefix> prefixes(const std::vector<const char*>& texts) {
  std::vector<offload::Prefix> out;
  for (const char* t : texts) out.push_back(offload::parse_prefix("test", t));
  return out;
}

PrefixLists lists(const std::vector<const char*>& deny, const std::vector<const char*>& allow = {}) {
  return {prefixes(deny), prefixes(allow)};
}

}  // namespace

TEST_CASE("rule set: the longest prefix decides, deny on a tie, nothing matched is accepted") {
  RuleSet r(lists({"10.0.0.0/8", "10.1.2.0/24", "192.0.2.7"}), {});
  CHECK(r.check(ip("10.9.9.9"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("10.1.2.3"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("192.0.2.7"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("192.0.2.8"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("11.0.0.0"), 0) == RuleVerdict::kAccept);

  // An allow inside a deny wins for its part; a deny inside that allow wins again.
  RuleSet nested(lists({"10.0.0.0/8", "10.1.2.128/25"}, {"10.1.0.0/16", "0.0.0.0/0"}), {});
  CHECK(nested.check(ip("10.2.0.1"), 0) == RuleVerdict::kDenied);
  CHECK(nested.check(ip("10.1.0.1"), 0) == RuleVerdict::kAccept);
  CHECK(nested.check(ip("10.1.2.127"), 0) == RuleVerdict::kAccept);
  CHECK(nested.check(ip("10.1.2.128"), 0) == RuleVerdict::kDenied);
  CHECK(nested.check(ip("8.8.8.8"), 0) == RuleVerdict::kAccept);

  RuleSet tie(lists({"10.0.0.0/8"}, {"10.0.0.0/8"}), {});
  CHECK(tie.check(ip("10.0.0.1"), 0) == RuleVerdict::kDenied);
}

TEST_CASE("rule set: allow prefixes make everything else not allowed") {
  RuleSet r(lists({}, {"127.0.0.2/32", "2001:db8::/32"}), {});
  CHECK(r.check(ip("127.0.0.2"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("127.0.0.3"), 0) == RuleVerdict::kNotAllowed);
  CHECK(r.check(ip("2001:db8:1::1"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("2001:db9::1"), 0) == RuleVerdict::kNotAllowed);
  CHECK_FALSE(r.empty());
  CHECK(RuleSet(lists({}), {}).empty());
}

TEST_CASE("rule set: IPv6 prefixes hold IPv6 sources only, at their boundaries") {
  RuleSet r(lists({"::/64", "2001:db8:0:1::/64", "::/0"}, {"2001:db8:0:1::5/128"}), {});
  CHECK(r.check(ip("::1"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("2001:db8:0:1:ffff:ffff:ffff:ffff"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("2001:db8:0:1::5"), 0) == RuleVerdict::kAccept);   // allow-only holds it: the /128
  CHECK(r.check(ip("2001:db8:0:2::1"), 0) == RuleVerdict::kDenied);  // ::/0
  // ::ffff:127.0.0.1 lies inside ::/0 and ::/64 as bytes, but it is IPv4.
  CHECK(r.check(ip("127.0.0.1"), 0) == RuleVerdict::kNotAllowed);
  RuleSet deny_only(lists({"::/64"}), {});
  CHECK(deny_only.check(ip("127.0.0.1"), 0) == RuleVerdict::kAccept);
  CHECK(deny_only.check(ip("::1"), 0) == RuleVerdict::kDenied);
  CHECK(deny_only.check(ip("0:0:0:1::1"), 0) == RuleVerdict::kAccept);  // one past the /64
}

TEST_CASE("rule set: a listener's own prefixes rank with the global ones, other listeners see only the global") {
  std::vector<PrefixLists> own;
  own.push_back(lists({}, {"127.0.10.7/32"}));
  own.push_back(lists({"127.0.9.0/24"}));
  RuleSet r(lists({"127.0.10.0/24"}, {"127.0.0.0/8"}), std::move(own));
  CHECK(r.check(ip("127.0.10.7"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("127.0.10.7"), 1) == RuleVerdict::kDenied);
  CHECK(r.check(ip("127.0.10.8"), 0) == RuleVerdict::kDenied);
  CHECK(r.check(ip("127.0.9.1"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("127.0.9.1"), 1) == RuleVerdict::kDenied);
  CHECK(r.check(ip("127.0.9.1"), 7) == RuleVerdict::kAccept);  // unknown listener: the global rules
  CHECK(r.check(ip("10.0.0.1"), 1) == RuleVerdict::kNotAllowed);
}

TEST_CASE("rule set: a thousand deny prefixes, each found and its neighbour not") {
  std::vector<std::string> texts;
  for (int i = 0; i < 1000; ++i) texts.push_back("10." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ".0/24");
  PrefixLists l;
  for (const auto& t : texts) l.deny.push_back(offload::parse_prefix("test", t));
  RuleSet r(std::move(l), {});
  for (int i = 0; i < 1000; ++i) {
    const std::string in = "10." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ".77";
    CHECK(r.check(ip(in.c_str()), 0) == RuleVerdict::kDenied);
  }
  CHECK(r.check(ip("10.3.250.1"), 0) == RuleVerdict::kAccept);
  CHECK(r.check(ip("10.4.0.1"), 0) == RuleVerdict::kAccept);
}

TEST_CASE("live rules: add and remove publish a new set, a view takes it once, subscribers are woken") {
  LiveRules live(lists({"192.0.2.0/24"}));
  offload::RulesView view(std::shared_ptr<LiveRules>(&live, [](LiveRules*) {}));
  const int fd = ::eventfd(0, EFD_NONBLOCK);
  REQUIRE(fd >= 0);
  live.subscribe(fd);
  CHECK_FALSE(view.refresh());
  CHECK(view.rules().check(ip("198.51.100.1"), 0) == RuleVerdict::kAccept);

  bool changed = false;
  CHECK(live.add(LiveRules::List::kDeny, "198.51.100.0/24", &changed) == "deny 198.51.100.0/24: added");
  CHECK(changed);
  uint64_t woken = 0;
  CHECK(::read(fd, &woken, sizeof woken) == sizeof woken);
  CHECK(woken == 1);
  CHECK(view.rules().check(ip("198.51.100.1"), 0) == RuleVerdict::kAccept);  // the old set until refreshed
  CHECK(view.refresh());
  CHECK_FALSE(view.refresh());
  CHECK(view.rules().check(ip("198.51.100.1"), 0) == RuleVerdict::kDenied);
  CHECK(live.list(LiveRules::List::kDeny) == "192.0.2.0/24\n198.51.100.0/24\n");

  live.add(LiveRules::List::kDeny, "198.51.100.0/24", &changed);
  CHECK_FALSE(changed);
  CHECK(live.remove(LiveRules::List::kDeny, "203.0.113.0/24", &changed) == "deny 203.0.113.0/24: not there (unchanged)");
  CHECK_FALSE(changed);
  CHECK_FALSE(view.refresh());
  live.remove(LiveRules::List::kDeny, "198.51.100.0/24", &changed);
  CHECK(changed);
  CHECK(view.refresh());
  CHECK(view.rules().check(ip("198.51.100.1"), 0) == RuleVerdict::kAccept);

  CHECK_THROWS_AS(live.add(LiveRules::List::kDeny, "198.51.100.1/24", &changed), offload::ConfigError);
  CHECK_THROWS_AS(live.add(LiveRules::List::kAllow, "::1/129", &changed), offload::ConfigError);
  CHECK(::read(fd, &woken, sizeof woken) == sizeof woken);  // the one remove that changed the set
  CHECK(woken == 1);
  live.unsubscribe(fd);
  live.add(LiveRules::List::kAllow, "::1", &changed);
  CHECK(::read(fd, &woken, sizeof woken) < 0);  // not woken any more
  ::close(fd);
}

TEST_CASE("screen: a live change reaches admit at once and asks for one re-check of open connections") {
  auto live = std::make_shared<LiveRules>(lists({}));
  offload::Config config;
  config.live_rules = live;
  offload::Screen s(config, offload::SourceRules{});
  CHECK_FALSE(s.active());
  CHECK_FALSE(s.take_rescreen());
  bool changed = false;
  live->add(LiveRules::List::kDeny, "127.0.0.5", &changed);
  CHECK(s.active());
  CHECK(s.admit(ip("127.0.0.5")) == offload::Verdict::kDenied);
  CHECK(s.admit(ip("127.0.0.6")) == offload::Verdict::kAccept);
  CHECK(s.take_rescreen());  // admit took the set first: the re-check is still owed
  CHECK_FALSE(s.take_rescreen());
  CHECK(s.recheck(ip("127.0.0.5"), 0) == RuleVerdict::kDenied);
}

TEST_CASE("rule set: the guard holds the global denies no allow lies inside, a listener's allow included") {
  RuleSet set(lists({"10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24"}, {"10.1.2.3/32", "198.51.100.0/24"}),
              {PrefixLists{}, lists({}, {"192.0.2.7/32"})});
  std::vector<std::string> held;
  for (const offload::Prefix& p : set.guard_denies()) held.push_back(offload::prefix_text(p));
  // 10/8 has an allow inside (global), 192.0.2/24 one of listener 1's; the
  // same prefix in both lists is a deny (deny wins a tie), as in the guard.
  CHECK(held == std::vector<std::string>{"198.51.100.0/24"});
}

TEST_CASE("guard mirror: an allow added inside a mirrored deny takes the deny out of the guard, its removal puts it back") {
  LiveRules live(lists({"10.0.0.0/8"}));
  std::vector<std::string> calls;
  const offload::AdminServer::Mirror mirror = [&](LiveRules::List list, bool add, const std::string& cidr) {
    calls.push_back(std::string(list == LiveRules::List::kDeny ? "deny " : "allow ") + (add ? "add " : "del ") + cidr);
    return std::string("guard: ") + (add ? "added " : "removed ") + cidr;
  };
  auto change = [&](LiveRules::List list, bool add, const std::string& cidr) {
    calls.clear();
    const std::shared_ptr<const RuleSet> before = live.current();
    bool changed = false;
    if (add) live.add(list, cidr, &changed);
    else live.remove(list, cidr, &changed);
    return offload::mirror_change(mirror, *before, *live.current(), list, add, cidr);
  };
  CHECK(change(LiveRules::List::kAllow, true, "10.1.2.3") == "guard: removed 10.0.0.0/8\nguard: added 10.1.2.3");
  CHECK(calls == std::vector<std::string>{"deny del 10.0.0.0/8", "allow add 10.1.2.3"});
  // A deny added inside the allow-holding one is mirrored on its own...
  CHECK(change(LiveRules::List::kDeny, true, "10.9.0.0/16") == "guard: added 10.9.0.0/16");
  // ... one that holds the allow is not.
  CHECK(change(LiveRules::List::kDeny, true, "10.1.0.0/16") ==
        "guard: not changed (10.1.0.0/16 has an allow inside it: the agent alone screens it)");
  CHECK(calls.empty());
  CHECK(change(LiveRules::List::kAllow, false, "10.1.2.3") ==
        "guard: added 10.0.0.0/8\nguard: added 10.1.0.0/16\nguard: removed 10.1.2.3");
  CHECK(change(LiveRules::List::kDeny, false, "10.9.0.0/16") == "guard: removed 10.9.0.0/16");
}

TEST_CASE("live rules: a listener's own list changes by name, a reload replays it by name, a gone listener drops it") {
  offload::Config config;
  config.listeners.resize(2);
  config.listeners[0].name = "front";
  config.listeners[1].name = "back";
  LiveRules live(config);
  bool changed = false;
  CHECK(live.add(LiveRules::List::kDeny, "127.0.0.31", &changed, "back") == "deny 127.0.0.31/32 on listener back: added");
  CHECK(changed);
  CHECK(live.current()->check(ip("127.0.0.31"), 1) == RuleVerdict::kDenied);
  CHECK(live.current()->check(ip("127.0.0.31"), 0) == RuleVerdict::kAccept);
  CHECK(live.list(LiveRules::List::kDeny, "back") == "127.0.0.31/32\n");
  CHECK(live.list(LiveRules::List::kDeny).empty());
  CHECK_THROWS_WITH_AS(live.add(LiveRules::List::kDeny, "127.0.0.1", &changed, "nosuch"),
                       "listener: bad value 'nosuch' (expected the name of a listener: front, back)",
                       offload::ConfigError);
  // The next file swaps the two listeners' order: the change follows the name.
  offload::Config next = config;
  std::swap(next.listeners[0], next.listeners[1]);
  LiveRules reloaded(next);
  reloaded.replay(live);
  CHECK(reloaded.current()->check(ip("127.0.0.31"), 0) == RuleVerdict::kDenied);  // "back" is first now
  CHECK(reloaded.current()->check(ip("127.0.0.31"), 1) == RuleVerdict::kAccept);
  offload::Config without = config;
  without.listeners.pop_back();
  LiveRules smaller(without);
  smaller.replay(live);
  CHECK(smaller.current()->check(ip("127.0.0.31"), 0) == RuleVerdict::kAccept);
}

TEST_CASE("guard mirror: a listener's change touches the guard only through the global denies it holds") {
  LiveRules live(lists({"10.0.0.0/8"}), {PrefixLists{}});
  const offload::AdminServer::Mirror mirror = [](LiveRules::List, bool add, const std::string& cidr) {
    return std::string("guard: ") + (add ? "added " : "removed ") + cidr;
  };
  bool changed = false;
  std::shared_ptr<const RuleSet> before = live.current();
  live.add(LiveRules::List::kDeny, "192.0.2.0/24", &changed, "0");
  CHECK(offload::mirror_change(mirror, *before, *live.current(), LiveRules::List::kDeny, true, "192.0.2.0/24", true) ==
        "guard: not changed (a listener's own prefixes stay in the agent)");
  before = live.current();
  live.add(LiveRules::List::kAllow, "10.1.2.3", &changed, "0");
  CHECK(offload::mirror_change(mirror, *before, *live.current(), LiveRules::List::kAllow, true, "10.1.2.3", true) ==
        "guard: removed 10.0.0.0/8");
}

TEST_CASE("decision log: at most its lines a second, each saying how many were left out before it") {
  std::vector<std::string> lines;
  offload::DecisionLog log(3, [&](std::string_view l) { lines.emplace_back(l); });
  for (int i = 0; i < 10; ++i) log.note(5000 + uint64_t(i), ip("127.0.0.9"), "denied", "main");
  REQUIRE(lines.size() == 3);
  CHECK(lines[0] == "security: refused 127.0.0.9 on listener main: denied");
  CHECK(log.left_out() == 7);
  log.note(5999, ip("::1"), "wrong token", "api");  // the same second
  CHECK(lines.size() == 3);
  log.note(6000, ip("::1"), "wrong token", "api");  // the next one
  REQUIRE(lines.size() == 4);
  CHECK(lines[3] == "security: refused ::1 on listener api: wrong token (8 more like it left out)");
  log.note(6001, ip("::1"), "wrong token", "api");
  CHECK(lines.back().find("left out") == std::string::npos);
  CHECK(log.logged() == 5);
}
