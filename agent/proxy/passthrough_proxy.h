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
//
// The kernel mode (splice::Splicer installed at start-up, a TCP pair, not an
// upgrade): after the connect both sockets go in the sockhash, each direction
// first passed to its own socket; the agent forwards what is already there
// (the bytes that came before the insertion) with non-blocking receives and
// tells the map how much it forwarded after each send: the verdict redirects
// from the first skb before which nothing waits in user space. From then on
// the agent polls each source for POLLIN (bytes the verdict passed: a paused
// direction), POLLRDHUP (a FIN) and POLLERR (a reset). Before it sends passed bytes or passes a FIN
// on, it waits (1 ms looks) until the redirect backlog is drained into the
// peer's send queue, so no byte overtakes another. The idle and half-close
// timers see the kernel's bytes through the flows' counters, read once a
// second (release_idle), and at the end the entries go before the sockets.
//
// The HTTP proxy hands two kinds of request over (user space only):
//  - an upgrade (adopt): the request goes to a server of the listener's
//    group on a connection of its own, and the answer is read as HTTP
//    before any byte moves as it is. A 101 makes the pair a tunnel; 1xx
//    before it are passed on (not 100: the HTTP proxy answered Expect);
//    any other answer goes to the client as an HTTP response (its head
//    rewritten like the HTTP proxy's, its body framed by the parser), the
//    server connection closes, and the client goes back to the HTTP proxy
//    (take_back) for its next request, or to be closed.
//  - a CONNECT (connect_to): a connection to the target, "200 Connection
//    Established", then a tunnel. A refused or timed-out connect goes back
//    to the HTTP proxy as a 502 or 504.
// The client is not read until the answer is a 101 (or the CONNECT is
// established): what it sends meanwhile is the HTTP proxy's if it comes back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "http/http_parser.h"

#include "loop/loop.h"
#include "loop/slab.h"
#include "ops/access_log.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/acceptor.h"
#include "proxy/buffers.h"
#include "proxy/listener.h"
#include "proxy/proxy.h"
#include "security/screen.h"
#include "splice/splicer.h"

namespace offload {

class TcpUpstream;
class TcpPool;
class HttpProxy;

// An upgrade's answer while it is read as HTTP (see above).
struct UpgradeAnswer {
  explicit UpgradeAnswer(const http::Limits& limits) : parser(http::Parser::Kind::kResponse, limits) {}
  http::Parser parser;
  std::string head;          // the head being parsed, from its first byte
  std::string out;           // for the client: interim heads, the final head, its body
  size_t out_sent = 0;
  std::string held;          // the client's bytes after its request: up first on a 101, else back
  bool keep_alive = true;    // the request lets the connection go on
  bool in_body = false;      // the final head is in
  bool done = false;         // the whole final answer is in `out`
  bool switched = false;     // a 101: what follows it is the new protocol
  bool close_after = false;  // the client is closed after the answer
  bool sent_any = false;     // some of it reached the client
};

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
    // Kernel mode.
    Completion polled;           // its source readable, at its end, or failed
    Completion retried;          // the next look at the redirect backlog
    __kernel_timespec retry_after{0, 1000000};
    uint64_t cookie = 0;         // of its source socket
    uint64_t user_sent = 0;      // of its bytes, sent to the peer from user space
    uint64_t kernel_counted = 0; // of the kernel's bytes, in the counters already
    bool poll_busy = false;
    bool retry_busy = false;
    void clear() {
      buf = nullptr;
      sent_off = 0;
      eof = recv_busy = send_busy = false;
      bytes = 0;
      cookie = user_sent = kernel_counted = 0;
      poll_busy = retry_busy = false;
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
  SocketAddress dial;  // the server as dialled (upstream_port = "same": with the client's port); read by the connect
  Flow up;                     // client → server
  Flow down;                   // server → client
  uint8_t inflight = 0;
  bool open = false;           // connected, bytes moving
  bool upgrade = false;        // an HTTP upgrade: `first` goes out first, the answer is looked at
  bool connect_request = false;  // a CONNECT: dial is its target, "200" goes to the client first
  std::unique_ptr<UpgradeAnswer> answer;  // an upgrade until its answer is sent
  std::string first;           // what goes to the server before the client is read
  bool ending = false;         // closing: waiting for its operations to come back
  bool reset = false;          // end with a reset on both sockets
  bool kernel = false;         // its sockets are in the splice maps
  splice::Pair pair;           // their cookies, when kernel
  IpAddress source;
  bool screened = false;       // counted against its source in the screen
  uint32_t live_index = 0;     // in PassthroughProxy::live_
  // For its access-log line.
  uint64_t started_ms = 0;     // loop time of its accept (or of the upgrade's hand-over)
  int64_t connect_ms = -1;     // its server connection's set-up; -1: none made
  Termination why = Termination::kUnset;  // the first cause of its end
  // At its end the client goes back to the HTTP proxy (not closed): with
  // back_status, to be answered with that error; with back_close, to be
  // closed after a linger; else for its next request.
  bool give_back = false;
  int back_status = 0;
  bool back_close = false;

  // Back to free: everything but the completions and the timer, which are
  // bound once when the slot is made.
  void clear() {
    client_fd = server_fd = -1;
    listener = nullptr;
    server = nullptr;
    up.clear();
    down.clear();
    inflight = 0;
    open = ending = reset = screened = upgrade = connect_request = kernel = false;
    answer.reset();
    give_back = back_close = false;
    back_status = 0;
    pair = splice::Pair{};
    first.clear();
    first.shrink_to_fit();
    source = IpAddress{};
    live_index = 0;
    started_ms = 0;
    connect_ms = -1;
    why = Termination::kUnset;
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
  void after_batch() override { access_log_.after_batch(); }
  // Once a second: the kernel's bytes of each spliced pair into the counters
  // and its idle timer (the agent sees no completion for them). Frees nothing.
  uint64_t release_idle() override;
  void release_all() override;

  // An HTTP connection that asked for an upgrade goes on as a tunnel of
  // `l` (already screened and counted by the HTTP proxy): `first` (the
  // rewritten request and what followed it) is sent to the server before
  // the bytes move both ways. Takes `fd`.
  // `screened`: it is counted against its source in the screen, and the
  // tunnel releases it.
  // `held`: what the client sent after its request; `keep_alive`: the
  // request lets its connection go on after a refusal.
  void adopt(Listener* l, int fd, const IpAddress& source, bool screened, std::string first, std::string held,
             bool keep_alive);
  // A CONNECT to `target` (one of the listener's connect_targets); `held`
  // goes to the target first. Takes `fd`.
  void connect_to(Listener* l, int fd, const IpAddress& source, bool screened, const SocketAddress& target,
                  std::string held);
  // Where clients go back to after a refused upgrade or a failed CONNECT.
  void set_http(HttpProxy* http) { http_ = http; }
  // Ends the tunnels whose source the rule set in force refuses.
  void rescreen();

 private:
  static void on_accepted(void* self, Listener* l, int fd);
  void accept(Listener* l, int fd);
  Tunnel* open_handed(Listener* l, int fd, const IpAddress& source, bool screened);
  Tunnel* open_slot(Listener* l, int fd);
  bool screen_out(Tunnel* t);
  bool connect(Tunnel* t);
  bool dial(Tunnel* t);
  bool send_first(Tunnel* t);
  void start_up(Tunnel* t);
  void send_established(Tunnel* t);
  // An upgrade's answer (see above).
  void on_answer_bytes(Tunnel* t, const char* data, size_t len);
  bool take_answer_head(Tunnel* t, const char*& data, size_t& len);
  void on_answer_eof(Tunnel* t);
  void on_answer_sent(Tunnel* t, int res);
  void flush_answer(Tunnel* t);
  void answer_failed(Tunnel* t, int status);
  void arm_answer_timer(Tunnel* t);
  void give_back(Tunnel* t, int status, bool close);
  void on_connected(Tunnel* t, const io_uring_cqe& cqe);
  void on_connect_timeout(Tunnel* t, const io_uring_cqe& cqe);
  void on_timer(Tunnel* t, Timer& timer);
  void arm_idle(Tunnel* t);
  void post_recv(Tunnel* t, Tunnel::Flow& f, int flags = 0);
  void post_send(Tunnel* t, Tunnel::Flow& f);
  void on_recv(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_send(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_up_recv(Tunnel* t, const io_uring_cqe& cqe) { on_recv(t, t->up, cqe); }
  void on_down_recv(Tunnel* t, const io_uring_cqe& cqe) { on_recv(t, t->down, cqe); }
  void on_up_send(Tunnel* t, const io_uring_cqe& cqe) { on_send(t, t->up, cqe); }
  void on_down_send(Tunnel* t, const io_uring_cqe& cqe) { on_send(t, t->down, cqe); }
  void on_cancelled(Tunnel* t, const io_uring_cqe& cqe);
  // Kernel mode.
  bool start_kernel(Tunnel* t);
  void on_kernel_eof(Tunnel* t, Tunnel::Flow& f);
  void post_poll(Tunnel* t, Tunnel::Flow& f);
  void on_polled(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_up_polled(Tunnel* t, const io_uring_cqe& cqe) { on_polled(t, t->up, cqe); }
  void on_down_polled(Tunnel* t, const io_uring_cqe& cqe) { on_polled(t, t->down, cqe); }
  void on_retry(Tunnel* t, Tunnel::Flow& f, const io_uring_cqe& cqe);
  void on_up_retry(Tunnel* t, const io_uring_cqe& cqe) { on_retry(t, t->up, cqe); }
  void on_down_retry(Tunnel* t, const io_uring_cqe& cqe) { on_retry(t, t->down, cqe); }
  void read_when_drained(Tunnel* t, Tunnel::Flow& f);
  bool peer_drained(Tunnel* t, const Tunnel::Flow& f, const ss_flow& now);
  void retry_later(Tunnel* t, Tunnel::Flow& f);
  void count_kernel(Tunnel* t, Tunnel::Flow& f, const ss_flow& now);
  void count_bytes(Tunnel* t, bool up, uint64_t n, bool kernel);
  void remove_from_kernel(Tunnel* t);
  int from_fd(const Tunnel* t, const Tunnel::Flow& f) const { return &f == &t->up ? t->client_fd : t->server_fd; }
  int to_fd(const Tunnel* t, const Tunnel::Flow& f) const { return &f == &t->up ? t->server_fd : t->client_fd; }
  void on_eof(Tunnel* t, Tunnel::Flow& f);
  // The one place a tunnel ends; `why` goes to its access-log line.
  void end(Tunnel* t, bool reset, Termination why);
  void log_tunnel(Tunnel* t);
  // The side whose socket failed, as a termination: the source of `f`, or where it goes.
  static Termination source_failed(const Tunnel* t, const Tunnel::Flow& f) {
    return &f == &t->up ? Termination::kTunnelClientReset : Termination::kTunnelServerReset;
  }
  static Termination destination_failed(const Tunnel* t, const Tunnel::Flow& f) {
    return &f == &t->up ? Termination::kTunnelServerReset : Termination::kTunnelClientReset;
  }
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
  splice::Splicer* splicer_;   // null: every tunnel moves in user space
  AccessLog access_log_;       // a line as each tunnel ends (maybe_free)
  HttpProxy* http_ = nullptr;
  http::Limits answer_limits_;
};

}  // namespace offload
