// offload::splice::Splicer — the kernel splice of pass-through pairs
// (bpf/sock_splice.bpf.c) loaded, attached to its sockhash and pinned, owned by
// one object for the agent's life. One Splicer serves every shard: its calls
// are map syscalls on descriptors it owns, safe from any thread.
//
// A pair's life, as PassthroughProxy drives it:
//   add_pair        both sockets in the sockhash, each direction SS_SETUP
//                   (passed to its own socket) and the peer entries;
//   (the agent reads what each socket holds, the bytes that came before the
//    insertion first, forwards it, and says how much with forwarded(); the
//    verdict redirects from the first skb before which nothing is left)
//   the kernel redirects; the agent watches both sockets for FIN and errors,
//   and before it passes a FIN on (or forwards passed bytes) waits until
//   drained(): every redirected byte has gone into the peer's send queue;
//   remove_pair     the peer entries first (nothing is redirected after),
//                   then the rest; the flows' bytes are returned for counting.
//
// Pins: /sys/fs/bpf/offload/splice-PID/<map> (per agent, so agents side by
// side do not share maps); a directory whose PID is gone is a crashed
// agent's, removed by the next start (stale_pins_removed() says which).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bpf/sock_splice.h"

struct sock_splice;

namespace offload::splice {

inline constexpr const char* kPinRoot = "/sys/fs/bpf/offload";

// The kernel's budget for one direction: bytes redirected to a peer that its
// receiver has not acknowledged yet (backlog + send queue). Above it the flow
// goes on in user space at the receiver's pace.
inline constexpr uint64_t kDefaultBudget = 32ull << 20;

struct Pair {
  uint64_t a = 0;  // the cookies of the two sockets
  uint64_t b = 0;
  uint64_t base_a = 0;  // queued_total() of each at the insertion
  uint64_t base_b = 0;
};

class Splicer {
 public:
  // Loads the program, sizes the maps for `max_pairs`, attaches the verdict
  // to the sockhash, pins the maps. nullptr with `why` (one line) on failure.
  static std::unique_ptr<Splicer> open(uint32_t max_pairs, std::string& why);
  ~Splicer();  // detaches the verdict, removes the pins
  Splicer(const Splicer&) = delete;
  Splicer& operator=(const Splicer&) = delete;

  // The start-up check of this kernel: a loopback pair through the maps (the
  // bytes that came first, then redirected bytes come out the far end, the
  // drained() arithmetic holds, passed bytes make the socket readable and
  // show in FIONREAD, a FIN is seen). False with `why`.
  bool self_test(std::string& why);

  // Both sockets in the maps, each direction in SS_SETUP. False (nothing
  // left in the maps) when a socket cannot be inserted.
  bool add_pair(int fd_a, int fd_b, Pair& pair);
  // Removes every entry of the pair, the peers first (nothing is redirected
  // after); `a`/`b`: the last state of the directions from a and from b.
  void remove_pair(const Pair& pair, ss_flow& a, ss_flow& b);

  // The direction from the socket `cookie`; false when it is not in the map.
  bool flow(uint64_t cookie, ss_flow& out) const;
  // Of the direction from `cookie`, `user_sent` bytes were read and sent to the
  // peer from user space (each send complete).
  bool forwarded(uint64_t cookie, uint64_t user_sent);

  // Every byte `expected` (user-space sends + redirects since the insertion,
  // when queued_total() was `base`) to `fd` has entered its send queue: none
  // waits in the kernel's redirect backlog.
  static bool drained(int fd, uint64_t base, uint64_t expected);
  // The bytes ever queued on a TCP socket, up to a constant (its SYN may
  // count): acknowledged + still in the send queue. Read in that order, so a
  // race can only make it smaller.
  static bool queued_total(int fd, uint64_t& out);
  // The bytes a TCP socket received in order, its FIN counted as one.
  static bool received_total(int fd, uint64_t& out);
  static bool cookie(int fd, uint64_t& out);

  const std::string& pin_dir() const { return pin_dir_; }
  uint64_t budget() const { return budget_; }
  // Lines about the pins of crashed agents removed at open().
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  Splicer() = default;
  bool load(uint32_t max_pairs, std::string& why);
  bool pin(std::string& why);

  sock_splice* skel_ = nullptr;
  int socks_fd_ = -1, peers_fd_ = -1, flows_fd_ = -1, ctl_fd_ = -1, prog_fd_ = -1;
  bool attached_ = false;
  std::string pin_dir_;
  std::vector<std::string> pins_;
  uint64_t budget_ = kDefaultBudget;
  std::vector<std::string> notes_;
};

// The agent's one Splicer, set by main before the shards start (null: every
// pass-through pair moves in user space).
Splicer* installed();
void install(Splicer* s);

// Removes the pin directories of agents that are no longer running; returns
// a line per directory removed.
std::vector<std::string> remove_stale_pins(const std::string& root = kPinRoot);

}  // namespace offload::splice
