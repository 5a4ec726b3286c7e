// Accepting on a proxy's listeners: one multishot accept for each of their
// sockets (a port range bound port by port has one per port, all feeding
// its one listener). When the process runs out of descriptors or memory,
// accepting again at once would fail at once, forever: it pauses (the
// backlog keeps the clients) and tries again 100 ms later, like nginx. Each
// accepted socket goes to the owner, with the listener it came in on.
#pragma once

#include <vector>

#include "loop/loop.h"
#include "ops/counters.h"
#include "proxy/listener.h"
#include "security/screen.h"

namespace offload {

// A connection the screen refused at accept, counted by its reason.
void count_refusal(Verdict v, Counters& counters);

class Acceptor {
 public:
  using OnAccepted = void (*)(void* owner, Listener* l, int fd);
  Acceptor(Loop& loop, Counters& counters, void* owner, OnAccepted on_accepted);
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  void serve(Listener* l);
  void start();
  // Draining: nothing is accepted any more (the shard shuts the sockets,
  // which ends the multishot accepts); what still comes in is closed,
  // except on a listener that serves late arrivals (a reload).
  void stop() { stopped_ = true; }

 private:
  void post(ListenSocket* s);
  void on_accept(ListenSocket* s, const io_uring_cqe& cqe);
  void on_retry();

  Loop& loop_;
  Counters& counters_;
  void* owner_;
  OnAccepted on_accepted_;
  bool stopped_ = false;
  std::vector<ListenSocket*> sockets_;
  TimerList retry_list_{100};
  Timer retry_timer_;
};

}  // namespace offload
