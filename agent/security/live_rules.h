// The rule set of the running agent, one for every shard and the admin
// endpoint: made from the configuration ([security] and each listener's
// security table), changed live by `offload-agent deny|allow add|del`
// through the admin endpoint, and read at every accept.
//
// Why a version number and a copy per shard: a change builds a new
// immutable RuleSet and publishes it (a mutex, a pointer swap, the version
// bumped); a shard compares its copy's version with one atomic load at
// accept and takes the new set (under the mutex, once per change) only when
// they differ. So accepting never waits on a lock, and an old set lives
// until the last shard lets go of it. Each subscribed shard is woken
// through its eventfd, so it also walks its open connections at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "security/rule_set.h"

namespace offload {

struct Config;

class LiveRules {
 public:
  enum class List : uint8_t { kDeny, kAllow };
  // Built from the configuration (already validated: its prefixes parse).
  explicit LiveRules(const Config& config);
  LiveRules(PrefixLists global, std::vector<PrefixLists> listeners = {}, bool close_established = true);

  std::shared_ptr<const RuleSet> current() const;
  uint64_t version() const { return version_.load(std::memory_order_acquire); }
  // Established connections from a source a change denies: closed (the
  // default) or left to end by themselves (deny_established = "keep").
  bool close_established() const { return close_established_; }

  // A change to the global lists, or with `listener` (its name) to that
  // listener's own. Each returns a one-line answer; `changed` says whether
  // the set changed (adding what is there and removing what is not change
  // nothing). Throws ConfigError for a bad prefix or an unknown listener.
  std::string add(List list, const std::string& cidr, bool* changed, const std::string& listener = "");
  std::string remove(List list, const std::string& cidr, bool* changed, const std::string& listener = "");
  // After a reload: the live changes made to `older` since its start, in
  // their order, applied to this set (made from the new file), so that a
  // source denied live stays denied.
  void replay(const LiveRules& older);
  // The global list (or `listener`'s own), one prefix a line.
  std::string list(List list, const std::string& listener = "") const;

  // Woken (one 8-byte write) after each change; the fd stays the caller's.
  void subscribe(int eventfd);
  void unsubscribe(int eventfd);

 private:
  std::string change(List list, const std::string& cidr, bool add, bool* changed, const std::string& listener);
  size_t listener_index(const std::string& name) const;  // throws ConfigError for a name not configured
  void publish(std::shared_ptr<const RuleSet> next);  // with mutex_ held

  friend class RulesView;  // takes current_ and version_ together, under mutex_
  mutable std::mutex mutex_;
  std::shared_ptr<const RuleSet> current_;
  std::atomic<uint64_t> version_{1};
  std::vector<int> wake_fds_;
  struct Change {
    List list;
    std::string cidr;
    bool add;
    std::string listener;  // empty: the global lists
  };
  std::vector<std::string> listener_names_;  // in configuration order
  std::vector<Change> changes_;  // every live change that changed the set, oldest first
  bool close_established_ = true;
};

// A shard's copy of the live set: refreshed with one atomic load when
// nothing changed. Not thread-safe: one shard's.
class RulesView {
 public:
  explicit RulesView(std::shared_ptr<LiveRules> live);
  // True when a newer set was taken.
  bool refresh();
  const RuleSet& rules() const { return *rules_; }
  const LiveRules& live() const { return *live_; }
  uint64_t version() const { return version_; }

 private:
  std::shared_ptr<LiveRules> live_;
  std::shared_ptr<const RuleSet> rules_;
  uint64_t version_ = 0;
};

}  // namespace offload
