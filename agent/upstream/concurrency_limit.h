// How many connections the upstream pool gives the server at once: an
// additive-increase, multiplicative-decrease limit driven by what the server
// does with the connections, counted in responses (no clock, so a test drives
// it with synthetic samples).
//
// Why these signals: a server with a fixed number of blocking workers takes
// one connection per worker; a connection beyond that sits in its accept
// queue, unread. Such a server either closes a served connection to make room
// (a "yield": Puma, the anchor benchmark's backend) or never reads the extra
// one (a stall, ended by the response timeout). Both say "one connection too
// many", and nothing else in the agent can see the worker count.
//
//  - grow: after `probe_after` responses that each found requests waiting
//    with every connection busy (demand beyond the limit), the limit rises by
//    one: a probe;
//  - a rejection (the server closed a served connection while a newer one
//    waited unanswered) takes one off; at a level a probe was confirmed at,
//    only every kRacesMax-th does (the others are races: a replacement
//    connection seen queued for an instant); a stall (a connection the server does
//    not serve) brings the limit down to the connections it does serve;
//  - a probe rejected within its confirmation window (a few rounds of
//    responses once a new connection was answered) failed: the limit goes back to where it was, and the next
//    probe to that level waits twice as long, up to `probe_after_max`: a
//    server that is full costs a connection or two per doubling window, so
//    the cost per request falls as the run goes on. Growing back to a level
//    below the refused one (after a shrink) waits only `probe_after`. A
//    probe to the refused level that survives resets the wait, so a server
//    that keeps pace is grown into quickly.
// With min == max the limit is fixed and never moves.
#pragma once

#include <cstdint>

namespace offload {

class ConcurrencyLimit {
 public:
  struct Settings {
    uint32_t initial = 4;
    uint32_t min = 1;
    uint32_t max = 64;
    uint32_t probe_after = 128;        // responses under demand before the first probe
    uint32_t probe_after_max = 1 << 16;
  };

  explicit ConcurrencyLimit(Settings s);

  uint32_t limit() const { return limit_; }
  bool fixed() const { return s_.min == s_.max; }

  // A response completed on a connection that stays open; `demand`: requests
  // were still waiting with every connection of the limit busy.
  void on_response(bool demand);
  // The server closed a connection it had served. `newer_waiting`: a newer
  // one was still unanswered (connecting, or its first request not yet
  // answered), so the close made room for it: a rejection. During a probe's
  // confirmation any such close fails the probe (the new connection may have
  // been answered just before the close was read); other closes are the
  // server's own business (a request count per connection, a restart).
  void on_server_close(bool newer_waiting);
  void on_rejected() { on_server_close(true); }
  // A new connection got its first answer: a probe's confirmation counts
  // from here (before it, the server may not have seen the connection yet).
  void on_new_answered();
  // A connection got no answer for too long (a new one left in the accept
  // queue, or the response timeout); `served`: the connections the server is
  // answering on.
  void on_stall(uint32_t served);

  // The server has refused or stalled a connection at some point: beyond
  // the limit, it does not serve every connection it is given.
  bool constrained() const { return constrained_; }

  // For tests: the back-off of probes to the refused level; whether a probe
  // is being confirmed.
  uint32_t probe_after() const { return probe_after_; }
  bool probing() const { return confirm_left_ > 0; }

 private:
  void shrink_to(uint32_t n);
  void failed_probe();
  uint32_t wait_for_next() const;

  Settings s_;
  uint32_t limit_;
  uint32_t probe_after_;
  uint32_t demand_count_ = 0;  // responses under demand since the last change
  uint32_t confirm_left_ = 0;  // > 0: the last probe is still being confirmed
  uint32_t probe_from_ = 0;    // the limit before the last probe
  bool probe_answered_ = false; // a new connection was answered since the probe
  uint32_t refused_at_ = 0;    // the level of the last failed probe; 0: none
  uint32_t settle_left_ = 0;   // > 0: rejections still belong to the last failed probe
  bool constrained_ = false;
  uint32_t good_ = 0;          // the highest level a probe was confirmed at
  uint32_t races_ = 0;         // rejections at a confirmed level since the last confirmation
  static constexpr uint32_t kRacesMax = 4;
};

}  // namespace offload
