#include "demo_ring.h"

#include <stdexcept>

namespace offload::demo {

RingMode::RingMode(std::string name, unsigned workers, unsigned spin_us, int root_fd,
                   Counters& counters)
    : name_(std::move(name)), workers_(workers), spin_us_(spin_us), root_fd_(root_fd),
      counters_(counters) {
  throw std::runtime_error("--ring: ring mode is not built yet");
}

void RingMode::run() {}

}  // namespace offload::demo
