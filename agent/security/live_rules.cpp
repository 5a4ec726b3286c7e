#include "security/live_rules.h"

#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

#include "ops/config.h"

namespace offload {
namespace {

std::vector<Prefix> parse_all(const std::string& key, const std::vector<std::string>& texts) {
  std::vector<Prefix> out;
  for (size_t i = 0; i < texts.size(); ++i) out.push_back(parse_prefix(fmt::format("{}[{}]", key, i), texts[i]));
  return out;
}

bool same(const Prefix& a, const Prefix& b) { return a.bits == b.bits && a.address == b.address; }

const char* list_name(LiveRules::List list) { return list == LiveRules::List::kDeny ? "deny" : "allow"; }

}  // namespace

LiveRules::LiveRules(const Config& config) : close_established_(config.deny_established != "keep") {
  PrefixLists global{parse_all("deny", config.deny), parse_all("allow", config.allow)};
  std::vector<PrefixLists> listeners;
  for (const ListenerConfig& l : config.listeners) {
    const std::string where = l.where + ".security";
    listeners.push_back({parse_all(where + ".deny", l.security.deny), parse_all(where + ".allow", l.security.allow)});
    listener_names_.push_back(l.name);
  }
  current_ = std::make_shared<const RuleSet>(std::move(global), std::move(listeners));
}

LiveRules::LiveRules(PrefixLists global, std::vector<PrefixLists> listeners, bool close_established)
    : current_(std::make_shared<const RuleSet>(std::move(global), std::move(listeners))),
      close_established_(close_established) {
  for (size_t i = 0; i < current_->listeners().size(); ++i) listener_names_.push_back(std::to_string(i));
}

std::shared_ptr<const RuleSet> LiveRules::current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

std::string LiveRules::add(List list, const std::string& cidr, bool* changed, const std::string& listener) {
  return change(list, cidr, true, changed, listener);
}

std::string LiveRules::remove(List list, const std::string& cidr, bool* changed, const std::string& listener) {
  return change(list, cidr, false, changed, listener);
}

size_t LiveRules::listener_index(const std::string& name) const {
  for (size_t i = 0; i < listener_names_.size(); ++i)
    if (listener_names_[i] == name) return i;
  std::string known;
  for (const std::string& n : listener_names_) known += (known.empty() ? "" : ", ") + n;
  throw ConfigError(fmt::format("listener: bad value '{}' (expected the name of a listener: {})", name,
                                known.empty() ? "there are none" : known));
}

std::string LiveRules::change(List list, const std::string& cidr, bool add, bool* changed,
                              const std::string& listener) {
  const Prefix p = parse_prefix(list_name(list), cidr);  // throws before anything changes
  const std::string text = prefix_text(p);
  const size_t index = listener.empty() ? 0 : listener_index(listener);
  const std::string where = listener.empty() ? "" : " on listener " + listener;
  std::lock_guard lock(mutex_);
  PrefixLists global = current_->global();
  std::vector<PrefixLists> own = current_->listeners();
  if (!listener.empty() && own.size() <= index) own.resize(index + 1);
  PrefixLists& lists = listener.empty() ? global : own[index];
  std::vector<Prefix>& v = list == List::kDeny ? lists.deny : lists.allow;
  auto it = std::find_if(v.begin(), v.end(), [&](const Prefix& q) { return same(p, q); });
  *changed = add == (it == v.end());
  if (!*changed)
    return fmt::format("{} {}{}: {} (unchanged)", list_name(list), text, where, add ? "already there" : "not there");
  if (add) v.push_back(p);
  else v.erase(it);
  changes_.push_back({list, text, add, listener});
  publish(std::make_shared<const RuleSet>(std::move(global), std::move(own)));
  return fmt::format("{} {}{}: {}", list_name(list), text, where, add ? "added" : "removed");
}

void LiveRules::replay(const LiveRules& older) {
  std::vector<Change> changes;
  {
    std::lock_guard lock(older.mutex_);
    changes = older.changes_;
  }
  bool changed = false;
  for (const Change& c : changes) {
    // A listener the new file no longer has takes its live changes with it.
    if (!c.listener.empty() && std::find(listener_names_.begin(), listener_names_.end(), c.listener) ==
                                   listener_names_.end())
      continue;
    (void)change(c.list, c.cidr, c.add, &changed, c.listener);
  }
}

void LiveRules::publish(std::shared_ptr<const RuleSet> next) {
  current_ = std::move(next);
  version_.fetch_add(1, std::memory_order_acq_rel);
  const uint64_t one = 1;
  for (int fd : wake_fds_) (void)!::write(fd, &one, sizeof one);  // fails only on counter overflow
}

std::string LiveRules::list(List list, const std::string& listener) const {
  std::shared_ptr<const RuleSet> rules = current();
  static const PrefixLists kNone;
  const size_t index = listener.empty() ? 0 : listener_index(listener);
  const PrefixLists& lists = listener.empty()                       ? rules->global()
                             : index < rules->listeners().size() ? rules->listeners()[index]
                                                                 : kNone;
  std::string out;
  for (const Prefix& p : list == List::kDeny ? lists.deny : lists.allow) out += prefix_text(p) + "\n";
  return out;
}

void LiveRules::subscribe(int eventfd) {
  std::lock_guard lock(mutex_);
  wake_fds_.push_back(eventfd);
}

void LiveRules::unsubscribe(int eventfd) {
  std::lock_guard lock(mutex_);
  std::erase(wake_fds_, eventfd);
}

RulesView::RulesView(std::shared_ptr<LiveRules> live) : live_(std::move(live)) { refresh(); }

bool RulesView::refresh() {
  if (live_->version() == version_) return false;
  std::lock_guard lock(live_->mutex_);
  rules_ = live_->current_;
  version_ = live_->version_.load(std::memory_order_acquire);
  return true;
}

}  // namespace offload
