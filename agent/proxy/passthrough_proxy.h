// The pass-through proxy (`proxy = "passthrough"`): each client connection
// on its listeners is screened, paired with a connection of its own to a
// server of the listener's group (the balancer's pick, with its health
// state), and its bytes are moved as they are, both ways, until both sides
// are done. Nothing is parsed: SSH, databases, TLS to the server, any TCP.
//
// This is the user-space mode: each direction is one recv into a bounded
// buffer and one send of what came (a slow receiver holds at most that
// buffer, and its sender waits in the kernel's socket buffers). A FIN is
// passed on as a shutdown of the peer's write side, the other direction still
// flowing; a reset is passed on as a reset. Every waiting state has a timer:
// the connect (connect_timeout_ms), a tunnel with nothing moving
// (tunnel_timeout_ms) and a half-closed one (half_close_timeout_ms), the
// last two per listener.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loop/loop.h"
#include "loop/slab.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/acceptor.h"
#include "proxy/buffers.h"
#include "proxy/listener.h"
#include "proxy/proxy.h"
#include "security/screen.h"

namespace offload {

class TcpUpstream;
class TcpPool;

struct Tunnel {
  // One direction: what `from` sends goes out on the other socket.
  struct Flow {
    Completion received;
    Completion sent;
    Block* buf = nullptr;   // the bytes between their recv and their send
    uint32_t sent_off = 0;  // of buf's bytes, sent so far
    bool eof = false;       // its source ended (FIN): the peer's write side is shut
    bool recv_busy = false;
    bool send_busy = false;
    uint64_t bytes = 0;
    void clear() {
      buf = nullptr;
      sent_off = 0;
      eof = recv_busy = send_busy = false;
      bytes = 0;
    }
  };

  int client_fd = -1;
  int server_fd = -1;
  Listener* listener = nullptr;
  TcpPool* server = nullptr;
  Timer timer;                 // connect, idle or half-close, whichever applies
  Completion connected;
  Completion connect_timed_out;
  Completion cancelled;        // the cancels of its operations at the end
  __kernel_timespec connect_timeout{};
  Flow up;                     // client → server
  Flow down;                   // server → client
  uint8_t inflight = 0;
  bool open = false;           // connected, bytes moving
  bool upgrade = false;        // an HTTP upgrade: `first` goes out first, the answer is looked at
  std::string first;
  bool ending = false;         // closing: waiting for its operations to come back
  bool reset = false;          // end with a reset on both sockets
  IpAddress source;
  bool screened = false;       // counted against its source in the screen
  uint32_t live_index = 0;     // in PassthroughProxy::live_

  // Back to free: everything but the completions and the timer, which are
  // bound once when the slot is made.
  void clear() {
    client_fd = server_fd = -1;
    listener = nullptr;
    server = nullptr;
    up.clear();
    down.clear();
    inflight = 0;
    open = ending = reset = screened = upgrade = false;
    first.clear();
    first.shrink_to_fit();
    source = IpAddress{};
    live_index = 0;
  }
};

class PassthroughProxy final : public Proxy {
 public:
  PassthroughProxy(Loop& loop, const Config& config, Counters& counters, BlockPool& data_pool, Screen& screen,
                   TcpUpstream& upstream);
  ~PassthroughProxy() override;
  PassthroughProxy(const PassthroughProxy&) = delete;
  PassthroughProxy& operator=(const PassthroughProxy&) = delete;

  void serve(Listener* l) override;
  void start() override { acceptor_.start(); }
  void drain() override;
  uint32_t active() const override { return active_; }
  void after_batch() override {}
  uint64_t release_idle() override { return 0; }
  void release_all() override;

  // An HTTP connection that asked for an upgrade goes on as a tunnel of
  // `l` (already screened and counted by the HTTP proxy): `first` (the
  // rewritten request and what followed it) is sent to the server before
  // the bytes move both ways. Takes `fd`.
  // `screened`: it is counted against its source in the screen, and the
  // tunnel releases it.
  void adopt(Listener* l, int fd, const IpAddress& source, bool screened, std::string first);

 private:
  static void on_accepted(void* self, Listener* l, int fd);
  void accept(Listener* l, int fd);
  Tunnel* open_slot(Listener* l, int fd);
  bool screen_out(Tunnel* t);
  bool connect(Tunnel* t);
  bool send_first(Tunnel* t);
  void on_connected(Tunnel* t, const io_uring_cqe& cqe);
  void on_connect_timeout(Tunnel* t, const io_uring_cqe& cqe);
  void on_timer(Tunnel* t, Timer& timer);
  void arm_idle(Tunnel* t);
  void post_recv(Tunnel* t, Tunnel::Flow& f);
  void post_send(Tunnel* t, Tunnel::Flow& f);
  void on_recv(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_send(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_up_recv(Tunnel* t, const io_uring_cqe& cqe) { on_recv(t, t->up, cqe); }
  void on_down_recv(Tunnel* t, const io_uring_cqe& cqe) { on_recv(t, t->down, cqe); }
  void on_up_send(Tunnel* t, const io_uring_cqe& cqe) { on_send(t, t->up, cqe); }
  void on_down_send(Tunnel* t, const io_uring_cqe& cqe) { on_send(t, t->down, cqe); }
  void on_cancelled(Tunnel* t, const io_uring_cqe& cqe);
  int from_fd(const Tunnel* t, const Tunnel::Flow& f) const { return &f == &t->up ? t->client_fd : t->server_fd; }
  int to_fd(const Tunnel* t, const Tunnel::Flow& f) const { return &f == &t->up ? t->server_fd : t->client_fd; }
  void on_eof(Tunnel* t, Tunnel::Flow& f);
  void end(Tunnel* t, bool reset);
  void op_done(Tunnel* t) { --t->inflight; }
  void maybe_free(Tunnel* t);

  Loop& loop_;
  const Config& config_;
  Counters& counters_;
  BlockPool& data_pool_;
  Screen& screen_;
  TcpUpstream& upstream_;
  Acceptor acceptor_;
  Slab<Tunnel> tunnels_;
  uint32_t active_ = 0;
  bool draining_ = false;
  std::vector<Tunnel*> live_;  // for release_all at teardown
};

}  // namespace offload
