// The demo server's ring mode: the same routes (demo_content.h) served to the
// offload agent through liboffload-server, one worker thread per channel.
#pragma once

#include <cstdint>
#include <string>

#include "demo_http.h"

namespace offload::demo {

class RingMode {
 public:
  // Throws std::runtime_error when NAME is not a valid ring name.
  RingMode(std::string name, unsigned workers, unsigned spin_us, int root_fd, Counters& counters);
  // Attaches to the agent's ring (retrying while the agent is away) and
  // serves until the process ends.
  void run();
  // The uid the agent must run as (-1: ours; root is always accepted).
  void set_agent_uid(int64_t uid) { agent_uid_ = uid; }

 private:
  std::string name_;
  unsigned workers_;
  unsigned spin_us_;
  int root_fd_;
  Counters& counters_;
  int64_t agent_uid_ = -1;
};

}  // namespace offload::demo
