// The admin endpoint: a small HTTP server on its own thread (never on the
// event loop's core path) that serves the shards' counters.
//   GET /stats                 "name value" lines
//   GET /stats?format=json     one JSON object
//   GET /metrics               Prometheus text
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include "config.h"
#include "counters.h"

namespace offload {

class AdminServer {
 public:
  // Binds at once (so a bad address fails start-up); serves from start().
  AdminServer(const SocketAddress& address, const Counters& counters);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  void start();
  std::string bound_address() const;  // "127.0.0.1:PORT"

 private:
  void serve();
  void answer(int fd);

  const Counters& counters_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The client side, for `offload-agent stats`: fetches `path` from the admin
// endpoint and returns the body. Throws std::runtime_error with the reason.
std::string fetch_admin(const SocketAddress& address, const std::string& path);

}  // namespace offload
