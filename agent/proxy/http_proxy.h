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

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_parser.h"
#include "loop/loop.h"
#include "loop/slab.h"
#include "ops/access_log.h"
#include "ops/config.h"
#include "ops/counters.h"
#include "proxy/acceptor.h"
#include "proxy/buffers.h"
#include "proxy/connection.h"
#include "proxy/listener.h"
#include "proxy/proxy.h"
#include "proxy/request_queue.h"
#include "security/request_policy.h"
#include "security/screen.h"
#include "upstream/response_sink.h"
#include "upstream/upstream.h"

namespace offload {

class PassthroughProxy;

class HttpProxy final : public Proxy {
 public:
  HttpProxy(Loop& loop, const Config& config, Counters& counters, BlockPool& data_pool, ResponseSink& sink);
  ~HttpProxy() override;
  HttpProxy(const HttpProxy&) = delete;
  HttpProxy& operator=(const HttpProxy&) = delete;

  void serve(Listener* l) override;
  void start() override;
  void drain() override;
  uint32_t active() const override { return active_clients_; }
  void after_batch() override {
    wake_budget_waiters();
    access_log_.after_batch();
  }
  uint64_t release_idle() override;
  void release_all() override;

  // The upstream side's ways back into an exchange.
  void on_response_done(ClientConn* c);  // the whole response is in: send the rest, then end
  // The upstream let this exchange down: an error response if nothing went
  // to the client yet, else a close once what did arrive has gone out.
  void fail_exchange(ClientConn* c, int status);
  void post_client_send(ClientConn* c);
  void send_or_finish(ClientConn* c);  // more is ready: send it, or end the exchange
  // `response`: the whole error text, when it is not error_response(status)'s
  // (it must outlive the send).
  void respond_error(ClientConn* c, int status, std::string_view response = {});
  void maybe_free_client(ClientConn* c);
  void resume_response(ClientConn* c);
  // A request no channel took at once waits, bounded by its queue timer.
  void wait_in_queue(ClientConn* c);

  void wait_for_budget(ClientConn* c);
  void wait_if_unwoken(ClientConn* c);
  void look_up_peer(ClientConn* c);
  void arm_client_timer(ClientConn* c, TimerKind kind) { loop_.arm(c->timer, c->listener->timers[kind]); }
  // The shard's one screen: the pass-through proxy admits through it too.
  Screen& screen() { return screen_; }
  // Closes the clients whose source the rule set in force refuses.
  void rescreen();
  // Where upgraded connections and CONNECTs go on (none: an upgrade gets
  // 501, a CONNECT 405); they come back through take_back.
  void set_tunnels(PassthroughProxy* tunnels);
  // A connection the pass-through proxy had (a refused upgrade, a CONNECT
  // that could not connect) goes on here: answered with `status` (then
  // closed) when not 0; else closed after a linger when `close`; else as
  // keep-alive, `held` (what it sent after its request) its next input.
  // `screened`: counted against `source` in the screen, released here.
  void take_back(Listener* l, int fd, const IpAddress& source, bool screened, int status, bool close,
                 std::string held);

 private:
  static void on_accepted(void* self, Listener* l, int fd);
  void accept(Listener* l, int fd);
  // The responses waiting for a shared budget (memory, spill room) that was
  // given back go on.
  void wake_budget_waiters();
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
  bool take_connect(ClientConn* c, const http::Head& h, std::string_view msg);
  void start_hand_over(ClientConn* c);
  void hand_over(ClientConn* c);
  void reject(ClientConn* c, int status, std::string_view response = {});
  void on_client_send(ClientConn* c, const io_uring_cqe& cqe);
  void fill_out_from_spill(ClientConn* c);
  void finish_exchange(ClientConn* c);
  void linger(ClientConn* c);
  void close_client(ClientConn* c);
  void log_closed(ClientConn* c);
  void client_op_done(ClientConn* c) { --c->inflight; }
  Exchange* get_exchange(const ClientConn* c);
  void put_exchange(ClientConn* c);
  std::string_view client_ip(ClientConn* c, char* buf, size_t cap);
  IpAddress peer_of(const ClientConn* c) const;
  bool screen_out(ClientConn* c);
  bool screen_request(ClientConn* c, const http::Head& h, std::string_view msg);
  const std::string& too_many(uint64_t retry_after_s);
  void set_state(ClientConn* c, ClientState s) { offload::set_state(c, s, counters_); }
  static Upstream& upstream_of(const ClientConn* c) { return *c->listener->upstream; }

  Loop& loop_;
  Uring& uring_;
  const Config& config_;
  Counters& counters_;
  BlockPool& data_pool_;
  ResponseSink& sink_;
  Acceptor acceptor_;
  http::Limits request_limits_;
  bool draining_ = false;
  PassthroughProxy* tunnels_ = nullptr;
  // The listeners with connect_targets, and theirs (the config's).
  std::vector<std::pair<const Listener*, const std::vector<ConnectTarget>*>> connect_targets_;

  // Clients: slots made once, handed out LIFO so the same few stay warm.
  std::unique_ptr<ClientConn[]> clients_;
  std::vector<uint32_t> free_slots_;
  Screen screen_;
  std::vector<std::unique_ptr<RequestPolicy>> policies_;  // one per listener it serves
  std::map<uint64_t, std::string> too_many_;  // 429 responses by Retry-After seconds, made when first needed
  uint32_t active_clients_ = 0;
  BlockPool small_input_pool_;  // request heads while they are small
  BlockPool input_pool_;        // request heads (header_bytes_max + slack)
  Slab<Exchange> exchanges_;    // one per client at most, made on first use
  AccessLog access_log_;        // a line as each exchange ends (finish_exchange, close_client)
};

}  // namespace offload
