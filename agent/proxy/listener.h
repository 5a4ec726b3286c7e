// Listening sockets: SO_REUSEPORT so every shard can accept on its own.
#pragma once

#include <string>
#include <vector>

#include "http/http_parser.h"
#include "loop/completion.h"
#include "loop/timer_list.h"
#include "ops/config.h"
#include "proxy/connection.h"

namespace offload {

struct UpstreamGroup;
class Upstream;
struct ListenerCounters;
class Proxy;
class RequestPolicy;

struct Listener;

// One listening socket of a listener and its multishot accept.
struct ListenSocket {
  int fd = -1;
  Listener* listener = nullptr;
  bool armed = false;  // the multishot accept is running
  Completion accepted;
};

// A listener of a shard: its listening sockets and what their clients get:
// the group their requests go to, and the limits and timeouts of its
// listener table.
struct Listener {
  // One socket, or one per port of a range bound port by port; sized once
  // when the shard is built (each Completion's address is in the ring).
  std::vector<ListenSocket> sockets;
  uint32_t index = 0;                // in the configuration's listeners: its own source rules
  std::string name;
  ListenerCounters* stats = nullptr;  // the whole agent's counters for this listener
  Proxy* proxy = nullptr;            // who serves its connections
  const RequestPolicy* policy = nullptr;  // its checks on each request head, set by its proxy; null: none
  Upstream* upstream = nullptr;      // who serves its requests
  UpstreamGroup* group = nullptr;    // for a TcpUpstream: which of its groups
  http::Limits limits;           // for each request's head and body
  uint32_t max_clients = 0;      // of this listener's clients at once
  bool upstream_port_same = false;  // passthrough: the server's port is the one the client dialled
  uint32_t active = 0;
  // Its shard was retired by a reload: a connection accepted after its
  // proxy's drain is served (not closed), and idle ones stay open until
  // their next response (see Shard::request_retire).
  bool serve_late = false;
  TimerList timers[kClientTimerKinds];  // its clients' timeouts, one list per kind
  TimerList tunnel_idle;         // passthrough: a tunnel with nothing moving...
  TimerList tunnel_half_close;   // ... and one with a side ended
};

// Binds and listens; throws ConfigError naming the address on failure.
int open_listener(const SocketAddress& address, int backlog);

// "127.0.0.1:PORT" / "[::1]:PORT" of a bound socket (the real port for :0).
std::string local_address(int fd);
// "127.0.0.1:80" or "[::1]:80".
std::string sockaddr_text(const sockaddr_storage& ss);
uint16_t local_port(int fd);

}  // namespace offload
