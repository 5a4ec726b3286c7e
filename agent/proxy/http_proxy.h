// The HTTP proxy: the client side of every exchange. It accepts on its
// listeners, receives and parses each request until it is complete (the
// request limits and timeouts of the client's listener), hands the complete
// request to the upstream side, sends the response as fast as the client
// reads, and keeps the connection alive or closes it. It owns the client
// slots, the exchanges and the input buffers; where response bytes wait is
// the ResponseSink's, which server answers is the upstream side's.
//
// One exchange ends in one place: finish_exchange() (sent: keep-alive or
// close) or close_client() (the connection goes); both take the client out
// of every queue it is in.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "http/http_parser.h"
#include "loop/loop.h"
#include "loop/slab.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/buffers.h"
#include "proxy/connection.h"
#include "proxy/listener.h"
#include "security/screen.h"
#include "upstream/response_sink.h"

namespace offload {

// Sets a client's state. A client is in a queue (its group's, or the pending
// list of the server it was given to) exactly while it is kQueued; every
// change out of kQueued takes it out here, so no ending path can leave a
// finished exchange behind in a queue.
void set_state(ClientConn* c, ClientState s, Counters& counters);

class HttpProxy {
 public:
  // What the proxy asks of the upstream side.
  class Upstreams {
   public:
    virtual ~Upstreams() = default;
    // A complete request: to its listener's group.
    virtual void submit(ClientConn* c) = 0;
    // The client is going while its exchange is on an upstream (ex->up).
    virtual void abandon(ClientConn* c) = 0;
    // The client drained some of its response: a paused upstream read may go on.
    virtual void resume(Exchange* ex) = 0;
    // The exchange is done with its server (answered, failed or gone).
    virtual void leave(Exchange* ex) = 0;
    // What a request that waited in vain is answered (503, 502, 504).
    virtual int queue_timeout_status(const ClientConn* c) const = 0;
    // The largest request the client's group can carry: UINT64_MAX when it
    // streams (TCP, Unix), else the ring's record size.
    virtual uint64_t request_bytes_max(const ClientConn* c) const = 0;
    // The Host of a request that has none (HTTP/1.0).
    virtual std::string_view default_host(const ClientConn* c) const = 0;
  };

  HttpProxy(Loop& loop, const Config& config, Counters& counters, BlockPool& data_pool, ResponseSink& sink,
            Upstreams& upstreams);
  ~HttpProxy();
  HttpProxy(const HttpProxy&) = delete;
  HttpProxy& operator=(const HttpProxy&) = delete;

  // Accepting on a listener (it names this proxy); again after a pause.
  void serve(Listener* l);
  void post_accept(Listener* l);
  // SIGTERM: idle connections close, the others close after their response.
  void drain();
  uint32_t active() const { return active_clients_; }
  uint64_t take_released_bytes();
  // At teardown, while the upstream side still exists: every client's
  // socket closed and exchange given back (their servers told).
  void release_all();

  // The upstream side's ways back into an exchange.
  void post_client_send(ClientConn* c);
  void send_or_finish(ClientConn* c);  // more is ready: send it, or end the exchange
  void respond_error(ClientConn* c, int status);
  void maybe_free_client(ClientConn* c);
  void resume_response(ClientConn* c);
  void wait_for_budget(ClientConn* c);
  void wait_if_unwoken(ClientConn* c);
  void look_up_peer(ClientConn* c);
  void arm_client_timer(ClientConn* c, TimerKind kind) { loop_.arm(c->timer, c->listener->timers[kind]); }

 private:
  void on_accept(Listener* l, const io_uring_cqe& cqe);
  void on_accept_retry();
  void on_client_timer(ClientConn* c, Timer& t);
  void post_recv(ClientConn* c);
  void on_client_recv(ClientConn* c, const io_uring_cqe& cqe);
  void on_client_cancelled(ClientConn* c, const io_uring_cqe& cqe);
  void on_client_bytes(ClientConn* c, const char* data, size_t len, bool fresh);
  void pause_recv(ClientConn* c);
  void parse_input(ClientConn* c);
  bool take_head(ClientConn* c);
  void feed_body(ClientConn* c, const char* data, size_t len, bool from_input);
  void keep_pipelined(ClientConn* c, const char* data, size_t len);
  size_t append_head_bytes(ClientConn* c, const char* data, size_t len);
  Block* input_block(ClientConn* c);
  Block* grow_input(ClientConn* c);
  void put_input(Block* b);
  void on_request_complete(ClientConn* c);
  void reject(ClientConn* c, int status);
  void on_client_send(ClientConn* c, const io_uring_cqe& cqe);
  void fill_out_from_spill(ClientConn* c);
  void finish_exchange(ClientConn* c);
  void linger(ClientConn* c);
  void close_client(ClientConn* c);
  void client_op_done(ClientConn* c) { --c->inflight; }
  Exchange* get_exchange(const ClientConn* c);
  void put_exchange(Exchange* ex);
  std::string_view client_ip(ClientConn* c, char* buf, size_t cap);
  IpAddress peer_of(const ClientConn* c) const;
  bool screen_out(ClientConn* c);
  void set_state(ClientConn* c, ClientState s) { offload::set_state(c, s, counters_); }

  Loop& loop_;
  Uring& uring_;
  const Config& config_;
  Counters& counters_;
  BlockPool& data_pool_;
  ResponseSink& sink_;
  Upstreams& up_;
  http::Limits request_limits_;
  bool draining_ = false;

  // Clients: slots made once, handed out LIFO so the same few stay warm.
  std::unique_ptr<ClientConn[]> clients_;
  std::vector<uint32_t> free_slots_;
  Screen screen_;
  uint32_t active_clients_ = 0;
  BlockPool small_input_pool_;  // request heads while they are small
  BlockPool input_pool_;        // request heads (header_bytes_max + slack)
  Slab<Exchange> exchanges_;    // one per client at most, made on first use
  std::vector<Listener*> listeners_;  // the ones it serves
  // Accepting paused after EMFILE/ENFILE/ENOMEM: tried again when it fires.
  TimerList accept_retry_list_{100};
  Timer accept_retry_timer_;
};

}  // namespace offload
