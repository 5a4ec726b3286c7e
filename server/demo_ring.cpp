#include "demo_ring.h"

#include <cstdio>
#include <stdexcept>
#include <vector>

#include "demo_content.h"
#include "offload/server.h"
#include "ring_region.h"

namespace offload::demo {

RingMode::RingMode(std::string name, unsigned workers, unsigned spin_us, int root_fd, Counters& counters)
    : name_(std::move(name)), workers_(workers), spin_us_(spin_us), root_fd_(root_fd), counters_(counters) {
  if (!ring::valid_name(name_))
    throw std::runtime_error("--ring " + name_ + ": expected 1-64 characters of A-Z a-z 0-9 . _ -");
  if (workers_ > OFFLOAD_RING_CHANNELS_MAX)
    throw std::runtime_error("--workers " + std::to_string(workers_) + ": the ring has at most 64 channels");
}

void RingMode::run() {
  ServerOptions opts;
  opts.spin_us = spin_us_;
  opts.agent_uid = agent_uid_;
  Server srv(name_, opts);
  std::fprintf(stderr, "offload-demo-server: serving ring %s (socket @" OFFLOAD_RING_SOCKET_PREFIX "%s)\n",
               name_.c_str(), name_.c_str());
  std::fflush(stderr);
  int rc = srv.serve(
      [this, &srv](const Request& req, Response& res) {
        counters_.connections.store(srv.attach_count(), std::memory_order_relaxed);
        Reply r = route(req.method(), req.target(), root_fd_);
        res.set_status(r.status);
        res.add_header("Content-Type", r.content_type);
        res.set_content_length(r.length);  // HEAD announces the GET length too
        if (!r.head_only) {
          static thread_local std::vector<char> buf(64 * 1024);
          for (uint64_t off = 0; off < r.length;) {
            long got = r.fill(off, buf.data(), buf.size());
            if (got <= 0 || !res.write({buf.data(), static_cast<size_t>(got)})) break;  // short: aborted
            off += static_cast<uint64_t>(got);
          }
        }
        counters_.requests.fetch_add(1, std::memory_order_relaxed);
      },
      workers_);
  if (rc != 0) std::fprintf(stderr, "offload-demo-server: %s\n", srv.error().c_str());
}

}  // namespace offload::demo
